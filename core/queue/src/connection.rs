//! Connecting to Redis as the queue expects: an address (and TLS settings) into a client, a
//! shared connection that reconnects by itself with bounded waits, and telling a misconfigured
//! Redis (stop) from one that is down (carry on).
//!
//! TLS (`rediss://`) is rustls with the ring provider. The server's certificate is always
//! verified, against the CA given ([`Tls::with_ca_pem`]) or the system's roots; nothing turns
//! that off (a `rediss://...#insecure` URL is refused). A certificate that does not verify is a
//! misconfiguration ([`is_misconfiguration`]): waiting cannot fix it.
//!
//! [`Endpoint`] and [`Connection`] cover one server and a Redis Cluster alike (`endpoint`),
//! with the same TLS settings.

mod endpoint;
pub(crate) mod reader;
pub(crate) mod writer;

pub use endpoint::{Connection, Endpoint};

use std::{fmt, time::Duration};

use redis::{
    ConnectionAddr, ErrorKind, ServerErrorKind, TlsCertificates,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The response timeout for ordinary (non-blocking) commands.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client for `address`: `host:port` (plain TCP) or a `redis://` / `rediss://` URL (TLS,
/// verified against the system's roots). A URL that asks to skip verification is refused.
pub fn client(address: &str) -> redis::RedisResult<redis::Client> {
    client_with_tls(address, &Tls::default())
}

/// A client for `address` with the TLS settings `tls`: the CA to trust and a client
/// certificate. Settings other than the default need a `rediss://` URL: they are refused on a
/// plaintext address rather than ignored.
pub fn client_with_tls(address: &str, tls: &Tls) -> redis::RedisResult<redis::Client> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("redis://{address}")
    };
    let client = redis::Client::open(url.as_str())?;
    match client.get_connection_info().addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => Err(refused(
            "certificate verification cannot be turned off (remove #insecure)",
        )),
        ConnectionAddr::TcpTls { .. } if tls.is_default() => Ok(client),
        ConnectionAddr::TcpTls { .. } => {
            install_ring();
            redis::Client::build_with_tls(url.as_str(), tls.certificates())
        }
        _ if tls.is_default() => Ok(client),
        _ => Err(refused(
            "TLS settings are given, but the address is not a rediss:// URL",
        )),
    }
}

fn refused(reason: &'static str) -> redis::RedisError {
    redis::RedisError::from((ErrorKind::InvalidClientConfig, reason))
}

/// Makes ring the process's rustls provider, unless the program chose one already. The redis
/// crate builds its TLS settings with the process default; with ring alone in the build it is
/// found by itself, this covers a program that also links another provider.
fn install_ring() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// TLS settings for `rediss://` addresses, as checked PEM: the CA certificates to trust (the
/// system's roots when none are given) and an optional client certificate with its key (for a
/// Redis started with `tls-auth-clients yes`). `Debug` shows neither.
#[derive(Clone, Default)]
pub struct Tls {
    ca_pem: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// Which part of the TLS settings cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The CA file holds no certificate rustls can use.
    #[error("no usable PEM CA certificate: {0}")]
    Ca(String),
    /// The client certificate file holds no usable certificate.
    #[error("no usable PEM certificate: {0}")]
    ClientCert(String),
    /// The client key file holds no usable private key.
    #[error("no usable PEM private key: {0}")]
    ClientKey(String),
    /// The client key is not the one of the client certificate.
    #[error("the key does not match the client certificate")]
    KeyMismatch,
}

impl Tls {
    /// Trust the CA certificates in `pem` (one or more) instead of the system's roots.
    pub fn with_ca_pem(mut self, pem: Vec<u8>) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| TlsError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| TlsError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Ca("the file holds no certificate".into()));
        }
        self.ca_pem = Some(pem);
        Ok(self)
    }

    /// Present the certificate chain `cert_pem` with its private key `key_pem` (both PEM).
    pub fn with_client_identity(
        mut self,
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
    ) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::ClientCert(e.to_string()))?;
        if chain.is_empty() {
            return Err(TlsError::ClientCert("the file holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::ClientKey(e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::ClientKey(e.to_string()))?;
        match rustls::sign::CertifiedKey::new(chain, key).keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => return Err(TlsError::KeyMismatch),
            Err(e) => return Err(TlsError::ClientCert(e.to_string())),
        }
        self.client = Some((cert_pem, key_pem));
        Ok(self)
    }

    /// True without a CA of its own and without a client certificate.
    pub fn is_default(&self) -> bool {
        self.ca_pem.is_none() && self.client.is_none()
    }

    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// A shared, multiplexed connection that reconnects by itself. It is created without
/// connecting, so a program can start (and sign-ups can succeed) while Redis is down.
/// Connecting gives up after a second, and a command after `response_timeout` (keep it above
/// the BLOCK time of blocking reads), so callers see an error instead of waiting on a dead Redis.
pub fn lazy_manager(
    client: redis::Client,
    response_timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Whether `err` is a setting that waiting cannot fix: a refused password or user (WRONGPASS,
/// NOAUTH), a command or key the ACL user may not use (NOPERM), a database index the server
/// does not have, a TLS handshake that failed on a certificate ([`tls_refusal`]). A Redis that
/// is down, hung or loading is not one of these.
pub fn is_misconfiguration(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || matches!(err.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || err.to_string().contains("DB index is out of range")
        || tls_refusal(err).is_some()
}

/// A TLS handshake that failed on a certificate, which waiting cannot fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRefusal {
    /// The server's certificate does not verify (unknown CA, wrong host name, expired); with
    /// rustls' reason.
    ServerCertificate(String),
    /// The server refused the client's certificate (none given, or not one its CA signed).
    ClientCertificate(String),
}

/// Whether `err` is a TLS handshake that failed on a certificate: the server's does not
/// verify, or the server refused ours. `None` for any other error.
pub fn tls_refusal(err: &redis::RedisError) -> Option<TlsRefusal> {
    certificate_refusal(err)
}

/// [`tls_refusal`] for any error: walks its chain of sources, looking inside the layers that
/// hide an error from that chain (an `io::Error` wrapping rustls' own, or an `Arc` of one, as
/// the redis crate keeps them). Also used on PostgreSQL's (sqlx) errors.
pub fn certificate_refusal(err: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let mut source = Some(err);
    while let Some(current) = source {
        let unwrapped: Option<&(dyn std::error::Error + 'static)> = current
            .downcast_ref::<Shared>()
            .map(|shared| &**shared as &(dyn std::error::Error + 'static));
        for layer in [Some(current), unwrapped].into_iter().flatten() {
            let tls = layer.downcast_ref::<rustls::Error>().or_else(|| {
                layer
                    .downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            });
            if let Some(refusal) = tls.and_then(certificate_failure) {
                return Some(refusal);
            }
        }
        source = current.source();
    }
    None
}

fn certificate_failure(err: &rustls::Error) -> Option<TlsRefusal> {
    use rustls::AlertDescription as Alert;
    match err {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Some(TlsRefusal::ServerCertificate(err.to_string()))
        }
        rustls::Error::AlertReceived(
            Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::CertificateRequired
            | Alert::AccessDenied,
        ) => Some(TlsRefusal::ClientCertificate(err.to_string())),
        _ => None,
    }
}
