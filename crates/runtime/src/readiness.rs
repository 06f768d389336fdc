//! Readiness with reasons, and supervised background work.
//!
//! A service is ready (grpc.health.v1 SERVING for its own names) when none of its components
//! reports a problem and it is not draining. Components report and clear problems from any
//! thread; one task publishes each change to the health service in order, so `Watch` streams
//! every transition, and the problems themselves are there to show (logs, status detail).
//!
//! Background tasks run under [`Readiness::supervise`]: a task that fails or panics is reported
//! (NOT_SERVING, with what happened and when it restarts), restarted with capped exponential
//! backoff, and counted. Nothing dies silently.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

#[derive(Debug, Clone, Default)]
struct State {
    problems: BTreeMap<&'static str, String>,
    draining: bool,
}

impl State {
    fn status(&self) -> ServingStatus {
        if self.draining || !self.problems.is_empty() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ComponentLabels {
    component: &'static str,
}

/// The readiness of one service, published to its grpc.health.v1 service names.
#[derive(Debug)]
pub struct Readiness {
    state: watch::Sender<State>,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    restarts: Family<ComponentLabels, Counter>,
    ready: Gauge,
    supervisors: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The first delay before a failed task is restarted; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A restarted task that has run this long is healthy again: its next failure starts over.
const STABLE_AFTER: Duration = Duration::from_secs(60);

impl Readiness {
    /// Publishes readiness for `services` on `reporter`; `initial` problems hold it NOT_SERVING
    /// until their components clear them (a replay not caught up, no model loaded yet).
    pub async fn start(
        reporter: HealthReporter,
        services: &[&'static str],
        initial: &[(&'static str, &str)],
    ) -> Arc<Self> {
        let state = State {
            problems: initial.iter().map(|(c, p)| (*c, (*p).to_owned())).collect(),
            draining: false,
        };
        let status = state.status();
        for service in services {
            reporter.set_service_status(*service, status).await;
        }
        reporter
            .set_service_status(crate::LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let (tx, mut rx) = watch::channel(state);
        let readiness = Arc::new(Self {
            state: tx,
            reporter: reporter.clone(),
            services: services.to_vec(),
            restarts: Family::default(),
            ready: Gauge::default(),
            supervisors: std::sync::Mutex::default(),
        });
        readiness.ready.set(i64::from(status == ServingStatus::Serving));
        let (services, ready) = (services.to_vec(), readiness.ready.clone());
        // Ends when the last `Readiness` handle is dropped (the sender goes with it).
        tokio::spawn(async move {
            let mut published = status;
            while rx.changed().await.is_ok() {
                let state = rx.borrow_and_update().clone();
                let status = state.status();
                if status == published {
                    continue;
                }
                match status {
                    ServingStatus::Serving => tracing::info!("ready: every component is serving"),
                    _ if state.draining => tracing::info!("not ready: draining"),
                    _ => tracing::warn!(problems = ?state.problems, "not ready"),
                }
                for service in &services {
                    reporter.set_service_status(*service, status).await;
                }
                ready.set(i64::from(status == ServingStatus::Serving));
                published = status;
            }
        });
        readiness
    }

    /// `component` cannot do its part: the service is NOT_SERVING until it is cleared.
    pub fn report(&self, component: &'static str, problem: impl Into<String>) {
        let problem = problem.into();
        self.state.send_if_modified(|s| {
            let changed = s.problems.get(component) != Some(&problem);
            s.problems.insert(component, problem);
            changed
        });
    }

    /// `component` is doing its part again.
    pub fn clear(&self, component: &'static str) {
        self.state.send_if_modified(|s| s.problems.remove(component).is_some());
    }

    /// What stands between the service and SERVING, as `component: problem` lines.
    pub fn problems(&self) -> Vec<String> {
        self.state
            .borrow()
            .problems
            .iter()
            .map(|(c, p)| format!("{c}: {p}"))
            .collect()
    }

    pub fn is_ready(&self) -> bool {
        self.state.borrow().status() == ServingStatus::Serving
    }

    /// Shutdown has begun: NOT_SERVING from now on, published before this returns so load
    /// balancers hear it before the listener closes.
    pub async fn drain(&self) {
        self.state.send_modify(|s| s.draining = true);
        for service in &self.services {
            self.reporter
                .set_service_status(*service, ServingStatus::NotServing)
                .await;
        }
    }

    /// `<prefix>_ready` and `<prefix>_component_restarts_total{component}`, with the service's
    /// prefix (`kappa_predictor`, …).
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let registry = registry.sub_registry_with_prefix(prefix);
        registry.register(
            "ready",
            "1 while this replica reports SERVING (no component has a problem), else 0",
            self.ready.clone(),
        );
        registry.register(
            "component_restarts",
            "Background tasks restarted after they failed or panicked, by component",
            self.restarts.clone(),
        );
    }

    /// Runs the task `make` builds until `stop`, restarting it whenever it fails, panics or
    /// ends on its own; while it waits to restart, `component` reports what happened.
    pub fn supervise<F, M>(self: &Arc<Self>, component: &'static str, stop: CancellationToken, mut make: M)
    where
        M: FnMut() -> F + Send + 'static,
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let readiness = Arc::clone(self);
        let _ = self.restarts.get_or_create(&ComponentLabels { component });
        let supervisor = tokio::spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let started = Instant::now();
                let mut task = tokio::spawn(make());
                let ended = tokio::select! {
                    // The task sees the same token and finishes what it started;
                    // `stopped` bounds how long that may take.
                    () = stop.cancelled() => (&mut task).await,
                    ended = &mut task => ended,
                };
                if stop.is_cancelled() {
                    match ended {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(component, "background task failed while stopping: {e:#}"),
                        Err(e) => tracing::error!(component, "background task ended badly while stopping: {e}"),
                    }
                    return;
                }
                let what = match ended {
                    Ok(Ok(())) => "stopped on its own".to_owned(),
                    Ok(Err(e)) => format!("failed: {e:#}"),
                    Err(e) if e.is_panic() => format!("panicked: {}", panic_message(e.into_panic())),
                    Err(e) => format!("was cancelled: {e}"),
                };
                if started.elapsed() >= STABLE_AFTER {
                    backoff = FIRST_BACKOFF;
                }
                tracing::error!(component, restart_in = ?backoff, "background task {what}");
                readiness.report(component, format!("{what}; restarting in {backoff:?}"));
                readiness.restarts.get_or_create(&ComponentLabels { component }).inc();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                readiness.clear(component);
                tracing::info!(component, "restarting background task");
            }
        });
        self.supervisors
            .lock()
            .expect("supervisors lock poisoned")
            .push(supervisor);
    }

    /// After the stop token of [`Readiness::supervise`] is cancelled: waits up to `grace` for
    /// every supervised task to finish what it started (stream scoring commits its offsets).
    pub async fn stopped(&self, grace: Duration) {
        let supervisors = std::mem::take(&mut *self.supervisors.lock().expect("supervisors lock poisoned"));
        if tokio::time::timeout(grace, futures::future::join_all(supervisors))
            .await
            .is_err()
        {
            tracing::warn!(?grace, "background tasks did not finish within the grace period");
        }
    }
}

/// The text a panic was raised with, when it has one.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::{HealthCheckRequest, health_server::Health};

    use super::*;

    async fn status_of(service: &impl Health, name: &str) -> i32 {
        service
            .check(tonic::Request::new(HealthCheckRequest { service: name.into() }))
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }

    #[tokio::test]
    async fn problems_hold_readiness_until_every_one_is_cleared() {
        let reporter = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let readiness = Readiness::start(reporter, &["svc"], &[("model", "none loaded yet")]).await;
        let serving = ServingStatus::Serving as i32;
        let not_serving = ServingStatus::NotServing as i32;
        assert_eq!(status_of(&service, "svc").await, not_serving);
        assert_eq!(status_of(&service, crate::LIVENESS_SERVICE).await, serving);
        readiness.report("stream", "broker away");
        readiness.clear("model");
        assert_eq!(readiness.problems(), vec!["stream: broker away".to_owned()]);
        assert!(!readiness.is_ready());
        readiness.clear("stream");
        assert!(readiness.is_ready());
        wait_for(&service, "svc", serving).await;
        readiness.drain().await;
        assert_eq!(status_of(&service, "svc").await, not_serving);
        readiness.clear("nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(status_of(&service, "svc").await, not_serving, "draining is final");
    }

    async fn wait_for(service: &impl Health, name: &str, status: i32) {
        for _ in 0..100 {
            if status_of(service, name).await == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{name} never reached status {status}");
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_restarted_and_counted() {
        let reporter = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let readiness = Readiness::start(reporter, &["svc"], &[]).await;
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counted = Arc::clone(&runs);
        readiness.supervise("worker", stop.clone(), move || {
            let run = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if run == 0 {
                    panic!("injected");
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let problems = readiness.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("worker: panicked: injected; restarting in"),
            "{problems:?}"
        );
        assert_eq!(status_of(&service, "svc").await, ServingStatus::NotServing as i32);
        tokio::time::sleep(FIRST_BACKOFF + Duration::from_millis(100)).await;
        assert!(readiness.is_ready(), "{:?}", readiness.problems());
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2, "restarted once");
        assert_eq!(
            readiness
                .restarts
                .get_or_create(&ComponentLabels { component: "worker" })
                .get(),
            1
        );
        stop.cancel();
    }
}
