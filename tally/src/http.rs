//! `/metrics`, `/healthz` and `/readyz` for every long-running command.

use std::net::SocketAddr;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Serves the default Prometheus registry on `addr` until `shutdown`.
/// `ready` decides `/readyz`: 200 with its detail lines, or 503 with each
/// reason on its own line.
/// Returns the bound address (useful with port 0).
///
/// Fails when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    ready: fn() -> Result<String, String>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(ingest::metrics::export))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                match ready() {
                    Ok(detail) if detail.is_empty() => (StatusCode::OK, "ready\n".to_owned()),
                    Ok(detail) => (StatusCode::OK, format!("ready\n{detail}\n")),
                    Err(reasons) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready:\n{reasons}\n"),
                    ),
                }
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "Metrics server failed.");
        }
    });
    tracing::info!(%bound, "Serving /metrics, /healthz and /readyz.");
    Ok(bound)
}
