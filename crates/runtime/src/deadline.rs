//! A deadline on every unary call, as one tower layer: a call still running after it is answered
//! `DEADLINE_EXCEEDED` and its work dropped, so a stuck dependency cannot pile up calls without
//! bound. Streaming calls are exempt (a watch lasts as long as its caller wants; a publish has
//! its own idle limit), and a caller's shorter `grpc-timeout` is honoured by tonic itself.

use std::{
    collections::HashSet,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{BoxFuture, FutureExt as _};
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
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path().to_owned();
        if self.layer.streaming.contains(&path) {
            return ready.call(request).boxed();
        }
        let limit = self.layer.limit;
        let call = ready.call(request);
        async move {
            match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(path, ?limit, "a call ran past its deadline and was dropped");
                    Ok(Status::deadline_exceeded(format!(
                        "{path} did not finish within this server's {limit:?} (--request-timeout-seconds)"
                    ))
                    .into_http::<RB>())
                }
            }
        }
        .boxed()
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
