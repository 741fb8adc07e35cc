//! Ingest's Prometheus metrics, defined once and registered in the default
//! registry.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

/// HTTP requests by route and status.
pub(crate) static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_ingest_requests_total",
        "HTTP requests by route and status.",
        &["route", "status"]
    )
    .expect("metric registers once")
});
/// Events by outcome: `accepted` or `rejected`.
pub(crate) static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_ingest_events_total",
        "Events by outcome: accepted or rejected.",
        &["outcome"]
    )
    .expect("metric registers once")
});
/// Time to answer a request, by route (the path template).
pub(crate) static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "tally_ingest_request_duration_seconds",
        "Time to answer a request, by route (the path template, as in tally_ingest_requests_total).",
        &["route"]
    )
    .expect("metric registers once")
});
/// Requests holding a slot of `max_concurrent_requests`.
pub(crate) static IN_PROGRESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_ingest_requests_in_progress",
        "Requests holding one of ingest.max_concurrent_requests slots."
    )
    .expect("metric registers once")
});
/// Events the broker did not take.
pub(crate) static PRODUCE_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_ingest_produce_errors_total",
        "Events the broker did not take (request answered 503)."
    )
    .expect("metric registers once")
});

/// Registers every ingest metric, with zero series for the answers an
/// operator watches, so dashboards and alerts see them before the first request.
pub fn init() {
    for status in ["200", "207", "400", "401", "408", "413", "422", "503"] {
        REQUESTS.with_label_values(&["/v1/orders", status]);
    }
    for status in ["200", "207", "400", "401", "408", "413", "503"] {
        REQUESTS.with_label_values(&["/v1/imports", status]);
    }
    for route in [
        "/v1/merchants/{merchant_id}/totals",
        "/v1/merchants/{merchant_id}/days",
        "/v1/merchants",
    ] {
        for status in ["200", "304", "400", "401", "403", "503"] {
            REQUESTS.with_label_values(&[route, status]);
        }
    }
    for outcome in ["accepted", "rejected"] {
        EVENTS.with_label_values(&[outcome]);
    }
    let _ = collectors();
}

/// Every ingest metric (dereferencing registers it).
pub fn collectors() -> Vec<&'static dyn prometheus::core::Collector> {
    vec![
        &*REQUESTS,
        &*EVENTS,
        &*DURATION,
        &*IN_PROGRESS,
        &*PRODUCE_ERRORS,
    ]
}

/// `GET /metrics`: every metric of the process (the default registry), in
/// Prometheus' text format. Every service's `/metrics` route uses it.
pub async fn export() -> (
    axum::http::StatusCode,
    [(&'static str, &'static str); 1],
    Vec<u8>,
) {
    use prometheus::{Encoder, TextEncoder};
    let mut body = Vec::new();
    let content_type = [("content-type", "text/plain; version=0.0.4")];
    match TextEncoder::new().encode(&prometheus::gather(), &mut body) {
        Ok(()) => (axum::http::StatusCode::OK, content_type, body),
        Err(error) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            content_type,
            error.to_string().into_bytes(),
        ),
    }
}
