//! Per-client rate limiting: every FHIR request is counted against its client's quota
//! (`Settings::rate_limit`); past it the answer is `429 Too Many Requests`, an OperationOutcome
//! with code `throttled` and `Retry-After` in whole seconds (rounded up: a client that waits
//! that long is admitted). The client is the tenant plus its address ([`client`]). Counting is
//! the limiter's: in process, or on Redis for every replica with an in-process fallback, so a
//! Redis outage never fails a request. Off when no limiter is set.
//!
//! This layer sits outside the global concurrency limit: a client over its quota is turned away
//! without taking one of the shared slots. The admin listener (probes, metrics) has its own
//! router and is never limited.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use careplane_cache::Verdict;
use careplane_fhir::{operation_outcome, Issue, IssueCode};
use careplane_store::TenantId;

use crate::metrics::THROTTLED_REQUESTS_TOTAL;
use crate::middleware::client;
use crate::response::fhir_json_response;
use crate::state::AppState;

pub async fn throttle(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(limiter) = &state.settings.rate_limit else {
        return next.run(request).await;
    };
    let address = client::address(&request, &state.settings.trusted_proxies);
    match limiter.check(&key(&tenant(), address)).await {
        Verdict::Admitted => next.run(request).await,
        Verdict::Throttled { retry_after } => {
            metrics::counter!(THROTTLED_REQUESTS_TOTAL, "reason" => "rate_limit").increment(1);
            too_many_requests(retry_after)
        }
    }
}

/// Every request is the default tenant's until tenants are resolved from requests (the handlers
/// use the same); the key carries it so that tenants will not share quotas.
fn tenant() -> TenantId {
    TenantId::default_tenant()
}

/// `{tenant}:{address}`; neither part contains `:` before the address, so keys are unambiguous.
pub fn key(tenant: &TenantId, address: Option<std::net::IpAddr>) -> String {
    format!("{tenant}:{}", client::key_part(address))
}

fn too_many_requests(retry_after: Duration) -> Response {
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let issue = Issue::error(
        IssueCode::Throttled,
        format!("Too many requests from this client; retry in {seconds} s"),
    );
    let mut response = fhir_json_response(
        StatusCode::TOO_MANY_REQUESTS,
        &operation_outcome(&[issue]),
        false,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds_and_at_least_one() {
        let header = |d| too_many_requests(d).headers()[header::RETRY_AFTER].clone();
        assert_eq!(header(Duration::from_millis(1)), "1");
        assert_eq!(header(Duration::from_millis(1001)), "2");
        assert_eq!(header(Duration::from_secs(3)), "3");
        assert_eq!(header(Duration::ZERO), "1");
    }

    #[test]
    fn keys_name_the_tenant_and_the_client() {
        let tenant = TenantId::default_tenant();
        assert_eq!(
            key(&tenant, Some("198.51.100.7".parse().unwrap())),
            "default:198.51.100.7"
        );
        assert_eq!(key(&tenant, None), "default:unknown");
    }
}
