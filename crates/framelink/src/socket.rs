//! TCP socket options for framed connections, applied with `socket2`.
//!
//! # Why these options matter: half-open connections
//!
//! A TCP connection is *half-open* when one side has vanished (power loss, crash of the host, a
//! NAT or firewall that silently dropped its state, a cable pulled) without sending a FIN or RST.
//! The other side is not told: a reader waits forever for bytes that never come, and a writer
//! keeps queueing data that is never acknowledged. Three mechanisms notice this, each covering a
//! different case:
//!
//! * **TCP keepalive probes** ([`SocketOptions::keepalive`]) cover the *idle* connection. After
//!   `idle` time without traffic the kernel sends an empty probe; if `retries` probes, `interval`
//!   apart, go unanswered, the connection is reset and pending reads fail. They cost nothing in the
//!   protocol and need no cooperation from the peer's application, and they keep NAT and firewall
//!   mappings alive. But they only prove that the peer's *kernel* is alive, not its application,
//!   they stop at the first TCP-terminating proxy or load balancer, and they do not run while
//!   sent data is waiting to be acknowledged.
//! * **`TCP_USER_TIMEOUT`** ([`SocketOptions::user_timeout`], Linux and Android) covers the
//!   connection with *data in flight*: if sent data stays unacknowledged for longer than the
//!   timeout, the connection is dropped. Without it the kernel retransmits with exponential
//!   backoff for roughly 15 minutes (`net.ipv4.tcp_retries2`) before giving up, during which
//!   keepalive is silent. On Linux it also caps keepalive: once probing has started, the connection
//!   is dropped as soon as the peer has been silent for this long, even if fewer than `retries`
//!   probes were sent. Set it to at least `idle + interval * retries`.
//! * **Application heartbeats** (messages of the framed protocol itself, see the crate's
//!   connection layer) are the end-to-end check: they cross proxies and prove that the peer
//!   application still reads and answers. They need protocol support on both sides and cost a
//!   message each. The socket options here are the cheap first line of defence beneath them.
//!
//! Apply the options right after `connect` or `accept`:
//!
//! ```no_run
//! use framelink::socket::SocketOptions;
//!
//! # async fn run() -> std::io::Result<()> {
//! let stream = tokio::net::TcpStream::connect("127.0.0.1:7000").await?;
//! SocketOptions::default().apply(&stream)?;
//! # Ok(()) }
//! ```

use std::io;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The socket option that could not be set, with the operating system's error.
///
/// [`SocketOptions::apply`] returns it inside an [`io::Error`] of the same
/// [`kind`](io::Error::kind) as the OS error; recover it with
/// `err.get_ref().and_then(|e| e.downcast_ref::<SocketOptionError>())`.
#[derive(Debug, thiserror::Error)]
#[error("failed to set socket option {option}")]
pub struct SocketOptionError {
    /// Name of the option, such as `"TCP_NODELAY"` or `"TCP_KEEPCNT"`.
    pub option: &'static str,
    /// The error the operating system returned.
    #[source]
    pub source: io::Error,
}

/// Wraps an OS error with the name of the option that failed, keeping its kind.
fn failed(option: &'static str) -> impl FnOnce(io::Error) -> io::Error {
    move |source| io::Error::new(source.kind(), SocketOptionError { option, source })
}

/// TCP keepalive parameters: when to start probing an idle connection, how often, and how many
/// unanswered probes mean the peer is gone.
///
/// A dead idle peer is detected after about [`detection_time`](Self::detection_time), that is
/// `idle + interval * retries`.
///
/// The operating system counts these in whole seconds: [`SocketOptions::apply`] rounds `idle` and
/// `interval` up to the next second, and to at least one second. Values the OS does not accept
/// (on Linux: `retries` of 0 or above 127, times above 32767 s) make `apply` fail with the name of
/// the option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpKeepalive {
    /// Time without any traffic before the first probe is sent (`TCP_KEEPIDLE`, `TCP_KEEPALIVE` on
    /// Apple platforms). The OS default is usually two hours.
    pub idle: Duration,
    /// Time between unanswered probes (`TCP_KEEPINTVL`). Not set on platforms that lack it (for
    /// example OpenBSD, Solaris), which keep their system-wide value.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`). Not set on platforms
    /// that lack it, which keep their system-wide value.
    pub retries: u32,
}

impl TcpKeepalive {
    /// 30 s idle, then a probe every 10 s, dropped after 3 unanswered: a dead idle peer is noticed
    /// within about a minute, instead of the OS default of over two hours. One 40-byte probe per
    /// half minute of silence is negligible, and 30 s is below the idle timeouts of common NATs,
    /// firewalls and cloud load balancers (typically 60 s to 350 s), so the probes also keep their
    /// mappings alive.
    pub const DEFAULT: TcpKeepalive = TcpKeepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(10),
        retries: 3,
    };

    /// `idle + interval * retries`: about how long a dead peer goes unnoticed on an idle connection.
    pub fn detection_time(&self) -> Duration {
        self.interval
            .checked_mul(self.retries)
            .and_then(|probes| probes.checked_add(self.idle))
            .unwrap_or(Duration::MAX)
    }
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// TCP socket options for a framed connection; see the [module docs](self) for how they work
/// together to detect half-open connections.
///
/// [`Default`] gives options suited to latency-sensitive message passing: `TCP_NODELAY` on,
/// keepalive after 30 s idle ([`TcpKeepalive::DEFAULT`]), a `TCP_USER_TIMEOUT` of 60 s and the
/// kernel's own buffer sizing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SocketOptions {
    /// `TCP_NODELAY`: send small segments at once instead of holding them back until earlier data
    /// is acknowledged (Nagle's algorithm). Default `true`: a framed message is usually written in
    /// one go and the peer waits for all of it, so Nagle's algorithm, especially together with the
    /// peer's delayed ACKs, only adds latency (up to 40-200 ms per message). `false` turns Nagle's
    /// algorithm back on, which saves packets when many tiny writes are not batched.
    pub nodelay: bool,
    /// `SO_KEEPALIVE` with its parameters, probing idle connections to detect a vanished peer.
    /// `None` turns keepalive off. Default [`TcpKeepalive::DEFAULT`].
    ///
    /// Only the idle time is set on platforms without per-socket interval and retry count (for
    /// example OpenBSD, Solaris); there the system-wide values apply.
    pub keepalive: Option<TcpKeepalive>,
    /// `TCP_USER_TIMEOUT`: drop the connection when sent data stays unacknowledged for longer
    /// than this, instead of retransmitting for about 15 minutes. On Linux it also bounds how
    /// long keepalive probes may go unanswered, so keep it at least
    /// [`TcpKeepalive::detection_time`]. `None` restores the system default (no timeout).
    ///
    /// Default 60 s, equal to the default keepalive detection time, so a peer that vanishes is
    /// noticed in about a minute whether or not data was in flight. Too small a value drops
    /// healthy connections over slow or congested links, where acknowledgements can legitimately
    /// take several seconds.
    ///
    /// Linux and Android only: ignored on other platforms. Millisecond resolution, capped at
    /// `i32::MAX` milliseconds (about 24.8 days), the largest value Linux accepts.
    pub user_timeout: Option<Duration>,
    /// `SO_SNDBUF` in bytes. `None` (the default) leaves the kernel's size, which Linux tunes
    /// automatically; setting a size turns that tuning off for the socket. Linux doubles the value
    /// for bookkeeping and caps it at `net.core.wmem_max`.
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF` in bytes. `None` (the default) leaves the kernel's size, which Linux tunes
    /// automatically; setting a size turns that tuning off and limits the TCP window the socket
    /// advertises. Linux doubles the value and caps it at `net.core.rmem_max`.
    pub recv_buffer: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            keepalive: Some(TcpKeepalive::DEFAULT),
            user_timeout: Some(Duration::from_secs(60)),
            send_buffer: None,
            recv_buffer: None,
        }
    }
}

/// Rounds up to whole seconds, at least one: the OS takes keepalive times in seconds and rejects 0.
fn whole_seconds(duration: Duration) -> Duration {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

impl SocketOptions {
    /// Sets these options on a connected (or accepted) stream.
    ///
    /// `nodelay`, `keepalive` and `user_timeout` are always written, so applying options to a
    /// stream that had others replaces them (`None` turns keepalive off and restores the default
    /// user timeout). `send_buffer` and `recv_buffer` are only written when `Some`.
    ///
    /// # Errors
    ///
    /// The first option the OS refuses, as an [`io::Error`] of the OS error's kind that wraps a
    /// [`SocketOptionError`] naming the option. Options before it stay set.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        let socket = SockRef::from(stream);
        socket
            .set_tcp_nodelay(self.nodelay)
            .map_err(failed("TCP_NODELAY"))?;
        match &self.keepalive {
            Some(keepalive) => set_keepalive(&socket, keepalive)?,
            None => socket
                .set_keepalive(false)
                .map_err(failed("SO_KEEPALIVE"))?,
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            const MAX: Duration = Duration::from_millis(i32::MAX as u64);
            // Below one millisecond would round to 0, which means "no timeout".
            let timeout = self
                .user_timeout
                .map(|t| t.clamp(Duration::from_millis(1), MAX));
            socket
                .set_tcp_user_timeout(timeout)
                .map_err(failed("TCP_USER_TIMEOUT"))?;
        }
        if let Some(size) = self.send_buffer {
            socket
                .set_send_buffer_size(size)
                .map_err(failed("SO_SNDBUF"))?;
        }
        if let Some(size) = self.recv_buffer {
            socket
                .set_recv_buffer_size(size)
                .map_err(failed("SO_RCVBUF"))?;
        }
        Ok(())
    }
}

/// Whether `socket2` can set the keepalive interval and retry count on this platform.
macro_rules! cfg_keepalive_probes {
    ($($item:tt)*) => {
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "fuchsia",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "dragonfly",
            target_os = "illumos",
            target_os = "macos",
            target_os = "ios",
            target_os = "tvos",
            target_os = "watchos",
            target_os = "windows",
        ))]
        $($item)*
    };
}

/// Turns keepalive on with `keepalive`'s parameters. On Unix each option is set on its own so an
/// error names the one that failed; Windows sets time and interval in one call, which resets
/// whatever it is not given.
fn set_keepalive(socket: &SockRef<'_>, keepalive: &TcpKeepalive) -> io::Result<()> {
    let idle = whole_seconds(keepalive.idle);
    #[allow(unused_variables)] // unused where the platform has no per-socket interval
    let interval = whole_seconds(keepalive.interval);
    socket.set_keepalive(true).map_err(failed("SO_KEEPALIVE"))?;

    #[cfg(unix)]
    {
        let params = socket2::TcpKeepalive::new();
        socket
            .set_tcp_keepalive(&params.clone().with_time(idle))
            .map_err(failed("TCP_KEEPIDLE"))?;
        cfg_keepalive_probes! {
            {
                socket
                    .set_tcp_keepalive(&params.clone().with_interval(interval))
                    .map_err(failed("TCP_KEEPINTVL"))?;
                socket
                    .set_tcp_keepalive(&params.with_retries(keepalive.retries))
                    .map_err(failed("TCP_KEEPCNT"))?;
            }
        }
        Ok(())
    }

    #[cfg(not(unix))]
    {
        let params = socket2::TcpKeepalive::new().with_time(idle);
        cfg_keepalive_probes! {
            let params = params.with_interval(interval).with_retries(keepalive.retries);
        }
        socket
            .set_tcp_keepalive(&params)
            .map_err(failed("SIO_KEEPALIVE_VALS/TCP_KEEPCNT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected loopback pair: (client, accepted server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    /// Asserts that `stream` has keepalive on with exactly `expected`'s parameters.
    fn assert_keepalive(stream: &TcpStream, expected: TcpKeepalive) {
        let socket = SockRef::from(stream);
        assert!(socket.keepalive().unwrap());
        #[cfg(not(any(windows, target_os = "openbsd", target_os = "haiku")))]
        assert_eq!(socket.tcp_keepalive_time().unwrap(), expected.idle);
        cfg_keepalive_probes! {
            {
                #[cfg(not(windows))]
                assert_eq!(socket.tcp_keepalive_interval().unwrap(), expected.interval);
                assert_eq!(socket.tcp_keepalive_retries().unwrap(), expected.retries);
            }
        }
        let _ = expected;
    }

    #[tokio::test]
    async fn defaults_are_applied() {
        let (client, server) = pair().await;
        for stream in [&client, &server] {
            SocketOptions::default().apply(stream).unwrap();
            let socket = SockRef::from(stream);
            assert!(socket.tcp_nodelay().unwrap());
            assert_keepalive(stream, TcpKeepalive::DEFAULT);
            #[cfg(any(target_os = "linux", target_os = "android"))]
            assert_eq!(
                socket.tcp_user_timeout().unwrap(),
                Some(Duration::from_secs(60))
            );
        }
    }

    #[test]
    fn default_user_timeout_covers_keepalive() {
        let options = SocketOptions::default();
        let keepalive = options.keepalive.unwrap();
        assert_eq!(keepalive.detection_time(), Duration::from_secs(60));
        assert!(options.user_timeout.unwrap() >= keepalive.detection_time());
        assert_eq!(
            TcpKeepalive {
                retries: u32::MAX,
                ..keepalive
            }
            .detection_time(),
            Duration::from_secs(30 + 10 * u64::from(u32::MAX))
        );
        assert_eq!(
            TcpKeepalive {
                idle: Duration::MAX,
                ..keepalive
            }
            .detection_time(),
            Duration::MAX
        );
    }

    #[tokio::test]
    async fn custom_values_are_applied() {
        let (client, _server) = pair().await;
        let options = SocketOptions {
            nodelay: true,
            keepalive: Some(TcpKeepalive {
                idle: Duration::from_secs(5),
                interval: Duration::from_secs(2),
                retries: 7,
            }),
            user_timeout: Some(Duration::from_millis(12_345)),
            send_buffer: Some(32 * 1024),
            recv_buffer: Some(48 * 1024),
        };
        options.apply(&client).unwrap();
        let socket = SockRef::from(&client);
        assert!(socket.tcp_nodelay().unwrap());
        assert_keepalive(&client, options.keepalive.unwrap());
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(12_345))
        );
        // The kernel may round the buffers up (Linux doubles them), never down.
        assert!(socket.send_buffer_size().unwrap() >= 32 * 1024);
        assert!(socket.recv_buffer_size().unwrap() >= 48 * 1024);
    }

    #[tokio::test]
    async fn keepalive_times_round_up_to_whole_seconds() {
        let (client, _server) = pair().await;
        let options = SocketOptions {
            keepalive: Some(TcpKeepalive {
                idle: Duration::from_millis(1500),
                interval: Duration::from_millis(1),
                retries: 2,
            }),
            ..SocketOptions::default()
        };
        options.apply(&client).unwrap();
        assert_keepalive(
            &client,
            TcpKeepalive {
                idle: Duration::from_secs(2),
                interval: Duration::from_secs(1),
                retries: 2,
            },
        );
    }

    #[tokio::test]
    async fn nodelay_false_leaves_nagle_on() {
        let (client, _server) = pair().await;
        let options = SocketOptions {
            nodelay: false,
            ..SocketOptions::default()
        };
        options.apply(&client).unwrap();
        assert!(!SockRef::from(&client).tcp_nodelay().unwrap());

        // Also turns it back off after it was on.
        SocketOptions::default().apply(&client).unwrap();
        assert!(SockRef::from(&client).tcp_nodelay().unwrap());
        options.apply(&client).unwrap();
        assert!(!SockRef::from(&client).tcp_nodelay().unwrap());
    }

    #[tokio::test]
    async fn keepalive_none_leaves_it_off() {
        let options = SocketOptions {
            keepalive: None,
            user_timeout: None,
            ..SocketOptions::default()
        };
        let (client, _server) = pair().await;
        options.apply(&client).unwrap();
        let socket = SockRef::from(&client);
        assert!(!socket.keepalive().unwrap());
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);

        // Applying `None` over earlier options turns keepalive off and clears the user timeout.
        SocketOptions::default().apply(&client).unwrap();
        assert!(socket.keepalive().unwrap());
        options.apply(&client).unwrap();
        assert!(!socket.keepalive().unwrap());
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(socket.tcp_user_timeout().unwrap(), None);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn user_timeout_is_clamped_to_what_linux_accepts() {
        let (client, _server) = pair().await;
        for (requested, expected) in [
            (Duration::from_micros(10), Duration::from_millis(1)),
            (Duration::MAX, Duration::from_millis(i32::MAX as u64)),
        ] {
            let options = SocketOptions {
                user_timeout: Some(requested),
                ..SocketOptions::default()
            };
            options.apply(&client).unwrap();
            assert_eq!(
                SockRef::from(&client).tcp_user_timeout().unwrap(),
                Some(expected)
            );
        }
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn error_names_the_failing_option() {
        let (client, _server) = pair().await;
        let options = SocketOptions {
            keepalive: Some(TcpKeepalive {
                retries: 0, // Linux accepts 1..=127
                ..TcpKeepalive::DEFAULT
            }),
            ..SocketOptions::default()
        };
        let err = options.apply(&client).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<SocketOptionError>())
            .expect("wrapped SocketOptionError");
        assert_eq!(inner.option, "TCP_KEEPCNT");
        assert_eq!(inner.source.raw_os_error(), Some(22)); // EINVAL
        assert_eq!(err.to_string(), "failed to set socket option TCP_KEEPCNT");
        // Options before the failing one were set.
        assert_eq!(
            SockRef::from(&client).tcp_keepalive_time().unwrap(),
            TcpKeepalive::DEFAULT.idle
        );
    }
}
