//! `framelink bench --tls`: the TLS run's certificates (a development CA and a server
//! certificate for localhost, made once per process by `framelink cert`'s generator and loaded
//! through the library's PEM loading) and its TLS handshake.

use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use framelink::tls::{self, TlsClientConfig, TlsClientOptions, TlsServerConfig, TlsServerOptions};
use tokio::net::TcpStream;

/// The server's and the client's TLS configurations.
pub(super) struct Configs {
    pub server: TlsServerConfig,
    pub client: TlsClientConfig,
}

/// Made on first use; the PEM files are removed once loaded.
pub(super) fn configs() -> Result<&'static Configs> {
    static CONFIGS: OnceLock<Result<Configs, String>> = OnceLock::new();
    CONFIGS
        .get_or_init(|| make().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("cannot make the TLS certificates: {e}"))
}

fn make() -> Result<Configs> {
    let [ca, _ca_key, cert, key, _client, _client_key] = crate::cert::generate()?;
    let dir = std::env::temp_dir().join(format!("framelink-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = |name: &str, pem: &str| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    let built = (|| -> Result<Configs> {
        let server = TlsServerOptions::new(write("server.pem", &cert)?, write("server.key", &key)?)
            .build()?;
        let client = TlsClientOptions::with_ca_file(write("ca.pem", &ca)?).build()?;
        Ok(Configs { server, client })
    })();
    let _ = std::fs::remove_dir_all(&dir);
    built
}

/// The client's TLS handshake over a connected socket.
pub(super) async fn connect(stream: TcpStream) -> Result<tls::TlsStream<TcpStream>> {
    Ok(tls::connect(stream, &configs()?.client, "localhost").await?)
}
