//! The `kappa.trainer.v1.Trainer` gRPC service: validates specs up front, runs jobs in the
//! background, and lets clients follow them.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use kappa_api::trainer::{
    GetJobRequest, Job, JobPhase, JobProgress, ListJobsRequest, ListJobsResponse, StartTrainingRequest,
    trainer_server::Trainer,
};
use kappa_runtime::auth::{Principal, Role};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    error::TrainerError,
    job::{self, JobContext, JobHandle},
    spec::ValidSpec,
    store::JobStore,
};

/// Handles for jobs read back from the jobs topic: finished, so nothing runs them.
pub fn restored(jobs: Vec<Job>, store: &Arc<JobStore>) -> BTreeMap<String, Arc<JobHandle>> {
    jobs.into_iter()
        .map(|job| {
            let progress = job.progress.clone().unwrap_or(JobProgress {
                phase: job.phase,
                ..JobProgress::default()
            });
            let progress = JobProgress {
                phase: job.phase,
                ..progress
            };
            let handle = JobHandle::new(job.clone(), progress, Arc::clone(store));
            (job.job_id, Arc::new(handle))
        })
        .collect()
}

pub struct TrainerService {
    pub jobs: RwLock<BTreeMap<String, Arc<JobHandle>>>,
    pub store: Arc<JobStore>,
    pub context: JobContext,
    pub max_running: usize,
    /// Permits for WatchMonitoring streams.
    pub monitor_watches: Arc<tokio::sync::Semaphore>,
}

impl TrainerService {
    fn handle(&self, job_id: &str) -> Result<Arc<JobHandle>, TrainerError> {
        self.jobs
            .read()
            .expect("jobs lock poisoned")
            .get(job_id)
            .cloned()
            .ok_or_else(|| TrainerError::UnknownJob(job_id.to_owned()))
    }

    pub(crate) async fn topic_exists(&self, topic: &str) -> Result<bool, TrainerError> {
        let (config, topic, timeout) = (self.context.kafka.clone(), topic.to_owned(), self.context.kafka_timeout);
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config
                .config(&[])
                .create()
                .map_err(|e| TrainerError::Kafka(e.to_string()))?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| TrainerError::Kafka(e.to_string()))?;
            Ok(metadata
                .topics()
                .first()
                .is_some_and(|t| t.error().is_none() && !t.partitions().is_empty()))
        })
        .await
        .map_err(|e| TrainerError::Kafka(e.to_string()))?
    }

    async fn start(&self, request: Request<StartTrainingRequest>) -> Result<Job, TrainerError> {
        let (started_by, may_write) = (Principal::name_of(&request), Principal::allows(&request, Role::Write));
        let spec = ValidSpec::try_from(request.into_inner())?.into_inner();
        if !spec.promote_alias.is_empty() && !may_write {
            return Err(TrainerError::Forbidden(format!(
                "{started_by} may train, but a job that moves the alias {:?} changes what is served and \
                 needs the write role too; leave promote_alias empty to only publish",
                spec.promote_alias
            )));
        }
        if !self.topic_exists(&spec.source_topic).await? {
            return Err(TrainerError::UnknownTopic(spec.source_topic));
        }
        // The paths are checked against (or inferred from) the data before the job exists.
        let (spec, schema_notes) = {
            let (config, mut spec, timeout) = (self.context.kafka.clone(), spec, self.context.kafka_timeout);
            tokio::task::spawn_blocking(move || {
                let (from_ms, to_ms) = job::time_range(&spec);
                crate::schema::resolve(&config, &mut spec, from_ms, to_ms, timeout).map(|notes| (spec, notes))
            })
            .await
            .map_err(|e| TrainerError::Kafka(e.to_string()))??
        };
        let running = self.running();
        if running >= self.max_running {
            return Err(TrainerError::Busy(running));
        }
        let job_id = format!("job-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let job = Job {
            job_id: job_id.clone(),
            spec: Some(spec),
            phase: JobPhase::Queued as i32,
            schema_notes,
            started_by: started_by.clone(),
            created_at_ms: kappa_runtime::now_ms(),
            ..Job::default()
        };
        let progress = JobProgress {
            phase: JobPhase::Queued as i32,
            ..JobProgress::default()
        };
        let handle = Arc::new(JobHandle::new(job, progress, Arc::clone(&self.store)));
        self.store.save(&handle.snapshot());
        self.jobs
            .write()
            .expect("jobs lock poisoned")
            .insert(job_id.clone(), Arc::clone(&handle));
        tracing::info!(job = job_id, principal = started_by, "training job accepted");
        // The job's span is a child of the StartTraining call, so the caller's trace holds it.
        let span = tracing::info_span!("training_job", job_id = %job_id);
        tokio::spawn(job::run(Arc::clone(&handle), self.context.clone()).instrument(span));
        Ok(handle.snapshot())
    }
}

impl TrainerService {
    /// Waits, at most `timeout`, until no job is running (cancelled jobs unwind and record it).
    pub async fn wait_idle(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn running(&self) -> usize {
        self.jobs
            .read()
            .expect("jobs lock poisoned")
            .values()
            .filter(|h| !is_terminal(h.snapshot().phase))
            .count()
    }
}

fn is_terminal(phase: i32) -> bool {
    matches!(
        JobPhase::try_from(phase),
        Ok(JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled)
    )
}

#[tonic::async_trait]
impl Trainer for TrainerService {
    type ReadRangeStream = crate::range::RangeStream;
    type WatchMonitoringStream = crate::monitor::WindowStream;

    async fn compare_shadow(
        &self,
        request: Request<kappa_api::trainer::CompareShadowRequest>,
    ) -> Result<Response<kappa_api::trainer::CompareShadowResponse>, Status> {
        Ok(Response::new(self.compare_shadow_inner(request.into_inner()).await?))
    }

    async fn watch_monitoring(
        &self,
        request: Request<kappa_api::trainer::WatchMonitoringRequest>,
    ) -> Result<Response<Self::WatchMonitoringStream>, Status> {
        Ok(Response::new(self.watch_monitoring_inner(request.into_inner()).await?))
    }

    async fn read_range(
        &self,
        request: Request<kappa_api::trainer::ReadRangeRequest>,
    ) -> Result<Response<Self::ReadRangeStream>, Status> {
        Ok(Response::new(self.read_range_inner(request.into_inner()).await?))
    }

    async fn inspect(
        &self,
        request: Request<kappa_api::trainer::InspectRequest>,
    ) -> Result<Response<kappa_api::trainer::Inspection>, Status> {
        Ok(Response::new(self.inspect_inner(request.into_inner()).await?))
    }

    async fn backtest(
        &self,
        request: Request<kappa_api::trainer::BacktestRequest>,
    ) -> Result<Response<kappa_api::trainer::BacktestReport>, Status> {
        Ok(Response::new(self.backtest_inner(request.into_inner()).await?))
    }

    async fn start_training(&self, request: Request<StartTrainingRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.start(request).await?))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        Ok(Response::new(self.handle(&request.into_inner().job_id)?.snapshot()))
    }

    async fn list_jobs(&self, _request: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let mut jobs: Vec<Job> = self
            .jobs
            .read()
            .expect("jobs lock poisoned")
            .values()
            .map(|h| h.snapshot())
            .collect();
        jobs.sort_by_key(|j| j.created_at_ms);
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    type WatchJobStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<JobProgress, Status>> + Send>>;

    async fn watch_job(&self, request: Request<GetJobRequest>) -> Result<Response<Self::WatchJobStream>, Status> {
        let handle = self.handle(&request.into_inner().job_id)?;
        // Every change, the current state first, ending right after the first terminal phase.
        // A watcher that falls more than the kept changes behind skips to the latest.
        let (now, changes) = handle.watch();
        let latest = handle.progress.subscribe();
        let state = (changes, latest, Some(now), None::<JobProgress>);
        let stream = futures::stream::unfold(state, |(mut changes, latest, mut next, last)| async move {
            loop {
                if last.as_ref().is_some_and(|p| is_terminal(p.phase)) {
                    return None;
                }
                let progress = match next.take() {
                    Some(progress) => progress,
                    None => match changes.recv().await {
                        Ok(progress) => progress,
                        Err(broadcast::error::RecvError::Lagged(_)) => latest.borrow().clone(),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                };
                // A change seen in the snapshot and again on the channel is sent once.
                if last.as_ref() == Some(&progress) {
                    continue;
                }
                return Some((Ok(progress.clone()), (changes, latest, None, Some(progress))));
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let (by, is_admin) = (Principal::name_of(&request), Principal::allows(&request, Role::Admin));
        let handle = self.handle(&request.into_inner().job_id)?;
        let job = handle.snapshot();
        if job.started_by != by && !is_admin {
            return Err(TrainerError::Forbidden(format!(
                "job {} was started by {:?}; only they or an admin may cancel it",
                job.job_id, job.started_by
            ))
            .into());
        }
        handle.cancel.cancel();
        tracing::info!(job = job.job_id, principal = by, "cancel requested");
        Ok(Response::new(handle.snapshot()))
    }
}
