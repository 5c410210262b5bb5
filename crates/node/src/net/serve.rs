//! Serving gRPC routes on accepted connections, with hyper's HTTP/2 server.
//!
//! tonic's `Server` does the same job, but its hyper builder always stamps a
//! `date` header, read from the OS wall clock, on every response. The header
//! changes once a wall-clock second, and HPACK encodes a changed value as a
//! new literal, so the bytes a node sends depend on when, in real time, it
//! answered. In the simulator that made two runs of one seed differ (the
//! frame sizes feed flow control and turmoil's message schedule). Serving with
//! hyper directly lets us turn the header off; gRPC needs no `date` (grpc-go,
//! and so etcd, sends none). Everything else follows tonic's server: HTTP/2
//! only, a cap on concurrent streams per connection, graceful shutdown that
//! stops accepting at once and waits for open connections to finish.
//!
//! One wall-clock input is left on the server side: h2 remembers a stream the
//! server reset for one second of OS time (our channels, the client side,
//! remember none; see `transport::channel`), and hyper does not expose that
//! setting for servers. A late frame for such a stream is dropped within the
//! second and answered with RST_STREAM(STREAM_CLOSED) after it. A simulated
//! run only differs if such a frame arrives more than a wall-clock second
//! after the reset, which a partition that holds it for long enough can do.
//!
//! tonic's server also layers a `grpc-timeout` enforcer and an error-to-status
//! converter over the routes. Our services never fail as tower services
//! (their errors are `Status` responses), and a client that gives up resets
//! its stream, which makes hyper drop the handler; so neither is needed.

use std::future::Future;
use std::pin::{pin, Pin};

use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use crate::net::transport::{BoxedConnection, Listener};

/// HTTP/2 settings of one server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Concurrent streams a client may open on one connection (`None`: h2's
    /// default, unlimited).
    pub max_concurrent_streams: Option<u32>,
    /// Bytes a client may send on one stream before the server has read
    /// them (`None`: hyper's default, 1 MiB).
    pub stream_window_bytes: Option<u32>,
    /// Bytes a client may send on all streams of a connection before the
    /// server has read them (`None`: hyper's default, 1 MiB).
    pub connection_window_bytes: Option<u32>,
}

/// Serve `routes` on every connection `incoming` yields until `shutdown`
/// completes; then stop accepting, ask every open connection to finish
/// (GOAWAY, in-flight requests complete) and wait until they have.
pub async fn serve(
    routes: tonic::service::Routes,
    incoming: Listener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .auto_date_header(false)
        .max_concurrent_streams(options.max_concurrent_streams)
        .initial_stream_window_size(options.stream_window_bytes)
        .initial_connection_window_size(options.connection_window_bytes);
    let routes = routes.prepare();
    accept_until(
        incoming,
        shutdown,
        "a",
        move |connection| {
            let service = TowerToHyperService::new(routes.clone());
            builder.serve_connection(TokioIo::new(connection), service)
        },
        |served| served.graceful_shutdown(),
    )
    .await;
}

/// Serve `router` over HTTP/1.1 on every connection `incoming` yields until
/// `shutdown` completes; then stop accepting and let open connections
/// finish their request. For the HTTP/JSON API (`server::http`); no `date`
/// header, for the same reason as above.
pub async fn serve_http1(router: axum::Router, incoming: Listener, shutdown: impl Future<Output = ()>) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).auto_date_header(false);
    accept_until(
        incoming,
        shutdown,
        "an HTTP",
        move |connection| {
            let service = TowerToHyperService::new(router.clone());
            builder.serve_connection(TokioIo::new(connection), service)
        },
        |served| served.graceful_shutdown(),
    )
    .await;
}

/// The accept loop both servers share: run `serve` on every connection
/// `incoming` yields, each on its own task, until `shutdown` completes; then
/// close the listener, ask every open connection to finish (`graceful`) and
/// wait until all have. `kind` ("a", "an HTTP") names the connections in
/// log lines.
async fn accept_until<C>(
    incoming: Listener,
    shutdown: impl Future<Output = ()>,
    kind: &'static str,
    serve: impl Fn(BoxedConnection) -> C,
    graceful: fn(Pin<&mut C>),
) where
    C: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    // Each connection task holds a receiver; `closed()` below waits for all.
    let (stop_sender, stop_receiver) = watch::channel(false);
    {
        let mut incoming = incoming;
        let mut shutdown = pin!(shutdown);
        loop {
            let connection = tokio::select! {
                _ = &mut shutdown => break,
                next = incoming.next() => match next {
                    Some(Ok(connection)) => connection,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "accepting {kind} connection failed");
                        continue;
                    }
                    None => break,
                },
            };
            let served = serve(connection);
            let mut stop = stop_receiver.clone();
            tokio::spawn(async move {
                let mut served = pin!(served);
                tokio::select! {
                    result = served.as_mut() => {
                        if let Err(error) = result {
                            tracing::debug!(%error, "serving {kind} connection failed");
                        }
                        return;
                    }
                    _ = stop.wait_for(|stop| *stop) => graceful(served.as_mut()),
                }
                if let Err(error) = served.await {
                    tracing::debug!(%error, "serving {kind} connection failed during shutdown");
                }
            });
        }
        // `incoming` drops here: the listening socket closes before we drain.
    }
    drop(stop_receiver);
    let _ = stop_sender.send(true);
    stop_sender.closed().await;
}
