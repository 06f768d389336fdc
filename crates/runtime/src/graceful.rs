use std::{future::Future, time::Duration};

use tokio::net::TcpListener;

use crate::GrpcServerTracing;
use tokio_util::sync::CancellationToken;
use tonic::transport::{
    Server,
    server::{Router, TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::layer::util::{Identity, Stack};

/// A server whose calls are traced (see [`GrpcServerTracing`]).
pub type TracedRouter = Router<Stack<GrpcServerTracing, Identity>>;

/// `Server::builder()` with the tracing layer every Kappa server uses.
pub fn traced_server() -> Server<Stack<GrpcServerTracing, Identity>> {
    Server::builder().layer(GrpcServerTracing)
}

/// Serves `router` on `listener` until `shutdown` resolves; then reports NOT_SERVING for
/// `services` (so load balancers stop sending), runs `on_shutdown`, stops accepting, and gives the
/// calls still running `grace` to finish before they are dropped.
pub async fn serve_gracefully(
    router: TracedRouter,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    health: &HealthReporter,
    services: &[&str],
    grace: Duration,
    on_shutdown: impl FnOnce(),
) -> Result<(), tonic::transport::Error> {
    let drain = CancellationToken::new();
    let serve = router.serve_with_incoming_shutdown(
        // Small unary answers must not wait for Nagle's algorithm (a 40 ms stall per reply).
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        drain.clone().cancelled_owned(),
    );
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => return result,
        () = shutdown => {}
    }
    for service in services {
        health.set_service_status(*service, ServingStatus::NotServing).await;
    }
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
