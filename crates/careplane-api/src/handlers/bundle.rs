//! `POST /`: a transaction or batch Bundle (see [`crate::bundle`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use careplane_store::TenantId;

use crate::bundle::{self, ResponseOptions};
use crate::error::Result;
use crate::extract::{BaseUrl, BundleBody, Format, Prefer};
use crate::response::fhir_json_response;
use crate::state::AppState;

pub async fn transaction_or_batch(
    State(state): State<AppState>,
    format: Format,
    prefer: Prefer,
    BaseUrl(base): BaseUrl,
    BundleBody(body): BundleBody,
) -> Result<Response> {
    let options = ResponseOptions {
        return_: prefer.return_,
        base_url: Some(base),
    };
    let tenant = TenantId::default_tenant();
    let response = bundle::process(&state, &tenant, &body, &options).await?;
    Ok(fhir_json_response(StatusCode::OK, &response, format.pretty))
}
