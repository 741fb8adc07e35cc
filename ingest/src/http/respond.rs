//! One shape for every JSON answer of the HTTP routes: counted in
//! `tally_ingest_requests_total` by route and status, with the headers its
//! status calls for; and one body, [`ApiError`], for every refusal of a
//! request as a whole.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

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

/// The body of every refusal of a request as a whole, on every route: what
/// is wrong, naming the value, and on a 400 about one query or path
/// parameter, which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What is wrong, naming the value.
    pub error: String,
    /// The query or path parameter at fault, on a 400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

/// Why a request was refused as a whole: its status and [`ApiError`] body.
#[derive(Debug)]
pub(crate) struct Refusal(pub StatusCode, pub ApiError);

impl Refusal {
    /// A refusal with `status`.
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Refusal {
        Refusal(
            status,
            ApiError {
                error: error.into(),
                parameter: None,
            },
        )
    }

    /// A 400 about `parameter`, its name leading the message.
    pub(crate) fn parameter(parameter: &str, error: impl Into<String>) -> Refusal {
        Refusal(
            StatusCode::BAD_REQUEST,
            ApiError {
                error: format!("{parameter}: {}", error.into()),
                parameter: Some(parameter.to_owned()),
            },
        )
    }

    /// The answer on `route`; a 503 asks to retry after `retry_after` seconds.
    pub(crate) fn answer(self, route: &str, retry_after: &'static str) -> Response {
        let Refusal(status, body) = self;
        let body = serde_json::to_vec(&body).expect("refusals serialise");
        json(route, status, body, retry_after)
    }
}
