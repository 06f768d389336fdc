//! The gRPC services of one server, each added with the server's message limit.

use std::convert::Infallible;

use kappa_api::MessageLimit;
use tonic::{body::Body, server::NamedService};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_reflection::server::{v1, v1alpha};

use crate::{KappaRouter, ServerSecurity, kappa_server};

/// The largest message health and reflection accept: they are open without a token, and their
/// requests are a service name or a symbol.
const PROBE_MESSAGE_BYTES: usize = 16 * 1024;

/// The routes of a server being started: health and reflection, then the service's own.
pub struct Routes {
    router: KappaRouter,
    max_message_bytes: usize,
}

type Reflection<V1, V1Alpha> = (v1::ServerReflectionServer<V1>, v1alpha::ServerReflectionServer<V1Alpha>);

impl Routes {
    pub(crate) fn new<H, V1, V1Alpha>(
        security: &ServerSecurity,
        health: HealthServer<H>,
        (reflection_v1, reflection_v1alpha): Reflection<V1, V1Alpha>,
    ) -> Self
    where
        H: Health,
        V1: v1::ServerReflection,
        V1Alpha: v1alpha::ServerReflection,
    {
        let router = kappa_server(security)
            .add_service(health.max_decoding_message_size(PROBE_MESSAGE_BYTES))
            .add_service(reflection_v1.max_decoding_message_size(PROBE_MESSAGE_BYTES))
            .add_service(reflection_v1alpha.max_decoding_message_size(PROBE_MESSAGE_BYTES));
        Self {
            router,
            max_message_bytes: security.limits.max_message_bytes,
        }
    }

    /// Serves `service`, refusing request messages over `--max-message-bytes`.
    #[must_use]
    pub fn serve<S>(mut self, service: S) -> Self
    where
        S: MessageLimit
            + tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.router = self
            .router
            .add_service(service.with_message_limit(self.max_message_bytes));
        self
    }

    /// Done adding: what the service does at shutdown is set on the [`super::Running`].
    pub fn running(self) -> super::Running {
        super::Running {
            routes: self,
            on_drain: None,
            finish: None,
        }
    }

    pub(crate) fn into_router(self) -> KappaRouter {
        self.router
    }
}
