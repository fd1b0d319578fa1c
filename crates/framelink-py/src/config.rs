//! Options from Python (a dict of keyword arguments, already named-checked by the Python layer)
//! into the tokio layer's configuration types. Missing or `None` values keep the Rust defaults,
//! so both languages share one set of defaults.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use framelink::connection::ConnectionConfig;
use framelink::proto::raw::Answer;
use framelink::tls::{ClientAuth, TlsClientOptions, TlsServerOptions, TrustRoots};
use framelink::{
    BackoffConfig, ClientConfig, FrameMatcher, Protocol, RawConfig, ServerConfig, SessionConfig,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::codec::{parse_spec, to_bytes};
use crate::errors::config_error;

/// Typed access to the options dict.
pub struct Options<'a, 'py> {
    dict: &'a Bound<'py, PyDict>,
}

impl<'py> Options<'_, 'py> {
    fn get(&self, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(self.dict.get_item(key)?.filter(|v| !v.is_none()))
    }

    fn has(&self, key: &str) -> bool {
        self.dict.contains(key).unwrap_or(false)
    }

    /// Seconds (`float`) as a duration; negative, NaN and infinite values are refused.
    fn duration(&self, key: &str) -> PyResult<Option<Duration>> {
        let Some(v) = self.get(key)? else {
            return Ok(None);
        };
        let secs: f64 = v.extract()?;
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(config_error(
                self.dict.py(),
                format!("{key} must be a number of seconds >= 0, not {secs}"),
            ));
        }
        Ok(Some(Duration::from_secs_f64(secs)))
    }

    fn nonzero_duration(&self, key: &str) -> PyResult<Option<Duration>> {
        let d = self.duration(key)?;
        if d.is_some_and(|d| d.is_zero()) {
            return Err(config_error(self.dict.py(), format!("{key} must be > 0")));
        }
        Ok(d)
    }

    fn int<T: for<'a> FromPyObject<'a>>(&self, key: &str) -> PyResult<Option<T>> {
        self.get(key)?
            .map(|v| {
                v.extract::<T>().map_err(|_| {
                    config_error(
                        self.dict.py(),
                        format!("{key} must be a non-negative integer in range, not {v}"),
                    )
                })
            })
            .transpose()
    }

    /// A count that must be at least 1.
    fn positive(&self, key: &str) -> PyResult<Option<usize>> {
        let n = self.int::<usize>(key)?;
        if n == Some(0) {
            return Err(config_error(
                self.dict.py(),
                format!("{key} must be at least 1"),
            ));
        }
        Ok(n)
    }

    fn bytes(&self, key: &str) -> PyResult<Option<Bytes>> {
        self.get(key)?.map(|v| to_bytes(&v)).transpose()
    }

    fn flag(&self, key: &str) -> PyResult<bool> {
        Ok(match self.get(key)? {
            Some(v) => v.is_truthy()?,
            None => false,
        })
    }

    /// A file path (`str` or `os.PathLike`).
    fn path(&self, key: &str) -> PyResult<Option<PathBuf>> {
        self.get(key)?
            .map(|v| {
                v.extract::<PathBuf>().map_err(|_| {
                    config_error(
                        self.dict.py(),
                        format!("{key} must be a path (str or os.PathLike), not {v}"),
                    )
                })
            })
            .transpose()
    }

    /// `tls_cert` and `tls_key`: both or neither.
    fn cert_and_key(&self) -> PyResult<Option<(PathBuf, PathBuf)>> {
        match (self.path("tls_cert")?, self.path("tls_key")?) {
            (Some(cert), Some(key)) => Ok(Some((cert, key))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(config_error(self.dict.py(), "tls_cert needs tls_key")),
            (None, Some(_)) => Err(config_error(self.dict.py(), "tls_key needs tls_cert")),
        }
    }

    /// `ping_interval`: given as `None` turns heartbeats off; absent keeps the default.
    fn ping_interval(&self, default: Option<Duration>) -> PyResult<Option<Duration>> {
        if !self.has("ping_interval") {
            return Ok(default);
        }
        self.nonzero_duration("ping_interval")
    }
}

/// What a connection speaks, from the options (`framing` given: raw mode).
pub fn protocol(py: Python<'_>, dict: &Bound<'_, PyDict>, server: bool) -> PyResult<Protocol> {
    let o = Options { dict };
    let protocol = match o.get("framing")? {
        Some(spec) => {
            let framing = parse_spec(py, &spec.extract::<String>()?)?;
            let mut c = RawConfig::new(framing);
            c.ping = o.bytes("ping")?;
            // Without a ping payload a raw connection only watches for silence: off unless an
            // interval is given.
            let default_interval = if c.ping.is_some() {
                c.ping_interval
            } else {
                None
            };
            c.ping_interval = o.ping_interval(default_interval)?;
            if let Some(t) = o.nonzero_duration("ping_timeout")? {
                c.ping_timeout = t;
            }
            c.pong = match (o.bytes("pong")?, o.bytes("pong_prefix")?) {
                (Some(_), Some(_)) => {
                    return Err(config_error(py, "give pong or pong_prefix, not both"))
                }
                (Some(p), None) => FrameMatcher::exact(p),
                (None, Some(p)) if p.is_empty() => {
                    return Err(config_error(py, "pong_prefix must not be empty"))
                }
                (None, Some(p)) => FrameMatcher::prefix(p),
                (None, None) => FrameMatcher::Any,
            };
            if let Some(answer) = o.get("answer")? {
                let (matched, reply): (Bound<'_, PyAny>, Bound<'_, PyAny>) = answer.extract()?;
                c.answer = Some(Answer {
                    matcher: FrameMatcher::exact(to_bytes(&matched)?),
                    reply: to_bytes(&reply)?,
                });
            }
            c.deliver_heartbeats = o.flag("deliver_heartbeats")?;
            c.pong_always = o.flag("pong_always")?;
            c.reader_idle = o.nonzero_duration("reader_idle")?;
            c.writer_idle = o.nonzero_duration("writer_idle")?;
            c.all_idle = o.nonzero_duration("all_idle")?;
            c.idle_timeout = o.nonzero_duration("idle_timeout")?;
            if let Some(d) = o.duration("frame_timeout")? {
                c.frame_timeout = (!d.is_zero()).then_some(d);
            }
            if let Some(n) = o.int("max_queued_bytes")? {
                c.max_queued_bytes = n;
            }
            if let Some(d) = o.nonzero_duration("linger")? {
                c.linger = d;
            }
            if o.flag("sessions")? {
                return Err(config_error(
                    py,
                    "sessions need framelink's protocol, not raw mode (framing=...)",
                ));
            }
            if o.get("max_message_size")?.is_some() {
                // One limit, one place: the framing's own (checked on every header read).
                return Err(config_error(
                    py,
                    "max_message_size is for framelink's protocol: in raw mode the framing \
                     spec's max= sets the limit (framing=\"length:4,max=1MiB\")",
                ));
            }
            c.validate().map_err(|e| config_error(py, e))?;
            Protocol::Raw(Box::new(c))
        }
        None => {
            if o.flag("pong_always")? {
                return Err(config_error(
                    py,
                    "pong_always is for raw mode: give framing=... too",
                ));
            }
            for raw_only in ["ping", "pong", "pong_prefix", "answer"] {
                if o.get(raw_only)?.is_some() {
                    return Err(config_error(
                        py,
                        format!("{raw_only} is for raw mode: give framing=... too"),
                    ));
                }
            }
            let mut c = ConnectionConfig::default();
            c.ping_interval = o.ping_interval(c.ping_interval)?;
            if let Some(t) = o.nonzero_duration("ping_timeout")? {
                c.ping_timeout = t;
            }
            if let Some(n) = o.int::<u32>("max_message_size")? {
                // The protocol counts the DATA type byte in max_message_len.
                c.max_message_len = n.saturating_add(1);
            }
            if let Some(n) = o.int("max_queued_bytes")? {
                c.max_queued_bytes = n;
            }
            if let Some(d) = o.nonzero_duration("handshake_timeout")? {
                c.handshake_timeout = d;
            }
            if let Some(d) = o.nonzero_duration("linger")? {
                c.linger = d;
            }
            c.reader_idle = o.nonzero_duration("reader_idle")?;
            c.writer_idle = o.nonzero_duration("writer_idle")?;
            c.all_idle = o.nonzero_duration("all_idle")?;
            c.idle_timeout = o.nonzero_duration("idle_timeout")?;
            if let Some(d) = o.duration("frame_timeout")? {
                c.frame_timeout = (!d.is_zero()).then_some(d);
            }
            if server && o.flag("sessions")? {
                c.sessions = Some(session_policy(&o)?);
            }
            c.validate().map_err(|e| config_error(py, e))?;
            Protocol::Framelink(c)
        }
    };
    Ok(protocol)
}

fn session_policy(o: &Options<'_, '_>) -> PyResult<SessionConfig> {
    let mut policy = SessionConfig::default();
    if let Some(n) = o.int("ack_every")? {
        policy.ack_every = n;
    }
    if let Some(d) = o.duration("ack_delay")? {
        policy.ack_delay = d;
    }
    Ok(policy)
}

/// A client's settings.
pub fn client(py: Python<'_>, dict: &Bound<'_, PyDict>) -> PyResult<ClientConfig> {
    let o = Options { dict };
    let mut c = ClientConfig {
        protocol: protocol(py, dict, false)?,
        ..ClientConfig::default()
    };
    let mut backoff = BackoffConfig::default();
    if let Some(d) = o.nonzero_duration("backoff_initial")? {
        backoff.initial = d;
    }
    if let Some(d) = o.nonzero_duration("backoff_max")? {
        backoff.max = d;
    }
    if let Some(m) = o.get("backoff_multiplier")? {
        backoff.multiplier = m.extract()?;
    }
    backoff.max_attempts = o.int("max_attempts")?;
    if o.get("reconnect")?.is_some() && !o.flag("reconnect")? {
        // One connection: no retries after the first attempt fails or the link is lost.
        backoff.max_attempts = Some(1);
    }
    backoff.validate().map_err(|e| config_error(py, e))?;
    c.backoff = backoff;
    if let Some(d) = o.nonzero_duration("connect_timeout")? {
        c.connect_timeout = d;
    }
    if let Some(d) = o.nonzero_duration("stable_after")? {
        c.stable_after = d;
    }
    if o.has("nodelay") {
        c.socket.nodelay = o.flag("nodelay")?;
    }
    if o.flag("sessions")? {
        c.sessions = Some(session_policy(&o)?);
    }
    c.tls = client_tls(&o)?;
    Ok(c)
}

/// A client's TLS settings: `tls=True`, or any of `tls_ca`, `tls_server_name`, `tls_cert`
/// (with `tls_key`). Without `tls_ca` the platform's trusted roots are used.
fn client_tls(o: &Options<'_, '_>) -> PyResult<Option<framelink::tls::TlsClientConfig>> {
    let py = o.dict.py();
    let ca = o.path("tls_ca")?;
    let server_name = match o.get("tls_server_name")? {
        Some(v) => Some(
            v.extract::<String>()
                .map_err(|_| config_error(py, format!("tls_server_name must be a str, not {v}")))?,
        ),
        None => None,
    };
    let client_cert = o.cert_and_key()?;
    let wanted = o.flag("tls")? || ca.is_some() || server_name.is_some() || client_cert.is_some();
    if !wanted {
        return Ok(None);
    }
    let options = TlsClientOptions {
        roots: ca.map_or(TrustRoots::Native, TrustRoots::CaFile),
        client_cert,
        server_name,
        ..TlsClientOptions::default()
    };
    options.build().map(Some).map_err(|e| config_error(py, e))
}

/// A server's settings.
pub fn server(py: Python<'_>, dict: &Bound<'_, PyDict>) -> PyResult<ServerConfig> {
    let o = Options { dict };
    let mut c = ServerConfig {
        protocol: protocol(py, dict, true)?,
        ..ServerConfig::default()
    };
    if let Some(n) = o.positive("max_connections")? {
        c.max_connections = n;
    }
    if let Some(n) = o.positive("max_connections_per_ip")? {
        c.max_connections_per_ip = n;
    }
    if let Some(n) = o.int::<usize>("memory_budget")? {
        if n < 1 << 20 {
            return Err(config_error(
                py,
                "memory_budget must be at least 1 MiB (1048576)",
            ));
        }
        c.memory_budget = n;
    }
    if let Some(d) = o.duration("evict_idle_when_full")? {
        c.evict_idle_when_full = (!d.is_zero()).then_some(d);
    }
    if o.has("nodelay") {
        c.socket.nodelay = o.flag("nodelay")?;
    }
    if o.flag("sessions")? {
        let mut s = framelink::ServerSessions {
            policy: session_policy(&o)?,
            ..Default::default()
        };
        if let Some(d) = o.nonzero_duration("session_ttl")? {
            s.ttl = d;
        }
        if let Some(n) = o.int::<usize>("max_detached_sessions")? {
            s.max_detached = n.max(1);
        }
        if let Some(n) = o.positive("max_detached_sessions_per_ip")? {
            s.max_detached_per_ip = n;
        }
        c.sessions = Some(s);
    }
    let client_ca = o.path("tls_client_ca")?;
    match o.cert_and_key()? {
        Some((cert, key)) => {
            let options = TlsServerOptions {
                client_auth: client_ca.map_or(ClientAuth::Off, ClientAuth::Required),
                ..TlsServerOptions::new(cert, key)
            };
            c.tls = Some(options.build().map_err(|e| config_error(py, e))?);
        }
        None if client_ca.is_some() => {
            return Err(config_error(py, "tls_client_ca needs tls_cert and tls_key"));
        }
        None => {}
    }
    Ok(c)
}

/// The Rust defaults behind the Python signatures' defaults, in the Python options' names and
/// units (seconds, bytes), so that a test can hold both to one set of values.
pub fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let connection = ConnectionConfig::default();
    let client = ClientConfig::default();
    let server = ServerConfig::default();
    let sessions = framelink::ServerSessions::default();
    let secs = |t: Duration| t.as_secs_f64();
    d.set_item("ping_interval", connection.ping_interval.map(secs))?;
    d.set_item("ping_timeout", secs(connection.ping_timeout))?;
    d.set_item("backoff_initial", secs(client.backoff.initial))?;
    d.set_item("backoff_max", secs(client.backoff.max))?;
    d.set_item("backoff_multiplier", client.backoff.multiplier)?;
    d.set_item("max_attempts", client.backoff.max_attempts)?;
    d.set_item("connect_timeout", secs(client.connect_timeout))?;
    d.set_item("stable_after", secs(client.stable_after))?;
    d.set_item("nodelay", client.socket.nodelay)?;
    d.set_item("max_connections", server.max_connections)?;
    d.set_item("max_connections_per_ip", server.max_connections_per_ip)?;
    d.set_item("session_ttl", secs(sessions.ttl))?;
    d.set_item("max_detached_sessions", sessions.max_detached)?;
    d.set_item("max_detached_sessions_per_ip", sessions.max_detached_per_ip)?;
    Ok(d)
}
