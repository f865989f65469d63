//! `X-Request-Id`: a client's id is kept only when it is short visible ASCII, otherwise replaced
//! by a fresh UUID (tower-http's `SetRequestId`), so a crafted id can neither forge log lines nor
//! bloat them. The id is echoed on the response and recorded in the request span.

use axum::extract::Request;
use axum::http::HeaderName;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id kept (a UUID is 36; trace ids are 32 hex digits).
pub const MAX_LEN: usize = 128;

/// Visible ASCII (no space, tab or control bytes, no obs-text), 1..=[`MAX_LEN`] bytes.
pub fn is_acceptable(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_LEN && value.iter().all(|b| b.is_ascii_graphic())
}

/// Removes a client id that is unacceptable, or repeated (which one would the logs mean?), so
/// the next layer generates one.
pub fn discard_unacceptable(mut request: Request) -> Request {
    let headers = request.headers();
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (None, _) => return request,
        (Some(value), None) => is_acceptable(value.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !keep {
        request.headers_mut().remove(&X_REQUEST_ID);
    }
    request
}

/// The (already checked) id of a request, for its span.
pub fn of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_line_breaks_spaces_or_non_ascii_are_refused() {
        for bad in [
            &b"a\nb"[..],
            b"a\rb",
            b"a b",
            b"a\tb",
            "é".as_bytes(),
            b"",
            b"\x1b[31m",
        ] {
            assert!(!is_acceptable(bad), "{bad:?}");
        }
    }

    #[test]
    fn ids_longer_than_128_bytes_are_refused_and_a_uuid_is_kept() {
        assert!(is_acceptable(&[b'a'; MAX_LEN]));
        assert!(!is_acceptable(&[b'a'; MAX_LEN + 1]));
        assert!(is_acceptable(b"6f1c1b52-3f0e-4b0a-9d59-0f7d2a4c9e11"));
    }
}
