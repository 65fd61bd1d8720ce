//! TLS client trust for every outbound HTTPS connection the daemon makes
//! (lane providers, policy fetches): the webpki roots plus the operator's
//! `--extra-ca` certificates, in one rustls client configuration.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// ALPN for the lane router's providers: HTTP/2, else HTTP/1.1.
pub const ALPN_H2_HTTP11: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN for clients that speak HTTP/1.1 only (the policy fetcher).
pub const ALPN_HTTP11: &[&[u8]] = &[b"http/1.1"];

/// Why the TLS trust could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("--extra-ca {path}: {detail}")]
    ExtraCa {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Reads every PEM certificate in `path` (`--extra-ca`).
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let err = |detail: String| TrustError::ExtraCa {
        path: path.display().to_string(),
        detail,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificates found".into()));
    }
    Ok(certs)
}

/// The rustls client configuration: webpki roots + `extra_ca`, offering
/// `alpn` (e.g. [`ALPN_H2_HTTP11`]).
pub fn client_config(
    extra_ca: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TrustError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for (i, c) in extra_ca.iter().enumerate() {
        roots
            .add(c.clone())
            .map_err(|e| TrustError::Tls(format!("extra CA certificate #{}: {e}", i + 1)))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TrustError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn extra_ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = read_ca_file(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pem"), "{err}");
        assert!(err.contains("no PEM certificates"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(
            read_ca_file(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing.pem")
        );
    }

    #[test]
    fn tls_config_offers_h2_and_http11() {
        let cfg = client_config(&[], ALPN_H2_HTTP11).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
