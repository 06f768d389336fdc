//! Every accepted connection, TLS or plaintext, has to prove itself: the HTTP/2 preface within
//! [`PREFACE_TIMEOUT`] of being handed to the server, then a byte from the peer at least every
//! idle period. An honest client sends the preface at once and answers the server's keepalive
//! pings, so the only peers this closes are the ones holding a socket open while saying nothing
//! (or one byte now and then): before the HTTP/2 handshake completes, nothing else would close
//! them. Connections and the reasons they were closed are metrics.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tonic::transport::server::Connected;

/// How long a connection has to send the HTTP/2 preface once accepted (after its TLS handshake).
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// The client connection preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".
const PREFACE_BYTES: u64 = 24;

/// Why a connection was closed (or never served), as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Closed {
    /// Its TLS handshake failed.
    HandshakeFailed,
    /// Its TLS handshake did not finish in time.
    HandshakeTimeout,
    /// Its TLS handshake was still pending when a newer connection needed the slot.
    HandshakeDisplaced,
    /// No HTTP/2 preface in time.
    PrefaceTimeout,
    /// Nothing from the peer for the idle period.
    Idle,
}

impl Closed {
    const ALL: [Self; 5] = [
        Self::HandshakeFailed,
        Self::HandshakeTimeout,
        Self::HandshakeDisplaced,
        Self::PrefaceTimeout,
        Self::Idle,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::HandshakeFailed => "handshake_failed",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeDisplaced => "handshake_displaced",
            Self::PrefaceTimeout => "preface_timeout",
            Self::Idle => "idle",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The connections of one gRPC server: their limits and their metrics.
#[derive(Debug)]
pub struct Connections {
    idle: Duration,
    open: Gauge,
    handshaking: Gauge,
    closed: Family<ReasonLabels, Counter>,
}

impl Connections {
    /// Connections idle for `idle` are closed: make it longer than the keepalive interval plus
    /// the time a peer has to answer a ping, so that only a peer that answers nothing is idle.
    pub fn new(idle: Duration) -> Arc<Self> {
        let connections = Self {
            idle,
            open: Gauge::default(),
            handshaking: Gauge::default(),
            closed: Family::default(),
        };
        for reason in Closed::ALL {
            let _ = connections.closed.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        Arc::new(connections)
    }

    /// The idle period for a server sending keepalive pings every `keepalive`: two missed
    /// pings and the 20 s each may take to be answered.
    pub fn for_keepalive(keepalive: Duration) -> Arc<Self> {
        Self::new(keepalive * 2 + Duration::from_secs(20))
    }

    /// Adds the series `kappa_server_connections`, `kappa_server_tls_handshakes_in_progress`
    /// and `kappa_server_connections_closed_total{reason}`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("kappa_server");
        r.register(
            "connections",
            "gRPC connections open (TLS handshake done), each closed when silent too long",
            self.open.clone(),
        );
        r.register(
            "tls_handshakes_in_progress",
            "TLS handshakes under way; a new connection displaces the oldest past the limit",
            self.handshaking.clone(),
        );
        r.register(
            "connections_closed",
            "Connections closed by the server for what they did not do: handshake_failed, handshake_timeout, handshake_displaced, preface_timeout, idle",
            self.closed.clone(),
        );
    }

    pub(crate) fn closed(&self, reason: Closed) {
        self.closed
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    pub(crate) fn handshake_started(&self) {
        self.handshaking.inc();
    }

    pub(crate) fn handshake_ended(&self) {
        self.handshaking.dec();
    }

    /// `io`, watched from now on.
    pub fn watch<IO>(self: &Arc<Self>, io: IO) -> Watched<IO> {
        self.open.inc();
        let now = Instant::now();
        Watched {
            inner: io,
            connections: Arc::clone(self),
            accepted: now,
            last_read: now,
            read: 0,
            timer: Box::pin(tokio::time::sleep_until(now + PREFACE_TIMEOUT)),
        }
    }
}

/// A connection that is closed (reads fail with `TimedOut`) when its peer stays silent.
pub struct Watched<IO> {
    inner: IO,
    connections: Arc<Connections>,
    accepted: Instant,
    last_read: Instant,
    /// Bytes read so far, counted up to the preface's length.
    read: u64,
    /// Set for the deadline as of the last time it fired, not moved on every read (that would
    /// touch the timer wheel per request): when it fires early, it is set again for the real one.
    timer: Pin<Box<Sleep>>,
}

impl<IO> Watched<IO> {
    /// When the connection is due to be closed, and why, as of what it has sent.
    fn due(&self) -> (Instant, Closed) {
        if self.read < PREFACE_BYTES {
            (self.accepted + PREFACE_TIMEOUT, Closed::PrefaceTimeout)
        } else {
            (self.last_read + self.connections.idle, Closed::Idle)
        }
    }
}

impl<IO> Drop for Watched<IO> {
    fn drop(&mut self) {
        self.connections.open.dec();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                let got = (buf.filled().len() - before) as u64;
                if got > 0 {
                    self.read = (self.read + got).min(PREFACE_BYTES);
                    self.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                if self.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let (due, reason) = self.due();
                if Instant::now() >= due {
                    self.connections.closed(reason);
                    tracing::debug!(reason = reason.as_str(), "closing a silent connection");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the peer sent nothing in time ({})", reason.as_str()),
                    )));
                }
                // The peer spoke since the timer was set: wait for the deadline as it is now.
                self.timer.as_mut().reset(due);
            },
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The peer's address and certificates are the inner connection's: authentication sees through.
impl<IO: Connected> Connected for Watched<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_closed_after_the_preface_timeout_and_a_talking_one_only_when_idle() {
        let connections = Connections::new(Duration::from_secs(60));
        let (mut peer, server) = tokio::io::duplex(64);
        let mut watched = connections.watch(server);
        let mut buf = [0_u8; 64];
        let started = Instant::now();
        let error = watched.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), PREFACE_TIMEOUT);

        let (mut peer2, server) = tokio::io::duplex(64);
        let mut talking = connections.watch(server);
        peer2.write_all(&[b'P'; 24]).await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 24);
        // Past the preface timeout, it is the idle period that counts, from the last byte.
        tokio::time::sleep(Duration::from_secs(50)).await;
        peer2.write_all(b"x").await.unwrap();
        assert_eq!(talking.read(&mut buf).await.unwrap(), 1);
        let quiet = Instant::now();
        let error = talking.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(quiet.elapsed(), Duration::from_secs(60));

        drop((watched, talking));
        peer.shutdown().await.unwrap();
        assert_eq!(connections.open.get(), 0);
        let closed = |reason: Closed| {
            connections
                .closed
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .get()
        };
        assert_eq!((closed(Closed::PrefaceTimeout), closed(Closed::Idle)), (1, 1));
    }
}
