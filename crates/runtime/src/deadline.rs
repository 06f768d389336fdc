//! A deadline on every unary call, as one tower layer: a call still running after it is answered
//! `DEADLINE_EXCEEDED` and its work dropped, so a stuck dependency cannot pile up calls without
//! bound. Streaming calls are exempt (a watch lasts as long as its caller wants; a publish has
//! its own idle limit), and a caller's shorter `grpc-timeout` is honoured by tonic itself.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tonic::Status;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct DeadlineLayer {
    limit: Duration,
    streaming: Arc<HashSet<String>>,
}

impl DeadlineLayer {
    /// `limit` for every unary call; `streaming` lists the paths left alone.
    pub fn new(limit: Duration, streaming: impl IntoIterator<Item = String>) -> Self {
        Self {
            limit,
            streaming: Arc::new(streaming.into_iter().collect()),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S, B, RB> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone,
    RB: Default,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let streaming = self.layer.streaming.contains(request.uri().path());
        // A refcounted copy, read only if the deadline passes: nothing allocated per call.
        let uri = request.uri().clone();
        let limit = self.layer.limit;
        DeadlineFuture {
            call: crate::layer::take_ready(&mut self.inner).call(request),
            timer: (!streaming).then(|| tokio::time::sleep(limit)),
            uri,
            limit,
        }
    }
}

pin_project! {
    /// The call, or DEADLINE_EXCEEDED when its timer fires first (unary calls only).
    pub struct DeadlineFuture<F> {
        #[pin]
        call: F,
        #[pin]
        timer: Option<tokio::time::Sleep>,
        uri: http::Uri,
        limit: Duration,
    }
}

impl<F, RB, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
    RB: Default,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.call.poll(cx) {
            return Poll::Ready(answer);
        }
        match this.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => {
                let (path, limit) = (this.uri.path(), *this.limit);
                tracing::warn!(path, ?limit, "a call ran past its deadline and was dropped");
                Poll::Ready(Ok(Status::deadline_exceeded(format!(
                    "{path} did not finish within this server's {limit:?} (--request-timeout-seconds)"
                ))
                .into_http::<RB>()))
            }
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    #[tokio::test]
    async fn a_slow_unary_call_gets_deadline_exceeded_and_a_stream_is_left_alone() {
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Infallible>(http::Response::new(String::from("done")))
        });
        let layer = DeadlineLayer::new(Duration::from_millis(50), ["/a.B/Watch".to_owned()]);
        let mut service = layer.layer(slow);
        let request = |path: &str| http::Request::builder().uri(path).body(()).unwrap();
        let answer = service.call(request("/a.B/Get")).await.unwrap();
        let status = Status::from_header_map(answer.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("--request-timeout-seconds"));
        let streamed = service.call(request("/a.B/Watch")).await.unwrap();
        assert_eq!(streamed.body(), "done");
    }
}
