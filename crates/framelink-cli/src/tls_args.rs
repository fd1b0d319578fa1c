//! TLS options of `serve` and `connect`, and how they become the library's TLS configuration
//! (`framelink::tls`).

use std::path::PathBuf;

use clap::Args;
use framelink::tls::{
    ClientAuth, TlsClientConfig, TlsClientOptions, TlsConfigError, TlsServerConfig,
    TlsServerOptions, TrustRoots,
};

/// TLS options of `framelink serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeTlsArgs {
    /// Serve TLS with this certificate chain (PEM, the server's own certificate first); needs
    /// `--tls-key`. `framelink cert --out DIR` makes one for development.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: require every client to present a certificate issued by a CA in this PEM
    /// file (the verified subject is shown per connection).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServeTlsArgs {
    /// The server's TLS configuration, if TLS was asked for.
    pub fn build(&self) -> Result<Option<TlsServerConfig>, TlsConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let options = TlsServerOptions {
            client_auth: match &self.tls_client_ca {
                Some(ca) => ClientAuth::Required(ca.clone()),
                None => ClientAuth::Off,
            },
            ..TlsServerOptions::new(cert, key)
        };
        options.build().map(Some)
    }

    /// How the listening line describes TLS (empty without it).
    pub fn describe(&self) -> &'static str {
        match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => "",
            (Some(_), None) => ", TLS",
            (Some(_), Some(_)) => ", TLS with client certificates required",
        }
    }
}

/// TLS options of `framelink connect`.
#[derive(Args, Debug, Clone)]
pub struct ConnectTlsArgs {
    /// Speak TLS, verifying the server's certificate against the platform's trusted roots
    /// (or `--tls-ca`) for the host name connected to (or `--tls-server-name`).
    #[arg(long)]
    pub tls: bool,

    /// Trust only the CA certificates in this PEM file (implies `--tls`).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// The name the server's certificate must be valid for, instead of the host connected to
    /// (implies `--tls`).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Mutual TLS: present this client certificate chain (PEM); needs `--tls-key` (implies
    /// `--tls`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ConnectTlsArgs {
    /// The client's TLS configuration, if TLS was asked for.
    pub fn build(&self) -> Result<Option<TlsClientConfig>, TlsConfigError> {
        let wanted = self.tls
            || self.tls_ca.is_some()
            || self.tls_server_name.is_some()
            || self.tls_cert.is_some();
        if !wanted {
            return Ok(None);
        }
        let options = TlsClientOptions {
            roots: match &self.tls_ca {
                Some(ca) => TrustRoots::CaFile(ca.clone()),
                None => TrustRoots::Native,
            },
            client_cert: self.tls_cert.clone().zip(self.tls_key.clone()),
            server_name: self.tls_server_name.clone(),
            ..TlsClientOptions::default()
        };
        options.build().map(Some)
    }
}
