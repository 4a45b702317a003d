//! TLS for the gRPC listener (rustls with ring). `GRPC_TLS_CERT_FILE` and `GRPC_TLS_KEY_FILE`
//! (PEM, both or neither) turn it on; `GRPC_TLS_CLIENT_CA_FILE` (PEM) also requires client
//! certificates signed by that CA (mTLS).
//!
//! The files are read and checked once, at start, with the same rustls that serves them, so a
//! missing file, PEM that does not parse or a key that does not match its certificate stops the
//! program with the variable's name instead of failing on the first handshake. A variable set
//! to an empty value is refused too: a broken template must not fall back to plaintext. A key
//! file readable by group or others is served, with a warning at start.

use std::{fmt, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
};
use simplebank_core::config::{self, ConfigError};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

const CERT_VAR: &str = "GRPC_TLS_CERT_FILE";
const KEY_VAR: &str = "GRPC_TLS_KEY_FILE";
const CLIENT_CA_VAR: &str = "GRPC_TLS_CLIENT_CA_FILE";

/// A client must finish its handshake within this, so half-open connections cannot pile up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificate chain, key and optional client CA, as checked PEM.
#[derive(Clone)]
pub struct TlsConfig {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    /// The key file's mode lets group or others read it.
    key_exposed: bool,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("key", &"[redacted]")
            .field("client_certificates", &self.requires_client_certificates())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// `None` when neither `GRPC_TLS_CERT_FILE` nor `GRPC_TLS_KEY_FILE` is set (plaintext).
    pub fn from_env() -> Result<Option<Self>, ConfigError> {
        let cert = path_var(CERT_VAR)?;
        let key = path_var(KEY_VAR)?;
        let client_ca = path_var(CLIENT_CA_VAR)?;
        match (cert, key) {
            (Some(cert), Some(key)) => Self::from_files(
                Path::new(&cert),
                Path::new(&key),
                client_ca.as_deref().map(Path::new),
            )
            .map(Some),
            (Some(_), None) => Err(ConfigError::new(
                KEY_VAR,
                format!("must be set when {CERT_VAR} is"),
            )),
            (None, Some(_)) => Err(ConfigError::new(
                CERT_VAR,
                format!("must be set when {KEY_VAR} is"),
            )),
            (None, None) if client_ca.is_some() => Err(ConfigError::new(
                CLIENT_CA_VAR,
                format!(
                    "needs {CERT_VAR} and {KEY_VAR}: client certificates are checked only over TLS"
                ),
            )),
            (None, None) => Ok(None),
        }
    }

    /// Reads and checks the PEM files; each error names the variable of the file at fault.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert_pem = read(CERT_VAR, cert)?;
        let key_pem = read(KEY_VAR, key)?;
        let key_exposed = readable_by_others(key);
        let chain = certificates(CERT_VAR, &cert_pem)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| ConfigError::new(KEY_VAR, format!("no usable PEM private key: {e}")))?;
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| ConfigError::new(KEY_VAR, format!("unsupported private key: {e}")))?;
        match CertifiedKey::new(chain, signing_key).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(ConfigError::new(
                    KEY_VAR,
                    format!("the key does not match the certificate in {CERT_VAR}"),
                ));
            }
            Err(e) => {
                return Err(ConfigError::new(
                    CERT_VAR,
                    format!("unusable certificate: {e}"),
                ));
            }
        }
        let client_ca_pem = client_ca
            .map(|path| {
                let pem = read(CLIENT_CA_VAR, path)?;
                client_verifier(&pem, &provider)?;
                Ok::<_, ConfigError>(pem)
            })
            .transpose()?;
        Ok(Self {
            cert_pem,
            key_pem,
            client_ca_pem,
            key_exposed,
        })
    }

    /// True when clients must present a certificate signed by `GRPC_TLS_CLIENT_CA_FILE`.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    /// The settings for tonic's TLS acceptor.
    pub fn server_tls_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// A TLS path variable: unset is `None`, set but empty (or blank) is an error.
fn path_var(var: &'static str) -> Result<Option<String>, ConfigError> {
    if std::env::var_os(var).is_some_and(|value| value.to_string_lossy().trim().is_empty()) {
        return Err(ConfigError::new(
            var,
            "is set but empty: name a PEM file, or unset it for plaintext",
        ));
    }
    config::var(var)
}

#[cfg(unix)]
fn readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o044 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> bool {
    false
}

fn read(var: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    config::read_pem(var, path)
}

fn certificates(
    var: &'static str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::new(var, format!("PEM does not parse: {e}")))?;
    if chain.is_empty() {
        return Err(ConfigError::new(var, "no PEM CERTIFICATE found"));
    }
    Ok(chain)
}

/// Builds the verifier tonic will build, so a CA file it would silently skip is refused here.
fn client_verifier(pem: &[u8], provider: &Arc<CryptoProvider>) -> Result<(), ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(CLIENT_CA_VAR, pem)? {
        roots.add(cert).map_err(|e| {
            ConfigError::new(CLIENT_CA_VAR, format!("unusable CA certificate: {e}"))
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| ConfigError::new(CLIENT_CA_VAR, format!("unusable CA: {e}")))?;
    Ok(())
}

/// A server builder that serves TLS when `tls` is set, and plaintext otherwise.
pub fn server_builder(
    tls: Option<&TlsConfig>,
) -> Result<tonic::transport::Server, tonic::transport::Error> {
    let builder = tonic::transport::Server::builder();
    match tls {
        Some(tls) => builder.tls_config(tls.server_tls_config()),
        None => Ok(builder),
    }
}

/// Says at start whether TLS is on; plaintext on an address other machines reach is a warning,
/// since passwords then cross the network in clear.
pub fn log_mode(tls: Option<&TlsConfig>, address: Option<SocketAddr>) {
    if tls.is_some_and(|tls| tls.key_exposed) {
        tracing::warn!(
            "the private key in GRPC_TLS_KEY_FILE is readable by group or others; \
             restrict it (chmod 600)"
        );
    }
    match startup_notice(tls, address) {
        Notice::Info(text) => tracing::info!("{text}"),
        Notice::Warning(text) => tracing::warn!("{text}"),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Notice {
    Info(&'static str),
    Warning(&'static str),
}

fn startup_notice(tls: Option<&TlsConfig>, address: Option<SocketAddr>) -> Notice {
    match tls {
        Some(tls) if tls.requires_client_certificates() => Notice::Info(
            "TLS on: clients must present a certificate signed by GRPC_TLS_CLIENT_CA_FILE",
        ),
        Some(_) => Notice::Info("TLS on"),
        None if address.is_some_and(|a| a.ip().is_loopback()) => {
            Notice::Info("TLS off: plaintext gRPC on a loopback address")
        }
        None => Notice::Warning(
            "TLS off: plaintext gRPC on a non-loopback address, so passwords cross the network \
             in clear; set GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{Notice, startup_notice};

    #[test]
    fn plaintext_is_a_warning_unless_only_this_machine_can_connect() {
        for address in ["0.0.0.0:9090", "[::]:9090", "192.0.2.7:9090"] {
            let notice = startup_notice(None, address.parse().ok());
            assert!(
                matches!(notice, Notice::Warning(_)),
                "{address}: {notice:?}"
            );
        }
        for address in ["127.0.0.1:9090", "127.1.2.3:9090", "[::1]:9090"] {
            let notice = startup_notice(None, address.parse().ok());
            assert!(matches!(notice, Notice::Info(_)), "{address}: {notice:?}");
        }
    }
}
