//! Dynamic batching on dedicated threads. Requests wait in a bounded queue; an inference thread
//! takes what is queued (up to the batch limit, optionally waiting `max_queue_delay` for more),
//! runs one forward pass per model, and answers each request with its own slice of the scores.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use kappa_model::onnx::OutputTensor;

use crate::{error::PredictError, faults::Faults, metrics::PredictorMetrics, slot::LoadedModel};

/// One admitted request: rows of raw feature values for the model it was pinned to.
pub struct Job {
    pub model: Arc<LoadedModel>,
    pub inputs: Vec<f32>,
    pub rows: usize,
    /// For an Open Inference Protocol call to an ONNX version: the graph's input as the client
    /// sent it (FP64 kept exact). Such a job is answered with every output; it shares a run only
    /// with other graph jobs of a graph whose outputs have a row per input row.
    pub graph: Option<Vec<f64>>,
    pub reply: oneshot::Sender<Result<Scored, PredictError>>,
}

/// What a request gets back: its scores, the model that produced them, and its inputs handed
/// back (the shadow scores them again without a copy).
#[derive(Debug)]
pub struct Scored {
    pub model: Arc<LoadedModel>,
    pub scores: Vec<f32>,
    /// Each feature's share of each row's score (`rows × features`): from the same forward pass
    /// for versions that explain their scores, by median replacement for the flagged rows of
    /// the others (NaN for the rows not explained); empty when nothing was explained.
    pub shares: Vec<f32>,
    pub inputs: Vec<f32>,
    /// Every output of the graph, for a job that asked for them.
    pub outputs: Vec<OutputTensor>,
}

/// What the inference threads explain: versions that explain their scores do in the scoring
/// pass (`in_pass`); the others' flagged rows by median replacement within a budget
/// (`occlusion`, see [`crate::occlusion`]).
#[derive(Debug, Clone, Default)]
pub struct Explaining {
    pub in_pass: bool,
    pub occlusion: Option<Arc<crate::occlusion::Budget>>,
}

#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    explain: Explaining,
    metrics: Arc<PredictorMetrics>,
}

impl Batcher {
    /// `explain`: what batches also compute each feature's share of (see [`Scored::shares`]).
    pub fn start(
        threads: usize,
        capacity: usize,
        max_batch_rows: usize,
        max_queue_delay: Duration,
        explain: Explaining,
        metrics: Arc<PredictorMetrics>,
        faults: Arc<Faults>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        for i in 0..threads {
            let worker = Worker {
                rx: rx.clone(),
                depth: Arc::clone(&depth),
                max_batch_rows,
                max_queue_delay,
                explain: explain.clone(),
                metrics: Arc::clone(&metrics),
                faults: Arc::clone(&faults),
            };
            std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || worker.supervise())
                .expect("spawning an inference thread");
        }
        Self {
            tx,
            depth,
            capacity,
            explain,
            metrics,
        }
    }

    /// Whether `model`'s answers can carry shares ([`Scored::shares`]): in the scoring pass, or
    /// by median replacement for a version with a reference profile.
    pub fn explains(&self, model: &LoadedModel) -> bool {
        (self.explain.in_pass && model.model.explains())
            || (self.explain.occlusion.is_some() && model.medians.is_some())
    }

    /// Queues a job and waits for its scores. Refuses at once when the queue is full.
    pub async fn score(&self, model: Arc<LoadedModel>, inputs: Vec<f32>, rows: usize) -> Result<Scored, PredictError> {
        self.submit(model, inputs, rows, None, WhenFull::Refuse).await
    }

    /// Runs an ONNX version's graph on `graph` (its input as sent; `inputs` the same values as
    /// rows of features, for the shadow and drift) and answers with every output and the scores.
    pub async fn infer_graph(
        &self,
        model: Arc<LoadedModel>,
        inputs: Vec<f32>,
        graph: Vec<f64>,
        rows: usize,
    ) -> Result<Scored, PredictError> {
        self.submit(model, inputs, rows, Some(graph), WhenFull::Refuse).await
    }

    /// Like [`Batcher::score`], but waits for room when the queue is full: stream scoring
    /// treats a full queue as backpressure, not as an answer.
    pub async fn score_waiting(
        &self,
        model: Arc<LoadedModel>,
        inputs: Vec<f32>,
        rows: usize,
    ) -> Result<Scored, PredictError> {
        self.submit(model, inputs, rows, None, WhenFull::Wait).await
    }

    async fn submit(
        &self,
        model: Arc<LoadedModel>,
        inputs: Vec<f32>,
        rows: usize,
        graph: Option<Vec<f64>>,
        when_full: WhenFull,
    ) -> Result<Scored, PredictError> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job {
            model,
            inputs,
            rows,
            graph,
            reply,
        };
        let mut wait = Duration::from_millis(1);
        loop {
            // Counted before the send so the worker's decrement can never run first and underflow.
            let depth = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
            match self.tx.try_send(job) {
                Ok(()) => {
                    self.metrics.queue_depth.set(depth as i64);
                    break;
                }
                Err(TrySendError::Full(back)) if when_full == WhenFull::Wait => {
                    self.depth.fetch_sub(1, Ordering::Relaxed);
                    job = back;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(50));
                }
                Err(e) => {
                    self.depth.fetch_sub(1, Ordering::Relaxed);
                    return Err(match e {
                        TrySendError::Full(_) => PredictError::Overloaded(self.capacity),
                        TrySendError::Disconnected(_) => PredictError::ShuttingDown,
                    });
                }
            }
        }
        answer.await.map_err(|_| PredictError::ShuttingDown)?
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenFull {
    Refuse,
    Wait,
}

struct Worker {
    rx: Receiver<Job>,
    depth: Arc<AtomicUsize>,
    max_batch_rows: usize,
    max_queue_delay: Duration,
    explain: Explaining,
    metrics: Arc<PredictorMetrics>,
    faults: Arc<Faults>,
}

impl Worker {
    /// Runs the batching loop for as long as the queue is open. A panic the forward pass raises
    /// is answered in `run_batch`; one anywhere else (a bug in this loop) is counted and the
    /// loop starts again, so the predictor never runs out of inference threads. The jobs of
    /// the batch being built then get "shutting down" (their reply senders are dropped).
    fn supervise(self) {
        while let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| self.run())) {
            self.metrics.inference_panics.inc();
            tracing::error!(
                "an inference thread panicked outside the forward pass ({}); it starts again",
                kappa_runtime::panic_message(panic)
            );
        }
    }

    fn run(&self) {
        let mut inputs: Vec<f32> = Vec::new();
        let mut scores: Vec<f32> = Vec::new();
        let mut shares: Vec<f32> = Vec::new();
        let mut scratch: (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
        let mut batch: Vec<Job> = Vec::new();
        // A job that belongs to another model than the batch being built waits for the next one.
        let mut carry: Option<Job> = None;
        let mut last_batch_jobs = 0;
        loop {
            let first = match carry.take() {
                Some(job) => job,
                None => match self.rx.recv() {
                    Ok(job) => self.taken(job),
                    Err(_) => return,
                },
            };
            let mut rows = first.rows;
            batch.push(first);
            let deadline = Instant::now() + self.max_queue_delay;
            // Waiting for more only pays when requests come in together: a lone request, or
            // one client calling one request at a time, never waits for company that is not
            // coming. The last batch says which it is.
            let worth_waiting = !self.max_queue_delay.is_zero() && last_batch_jobs > 1;
            // A graph job wants every output of its rows: it shares a run only with graph jobs,
            // and only when the graph's outputs have a row per input row.
            let mergeable = batch[0].graph.is_none() || batch[0].model.model.onnx().is_some_and(|m| m.rows_align());
            while rows < self.max_batch_rows && mergeable {
                let next = match self.rx.try_recv() {
                    Ok(job) => job,
                    Err(_) if !worth_waiting => break,
                    Err(_) => match self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    },
                };
                let next = self.taken(next);
                if !Arc::ptr_eq(&next.model, &batch[0].model)
                    || rows + next.rows > self.max_batch_rows
                    || next.graph.is_some() != batch[0].graph.is_some()
                {
                    carry = Some(next);
                    break;
                }
                rows += next.rows;
                batch.push(next);
            }
            last_batch_jobs = batch.len();
            self.run_batch(&mut batch, rows, &mut inputs, (&mut scores, &mut shares), &mut scratch);
        }
    }

    fn taken(&self, job: Job) -> Job {
        let depth = self.depth.fetch_sub(1, Ordering::Relaxed) - 1;
        self.metrics.queue_depth.set(depth as i64);
        job
    }

    fn run_batch(
        &self,
        batch: &mut Vec<Job>,
        rows: usize,
        inputs: &mut Vec<f32>,
        (scores, shares): (&mut Vec<f32>, &mut Vec<f32>),
        scratch: &mut (Vec<f32>, Vec<f32>),
    ) {
        if batch[0].graph.is_some() {
            return self.run_graph(batch, rows, scratch);
        }
        let model = Arc::clone(&batch[0].model);
        inputs.clear();
        for job in batch.iter() {
            inputs.extend_from_slice(&job.inputs);
        }
        self.metrics.batch_size.observe(rows as f64);
        // A panic here (a bug, or a model that trips one) fails this batch's requests alone.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.faults.before_inference(inputs);
            let explained = if self.explain.in_pass {
                model.model.score_explained_into(inputs, scores, shares)?
            } else {
                shares.clear();
                model.model.score_into(inputs, scores)?;
                false
            };
            if !explained {
                self.explain_flagged(&model, inputs, scores, shares, scratch)?;
            }
            Ok::<(), kappa_model::ModelError>(())
        }))
        .map(|result| result.map_err(|e| e.to_string()))
        .unwrap_or_else(|panic| {
            self.metrics.inference_panics.inc();
            let message = kappa_runtime::panic_message(panic);
            tracing::error!(version = model.version, "the forward pass panicked: {message}");
            Err(format!(
                "the forward pass panicked ({message}); the inference thread carries on"
            ))
        });
        if let (Ok(()), Some(drift)) = (&result, &model.drift) {
            drift.observe(inputs, scores, model.threshold);
        }
        let (mut start, features) = (0, model.n_features());
        for job in batch.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(Scored {
                    model: Arc::clone(&model),
                    scores: scores[start..start + job.rows].to_vec(),
                    shares: shares
                        .get(start * features..(start + job.rows) * features)
                        .map_or_else(Vec::new, <[f32]>::to_vec),
                    inputs: job.inputs,
                    outputs: Vec::new(),
                }),
                Err(e) => Err(PredictError::Inference(e.clone())),
            };
            start += job.rows;
            // The caller may have gone away (deadline, cancellation); nothing to do then.
            let _ = job.reply.send(answer);
        }
    }
}

impl Worker {
    /// Explains the flagged rows of a scored batch by median replacement, within the budget,
    /// for a version with a reference profile (see [`crate::occlusion`]), and counts what it did;
    /// `shares` stays as it is otherwise. `scratch` is kept between batches.
    fn explain_flagged(
        &self,
        model: &LoadedModel,
        inputs: &[f32],
        scores: &[f32],
        shares: &mut Vec<f32>,
        (perturbed, perturbed_scores): &mut (Vec<f32>, Vec<f32>),
    ) -> Result<(), kappa_model::ModelError> {
        let (Some(budget), Some(medians)) = (&self.explain.occlusion, &model.medians) else {
            return Ok(());
        };
        let outcome = kappa_model::median_replacement::attribute(
            &model.model,
            medians,
            model.threshold,
            inputs,
            scores,
            |flagged| budget.afford(flagged, medians.len()),
            shares,
            (perturbed, perturbed_scores),
        )?;
        self.metrics.count_occlusion(&outcome);
        Ok(())
    }

    /// Graph jobs, one run for all their rows: every output sliced back to each job by its rows,
    /// the scores too, and drift like any batch.
    fn run_graph(&self, batch: &mut Vec<Job>, rows: usize, scratch: &mut (Vec<f32>, Vec<f32>)) {
        let model = Arc::clone(&batch[0].model);
        self.metrics.batch_size.observe(rows as f64);
        let graph: Vec<f64> = match batch.as_slice() {
            [one] => one.graph.clone().unwrap_or_default(),
            jobs => jobs.iter().flat_map(|j| j.graph.iter().flatten().copied()).collect(),
        };
        let inputs: Vec<f32> = batch.iter().flat_map(|j| j.inputs.iter().copied()).collect();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.faults.before_inference(&inputs);
            match model.model.onnx() {
                Some(onnx) => onnx.infer(&graph, rows).map_err(|e| e.to_string()),
                None => Err("this version is not an ONNX graph".to_owned()),
            }
        }))
        .unwrap_or_else(|panic| {
            self.metrics.inference_panics.inc();
            Err(format!("the graph panicked ({})", kappa_runtime::panic_message(panic)))
        });
        if let (Ok(answer), Some(drift)) = (&result, &model.drift) {
            drift.observe(&inputs, &answer.scores, model.threshold);
        }
        // A graph cannot say why it flagged a row; its flagged rows are explained by median
        // replacement as the other batches' are (the replaced rows through the graph's f32
        // scoring path).
        let mut shares = Vec::new();
        if let Ok(answer) = &result {
            let attributed = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.explain_flagged(&model, &inputs, &answer.scores, &mut shares, scratch)
            }));
            match attributed {
                Ok(Ok(())) => {}
                // The answer stands without explanations; the scores were not in question.
                Ok(Err(e)) => {
                    shares.clear();
                    tracing::warn!(version = model.version, error = %e, "explaining a graph's flagged rows failed");
                }
                Err(panic) => {
                    shares.clear();
                    self.metrics.inference_panics.inc();
                    tracing::error!(
                        version = model.version,
                        "explaining a graph's flagged rows panicked: {}",
                        kappa_runtime::panic_message(panic)
                    );
                }
            }
        }
        let features = model.n_features();
        let alone = batch.len() == 1;
        let mut start = 0;
        for job in batch.drain(..) {
            let end = start + job.rows;
            let answer = match &result {
                Ok(answer) => Ok(Scored {
                    model: Arc::clone(&model),
                    scores: answer.scores[start..end].to_vec(),
                    shares: shares
                        .get(start * features..end * features)
                        .map_or_else(Vec::new, <[f32]>::to_vec),
                    inputs: job.inputs,
                    outputs: if alone {
                        answer.outputs.clone()
                    } else {
                        answer.outputs.iter().map(|o| o.rows(start, end)).collect()
                    },
                }),
                Err(e) => Err(PredictError::Inference(e.clone())),
            };
            start = end;
            let _ = job.reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use kappa_model::example::{autoencoder_over, random_weights};

    fn in_pass() -> Explaining {
        Explaining {
            in_pass: true,
            occlusion: None,
        }
    }

    use super::*;

    fn model(version: u64, seed: u64) -> Arc<LoadedModel> {
        let mut manifest = autoencoder_over("m", &["a", "b", "c"], &[2]);
        manifest.version = version;
        let weights = random_weights(&manifest, seed);
        Arc::new(LoadedModel::new(
            kappa_model::admission::load(&manifest, &weights).unwrap(),
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_batch_together_and_each_gets_its_own_models_scores() {
        let metrics = Arc::new(PredictorMetrics::default());
        let batcher = Batcher::start(
            1,
            1024,
            8,
            Duration::ZERO,
            in_pass(),
            Arc::clone(&metrics),
            Arc::default(),
        );
        let (v1, v2) = (model(1, 1), model(2, 2));
        let requests: Vec<(Arc<LoadedModel>, Vec<f32>)> = (0..200)
            .map(|i| {
                let m = if i % 3 == 0 { Arc::clone(&v2) } else { Arc::clone(&v1) };
                (m, vec![i as f32, (i % 7) as f32, -(i as f32) / 10.0])
            })
            .collect();
        let answers = futures::future::join_all(requests.iter().map(|(m, row)| {
            let batcher = batcher.clone();
            let (m, row) = (Arc::clone(m), row.clone());
            async move { batcher.score(m, row, 1).await }
        }))
        .await;
        for ((m, row), answer) in requests.iter().zip(answers) {
            let answer = answer.unwrap();
            assert_eq!(
                answer.model.version, m.version,
                "a request keeps the model it was admitted with"
            );
            assert_eq!(answer.scores, m.model.score(row).unwrap(), "its own slice of the batch");
        }
        // Requests with more rows than the batch limit are scored whole, in order.
        let rows: Vec<f32> = (0..30).map(|i| i as f32).collect();
        let whole = batcher.score(Arc::clone(&v1), rows.clone(), 10).await.unwrap();
        assert_eq!(whole.scores, v1.model.score(&rows).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_never_waits_out_the_queue_delay() {
        // A delay no test could sit through: a lone request that waited it would time out here.
        let delay = Duration::from_secs(600);
        let batcher = Batcher::start(1, 16, 8, delay, in_pass(), Arc::default(), Arc::default());
        let v1 = model(1, 1);
        for i in 0..3 {
            let row = vec![i as f32, 1.0, 2.0];
            let answer = tokio::time::timeout(Duration::from_secs(30), batcher.score(Arc::clone(&v1), row.clone(), 1))
                .await
                .expect("a lone request waited for company")
                .unwrap();
            assert_eq!(answer.scores, v1.model.score(&row).unwrap());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn graph_calls_share_runs_and_each_gets_every_output_of_its_own_rows() {
        let metrics = Arc::new(PredictorMetrics::default());
        let batcher = Batcher::start(
            1,
            1024,
            64,
            Duration::ZERO,
            in_pass(),
            Arc::clone(&metrics),
            Arc::default(),
        );
        let (mut manifest, graph) = kappa_model::example::onnx_autoencoder("g", &["a", "b", "c"], &[4], 3);
        manifest.version = 1;
        let onnx = Arc::new(LoadedModel::new(
            kappa_model::admission::load(&manifest, &graph).unwrap(),
        ));
        assert!(onnx.model.onnx().unwrap().rows_align());
        let requests: Vec<Vec<f64>> = (0..120)
            .map(|i| (0..3 * (1 + i % 3)).map(|j| f64::from(i * 3 + j) / 7.0).collect())
            .collect();
        let answers = futures::future::join_all(requests.iter().map(|rows| {
            let (batcher, onnx, rows) = (batcher.clone(), Arc::clone(&onnx), rows.clone());
            async move {
                let n = rows.len() / 3;
                let inputs = rows.iter().map(|v| *v as f32).collect();
                batcher.infer_graph(onnx, inputs, rows, n).await
            }
        }))
        .await;
        for (rows, answer) in requests.iter().zip(answers) {
            let answer = answer.unwrap();
            let alone = onnx.model.onnx().unwrap().infer(rows, rows.len() / 3).unwrap();
            assert_eq!(answer.outputs, alone.outputs, "its own rows of every output");
            assert_eq!(answer.scores, alone.scores);
        }
        let batches = metrics.batch_size.count();
        assert!(
            batches < 120,
            "120 concurrent graph calls ran in {batches} runs: none shared"
        );
    }
}
