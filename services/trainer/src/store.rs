//! Jobs survive a restart: every change of a job is written to a compacted topic keyed by job
//! id, and a starting trainer reads it back. A job that was running when the trainer stopped is
//! reported as failed (its work is gone), never as still running.

use std::time::Duration;

use kappa_api::trainer::{Job, JobPhase};
use kappa_kafka::{KafkaClients, ModelsTopicSettings, ReaderContext, ensure_models_topic};
use prost::Message as _;
use rdkafka::{
    Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer},
};

pub struct JobStore {
    producer: FutureProducer,
    topic: String,
}

impl JobStore {
    /// Creates the jobs topic when absent and returns the store with the jobs it holds.
    pub async fn open(
        config: &KafkaClients,
        topic: &str,
        replication_factor: Option<i32>,
    ) -> anyhow::Result<(Self, Vec<Job>)> {
        ensure_models_topic(
            config,
            &ModelsTopicSettings {
                topic: topic.to_owned(),
                replication_factor,
                max_message_bytes: 1024 * 1024,
                extra_configs: Vec::new(),
            },
        )
        .await?;
        let (config_clone, topic_name) = (config.clone(), topic.to_owned());
        let jobs = tokio::task::spawn_blocking(move || load(&config_clone, &topic_name)).await??;
        let producer: FutureProducer = config
            .config(&[("acks", "all"), ("enable.idempotence", "true")])
            .create()?;
        Ok((
            Self {
                producer,
                topic: topic.to_owned(),
            },
            jobs,
        ))
    }

    /// Writes the job's current state; failures are logged, the job itself carries on.
    ///
    /// The record is enqueued here, synchronously, so the log keeps the order in which the
    /// states happened (the last record of a job is its latest state); only the delivery report
    /// is awaited in the background.
    pub fn save(&self, job: &Job) {
        let key = job.job_id.clone();
        let value = job.encode_to_vec();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&value);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((e, _))) => tracing::warn!(job = key, error = %e, "could not persist the job's state"),
                        Err(_) => tracing::warn!(job = key, "the job's state was dropped before delivery"),
                    }
                });
            }
            Err((e, _)) => tracing::warn!(job = key, error = %e, "could not enqueue the job's state"),
        }
    }

    /// Waits (bounded) until every saved state is acknowledged, so a clean stop loses none.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "job states not yet acknowledged at shutdown may be lost");
        }
    }
}

fn load(config: &KafkaClients, topic: &str) -> Result<Vec<Job>, KafkaError> {
    let consumer: BaseConsumer<ReaderContext> = config
        .log_reader("kappa-trainer-jobs")
        .create_with_context(ReaderContext)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let mut jobs = std::collections::BTreeMap::new();
    loop {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                let key = m
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default();
                match m.payload().map(Job::decode) {
                    Some(Ok(job)) => {
                        jobs.insert(key, job);
                    }
                    Some(Err(e)) => tracing::warn!(job = key, error = %e, "skipping an undecodable job record"),
                    None => {
                        jobs.remove(&key);
                    }
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => break,
            Some(Err(e)) => return Err(e),
        }
    }
    Ok(jobs
        .into_values()
        .map(|mut job| {
            let terminal = matches!(
                JobPhase::try_from(job.phase),
                Ok(JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled)
            );
            if !terminal {
                job.phase = JobPhase::Failed as i32;
                job.message = "the trainer stopped while this job was running; start it again".into();
            }
            job
        })
        .collect())
}
