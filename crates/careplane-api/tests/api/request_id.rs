//! `X-Request-Id` (issue 6): a client's id is echoed when it is short visible ASCII, anything
//! else is replaced by a generated UUID, so ids can neither forge nor bloat log lines. (CR and LF
//! never get past hyper's parser; the unit tests in `middleware/request_id.rs` refuse them too.)

use careplane_testkit::TestApp;

async fn echoed(app: &TestApp, supplied: Option<&[u8]>) -> String {
    let mut request = app.client.get(app.url("metadata"));
    if let Some(value) = supplied {
        request = request.header(
            "x-request-id",
            reqwest::header::HeaderValue::from_bytes(value).unwrap(),
        );
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let ids: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].to_str().unwrap().to_string()
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<_> = s.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12] && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

#[tokio::test]
async fn a_supplied_request_id_is_echoed_and_a_missing_one_is_generated() {
    let app = TestApp::spawn().await;
    assert_eq!(
        echoed(&app, Some(b"trace-42.abc_DEF")).await,
        "trace-42.abc_DEF"
    );
    let longest = "a".repeat(128);
    assert_eq!(echoed(&app, Some(longest.as_bytes())).await, longest);
    let first = echoed(&app, None).await;
    let second = echoed(&app, None).await;
    assert!(is_uuid(&first), "{first}");
    assert_ne!(first, second, "every request gets its own id");
}

#[tokio::test]
async fn long_or_unprintable_request_ids_are_replaced() {
    let app = TestApp::spawn().await;
    let too_long = "a".repeat(129);
    for bad in [
        too_long.as_bytes(),
        b"abc\tlevel=ERROR msg=forged",
        b"two words",
        "caf\u{e9}".as_bytes(),
    ] {
        let id = echoed(&app, Some(bad)).await;
        assert!(is_uuid(&id), "{bad:?} became {id}");
    }
}
