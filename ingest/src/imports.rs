//! `POST /v1/imports`: an S3 event notification ([`crate::notifications`])
//! turned into one import per created object.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};

use crate::http::respond::Refusal;
use crate::http::Ingest;
use crate::notifications::{parse, RecordOutcome, Started};

/// The answer of `POST /v1/imports` when the notification was read. A
/// client may read every answer of the route into it: a refusal of the
/// request as a whole ([`crate::http::ApiError`]) reads as an outcome with
/// no records and `error` set.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
pub struct ImportsOutcome {
    /// Import jobs queued.
    pub queued: usize,
    /// One entry per record of the notification, in order.
    pub records: Vec<Started>,
    /// A refusal's message, as a client reads it; the service never sets
    /// it in an outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The route, as counted in `tally_ingest_requests_total`.
const ROUTE: &str = "/v1/imports";

/// A 503 asks to retry after this many seconds.
const RETRY_AFTER: &str = "5";

/// `POST /v1/imports`: an S3 event notification; one import per created
/// object. 200 when every record was queued, skipped as already imported or
/// queued, or ignored; 207 when some failed (the sender may deliver the
/// notification again: what was queued is not queued twice); 503 when
/// every one failed or imports are not configured.
pub(crate) async fn imports(
    State(state): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refusal.answer(ROUTE, RETRY_AFTER),
    }
}

/// A request, in order: its token, the imports' database, a slot, the
/// notification, one import per record, the answer.
async fn handle(state: &Ingest, headers: &HeaderMap, body: Body) -> Result<Response, Refusal> {
    state.may_write(headers)?;
    let (Some(queue), Some(database)) = (state.imports.clone(), state.database()) else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "imports are not configured: set ingest.database_url to the aggregators' database",
        ));
    };
    let _slot = state.admit()?;
    let bytes = state.read_body(headers, body).await?;
    let records = parse(&bytes).map_err(|reason| Refusal::new(StatusCode::BAD_REQUEST, reason))?;
    let mut outcome = ImportsOutcome::default();
    for record in records {
        let started = match record {
            Ok(object) => match database.store().await {
                Ok(store) => queue.queue(store, &object).await,
                Err(reason) => Started::failed(&object, reason),
            },
            Err(reason) => Started {
                object: String::new(),
                job: None,
                outcome: RecordOutcome::Ignored,
                reason: Some(reason),
            },
        };
        outcome.queued += usize::from(started.job.is_some());
        outcome.records.push(started);
    }
    let failed = outcome
        .records
        .iter()
        .filter(|r| r.outcome == RecordOutcome::Error)
        .count();
    let status = match failed {
        0 => StatusCode::OK,
        n if n == outcome.records.len() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::MULTI_STATUS,
    };
    let body = serde_json::to_vec(&outcome).expect("outcomes serialise");
    Ok(crate::http::respond::json(ROUTE, status, body, RETRY_AFTER))
}
