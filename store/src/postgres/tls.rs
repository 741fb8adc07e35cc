//! TLS to PostgreSQL, as libpq's `sslmode` and `sslrootcert` ask for it.
//!
//! tokio-postgres knows `disable`, `prefer` and `require` and verifies
//! nothing itself; the verification is the connector's. So the URL's
//! `sslmode` and `sslrootcert` are read here, taken out of the URL, and turned
//! into a rustls configuration:
//!
//! | `sslmode` | encrypts | checks the chain | checks the host name |
//! | --- | --- | --- | --- |
//! | `disable` | no | – | – |
//! | `prefer` (the default) | when the server offers TLS | no | no |
//! | `require` | yes | only when `sslrootcert` is given (as libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The chain is checked against `sslrootcert` (a PEM file), or without it
//! against the system's CA bundle (`/etc/ssl/certs/ca-certificates.crt`,
//! Debian's; `SSL_CERT_FILE` overrides). `verify-full` is the setting for
//! production.

use std::sync::Arc;

use tokio_postgres::config::SslMode;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::error::{Result, StoreError};

/// The system's CA bundle when `sslrootcert` is not given (Debian's path).
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// What the URL asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub mode: Mode,
    /// `sslrootcert`: a PEM file of trusted CAs.
    pub root_cert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` off a `postgres://` URL, returning the
/// URL tokio-postgres can parse and what they ask for.
///
/// Fails on an `sslmode` libpq does not know. The error never shows the URL:
/// it may hold a password.
pub(crate) fn split(url: &str) -> Result<(String, TlsSettings)> {
    let invalid = |reason: String| StoreError::InvalidUrl { reason };
    let mut settings = TlsSettings {
        mode: Mode::Prefer,
        root_cert: None,
    };
    // The query starts after the user information, where a password may
    // hold a `?` of its own; that ends at the first `@`, as tokio-postgres
    // reads it.
    let authority = url.find('@').map_or(0, |at| at + 1);
    let Some(mark) = url[authority..].find('?').map(|i| authority + i) else {
        return Ok((url.to_owned(), settings));
    };
    let (base, query) = (&url[..mark], &url[mark + 1..]);
    // The other parameters stay as written: tokio-postgres decodes them itself.
    // These two are percent-decoded as it does (a `+` stays a `+`).
    let mut kept = Vec::new();
    for segment in query.split('&') {
        let (key, value) = segment.split_once('=').unwrap_or((segment, ""));
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        match key {
            "sslmode" => {
                settings.mode = match &*value {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(invalid(format!(
                            "sslmode={other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        )))
                    }
                }
            }
            "sslrootcert" => settings.root_cert = Some(value.into_owned()),
            _ => kept.push(segment),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, settings))
}

impl TlsSettings {
    /// Sets tokio-postgres's own mode (whether to ask for TLS, and whether
    /// to go on without it) on `config`.
    pub(crate) fn apply(&self, config: &mut Config) {
        config.ssl_mode(match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        });
    }

    /// The rustls connector for this mode.
    ///
    /// Fails when the CA file cannot be read or holds no certificate.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Tls {
                reason: e.to_string(),
            })?;
        let check_chain = match self.mode {
            Mode::VerifyCa | Mode::VerifyFull => true,
            Mode::Require => self.root_cert.is_some(),
            Mode::Disable | Mode::Prefer => false,
        };
        let config = if !check_chain {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth()
        } else {
            let roots = Arc::new(self.roots()?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| StoreError::Tls {
                    reason: format!("cannot use the CA certificates: {e}"),
                })?;
            if self.mode == Mode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        };
        Ok(MakeRustlsConnect::new(config))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let system = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| SYSTEM_ROOTS.to_owned());
        let path = self.root_cert.as_deref().unwrap_or(&system);
        let unreadable = |e: &dyn std::fmt::Display| StoreError::Tls {
            reason: format!("sslrootcert {path:?}: {e}"),
        };
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| unreadable(&e))?;
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(unreadable(&"holds no usable PEM certificate"));
        }
        Ok(roots)
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: encrypted, but any
/// certificate is taken (libpq does the same). The handshake's signatures
/// are still checked.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url() {
        let (url, tls) =
            split("postgres://u:p@db:5432/x?sslmode=verify-full&application_name=tally&sslrootcert=%2Fetc%2Fca.pem").unwrap();
        assert_eq!(url, "postgres://u:p@db:5432/x?application_name=tally");
        let (url, _) =
            split("postgres://db/x?options=-c%20statement_timeout%3D90s&sslmode=require").unwrap();
        assert_eq!(url, "postgres://db/x?options=-c%20statement_timeout%3D90s");
        assert_eq!(
            tls,
            TlsSettings {
                mode: Mode::VerifyFull,
                root_cert: Some("/etc/ca.pem".into())
            }
        );
        // A `?` in the password is not the query; a `+` in a path is not a space.
        let (url, tls) = split("postgres://u:p?ss@db/x?sslrootcert=/etc/ca+1.pem").unwrap();
        assert_eq!(
            (url.as_str(), tls.root_cert.as_deref()),
            ("postgres://u:p?ss@db/x", Some("/etc/ca+1.pem"))
        );
        let (url, tls) = split("postgres://db/x").unwrap();
        assert_eq!((url.as_str(), tls.mode), ("postgres://db/x", Mode::Prefer));
        let (url, tls) = split("postgresql://db/x?sslmode=disable").unwrap();
        assert_eq!(
            (url.as_str(), tls.mode),
            ("postgresql://db/x", Mode::Disable)
        );
    }

    #[test]
    fn an_unknown_sslmode_is_named_and_the_password_is_not() {
        let error = split("postgres://u:hunter2@db/x?sslmode=verify")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sslmode=\"verify\"") && !error.contains("hunter2"),
            "{error}"
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = TlsSettings {
            mode: Mode::VerifyFull,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let error = tls.connector().err().unwrap().to_string();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
