//! Dialing and listening, injected.
//!
//! Every socket the node opens goes through a [`Transport`], so the same node
//! code runs on real TCP and on the simulator's network (turmoil), where the
//! simulator can partition, delay and drop. The gRPC servers accept from a
//! [`Listener`] and the gRPC clients dial through [`Transport::dial`].

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream: a TCP connection or a simulated one.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A boxed connection, for the gRPC servers (`net::serve`) and clients.
pub struct BoxedConnection(pub Box<dyn Connection>);

impl AsyncRead for BoxedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BoxedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Accepted connections, as `net::serve::serve` takes them.
pub type Listener = Pin<Box<dyn Stream<Item = io::Result<BoxedConnection>> + Send>>;

/// Opens connections and listening sockets.
pub trait Transport: Send + Sync + 'static {
    /// Connect to `address` ("host:port").
    fn dial(&self, address: String) -> BoxFuture<io::Result<BoxedConnection>>;
    /// Listen on `address`; returns the bound address (port 0 picks one) and the
    /// stream of accepted connections.
    fn listen(&self, address: SocketAddr) -> BoxFuture<io::Result<(SocketAddr, Listener)>>;
    /// Wall-clock milliseconds since the Unix epoch: the physical part of
    /// transaction timestamps. The simulator answers with simulated time.
    fn wall_clock_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Real TCP, with Nagle off (Raft and gRPC send small latency-bound frames).
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpTransport;

impl Transport for TcpTransport {
    fn dial(&self, address: String) -> BoxFuture<io::Result<BoxedConnection>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            Ok(BoxedConnection(Box::new(stream)))
        })
    }

    fn listen(&self, address: SocketAddr) -> BoxFuture<io::Result<(SocketAddr, Listener)>> {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind(address).await?;
            let bound = listener.local_addr()?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener.accept().await.and_then(|(stream, _)| {
                    stream.set_nodelay(true)?;
                    Ok(BoxedConnection(Box::new(stream)))
                });
                Some((accepted, listener))
            });
            Ok((bound, Box::pin(incoming) as Listener))
        })
    }
}

/// Build a lazily connecting gRPC channel to `address` through `transport`.
/// The channel reconnects by itself after a failure.
///
/// A stream this side cancels is forgotten at once
/// (`http2_max_concurrent_reset_streams(0)`): a late frame for it is answered
/// with RST_STREAM(STREAM_CLOSED) instead of being dropped quietly. h2 would
/// otherwise remember up to 10 cancelled streams for one second of OS wall
/// clock, and which late frames get an answer would depend on how fast the
/// process runs, so the simulator could not replay a seed.
pub fn channel(transport: Arc<dyn Transport>, address: &str) -> tonic::transport::Channel {
    let target = address.to_string();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("a host:port is a valid URI")
        .http2_max_concurrent_reset_streams(0)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(5))
        .keep_alive_while_idle(true);
    endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
        let transport = transport.clone();
        let target = target.clone();
        async move {
            let connection = transport.dial(target).await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(connection))
        }
    }))
}

/// A connection that holds a slot of its listener's connection limit until
/// it is dropped.
struct CountedConnection {
    inner: BoxedConnection,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl AsyncRead for CountedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Accept at most `max_connections` open connections from `listener`; a
/// connection over the limit is closed at once (and logged), so a flood of
/// clients cannot exhaust the node's memory or file descriptors.
pub fn limit_connections(listener: Listener, max_connections: usize, what: &'static str) -> Listener {
    use futures::StreamExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let limited = listener.filter_map(move |accepted| {
        let slots = slots.clone();
        async move {
            match accepted {
                Err(error) => Some(Err(error)),
                Ok(connection) => match slots.try_acquire_owned() {
                    Ok(slot) => Some(Ok(BoxedConnection(Box::new(CountedConnection {
                        inner: connection,
                        _slot: slot,
                    })))),
                    Err(_) => {
                        tracing::warn!(
                            limit = max_connections,
                            "{what}: connection limit reached; closing a new connection"
                        );
                        None
                    }
                },
            }
        }
    });
    Box::pin(limited)
}
