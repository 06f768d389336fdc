use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Server,
    server::{Connected, Router, TcpIncoming},
};
use tower::layer::util::{Identity, Stack};

use crate::{GrpcServerTracing, Readiness, ServerSecurity, auth::AuthLayer, deadline::DeadlineLayer};

/// The layers of every Kappa server, outermost first: tracing, auth, the unary deadline.
pub type KappaLayers = Stack<DeadlineLayer, Stack<AuthLayer, Stack<GrpcServerTracing, Identity>>>;

/// A server whose calls are traced (see [`GrpcServerTracing`]), authorised and bounded in time.
pub type KappaRouter = Router<KappaLayers>;

/// `Server::builder()` with the connection limits and layers every Kappa server uses: tracing
/// outside (refused calls are traced too), then the auth layer of `security`, then the deadline
/// on unary calls.
pub fn kappa_server(security: &ServerSecurity) -> Server<KappaLayers> {
    let limits = security.limits;
    Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .max_frame_size(crate::HTTP2_MAX_FRAME_SIZE)
        .initial_stream_window_size(crate::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(crate::HTTP2_CONNECTION_WINDOW)
        .layer(GrpcServerTracing)
        .layer(security.auth.clone())
        .layer(security.deadline.clone())
}

/// Serves `router` on `listener` (over TLS when `security` has it) until `shutdown` resolves;
/// then reports NOT_SERVING (so load balancers stop sending), runs
/// `on_shutdown`, stops accepting, and gives the calls still running `grace` to finish before
/// they are dropped.
pub async fn serve_gracefully(
    router: KappaRouter,
    listener: TcpListener,
    security: &ServerSecurity,
    shutdown: impl Future<Output = ()>,
    readiness: &Readiness,
    grace: Duration,
    on_shutdown: impl FnOnce(),
) -> Result<(), tonic::transport::Error> {
    let connections = Arc::clone(&security.connections);
    match &security.tls {
        Some(tls) => {
            let incoming = tls
                .incoming(listener, Arc::clone(&connections))
                .map(move |accepted| accepted.map(|io| connections.watch(io)));
            drain(router, incoming, shutdown, readiness, grace, on_shutdown).await
        }
        // Small unary answers must not wait for Nagle's algorithm (a 40 ms stall per reply).
        None => {
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(move |accepted| accepted.map(|io| connections.watch(io)));
            drain(router, incoming, shutdown, readiness, grace, on_shutdown).await
        }
    }
}

async fn drain<S, IO, IE>(
    router: KappaRouter,
    incoming: S,
    shutdown: impl Future<Output = ()>,
    readiness: &Readiness,
    grace: Duration,
    on_shutdown: impl FnOnce(),
) -> Result<(), tonic::transport::Error>
where
    S: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain = CancellationToken::new();
    let serve = router.serve_with_incoming_shutdown(incoming, drain.clone().cancelled_owned());
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result,
        () = shutdown => {}
    }
    readiness.drain().await;
    on_shutdown();
    drain.cancel();
    match tokio::time::timeout(grace, &mut serve).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(?grace, "calls still running after the grace period were dropped");
            Ok(())
        }
    }
}
