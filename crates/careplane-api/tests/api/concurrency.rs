//! Parallel HTTP clients: optimistic updates with If-Match never lose an update, and identical
//! conditional creates produce exactly one resource.

use careplane_testkit::TestApp;
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_with_if_match_never_lose_an_update() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    let (id, _) = app
        .create(&json!({"resourceType": "Patient", "multipleBirthInteger": 0}))
        .await;
    let (clients, increments) = (8, 5);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (app, id) = (app.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..increments {
                loop {
                    let current = app.get(&format!("Patient/{id}")).await;
                    let etag = current.headers()["etag"].to_str().unwrap().to_string();
                    let mut body: Value = current.json().await.unwrap();
                    body["multipleBirthInteger"] =
                        json!(body["multipleBirthInteger"].as_i64().unwrap() + 1);
                    let response = app
                        .request(Method::PUT, &format!("Patient/{id}"))
                        .header("content-type", "application/fhir+json")
                        .header("if-match", etag)
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        200 => break,
                        412 => conflicts += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last: Value = app
        .get(&format!("Patient/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(last["multipleBirthInteger"], json!(clients * increments));
    assert_eq!(
        last["meta"]["versionId"],
        (1 + clients * increments).to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_conditional_creates_make_one_resource() {
    let app = std::sync::Arc::new(TestApp::spawn().await);
    // Full search criteria (issue 4), not only identifiers, decide the race.
    let body = json!({"resourceType": "Patient", "name": [{"family": "Racer"}], "birthDate": "1990-02-03"});
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (app, body) = (app.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            app.request(Method::POST, "Patient")
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "family=racer&birthdate=1990-02")
                .body(body.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        49,
        "{statuses:?}"
    );
}

/// L6 in miniature: with every slot held by a slow upload, further requests are refused at
/// once with 503 + Retry-After (not queued); once the slots free up, requests succeed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_requests_are_shed_with_503() {
    use tokio::io::AsyncWriteExt;

    let app = TestApp::spawn_with(|s| s.max_concurrent_requests = 2).await;
    let authority = app.url("").split('/').nth(2).unwrap().to_string();
    let mut slow = Vec::new();
    // Behind the round-robin proxy of replica mode, two slow uploads for every replica fill
    // them all, and the next request meets a full one.
    for _ in 0..2 * careplane_testkit::replicas() {
        let mut stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
        let head = format!(
            "POST /fhir/Patient HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resourceType\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // Let the server take both half-sent requests into handlers.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let shed = app.get("metadata").await;
    assert_eq!(shed.status().as_u16(), 503);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused at once"
    );
    assert_eq!(shed.headers()["retry-after"], "1");
    let outcome: Value = shed.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");

    drop(slow);
    let mut recovered = false;
    for _ in 0..50 {
        if app.get("metadata").await.status().as_u16() == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        recovered,
        "slots are released when the slow clients go away"
    );
}
