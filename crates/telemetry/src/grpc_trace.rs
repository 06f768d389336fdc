//! Tower layers that carry W3C trace context through gRPC calls: the server layer continues the
//! caller's trace in a `grpc.server` span, the client layer opens a `grpc.client` span and sends
//! its context in the request metadata. Health checks and reflection are left untraced: probes
//! call them every few seconds and would bury the traces that matter.

use std::task::{Context, Poll};

use futures::future::{Either, FutureExt as _, Inspect};
use tower::{Layer, Service};
use tracing::{Instrument as _, Span, field::Empty, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::propagation::{context_from_http, inject_http};

type Recorded<F, RB, E> = Instrumented<Inspect<F, fn(&Result<http::Response<RB>, E>)>>;

/// Server side: `Server::builder().layer(GrpcServerTracing)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerTracing;

impl<S> Layer<S> for GrpcServerTracing {
    type Service = TracedServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracedServer { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TracedServer<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for TracedServer<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Recorded<S::Future, RB, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !is_traced(path) {
            return Either::Left(self.inner.call(request));
        }
        let (service, method) = split_path(path);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
        );
        // Must precede the span's first use: the parent is fixed when the span starts.
        let _ = span.set_parent(context_from_http(request.headers()));
        let future = span.in_scope(|| self.inner.call(request));
        Either::Right(future.inspect(record_server_status as fn(&_)).instrument(span))
    }
}

/// Client side: wraps a `Channel` so every call made through it is traced and propagated.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClientTracing;

impl<S> Layer<S> for GrpcClientTracing {
    type Service = TracedClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracedClient { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TracedClient<S> {
    inner: S,
}

/// A tonic channel whose calls carry trace context.
pub type TracedChannel = TracedClient<tonic::transport::Channel>;

/// Wraps `channel` with the client layer.
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    GrpcClientTracing.layer(channel)
}

impl<S, B, RB> Service<http::Request<B>> for TracedClient<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Recorded<S::Future, RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = split_path(path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
        );
        inject_http(&span.context(), request.headers_mut());
        let future = span.in_scope(|| self.inner.call(request));
        future.inspect(record_client_status as fn(&_)).instrument(span)
    }
}

fn is_traced(path: &str) -> bool {
    !(path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection."))
}

fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/').split_once('/').unwrap_or((path, ""))
}

/// The status of a response at its headers: `grpc-status` is there when the call failed before
/// any message (trailers-only); otherwise the call has started well (OK so far).
fn status_of<RB, E>(result: &Result<http::Response<RB>, E>) -> Option<i32> {
    match result {
        Ok(response) => Some(
            response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        ),
        Err(_) => None,
    }
}

// OpenTelemetry's gRPC conventions: on the server only codes that mean a server fault are
// errors; on the client every non-OK code is.
fn record_server_status<RB, E>(result: &Result<http::Response<RB>, E>) {
    let span = Span::current();
    match status_of(result) {
        Some(code) => {
            span.record("rpc.grpc.status_code", code);
            if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

fn record_client_status<RB, E>(result: &Result<http::Response<RB>, E>) {
    let span = Span::current();
    match status_of(result) {
        Some(0) => {
            span.record("rpc.grpc.status_code", 0);
        }
        Some(code) => {
            span.record("rpc.grpc.status_code", code);
            span.record("otel.status_code", "ERROR");
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method_and_probes_stay_untraced() {
        assert_eq!(
            split_path("/kappa.predictor.v1.Predictor/Predict"),
            ("kappa.predictor.v1.Predictor", "Predict")
        );
        assert!(is_traced("/inference.GRPCInferenceService/ModelInfer"));
        assert!(!is_traced("/grpc.health.v1.Health/Check"));
        assert!(!is_traced("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
    }

    #[test]
    fn the_status_is_read_from_a_trailers_only_response() {
        let ok: Result<http::Response<()>, ()> = Ok(http::Response::new(()));
        assert_eq!(status_of(&ok), Some(0));
        let failed: Result<http::Response<()>, ()> =
            Ok(http::Response::builder().header("grpc-status", "5").body(()).unwrap());
        assert_eq!(status_of(&failed), Some(5));
        assert_eq!(status_of::<(), ()>(&Err(())), None);
    }
}
