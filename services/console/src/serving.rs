//! The Serving page's state: each predictor replica's GetStatus, asked every few seconds. The
//! replicas are the `--predictor` URLs, and every address the host of a `--predictor-replicas` URL
//! resolves to (on Kubernetes, a headless Service: one address per pod).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use kappa_api::predictor::{GetStatusRequest, PredictorStatus, predictor_client::PredictorClient};
use kappa_client::{ClientSecurity, ServiceUrl, TracedChannel};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often each replica is asked.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long one answer may take before the replica counts as unreachable.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a `--predictor-replicas` name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);
/// Most replicas one name may resolve to.
const REPLICAS_PER_NAME: usize = 256;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    pub url: String,
    /// The `--predictor-replicas` URL whose host name resolved to this replica's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovered_from: Option<String>,
    /// Its status (the predictor's JSON), when it answered last time.
    pub status: Option<serde_json::Value>,
    /// Why it did not answer.
    pub problem: Option<String>,
    pub checked_at_ms: i64,
}

#[derive(Debug)]
pub struct Serving {
    replicas: Mutex<Vec<Replica>>,
    changed: watch::Sender<u64>,
}

impl Serving {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            replicas: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        })
    }

    pub fn replicas(&self) -> Vec<Replica> {
        self.replicas.lock().expect("serving lock").clone()
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn changed(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Starts asking the replica at `url` (once: a URL already asked is left as it is).
    pub fn watch(
        self: &Arc<Self>,
        url: String,
        discovered_from: Option<String>,
        security: ClientSecurity,
        stop: CancellationToken,
    ) {
        {
            let mut replicas = self.replicas.lock().expect("serving lock");
            if replicas.iter().any(|r| r.url == url) {
                return;
            }
            replicas.push(Replica {
                url: url.clone(),
                discovered_from,
                status: None,
                problem: Some("not asked yet".into()),
                checked_at_ms: 0,
            });
        }
        self.changed();
        tokio::spawn(Arc::clone(self).poll(url, security, stop));
    }

    /// Forgets the replica at `url` found through `name` (its poll is stopped by its caller); a
    /// replica also listed with --predictor stays.
    fn forget(&self, url: &str, name: &str) {
        self.replicas
            .lock()
            .expect("serving lock")
            .retain(|r| r.url != url || r.discovered_from.as_deref() != Some(name));
        self.changed();
    }

    fn set(&self, url: &str, answer: Result<PredictorStatus, String>) {
        let mut replicas = self.replicas.lock().expect("serving lock");
        // Forgotten meanwhile (its address left the name): nothing to record.
        let Some(replica) = replicas.iter_mut().find(|r| r.url == url) else {
            return;
        };
        let (status, problem) = match answer {
            Ok(status) => (serde_json::to_value(&status).ok(), None),
            Err(problem) => (None, Some(problem)),
        };
        let changed = replica.status != status || replica.problem != problem;
        replica.status = status;
        replica.problem = problem;
        replica.checked_at_ms = kappa_runtime::now_ms();
        drop(replicas);
        if changed {
            self.changed();
        }
    }

    /// Asks the replica at `url` every [`EVERY`] until `stop`, keeping its channel.
    async fn poll(self: Arc<Self>, url: String, security: ClientSecurity, stop: CancellationToken) {
        let mut client: Option<PredictorClient<TracedChannel>> = None;
        loop {
            let answer = tokio::select! {
                () = stop.cancelled() => return,
                answer = tokio::time::timeout(ASK_TIMEOUT, ask(&mut client, &url, &security)) => answer,
            };
            let answer = answer.unwrap_or_else(|_| Err(format!("no answer within {ASK_TIMEOUT:?}")));
            if answer.is_err() {
                client = None;
            }
            self.set(&url, answer);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }

    /// Follows every address `name`'s host resolves to (a Kubernetes headless Service names each
    /// replica's pod), resolving it again every [`RESOLVE_EVERY`] until `stop`: a new address is
    /// asked from then on, one gone is forgotten. TLS is checked against `tls_name`, or the host.
    pub async fn discover(
        self: Arc<Self>,
        name: ServiceUrl,
        tls_name: Option<String>,
        mut security: ClientSecurity,
        stop: CancellationToken,
    ) {
        let (scheme, host, port) = (name.scheme().to_owned(), name.host().to_owned(), name.port());
        if security.server_name.is_none() {
            security.server_name = Some(tls_name.unwrap_or_else(|| host.clone()));
        }
        let mut asked: BTreeMap<SocketAddr, CancellationToken> = BTreeMap::new();
        loop {
            let resolved = tokio::select! {
                () = stop.cancelled() => return,
                resolved = tokio::net::lookup_host((host.as_str(), port)) => resolved,
            };
            match resolved {
                Ok(addresses) => {
                    let found: BTreeSet<SocketAddr> = addresses.take(REPLICAS_PER_NAME).collect();
                    asked.retain(|address, polling| {
                        let kept = found.contains(address);
                        if !kept {
                            polling.cancel();
                            self.forget(&replica_url(&scheme, *address), name.as_str());
                        }
                        kept
                    });
                    for address in found {
                        if let std::collections::btree_map::Entry::Vacant(entry) = asked.entry(address) {
                            let polling = entry.insert(stop.child_token()).clone();
                            self.watch(
                                replica_url(&scheme, address),
                                Some(name.to_string()),
                                security.clone(),
                                polling,
                            );
                        }
                    }
                }
                // A name that does not resolve now (DNS away, no pods yet): the replicas known
                // stay, each showing whether it answers.
                Err(e) => tracing::warn!(name = %name, error = %e, "the predictors' name does not resolve; retrying"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RESOLVE_EVERY) => {}
            }
        }
    }
}

fn replica_url(scheme: &str, address: SocketAddr) -> String {
    format!("{scheme}://{address}")
}

async fn ask(
    client: &mut Option<PredictorClient<TracedChannel>>,
    url: &str,
    security: &ClientSecurity,
) -> Result<PredictorStatus, String> {
    if client.is_none() {
        let channel = kappa_client::connect_with("kappa-predictor", url, security)
            .await
            .map_err(|e| e.to_string())?;
        *client = Some(PredictorClient::new(channel));
    }
    let client = client.as_mut().expect("connected above");
    client
        .get_status(GetStatusRequest {})
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{}: {}", kappa_runtime::grpc_code_name(s.code()), s.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_address_a_name_resolves_to_is_a_replica_and_a_listed_one_is_not_repeated() {
        // Nothing listens on either port: each replica shows why it does not answer.
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (port, other_port) = (free(), free());
        let serving = Serving::new();
        let stop = CancellationToken::new();
        let listed = format!("http://127.0.0.1:{port}");
        serving.watch(listed.clone(), None, ClientSecurity::default(), stop.clone());
        let name: ServiceUrl = format!("http://localhost:{port}").parse().unwrap();
        let other: ServiceUrl = format!("http://localhost:{other_port}").parse().unwrap();
        for name in [name, other.clone()] {
            tokio::spawn(Arc::clone(&serving).discover(name, None, ClientSecurity::default(), stop.clone()));
        }
        let wanted = format!("http://127.0.0.1:{other_port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let replicas = loop {
            let replicas = serving.replicas();
            if replicas.iter().any(|r| r.url == wanted && r.checked_at_ms > 0)
                && replicas.iter().all(|r| r.checked_at_ms > 0)
            {
                break replicas;
            }
            assert!(std::time::Instant::now() < deadline, "{replicas:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        stop.cancel();
        let urls: Vec<(&str, Option<&str>)> = replicas
            .iter()
            .map(|r| (r.url.as_str(), r.discovered_from.as_deref()))
            .collect();
        assert_eq!(
            urls,
            [(listed.as_str(), None), (wanted.as_str(), Some(other.as_str()))],
            "localhost's one address: the listed replica once, the other port's found through its name"
        );
        assert!(
            replicas.iter().all(|r| r.status.is_none() && r.problem.is_some()),
            "{replicas:?}"
        );
    }
}
