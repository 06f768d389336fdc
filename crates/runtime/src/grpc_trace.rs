//! Tower layers that carry W3C trace context through gRPC calls: the server layer continues the
//! caller's trace in a `grpc.server` span, the client layer opens a `grpc.client` span and sends
//! its context in the request metadata. A span lasts until the response body has ended, so a
//! streaming call is timed whole and its final `grpc-status` (in the trailers) is recorded.
//! Health checks and reflection are left untraced: probes call them every few seconds and would
//! bury the traces that matter.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::propagation::{context_from_http, inject_http};

/// Which side of the call a span stands for: it decides which codes are errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

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
    type Response = http::Response<TracedBody<RB>>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if !is_traced(path) || !crate::sampling::starts_span(path, request.headers()) {
            return TracedFuture::new(self.inner.call(request), Span::none(), Side::Server);
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
            // The authenticated principal, recorded by the auth layer inside this span.
            enduser.id = Empty,
        );
        // Must precede the span's first use: the parent is fixed when the span starts.
        let _ = span.set_parent(context_from_http(request.headers()));
        let future = span.in_scope(|| self.inner.call(request));
        TracedFuture::new(future, span, Side::Server)
    }
}

/// Client side: wraps a `Channel` so every call made through it is traced and propagated.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcClientTracing;

impl<S> Layer<S> for GrpcClientTracing {
    type Service = TracedClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracedClient {
            inner,
            authorization: None,
        }
    }
}

/// Kappa's client-side layer: trace context on every call, and the caller's bearer token when
/// it has one.
#[derive(Debug, Clone)]
pub struct TracedClient<S> {
    inner: S,
    authorization: Option<http::HeaderValue>,
}

/// A tonic channel whose calls carry trace context (and a token, when the caller has one).
pub type TracedChannel = TracedClient<tonic::transport::Channel>;

/// Wraps `channel` with the client layer.
pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    GrpcClientTracing.layer(channel)
}

/// Wraps `channel` with the client layer; every call sends `authorization: Bearer TOKEN`.
pub fn traced_with_token(channel: tonic::transport::Channel, token: &str) -> Result<TracedChannel, String> {
    let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| "the token holds characters a header cannot carry".to_owned())?;
    // Kept out of debug output and HPACK's dynamic table.
    value.set_sensitive(true);
    Ok(TracedClient {
        inner: channel,
        authorization: Some(value),
    })
}

impl<S, B, RB> Service<http::Request<B>> for TracedClient<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<TracedBody<RB>>;
    type Error = S::Error;
    type Future = TracedFuture<S::Future>;

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
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, authorization.clone());
        }
        let future = span.in_scope(|| self.inner.call(request));
        TracedFuture::new(future, span, Side::Client)
    }
}

pin_project! {
    /// The call, polled inside its span; hands the span on to the response body.
    pub struct TracedFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
        side: Side,
    }
}

impl<F> TracedFuture<F> {
    fn new(inner: F, span: Span, side: Side) -> Self {
        Self {
            inner,
            span: Some(span),
            side,
        }
    }
}

impl<F, RB, E> Future for TracedFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<TracedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span = this.span.as_ref().expect("polled after completion");
        let result = {
            let _entered = span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        let span = this.span.take().expect("polled after completion");
        let side = *this.side;
        Poll::Ready(match result {
            Ok(response) => {
                // A call that failed before any message has its status in the headers
                // (trailers-only); otherwise it comes with the trailers, at the body's end.
                let status = grpc_status(response.headers());
                if let Some(code) = status {
                    record(&span, side, code);
                }
                Ok(response.map(|inner| TracedBody {
                    inner,
                    span,
                    side,
                    recorded: status.is_some(),
                }))
            }
            Err(e) => {
                span.record("otel.status_code", "ERROR");
                Err(e)
            }
        })
    }
}

pin_project! {
    /// The response body, which keeps the call's span open until the last frame.
    pub struct TracedBody<B> {
        #[pin]
        inner: B,
        span: Span,
        side: Side,
        recorded: bool,
    }
}

impl<B: Body> Body for TracedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let _entered = this.span.enter();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    record(this.span, *this.side, code);
                    *this.recorded = true;
                }
            }
            Some(Err(_)) => {
                this.span.record("otel.status_code", "ERROR");
            }
            // A body that ends without trailers (an HTTP-level answer) is not a gRPC status.
            None if !*this.recorded => {
                *this.recorded = true;
            }
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_traced(path: &str) -> bool {
    !(path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection."))
}

fn split_path(path: &str) -> (&str, &str) {
    path.trim_start_matches('/').split_once('/').unwrap_or((path, ""))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// OpenTelemetry's gRPC conventions: on the server only codes that mean a server fault are
/// errors (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); on the
/// client every non-OK code is.
fn is_error(side: Side, code: i32) -> bool {
    match side {
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
        Side::Client => code != 0,
    }
}

fn record(span: &Span, side: Side, code: i32) {
    span.record("rpc.grpc.status_code", code);
    if is_error(side, code) {
        span.record("otel.status_code", "ERROR");
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
    fn statuses_are_read_from_headers_or_trailers_and_judged_per_side() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(5));
        assert!(!is_error(Side::Server, 5), "NOT_FOUND is the caller's problem");
        assert!(is_error(Side::Client, 5));
        assert!(is_error(Side::Server, 13));
        assert!(!is_error(Side::Client, 0));
    }
}
