//! The ingest API's HTTP server: plain HTTP, or HTTPS with rustls when a
//! certificate and key are configured; with a bound on open connections, a
//! deadline for each request's headers (and TLS handshake), and a graceful
//! stop that lets requests in progress finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;

/// The server's limits, from `[ingest]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline for a connection's TLS handshake and for each request's headers.
    pub header_timeout: Duration,
    /// Open connections; the listener stops accepting at this many.
    pub max_connections: usize,
    /// How long a stop waits for requests in flight: the longest one takes
    /// its body timeout plus its acknowledgement timeout.
    pub drain: Duration,
}

impl Limits {
    /// The limits `config` sets.
    pub fn of(config: &IngestConfig) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(config.header_timeout_ms),
            max_connections: config.max_connections,
            drain: Duration::from_millis(config.body_timeout_ms + config.ack_timeout_ms)
                + Duration::from_secs(5),
        }
    }
}

/// A TLS setting that cannot be used; names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("ingest.{field} = {path:?}: {reason}")]
pub struct TlsError {
    /// `tls_cert` or `tls_key`.
    pub field: &'static str,
    /// The configured path.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The TLS acceptor for `config`, or `None` when it serves plain HTTP.
///
/// Fails when the certificate or key cannot be read or do not match.
pub fn tls_acceptor(config: &IngestConfig) -> Result<Option<TlsAcceptor>, TlsError> {
    if config.tls_cert.is_empty() {
        return Ok(None);
    }
    let cert_error = |reason: String| TlsError {
        field: "tls_cert",
        path: config.tls_cert.clone(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&config.tls_cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_error(format!("cannot read a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(cert_error("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&config.tls_key).map_err(|e| TlsError {
        field: "tls_key",
        path: config.tls_key.clone(),
        reason: format!("cannot read a PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| cert_error(format!("does not go with ingest.tls_key: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Serves `app` on `listener` until `shutdown`, then stops accepting, lets
/// each open connection finish the request it is serving (idle ones close at
/// once), and closes any still open after `limits.drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (app, tls, limits, shutdown) =
            (app.clone(), tls.clone(), limits.clone(), shutdown.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, app, &limits, &shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(stream)) => connection(stream, app, &limits, &shutdown).await,
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed."),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out."),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(
        limits.drain,
        connections.acquire_many(limits.max_connections as u32),
    )
    .await
    .is_err()
    {
        tracing::warn!(
            open = tasks.len(),
            "Connections still open {} s after the stop; closing them.",
            limits.drain.as_secs()
        );
        // A request cut off here was not answered: its sender sends it again,
        // and what it had published is deduplicated downstream.
        tasks.shutdown().await;
    }
}

async fn connection<S>(stream: S, app: Router, limits: &Limits, shutdown: &CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "Connection ended with an error.");
    }
}
