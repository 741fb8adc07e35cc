//! The routes of `tally ingest`, gathered into one router.

use std::sync::Arc;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use crate::http::Ingest;
use crate::metrics::DURATION;

/// The API routes: `POST /v1/orders`, `POST /v1/imports`, the totals API
/// (`GET /v1/merchants/{merchant_id}/totals`, `…/days`, `GET /v1/merchants`),
/// `GET /healthz`, `GET /readyz` and `GET /openapi.json`. The caller adds
/// `/metrics`.
pub fn router(state: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/orders", post(crate::orders::orders))
        .route("/v1/imports", post(crate::imports::imports))
        .route(
            "/v1/merchants/{merchant_id}/totals",
            get(crate::totals::merchant_totals),
        )
        .route(
            "/v1/merchants/{merchant_id}/days",
            get(crate::totals::merchant_days),
        )
        .route("/v1/merchants", get(crate::totals::top_merchants))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(state): State<Arc<Ingest>>| async move {
                if state.ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n")
                }
            }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route_layer(axum::middleware::from_fn(timed))
        .with_state(state)
}

/// Times each request, labelled by its route's path template.
async fn timed(path: MatchedPath, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let response = next.run(request).await;
    DURATION
        .with_label_values(&[path.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The OpenAPI document, also checked in at `ingest/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");
