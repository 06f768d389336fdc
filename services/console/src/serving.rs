//! The Serving page's state: each predictor replica's GetStatus, asked every few seconds.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use kappa_api::predictor::{GetStatusRequest, PredictorStatus, predictor_client::PredictorClient};
use kappa_client::{ClientSecurity, TracedChannel};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often each replica is asked.
pub const EVERY: Duration = Duration::from_secs(2);
/// How long one answer may take before the replica counts as unreachable.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replica {
    pub url: String,
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
    pub fn new(urls: &[String]) -> Arc<Self> {
        let replicas = urls
            .iter()
            .map(|url| Replica {
                url: url.clone(),
                status: None,
                problem: Some("not asked yet".into()),
                checked_at_ms: 0,
            })
            .collect();
        Arc::new(Self {
            replicas: Mutex::new(replicas),
            changed: watch::channel(0).0,
        })
    }

    pub fn replicas(&self) -> Vec<Replica> {
        self.replicas.lock().expect("serving lock").clone()
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn set(&self, index: usize, answer: Result<PredictorStatus, String>) {
        let mut replicas = self.replicas.lock().expect("serving lock");
        let replica = &mut replicas[index];
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
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// Asks replica `index` at `url` every [`EVERY`] until `stop`, keeping its channel.
    pub async fn poll(self: Arc<Self>, index: usize, url: String, security: ClientSecurity, stop: CancellationToken) {
        let mut client: Option<PredictorClient<TracedChannel>> = None;
        loop {
            let answer = tokio::time::timeout(ASK_TIMEOUT, ask(&mut client, &url, &security))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {ASK_TIMEOUT:?}")));
            if answer.is_err() {
                client = None;
            }
            self.set(index, answer);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
        }
    }
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
