//! What both gRPC APIs share: admission (which model a request runs on), input checks, the
//! batcher, and request metrics.

use std::{sync::Arc, time::Instant};

use tonic::Status;

use crate::{
    batcher::{Batcher, Scored},
    error::PredictError,
    metrics::{PredictorMetrics, RpcLabels, RpcOnly},
    slot::{LoadedModel, ModelSlot},
};

pub struct Serving {
    pub model_name: String,
    /// What `--follow` says: `latest` or an alias.
    pub follows: String,
    /// This replica (`host:port`), as its records and status name it.
    pub instance: String,
    pub slot: Arc<ModelSlot>,
    pub batcher: Batcher,
    /// Most rows one request may carry (`--max-request-rows`); more than the batch size is fine.
    pub max_request_rows: usize,
    /// Features an anomaly's prediction record names (`--explain-top`); 0: no explanations.
    pub explain_top: usize,
    pub metrics: Arc<PredictorMetrics>,
    /// What stands between this replica and SERVING (OIP ServerReady and ModelMetadata say it).
    pub readiness: Arc<kappa_runtime::Readiness>,
    /// The version scoring a copy of the traffic, with `--shadow`.
    pub shadow: Option<crate::shadow::Shadow>,
}

impl Serving {
    /// The model a request will run on: the current one, or a requested version that is warm.
    pub fn admit(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, PredictError> {
        if !name.is_empty() && name != self.model_name {
            return Err(PredictError::UnknownModel {
                requested: name.to_owned(),
                served: self.model_name.clone(),
            });
        }
        let current = self
            .slot
            .current()
            .ok_or_else(|| PredictError::NotLoaded(self.model_name.clone()))?;
        if version.is_empty() || version == current.version_string {
            return Ok(current);
        }
        version
            .parse::<u64>()
            .ok()
            .and_then(|v| self.slot.warm(v))
            .ok_or_else(|| PredictError::UnknownVersion {
                name: self.model_name.clone(),
                requested: version.to_owned(),
                loaded: current.version_string.clone(),
            })
    }

    /// Checks rows and values, then scores on the inference threads; a full queue refuses.
    pub async fn score(&self, model: Arc<LoadedModel>, values: Vec<f32>, rows: usize) -> Result<Scored, PredictError> {
        self.check(&model, &values, rows)?;
        self.batcher.score(model, values, rows).await
    }

    /// Runs an ONNX version's graph on its input as the client sent it (`graph`; `values` the
    /// same as f32 rows of features), after the same checks as [`Serving::score`].
    pub async fn infer_graph(
        &self,
        model: Arc<LoadedModel>,
        values: Vec<f32>,
        graph: Vec<f64>,
        rows: usize,
    ) -> Result<Scored, PredictError> {
        self.check(&model, &values, rows)?;
        self.batcher.infer_graph(model, values, graph, rows).await
    }

    /// Like [`Serving::score`], but a full queue is waited out (stream mode's backpressure).
    pub async fn score_waiting(
        &self,
        model: Arc<LoadedModel>,
        values: Vec<f32>,
        rows: usize,
    ) -> Result<Scored, PredictError> {
        self.check(&model, &values, rows)?;
        self.batcher.score_waiting(model, values, rows).await
    }

    /// The request's size. Its values were checked where its rows were made, once: from an
    /// event by the version's decoder (`extend_row`), from a tensor by `check_rows`.
    fn check(&self, model: &LoadedModel, values: &[f32], rows: usize) -> Result<(), PredictError> {
        if rows == 0 {
            return Err(PredictError::InvalidInput(
                "the batch is empty: send at least one row".into(),
            ));
        }
        if rows > self.max_request_rows {
            return Err(PredictError::InvalidInput(format!(
                "the request has {rows} rows; this predictor accepts at most {} per request (--max-request-rows); split it",
                self.max_request_rows
            )));
        }
        debug_assert_eq!(values.len(), rows * model.n_features(), "rows are made whole");
        Ok(())
    }

    /// Hands a live answer to the shadow, if there is one; never waits.
    pub fn shadow(&self, scored: Scored, origin: crate::shadow::Origin, key: &str) {
        if let Some(shadow) = &self.shadow {
            shadow.offer(scored, origin, key, None);
        }
    }

    pub fn observe<T>(&self, rpc: &'static str, result: &Result<T, Status>, started: Option<Instant>) {
        let code = match result {
            Ok(_) => "OK",
            Err(status) => kappa_runtime::grpc_code_name(status.code()),
        };
        self.metrics.requests.get_or_create(&RpcLabels { rpc, code }).inc();
        if let Some(started) = started {
            self.metrics
                .latency
                .get_or_create(&RpcOnly { rpc })
                .observe(started.elapsed().as_secs_f64());
        }
    }
}
