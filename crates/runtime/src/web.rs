//! HTTP/1.1 servers beside gRPC: `/metrics`, and a service's own web port (the console). Both
//! go through [`serve_http`], so they get the server's TLS (re-read on rotation, handshakes
//! bounded), a bound on how long a client may take to send its request head, and a shutdown
//! that ends every connection.

use std::{convert::Infallible, time::Duration};

use http_body::Body;
use hyper::{Request, Response, body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt as _, wrappers::TcpListenerStream};
use tokio_util::sync::CancellationToken;

use crate::{connection::Connections, tls::ServerTls};

/// How long a client has to send a request's head: a peer that connects and trickles bytes
/// cannot hold a connection (and its task) for ever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their response once shutdown begins (a page's
/// event stream ends by itself when `stop` is cancelled).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `service` over HTTP/1.1 on `listener` (TLS when `tls` is given) until `stop` is
/// cancelled; then asks every connection to close and gives it [`CLOSE_GRACE`] to do so.
pub async fn serve_http<S, B>(listener: TcpListener, tls: Option<ServerTls>, service: S, stop: CancellationToken)
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tls {
        // Failed handshakes never reach here: the TLS acceptor logs and drops them. These
        // connections are not the gRPC server's: counted apart, in no series.
        Some(tls) => {
            let connections = Connections::new(Duration::from_secs(60));
            let accepted = tls.incoming(listener, connections).filter_map(Result::ok);
            serve_connections(accepted, service, stop).await;
        }
        None => {
            let accepted = TcpListenerStream::new(listener).filter_map(|accepted| match accepted {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    Some(stream)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP listener failed to accept a connection");
                    None
                }
            });
            serve_connections(accepted, service, stop).await;
        }
    }
}

async fn serve_connections<C, IO, S, B>(connections: C, service: S, stop: CancellationToken)
where
    C: Stream<Item = IO>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(connections);
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            next = connections.next() => match next {
                Some(stream) => stream,
                None => return,
            },
        };
        let (service, stop) = (TowerToHyperService::new(service.clone()), stop.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
}

/// What a service's own HTTP port gets from the server's security flags: the TLS of its gRPC
/// port (HTTP/1.1, no client certificate: browsers have none) and the same token file, so a
/// principal has the same roles on every port.
#[derive(Clone)]
pub struct WebSecurity {
    pub tls: Option<ServerTls>,
    pub auth: crate::auth::AuthLayer,
}

impl WebSecurity {
    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
