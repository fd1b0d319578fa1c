//! `framelink cert --out DIR`: a self-signed development CA, a server certificate for
//! `localhost`, `127.0.0.1` and `::1`, and a client certificate, with their keys, as PEM files,
//! for trying TLS and mutual TLS (`serve --tls-cert`, `connect --tls-ca`). Not for production:
//! the CA's key lies next to the certificates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// How long the certificates are valid, from now.
const VALID_DAYS: i64 = 825;

/// The files written, in order: (name, what it is).
const FILES: [(&str, &str); 6] = [
    (
        "ca.pem",
        "development CA certificate (trust it: connect --tls-ca, serve --tls-client-ca)",
    ),
    ("ca.key", "development CA private key"),
    (
        "server.pem",
        "server certificate for localhost, 127.0.0.1, ::1 (serve --tls-cert)",
    ),
    ("server.key", "server private key (serve --tls-key)"),
    (
        "client.pem",
        "client certificate, CN=framelink-client (connect --tls-cert)",
    ),
    ("client.key", "client private key (connect --tls-key)"),
];

/// Options of `framelink cert`.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  framelink cert --out certs
  framelink serve 127.0.0.1:7443 --tls-cert certs/server.pem --tls-key certs/server.key
  framelink connect localhost:7443 --tls-ca certs/ca.pem

Mutual TLS: add `--tls-client-ca certs/ca.pem` to serve and
`--tls-cert certs/client.pem --tls-key certs/client.key` to connect.")]
pub struct CertArgs {
    /// Directory to write the PEM files to (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Overwrite files that already exist.
    #[arg(long)]
    force: bool,
}

pub fn run(args: CertArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    if !args.force {
        for (name, _) in FILES {
            let path = args.out.join(name);
            if path.exists() {
                bail!("{} exists (use --force to overwrite)", path.display());
            }
        }
    }
    let files = generate()?;
    for ((name, what), contents) in FILES.iter().zip(files) {
        let path = args.out.join(name);
        write(&path, &contents, name.ends_with(".key"))?;
        println!("{}  {what}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The six files' contents, in the order of [`FILES`]: CA certificate and key, server
/// certificate and key, client certificate and key.
pub(crate) fn generate() -> Result<[String; 6]> {
    let now = time::OffsetDateTime::now_utc();
    let validity = |params: &mut CertificateParams| {
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(VALID_DAYS);
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A name of its own: another development CA with the same name would be taken for this
    // one's issuer, and its certificates reported as badly signed instead of unknown.
    let name = format!("framelink development CA {:08x}", rand::random::<u32>());
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;

    let leaf = |cn: &str, names: &[&str], usage: ExtendedKeyUsagePurpose| -> Result<_> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server, server_key) = leaf(
        "localhost",
        &["localhost", "127.0.0.1", "::1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client, client_key) = leaf(
        "framelink-client",
        &["framelink-client"],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok([
        ca_cert.pem(),
        ca_key.serialize_pem(),
        server,
        server_key,
        client,
        client_key,
    ])
}

/// Writes a file; keys readable by their owner only (on Unix).
fn write(path: &Path, contents: &str, secret: bool) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}
