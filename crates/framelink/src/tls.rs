//! TLS (and mutual TLS) for every connection kind, with rustls.
//!
//! This module owns everything TLS: the settings ([`TlsServerOptions`] → [`TlsServerConfig`],
//! [`TlsClientOptions`] → [`TlsClientConfig`]), loading certificates and keys from PEM files
//! with errors that name the file and the reason ([`TlsConfigError`]), the handshake on either
//! side with its timeout, what a handshake failure means ([`TlsError`], [`TlsFailure`]), and
//! the identity a peer proved ([`TlsPeer`], [`PeerCertificate`]).
//!
//! The protocol core (`framelink-proto`) knows nothing of TLS: the connection driver runs the
//! same machine over a [`TlsStream`] as over a `TcpStream`, so heartbeats, dead-peer detection,
//! sessions and raw mode work unchanged, and their timers see application traffic only.
//!
//! - A [`Server`](crate::Server) with [`ServerConfig::tls`](crate::ServerConfig::tls) runs each
//!   accepted connection's handshake in that connection's own task (never in the accept loop),
//!   bounded by [`TlsServerConfig::handshake_timeout`]; a connection reaches
//!   [`Server::accept`](crate::Server::accept) only once its handshake succeeded, with the
//!   client's verified identity in [`Incoming::tls`](crate::Incoming::tls). A failed
//!   or stalled handshake is logged (with its reason) and counted in
//!   [`ServerStats::tls_failures`](crate::ServerStats::tls_failures).
//! - A [`Client`](crate::Client) with [`ClientConfig::tls`](crate::ClientConfig::tls) shakes
//!   hands after each TCP connect; a failure is reported in
//!   [`ClientEvent::ConnectFailed`](crate::ClientEvent::ConnectFailed) with its reason. One
//!   rustls `ClientConfig` serves every reconnect, so TLS session tickets are reused.
//! - [`connect`] and [`accept`] wrap any stream for use with
//!   [`connection::spawn`](crate::connection::spawn) or
//!   [`spawn_raw`](crate::connection::spawn_raw) directly.
//!
//! Only the `ring` crypto provider is used (no C toolchain beyond what `ring` needs, no
//! OpenSSL).
//!
//! ```no_run
//! use framelink::tls::{ClientAuth, TlsServerOptions};
//! use framelink::{Server, ServerConfig};
//!
//! # async fn run() -> Result<(), framelink::Error> {
//! let tls = TlsServerOptions {
//!     client_auth: ClientAuth::Required("ca.pem".into()),
//!     ..TlsServerOptions::new("server.pem", "server.key")
//! }
//! .build()?;
//! let config = ServerConfig { tls: Some(tls), ..ServerConfig::default() };
//! let mut server = Server::bind("127.0.0.1:7443", config).await?;
//! while let Some(incoming) = server.accept().await {
//!     let who = incoming.tls.as_ref().and_then(|t| t.certificate.as_ref());
//!     println!("{} is {:?}", incoming.peer, who.map(|c| &c.subject));
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Sleep;

/// Default bound on a TLS handshake, the same as the protocol's handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The crypto provider used for every configuration built here: ring's, with the AES-128-GCM
/// suites first (TLS 1.3's mandatory suite, 10 AES rounds instead of 14); AES-256-GCM and
/// ChaCha20-Poly1305 stay offered after them.
fn provider() -> Arc<CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    // Stable: the order among the others, and across TLS versions, is kept.
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    Arc::new(provider)
}

/// A certificate, key or trust-root problem found while building a TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The file could not be read (no such file, no permission...).
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The file holds no PEM `CERTIFICATE` block.
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no PEM private key (`PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY`).
    #[error("{}: no private key in it (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid PEM.
    #[error("{}: invalid PEM: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key is not the key of the (first) certificate.
    #[error("{}: this private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate or key (unsupported key type, for example).
    #[error("{} / {}: unusable certificate or key: {source}", cert.display(), key.display())]
    Unusable {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// A certificate in a CA file cannot be used as a trust anchor.
    #[error("{}: unusable CA certificate: {reason}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The platform's certificate store gave no usable root certificate.
    #[error("no usable root certificate in the platform's store ({errors} errors while loading it{})", if first_error.is_empty() { String::new() } else { format!(": {first_error}") })]
    NoNativeRoots {
        /// Errors met while loading the store.
        errors: usize,
        /// The first of them, if any.
        first_error: String,
    },
    /// The server name to verify is not a valid DNS name or IP address.
    #[error("invalid TLS server name {name:?}")]
    InvalidServerName {
        /// The name.
        name: String,
    },
    /// rustls refused the protocol settings.
    #[error("TLS settings refused: {0}")]
    Rustls(rustls::Error),
}

/// Whether (and how) a TLS server asks clients for a certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates (default).
    #[default]
    Off,
    /// Mutual TLS: every client must present a certificate issued by a CA in this PEM file.
    Required(PathBuf),
    /// Clients may present a certificate, which must then be issued by a CA in this PEM file;
    /// clients without one are accepted too ([`TlsPeer::certificate`] is then `None`).
    Optional(PathBuf),
}

/// What a TLS server is built from; [`build`](Self::build) loads the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerOptions {
    /// PEM file with the server's certificate chain (its own certificate first).
    pub cert_chain: PathBuf,
    /// PEM file with the server's private key.
    pub key: PathBuf,
    /// Client certificates. Default [`ClientAuth::Off`].
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, most preferred first. Default: none.
    pub alpn: Vec<Vec<u8>>,
    /// Bound on each handshake. Default [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s).
    pub handshake_timeout: Duration,
}

impl TlsServerOptions {
    /// A server certificate chain and key, no client certificates.
    pub fn new(cert_chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        TlsServerOptions {
            cert_chain: cert_chain.into(),
            key: key.into(),
            client_auth: ClientAuth::Off,
            alpn: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// Loads the files and builds the configuration.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or holds no certificate / key, a key that does not match the
    /// certificate, an unusable CA file: each names the file and the reason.
    pub fn build(&self) -> Result<TlsServerConfig, TlsConfigError> {
        let provider = provider();
        let chain = load_certs(&self.cert_chain)?;
        let key = load_key(&self.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?;
        let builder = match &self.client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            ClientAuth::Required(ca) | ClientAuth::Optional(ca) => {
                let roots = Arc::new(load_roots(ca)?);
                let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
                if matches!(self.client_auth, ClientAuth::Optional(_)) {
                    verifier = verifier.allow_unauthenticated();
                }
                let verifier = verifier.build().map_err(|e| TlsConfigError::BadCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsConfigError::KeyMismatch {
                    cert: self.cert_chain.clone(),
                    key: self.key.clone(),
                }
            }
            other => TlsConfigError::Unusable {
                cert: self.cert_chain.clone(),
                key: self.key.clone(),
                source: other,
            },
        })?;
        config.alpn_protocols = self.alpn.clone();
        Ok(TlsServerConfig {
            rustls: Arc::new(config),
            handshake_timeout: self.handshake_timeout,
            on_failure: None,
        })
    }
}

/// A ready TLS server configuration, for [`ServerConfig::tls`](crate::ServerConfig::tls) or
/// [`accept`]. Cheap to clone.
#[derive(Clone)]
pub struct TlsServerConfig {
    rustls: Arc<rustls::ServerConfig>,
    /// Bound on each handshake; a peer that has not completed it by then is disconnected.
    pub handshake_timeout: Duration,
    on_failure: Option<FailureHook>,
}

/// Called with the client's address and the reason when a server's TLS handshake fails.
pub type FailureHook = Arc<dyn Fn(std::net::SocketAddr, &TlsError) + Send + Sync>;

impl fmt::Debug for TlsServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerConfig")
            .field("alpn", &self.rustls.alpn_protocols)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsServerConfig {
    /// Uses a ready rustls configuration (any certificate resolver, verifier or provider),
    /// with the default handshake timeout.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        TlsServerConfig {
            rustls: config,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            on_failure: None,
        }
    }

    /// Calls `hook` with the client's address and the reason whenever a [`Server`](crate::Server)
    /// handshake fails or times out (besides logging it and counting it in
    /// [`ServerStats::tls_failures`](crate::ServerStats::tls_failures)).
    pub fn on_handshake_failure(
        mut self,
        hook: impl Fn(std::net::SocketAddr, &TlsError) + Send + Sync + 'static,
    ) -> Self {
        self.on_failure = Some(Arc::new(hook));
        self
    }

    /// Reports a failed server handshake to the hook, if any.
    pub(crate) fn report_failure(&self, peer: std::net::SocketAddr, error: &TlsError) {
        if let Some(hook) = &self.on_failure {
            hook(peer, error);
        }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ServerConfig> {
        &self.rustls
    }
}

/// Where a TLS client finds the certificates it trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRoots {
    /// The CA certificates in this PEM file.
    CaFile(PathBuf),
    /// The platform's certificate store.
    Native,
}

/// What a TLS client is built from; [`build`](Self::build) loads the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientOptions {
    /// Trusted roots. Default: the platform's store.
    pub roots: TrustRoots,
    /// A client certificate chain and its key (PEM files), for mutual TLS. Default: none.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must be valid for. Default (`None`): the host part of
    /// the address connected to.
    pub server_name: Option<String>,
    /// ALPN protocols asked for, most preferred first. Default: none.
    pub alpn: Vec<Vec<u8>>,
    /// Bound on each handshake. Default [`DEFAULT_HANDSHAKE_TIMEOUT`] (10 s).
    pub handshake_timeout: Duration,
}

impl Default for TlsClientOptions {
    fn default() -> Self {
        TlsClientOptions {
            roots: TrustRoots::Native,
            client_cert: None,
            server_name: None,
            alpn: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl TlsClientOptions {
    /// Trusting only the CAs in `ca` (a PEM file).
    pub fn with_ca_file(ca: impl Into<PathBuf>) -> Self {
        TlsClientOptions {
            roots: TrustRoots::CaFile(ca.into()),
            ..TlsClientOptions::default()
        }
    }

    /// Loads the files and builds the configuration.
    ///
    /// # Errors
    ///
    /// An unreadable or empty CA file, an unusable client certificate or key, no usable root
    /// in the platform's store, an invalid server name: each names the file and the reason.
    pub fn build(&self) -> Result<TlsClientConfig, TlsConfigError> {
        let roots = match &self.roots {
            TrustRoots::CaFile(path) => load_roots(path)?,
            TrustRoots::Native => native_roots()?,
        };
        if let Some(name) = &self.server_name {
            server_name(name)
                .map_err(|_| TlsConfigError::InvalidServerName { name: name.clone() })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsConfigError::Rustls)?
            .with_root_certificates(roots);
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = load_certs(cert)?;
                let private = load_key(key)?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| match e {
                        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                            TlsConfigError::KeyMismatch {
                                cert: cert.clone(),
                                key: key.clone(),
                            }
                        }
                        other => TlsConfigError::Unusable {
                            cert: cert.clone(),
                            key: key.clone(),
                            source: other,
                        },
                    })?
            }
        };
        config.alpn_protocols = self.alpn.clone();
        Ok(TlsClientConfig {
            rustls: Arc::new(config),
            server_name: self.server_name.clone(),
            handshake_timeout: self.handshake_timeout,
        })
    }
}

/// A ready TLS client configuration, for [`ClientConfig::tls`](crate::ClientConfig::tls) or
/// [`connect`]. Cheap to clone; clones share rustls' session cache, so reconnects resume TLS
/// sessions.
#[derive(Clone)]
pub struct TlsClientConfig {
    rustls: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must be valid for; `None`: the host connected to.
    pub server_name: Option<String>,
    /// Bound on each handshake.
    pub handshake_timeout: Duration,
}

impl fmt::Debug for TlsClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientConfig")
            .field("server_name", &self.server_name)
            .field("alpn", &self.rustls.alpn_protocols)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsClientConfig {
    /// Uses a ready rustls configuration, with the default handshake timeout and no server
    /// name override.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        TlsClientConfig {
            rustls: config,
            server_name: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
        &self.rustls
    }

    /// The name to verify when connecting to `addr` (`host:port`, `[v6]:port` or a bare host).
    pub fn name_for(&self, addr: &str) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        host_of(addr).to_owned()
    }
}

/// The host part of `host:port`, `[v6]:port` or a bare host / IPv6 address.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has several colons.
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

fn server_name(name: &str) -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    ServerName::try_from(name.to_owned())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn bad_pem(path: &Path, error: rustls::pki_types::pem::Error) -> TlsConfigError {
    TlsConfigError::BadPem {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

/// Every certificate in a PEM file; at least one.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsConfigError::NoPrivateKey {
            path: path.to_owned(),
        },
        other => bad_pem(path, other),
    })
}

/// The CA certificates of a PEM file as trust anchors.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsConfigError::BadCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn native_roots() -> Result<RootCertStore, TlsConfigError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(loaded.certs);
    if roots.is_empty() {
        return Err(TlsConfigError::NoNativeRoots {
            errors: loaded.errors.len(),
            first_error: loaded
                .errors
                .first()
                .map(ToString::to_string)
                .unwrap_or_default(),
        });
    }
    Ok(roots)
}

/// Why a TLS handshake (or a TLS connection) failed, in plain words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The peer's certificate is not issued by a CA we trust.
    UnknownCa,
    /// The peer's certificate is not valid for the name asked for.
    NameMismatch,
    /// The peer's certificate has expired.
    Expired,
    /// The peer's certificate is not valid yet.
    NotYetValid,
    /// The certificate is otherwise invalid (bad signature, revoked, wrong usage...).
    BadCertificate,
    /// The server requires a client certificate and none was presented.
    CertificateRequired,
    /// The peer refused our certificate (it does not trust its CA, or finds it invalid).
    CertificateRefused,
    /// No protocol version, cipher suite or ALPN protocol in common.
    Incompatible,
    /// Anything else (the rustls error says what).
    Other,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFailure::UnknownCa => "the peer's certificate is issued by an unknown CA",
            TlsFailure::NameMismatch => {
                "name mismatch: the peer's certificate is not valid for the name asked for"
            }
            TlsFailure::Expired => "the peer's certificate has expired",
            TlsFailure::NotYetValid => "the peer's certificate is not valid yet",
            TlsFailure::BadCertificate => "the peer's certificate is invalid",
            TlsFailure::CertificateRequired => {
                "a client certificate is required and none was presented"
            }
            TlsFailure::CertificateRefused => "the peer refused our certificate",
            TlsFailure::Incompatible => "no TLS version, cipher suite or ALPN protocol in common",
            TlsFailure::Other => "TLS failure",
        })
    }
}

impl TlsFailure {
    /// Classifies a rustls error.
    pub fn of(error: &rustls::Error) -> TlsFailure {
        use CertificateError as C;
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::UnknownIssuer => TlsFailure::UnknownCa,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::NameMismatch,
                C::Expired | C::ExpiredContext { .. } => TlsFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsFailure::NotYetValid,
                _ => TlsFailure::BadCertificate,
            },
            rustls::Error::NoCertificatesPresented => TlsFailure::CertificateRequired,
            rustls::Error::AlertReceived(alert) => match alert {
                AlertDescription::CertificateRequired => TlsFailure::CertificateRequired,
                AlertDescription::UnknownCA
                | AlertDescription::BadCertificate
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied => TlsFailure::CertificateRefused,
                AlertDescription::ProtocolVersion
                | AlertDescription::NoApplicationProtocol
                | AlertDescription::InsufficientSecurity => TlsFailure::Incompatible,
                _ => TlsFailure::Other,
            },
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                TlsFailure::Incompatible
            }
            _ => TlsFailure::Other,
        }
    }
}

/// A TLS handshake or TLS connection failure, naming the peer and the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The handshake did not complete in time.
    #[error("TLS handshake with {peer} did not complete within {timeout:?}")]
    HandshakeTimeout {
        /// Who we were talking to.
        peer: String,
        /// The bound.
        timeout: Duration,
    },
    /// TLS refused the peer, or the peer refused us.
    #[error("TLS with {peer} failed: {reason} ({error})")]
    Rejected {
        /// Who we were talking to.
        peer: String,
        /// The reason in plain words.
        reason: TlsFailure,
        /// rustls' own account (names, dates...).
        error: rustls::Error,
    },
    /// The transport failed or closed during the handshake.
    #[error("TLS handshake with {peer} failed: {}", describe_io(*kind, message))]
    Io {
        /// Who we were talking to.
        peer: String,
        /// The error kind.
        kind: io::ErrorKind,
        /// The error's text.
        message: String,
    },
    /// The name to verify is not a valid DNS name or IP address.
    #[error("invalid TLS server name {name:?}")]
    InvalidServerName {
        /// The name.
        name: String,
    },
}

fn describe_io(kind: io::ErrorKind, message: &str) -> String {
    match kind {
        io::ErrorKind::UnexpectedEof => "the connection closed before it completed".to_owned(),
        _ => message.to_owned(),
    }
}

impl TlsError {
    /// The reason class, for a rejection.
    pub fn failure(&self) -> Option<TlsFailure> {
        match self {
            TlsError::Rejected { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// Reads a tokio-rustls I/O error: a rustls error inside becomes [`TlsError::Rejected`].
    fn from_io(peer: &str, error: &io::Error) -> TlsError {
        if let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return TlsError::Rejected {
                peer: peer.to_owned(),
                reason: TlsFailure::of(tls),
                error: tls.clone(),
            };
        }
        TlsError::Io {
            peer: peer.to_owned(),
            kind: error.kind(),
            message: error.to_string(),
        }
    }

    /// The I/O error kind this maps to.
    fn kind(&self) -> io::ErrorKind {
        match self {
            TlsError::HandshakeTimeout { .. } => io::ErrorKind::TimedOut,
            TlsError::Rejected { .. } => io::ErrorKind::InvalidData,
            TlsError::Io { kind, .. } => *kind,
            TlsError::InvalidServerName { .. } => io::ErrorKind::InvalidInput,
        }
    }
}

impl From<TlsError> for io::Error {
    fn from(error: TlsError) -> io::Error {
        io::Error::new(error.kind(), error)
    }
}

/// A certificate a peer presented and TLS verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The chain as presented, the peer's own certificate first (DER).
    pub chain: Vec<CertificateDer<'static>>,
    /// The subject's distinguished name, e.g. `CN=client-1, O=Example`.
    pub subject: String,
    /// DNS names in the subject alternative names.
    pub dns_names: Vec<String>,
    /// IP addresses in the subject alternative names.
    pub ip_addresses: Vec<IpAddr>,
    /// Other names in the subject alternative names (URIs, e-mail addresses), as text.
    pub other_names: Vec<String>,
}

impl PeerCertificate {
    /// The peer's own certificate (DER).
    pub fn der(&self) -> &[u8] {
        self.chain.first().map(|c| c.as_ref()).unwrap_or(&[])
    }

    fn from_chain(chain: &[CertificateDer<'_>]) -> Option<PeerCertificate> {
        let first = chain.first()?;
        let mut cert = PeerCertificate {
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            subject: String::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            other_names: Vec::new(),
        };
        // Verified by rustls, so it parses; should it not, the DER is still there.
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(first.as_ref()) {
            cert.subject = parsed.subject().to_string();
            if let Ok(Some(san)) = parsed.subject_alternative_name() {
                use x509_parser::extensions::GeneralName;
                for name in &san.value.general_names {
                    match name {
                        GeneralName::DNSName(dns) => cert.dns_names.push((*dns).to_owned()),
                        GeneralName::IPAddress(bytes) => {
                            if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                                cert.ip_addresses.push(IpAddr::from(v4));
                            } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                                cert.ip_addresses.push(IpAddr::from(v6));
                            }
                        }
                        GeneralName::URI(uri) => cert.other_names.push((*uri).to_owned()),
                        GeneralName::RFC822Name(mail) => cert.other_names.push((*mail).to_owned()),
                        _ => {}
                    }
                }
            }
        }
        Some(cert)
    }
}

/// What a completed TLS handshake established about the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// The peer's verified certificate: on a server, the client's (mutual TLS; `None` when
    /// client certificates are off, or optional and none was presented); on a client, the
    /// server's.
    pub certificate: Option<PeerCertificate>,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The TLS version, e.g. `TLSv1_3`.
    pub version: String,
    /// The handshake resumed an earlier TLS session (a session ticket was used).
    pub resumed: bool,
}

impl TlsPeer {
    fn of(state: &rustls::CommonState) -> TlsPeer {
        TlsPeer {
            certificate: state
                .peer_certificates()
                .and_then(PeerCertificate::from_chain),
            alpn: state.alpn_protocol().map(<[u8]>::to_vec),
            version: state
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            resumed: state.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
        }
    }
}

/// Largest piece [`put_in_pieces`] copies at once: below glibc's `rep movsb` threshold (2112
/// bytes on CPUs with fast short `rep movsb`, more on others).
const COPY_PIECE: usize = 2048;

/// Appends `data` to `buf` in pieces of at most [`COPY_PIECE`] bytes.
///
/// glibc (2.36 here) copies blocks from about 2 KiB up with `rep movsb` on CPUs that announce
/// fast `rep movsb`, and on the AMD Zen machines we measure on that instruction runs
/// 15-20x slower (under 2.5 GB/s instead of over 30 GB/s) when the destination sits 1 to 31
/// bytes past the source modulo 4096 (page aliasing; measured by the example below). Which distance a copy
/// gets depends on where rustls' and the driver's buffers happen to be allocated. Pieces this
/// size take glibc's vector loop, which is as fast at every distance; they cost nothing
/// measurable elsewhere (`cargo run --release -p framelink --example tls_crypto_speed`
/// measures both).
fn put_in_pieces(buf: &mut ReadBuf<'_>, data: &[u8]) {
    for piece in data.chunks(COPY_PIECE) {
        buf.put_slice(piece);
    }
}

/// Size of a read-ahead fill (see [`ReadAhead`]).
const READ_AHEAD: usize = 64 * 1024;

/// The transport under rustls, reading ahead in large pieces once the connection is busy.
///
/// rustls asks its transport for 4 KiB at a time, so a busy TLS connection would make one
/// system call per 4 KiB. While reads come back full, this fills a 64 KiB buffer with one
/// system call and hands it to rustls piece by piece; the buffer is released as soon as it is
/// empty after a small fill (under 16 KiB), so an idle connection holds none.
pub(crate) struct ReadAhead<IO> {
    io: IO,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The last read filled what it was given: the peer is sending a lot.
    busy: bool,
}

impl<IO> ReadAhead<IO> {
    fn new(io: IO) -> Self {
        ReadAhead {
            io,
            buf: Vec::new(),
            start: 0,
            end: 0,
            busy: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start == this.end {
            if !this.busy || out.remaining() >= READ_AHEAD {
                // Straight into the caller's buffer; a full read means the peer is busy.
                let before = out.filled().len();
                ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                let n = out.filled().len() - before;
                this.busy = n > 0 && out.remaining() == 0;
                return Poll::Ready(Ok(()));
            }
            if this.buf.len() < READ_AHEAD {
                this.buf = vec![0; READ_AHEAD];
            }
            let mut fill = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut fill))?;
            let n = fill.filled().len();
            (this.start, this.end) = (0, n);
            // Still busy unless the fill was small: a quiet link releases the buffer, a busy one
            // keeps it rather than allocating it again for the next fill.
            this.busy = n >= READ_AHEAD / 4;
            if n == 0 {
                this.buf = Vec::new();
                return Poll::Ready(Ok(())); // end of stream
            }
        }
        let n = out.remaining().min(this.end - this.start);
        put_in_pieces(out, &this.buf[this.start..this.start + n]);
        this.start += n;
        if this.start == this.end && !this.busy {
            // The link went quiet: give the buffer back.
            this.buf = Vec::new();
            (this.start, this.end) = (0, 0);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The outcome of a server-side handshake, for whoever waits to hand the connection on.
pub(crate) type HandshakeDone = oneshot::Receiver<Result<TlsPeer, TlsError>>;

/// A TLS connection over `IO`, for the connection driver: reads and writes application data,
/// and reports TLS failures as [`TlsError`]s inside the I/O errors.
///
/// Made by [`connect`] and [`accept`]; a server's connections shake hands lazily, inside
/// their driver's task, bounded by the handshake timeout.
pub struct TlsStream<IO> {
    state: State<IO>,
    /// Who the peer is, for messages.
    peer: String,
    /// An error that came after data a read returned: reported by the next read.
    deferred: Option<io::Error>,
}

enum State<IO> {
    /// Server side, handshake under way in the driver's task.
    Accepting {
        accept: tokio_rustls::Accept<ReadAhead<IO>>,
        deadline: Pin<Box<Sleep>>,
        timeout: Duration,
        done: Option<oneshot::Sender<Result<TlsPeer, TlsError>>>,
    },
    Open(tokio_rustls::TlsStream<ReadAhead<IO>>),
    Failed(TlsError),
}

impl<IO> fmt::Debug for TlsStream<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Accepting { .. } => "accepting",
            State::Open(_) => "open",
            State::Failed(_) => "failed",
        };
        f.debug_struct("TlsStream")
            .field("peer", &self.peer)
            .field("state", &state)
            .finish()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// What the handshake established; `None` while it is under way or after it failed.
    pub fn peer(&self) -> Option<TlsPeer> {
        match &self.state {
            State::Open(stream) => Some(TlsPeer::of(stream.get_ref().1)),
            _ => None,
        }
    }

    /// The transport underneath.
    pub fn get_ref(&self) -> Option<&IO> {
        match &self.state {
            State::Accepting { accept, .. } => accept.get_ref().map(|r| &r.io),
            State::Open(stream) => Some(&stream.get_ref().0.io),
            State::Failed(_) => None,
        }
    }

    /// Server side: a stream that shakes hands on first use, within `timeout`, and reports the
    /// outcome through the returned receiver.
    pub(crate) fn accept_lazily(
        io: IO,
        config: &TlsServerConfig,
        peer: String,
    ) -> (TlsStream<IO>, HandshakeDone) {
        let (tx, rx) = oneshot::channel();
        let acceptor = tokio_rustls::TlsAcceptor::from(config.rustls.clone());
        let timeout = config.handshake_timeout;
        let stream = TlsStream {
            state: State::Accepting {
                accept: acceptor.accept_with(ReadAhead::new(io), |c| c.set_buffer_limit(None)),
                deadline: Box::pin(tokio::time::sleep(timeout)),
                timeout,
                done: Some(tx),
            },
            peer,
            deferred: None,
        };
        (stream, rx)
    }

    /// Drives a pending handshake; ready once it is done (or failed).
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.state {
            State::Open(_) => Poll::Ready(Ok(())),
            State::Failed(error) => Poll::Ready(Err(error.clone().into())),
            State::Accepting {
                accept,
                deadline,
                timeout,
                done,
            } => {
                let outcome = match Pin::new(accept).poll(cx) {
                    Poll::Ready(Ok(stream)) => Ok(stream),
                    Poll::Ready(Err(error)) => Err(TlsError::from_io(&self.peer, &error)),
                    Poll::Pending => match deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Err(TlsError::HandshakeTimeout {
                            peer: self.peer.clone(),
                            timeout: *timeout,
                        }),
                        Poll::Pending => return Poll::Pending,
                    },
                };
                let done = done.take();
                match outcome {
                    Ok(stream) => {
                        let peer = TlsPeer::of(stream.get_ref().1);
                        if let Some(done) = done {
                            let _ = done.send(Ok(peer));
                        }
                        self.state = State::Open(tokio_rustls::TlsStream::Server(stream));
                        Poll::Ready(Ok(()))
                    }
                    Err(error) => {
                        if let Some(done) = done {
                            let _ = done.send(Err(error.clone()));
                        }
                        self.state = State::Failed(error.clone());
                        Poll::Ready(Err(error.into()))
                    }
                }
            }
        }
    }

    /// Writes out the records an earlier write left in rustls (the socket was full then)
    /// before taking more: rustls' own buffer limit is off (it would cut writes into pieces),
    /// so this is what bounds what a connection holds to about one write.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let stream = self.open()?;
        if !stream.get_ref().1.wants_write() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(stream).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.fail(e))),
            other => other,
        }
    }

    /// Maps an error of the open stream, keeping the stream failed from then on.
    fn fail(&mut self, error: io::Error) -> io::Error {
        let tls = TlsError::from_io(&self.peer, &error);
        if matches!(tls, TlsError::Rejected { .. }) {
            self.state = State::Failed(tls.clone());
            return tls.into();
        }
        error
    }

    /// The open stream; an error if the handshake is not done (callers drive it first) or
    /// the connection failed.
    fn open(&mut self) -> io::Result<&mut tokio_rustls::TlsStream<ReadAhead<IO>>> {
        match &mut self.state {
            State::Open(stream) => Ok(stream),
            State::Failed(error) => Err(error.clone().into()),
            State::Accepting { .. } => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake not complete",
            )),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        let stream = this.open()?;
        // Records accepted by an earlier write but not yet sent (the socket was full then) go
        // out whenever the connection is polled: the driver may have nothing more to write.
        if stream.get_ref().1.wants_write() {
            if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx) {
                return Poll::Ready(Err(this.fail(e)));
            }
        }
        if let Some(error) = this.deferred.take() {
            return Poll::Ready(Err(error));
        }
        // One record's plaintext per inner read: take what more is ready, so that the driver
        // gets a large read (as from a plain socket) instead of one per 16 KiB record. The
        // plaintext is copied out of rustls here (not by tokio-rustls' `poll_read`), in pieces
        // (see [`put_in_pieces`]).
        let mut got = false;
        loop {
            let stream = this.open()?;
            match Pin::new(&mut *stream).poll_fill_buf(cx) {
                Poll::Ready(Ok(data)) => {
                    // Empty: the end of the stream (reported again by the next read).
                    if data.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    let n = data.len().min(buf.remaining());
                    put_in_pieces(buf, &data[..n]);
                    Pin::new(stream).consume(n);
                    if buf.remaining() == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    got = true;
                }
                Poll::Ready(Err(e)) => {
                    let error = this.fail(e);
                    if got {
                        // Reported with the next read, after the data before it.
                        this.deferred = Some(error);
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(error));
                }
                Poll::Pending if got => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        ready!(this.poll_send_pending(cx))?;
        match Pin::new(this.open()?).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.fail(e))),
            other => other,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        ready!(this.poll_send_pending(cx))?;
        match Pin::new(this.open()?).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.fail(e))),
            other => other,
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_handshake(cx))?;
        match Pin::new(this.open()?).poll_flush(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(this.fail(e))),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            // Nothing to close politely: the socket is dropped with the stream.
            State::Accepting { .. } | State::Failed(_) => Poll::Ready(Ok(())),
            State::Open(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// Shakes hands as a TLS client over `io`, verifying the server's certificate for `name`
/// (or [`TlsClientConfig::server_name`]), within [`TlsClientConfig::handshake_timeout`].
///
/// # Errors
///
/// Why the handshake failed: unknown CA, name mismatch, expired certificate, timeout...
pub async fn connect<IO>(
    io: IO,
    config: &TlsClientConfig,
    name: &str,
) -> Result<TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = config
        .server_name
        .clone()
        .unwrap_or_else(|| name.to_owned());
    let server =
        server_name(&name).map_err(|_| TlsError::InvalidServerName { name: name.clone() })?;
    let peer = format!("server {name}");
    let connector = tokio_rustls::TlsConnector::from(config.rustls.clone());
    let io = ReadAhead::new(io);
    let connect = connector.connect_with(server, io, |c| c.set_buffer_limit(None));
    match tokio::time::timeout(config.handshake_timeout, connect).await {
        Ok(Ok(stream)) => Ok(TlsStream {
            state: State::Open(tokio_rustls::TlsStream::Client(stream)),
            peer,
            deferred: None,
        }),
        Ok(Err(error)) => Err(TlsError::from_io(&peer, &error)),
        Err(_) => Err(TlsError::HandshakeTimeout {
            peer,
            timeout: config.handshake_timeout,
        }),
    }
}

/// Shakes hands as a TLS server over `io` within [`TlsServerConfig::handshake_timeout`].
/// (A [`Server`](crate::Server) does this itself, in each connection's task.)
///
/// # Errors
///
/// Why the handshake failed: no client certificate, one from an unknown CA, timeout...
pub async fn accept<IO>(io: IO, config: &TlsServerConfig) -> Result<TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (mut stream, _done) = TlsStream::accept_lazily(io, config, "client".to_owned());
    std::future::poll_fn(|cx| stream.poll_handshake(cx))
        .await
        .map_err(|e| {
            e.into_inner()
                .and_then(|inner| inner.downcast::<TlsError>().ok())
                .map(|b| *b)
                .unwrap_or_else(|| TlsError::Io {
                    peer: "client".to_owned(),
                    kind: io::ErrorKind::Other,
                    message: "handshake failed".to_owned(),
                })
        })?;
    Ok(stream)
}

/// A stream the driver runs over: plain TCP or TLS over TCP (boxed, so that a plain
/// connection's driver is no larger than before).
pub(crate) enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl MaybeTls {
    /// An accepted socket, wrapped for a lazy server handshake when `config` is set.
    pub(crate) fn accepted(
        stream: TcpStream,
        config: Option<&TlsServerConfig>,
        peer: std::net::SocketAddr,
    ) -> (MaybeTls, Option<HandshakeDone>) {
        match config {
            None => (MaybeTls::Plain(stream), None),
            Some(config) => {
                let (tls, done) =
                    TlsStream::accept_lazily(stream, config, format!("client {peer}"));
                (MaybeTls::Tls(Box::new(tls)), Some(done))
            }
        }
    }
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTls::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        both!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        both!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        both!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        both!(self, s => s.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_128_gcm_is_preferred_and_the_others_still_offered() {
        use rustls::CipherSuite as S;
        let suites: Vec<S> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], S::TLS13_AES_128_GCM_SHA256, "{suites:?}");
        for other in [
            S::TLS13_AES_256_GCM_SHA384,
            S::TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            assert!(suites.contains(&other), "{suites:?}");
        }
        let tls13: Vec<S> = suites
            .iter()
            .copied()
            .filter(|s| format!("{s:?}").starts_with("TLS13_"))
            .collect();
        assert_eq!(
            tls13,
            [
                S::TLS13_AES_128_GCM_SHA256,
                S::TLS13_AES_256_GCM_SHA384,
                S::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
    }

    #[test]
    fn host_of_handles_names_ipv4_and_ipv6() {
        assert_eq!(host_of("localhost:7000"), "localhost");
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = std::env::temp_dir().join(format!("framelink-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = TlsServerOptions::new(&missing, &missing)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, TlsConfigError::Read { ref path, .. } if path == &missing),
            "{err}"
        );
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let err = TlsServerOptions::new(&empty, &empty).build().unwrap_err();
        assert!(matches!(err, TlsConfigError::NoCertificate { .. }), "{err}");
        let err = TlsClientOptions::with_ca_file(&empty).build().unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
