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
//! - Connecting through a partition or to a crashed host fails at once with
//!   `ConnectionRefused` (the SYN is dropped with its reply channel), where
//!   real TCP would wait for a SYN timeout.

use std::io;
use std::net::SocketAddr;

use zongheng::net::transport::{BoxFuture, BoxedConnection, Listener, Transport};

/// Dials and listens on turmoil's simulated network. Must be used from inside
/// a turmoil host or client (turmoil panics otherwise).
#[derive(Debug, Default, Clone, Copy)]
pub struct SimTransport;

impl Transport for SimTransport {
    fn dial(&self, address: String) -> BoxFuture<io::Result<BoxedConnection>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address.as_str()).await?;
            Ok(BoxedConnection(Box::new(stream)))
        })
    }

    fn listen(&self, address: SocketAddr) -> BoxFuture<io::Result<(SocketAddr, Listener)>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(address).await?;
            let bound = listener.local_addr()?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let accepted = listener
                    .accept()
                    .await
                    .map(|(stream, _)| BoxedConnection(Box::new(stream)));
                Some((accepted, listener))
            });
            Ok((bound, Box::pin(incoming) as Listener))
        })
    }
}
