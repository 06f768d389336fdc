use std::{convert::Infallible, sync::Arc};

use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tls::ServerTls;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` in the OpenMetrics text format (which Prometheus scrapes natively) until
/// `stop` is cancelled, over TLS when `tls` is given.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    stop: CancellationToken,
    tls: Option<ServerTls>,
) {
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let registry = Arc::clone(&registry);
        async move { Ok::<_, Infallible>(respond(&req, &registry)) }
    });
    crate::web::serve_http(listener, tls, service, stop).await;
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
