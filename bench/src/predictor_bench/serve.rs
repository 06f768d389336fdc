//! Serving: the echo servers the predictor is measured against, and the client that drives either.

use super::*;

/// Answers every Predict without a model; with `hop`, from a thread of its own.
pub(super) struct Echo {
    hop: Option<crossbeam_channel::Sender<(String, tokio::sync::oneshot::Sender<PredictResponse>)>>,
}

impl Echo {
    pub(super) fn new(hop: bool) -> Self {
        let hop = hop.then(|| {
            let (tx, rx) = crossbeam_channel::bounded::<(String, tokio::sync::oneshot::Sender<PredictResponse>)>(1024);
            std::thread::Builder::new()
                .name("echo-hop".into())
                .spawn(move || {
                    for (request_id, reply) in rx {
                        let _ = reply.send(echo(request_id));
                    }
                })
                .expect("a thread for the hopping echo");
            tx
        });
        Self { hop }
    }
}

pub(super) fn echo(request_id: String) -> PredictResponse {
    PredictResponse {
        request_id,
        model_name: "echo".into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Predictor for Echo {
    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        let request_id = request.into_inner().request_id;
        let Some(hop) = &self.hop else {
            return Ok(Response::new(echo(request_id)));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        hop.try_send((request_id, reply))
            .map_err(|_| Status::resource_exhausted("the echo thread's queue is full"))?;
        answer
            .await
            .map(Response::new)
            .map_err(|_| Status::internal("the echo thread is gone"))
    }

    type PredictStreamStream = futures::stream::Empty<Result<PredictResponse, Status>>;

    async fn predict_stream(
        &self,
        _request: Request<Streaming<PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        Err(Status::unimplemented("the echo baseline serves unary Predict only"))
    }

    async fn get_status(
        &self,
        _request: Request<kappa_api::predictor::GetStatusRequest>,
    ) -> Result<Response<kappa_api::predictor::PredictorStatus>, Status> {
        Err(Status::unimplemented("the echo baseline serves unary Predict only"))
    }
}

pub(super) fn request() -> PredictRequest {
    PredictRequest {
        features: CAR_FIELDS
            .iter()
            .enumerate()
            .map(|(i, f)| ((*f).to_owned(), i as f64 * 1.5))
            .collect(),
        ..Default::default()
    }
}

#[derive(Default)]
pub(super) struct Run {
    pub(super) requests: usize,
    pub(super) elapsed: Duration,
    pub(super) latencies: Vec<Duration>,
}

impl Run {
    pub(super) fn add(&mut self, other: Run) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    pub(super) fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub(super) fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        self.latencies[((self.latencies.len() - 1) as f64 * p) as usize]
    }
}

/// `in_flight` workers, each with its own HTTP/2 stream slot on one shared channel, for `seconds`.
pub(super) async fn drive(url: &str, in_flight: usize, seconds: u64) -> anyhow::Result<Run> {
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    let template = Arc::new(request());
    // Warm-up: connections, allocators, caches.
    let mut warm = PredictorClient::new(channel.clone());
    for _ in 0..200 {
        warm.predict((*template).clone()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let mut client = PredictorClient::new(channel.clone());
        let template = Arc::clone(&template);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let t = Instant::now();
                client
                    .predict((*template).clone())
                    .await
                    .expect("benchmark request failed");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await?);
    }
    Ok(Run {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    })
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
