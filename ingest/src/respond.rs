//! One shape for every JSON answer of the HTTP routes: counted in
//! `tally_ingest_requests_total` by route and status, with the headers its
//! status calls for.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::metrics::REQUESTS;

/// A JSON answer of `route`: `WWW-Authenticate: Bearer` on 401 (every route
/// takes a bearer token), and `Retry-After: retry_after` seconds on 503.
pub(crate) fn json(
    route: &str,
    status: StatusCode,
    body: Vec<u8>,
    retry_after: &'static str,
) -> Response {
    REQUESTS.with_label_values(&[route, status.as_str()]).inc();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    let headers = response.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
        }
        _ => {}
    }
    response
}
