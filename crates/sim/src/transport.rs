//! [`SimTransport`]: the node's injected [`Transport`] over turmoil's
//! simulated TCP.
//!
//! turmoil's `TcpListener` and `TcpStream` stand in for tokio's. Names resolve
//! through turmoil's DNS (a host registered as `n1` is dialled as `n1:2380`),
//! and every byte crosses turmoil's network, so partitions, latency and
//! crashes apply to Raft traffic and client traffic alike.
//!
//! Model differences from real TCP worth knowing when reading a trace:
//! - A segment dropped by a partition is never retransmitted. The receiver
//!   buffers everything after the hole, so a connection that carried data
//!   during a partition stays stalled after the partition heals until the
//!   HTTP/2 keepalive (10 s interval, 5 s timeout, see
//!   `zongheng::net::transport::channel`) closes it and the channel redials.
//!   Real TCP would retransmit and recover sooner; the simulator is the
//!   pessimistic case.
//! - Connecting through a partition fails at once with `ConnectionRefused`
//!   (the SYN is dropped with its reply channel), where real TCP would wait
//!   for a SYN timeout. Connecting to an idle host (no listener) is refused
//!   at once too, as with real TCP.
//! - Connecting to a crashed host never completes by itself: turmoil
//!   delivers nothing to a host that is down, so the SYN waits on the link
//!   until the host restarts. [`SimTransport`] gives up after
//!   [`CONNECT_TIMEOUT`] with `TimedOut`, as Linux does with its default
//!   SYN retries (`tcp_syn_retries` = 6: 1 + 2 + 4 + ... + 64 s). Code that
//!   dials a dead host without a deadline of its own waits that long, as it
//!   would in production.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zongheng::net::transport::{BoxFuture, BoxedConnection, Listener, Transport};

/// How long a dial waits for a host that does not answer: Linux's default
/// SYN retries (see the module doc).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(127);

/// Dials and listens on turmoil's simulated network. Must be used from inside
/// a turmoil host or client (turmoil panics otherwise).
///
/// Its connections belong to one host's power: once [`SimTransport::power_off`]
/// has been called (just before the simulator crashes the host), dropping a
/// connection sends nothing. turmoil's streams send a FIN or a RST when
/// dropped, and a crash drops the host's tasks in an order tokio derives
/// from process-wide task ids: the messages, and the latency draws they
/// take from the simulation's generator, would then depend on what ran
/// before in the process (another seed, another test thread). A power loss
/// sends nothing anyway; peers find out from timeouts and keepalives.
#[derive(Debug, Clone)]
pub struct SimTransport {
    powered: Arc<AtomicBool>,
}

impl Default for SimTransport {
    fn default() -> Self {
        Self {
            powered: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl SimTransport {
    /// From now on, dropping this transport's connections sends nothing.
    pub fn power_off(&self) {
        self.powered.store(false, Ordering::SeqCst);
    }

    fn wrap(&self, stream: turmoil::net::TcpStream) -> BoxedConnection {
        BoxedConnection(Box::new(SimConnection {
            stream: Some(stream),
            powered: self.powered.clone(),
        }))
    }
}

/// A turmoil stream that is forgotten, not closed, when its host has lost power.
struct SimConnection {
    stream: Option<turmoil::net::TcpStream>,
    powered: Arc<AtomicBool>,
}

impl SimConnection {
    fn stream(&mut self) -> Pin<&mut turmoil::net::TcpStream> {
        Pin::new(self.stream.as_mut().expect("the stream lives until drop"))
    }
}

impl Drop for SimConnection {
    fn drop(&mut self) {
        if !self.powered.load(Ordering::SeqCst) {
            if let Some(stream) = self.stream.take() {
                // Leaks the stream's buffers: a few per crash, for the length
                // of one simulation.
                std::mem::forget(stream);
            }
        }
    }
}

impl AsyncRead for SimConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for SimConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

impl Transport for SimTransport {
    fn dial(&self, address: String) -> BoxFuture<io::Result<BoxedConnection>> {
        let transport = self.clone();
        Box::pin(async move {
            let connect = turmoil::net::TcpStream::connect(address.as_str());
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {address} timed out")))??;
            Ok(transport.wrap(stream))
        })
    }

    fn wall_clock_ms(&self) -> u64 {
        // Simulated wall time (the cluster sets a fixed epoch), so timestamps replay.
        turmoil::since_epoch()
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or_else(|| turmoil::elapsed().as_millis() as u64)
    }

    fn listen(&self, address: SocketAddr) -> BoxFuture<io::Result<(SocketAddr, Listener)>> {
        let transport = self.clone();
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(address).await?;
            let bound = listener.local_addr()?;
            let incoming = futures::stream::unfold((listener, transport), |(listener, transport)| async move {
                let accepted = listener.accept().await.map(|(stream, _)| transport.wrap(stream));
                Some((accepted, (listener, transport)))
            });
            Ok((bound, Box::pin(incoming) as Listener))
        })
    }
}
