use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt as _, wrappers::TcpListenerStream};

use crate::tls::ServerTls;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` in the OpenMetrics text format (which Prometheus scrapes natively) until
/// `shutdown` resolves, over TLS when `tls` is given. Returns once the listener is closed.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
    tls: Option<ServerTls>,
) {
    match tls {
        // Failed handshakes never reach here: the TLS acceptor logs and drops them.
        // Its connections are not the gRPC server's: counted apart, in no series.
        Some(tls) => {
            let connections = crate::connection::Connections::new(Duration::from_secs(60));
            serve_connections(
                tls.incoming(listener, connections).filter_map(Result::ok),
                registry,
                shutdown,
            )
            .await
        }
        None => {
            let accepted = TcpListenerStream::new(listener).filter_map(|accepted| match accepted {
                Ok(stream) => Some(stream),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener failed to accept a connection");
                    None
                }
            });
            serve_connections(accepted, registry, shutdown).await;
        }
    }
}

async fn serve_connections<S, IO>(connections: S, registry: Arc<Registry>, shutdown: impl Future<Output = ()>)
where
    S: Stream<Item = IO>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::pin!(shutdown);
    tokio::pin!(connections);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            next = connections.next() => match next {
                Some(stream) => stream,
                None => return,
            },
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let registry = Arc::clone(&registry);
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status, content_type, body: String| {
        Response::builder()
            .status(status)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts are valid")
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are served at /metrics\n".into(),
        );
    }
    let mut body = String::with_capacity(8 * 1024);
    match encode(&mut body, registry) {
        Ok(()) => reply(StatusCode::OK, OPENMETRICS, body),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding failed: {e}\n"),
        ),
    }
}
