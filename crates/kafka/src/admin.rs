use std::time::Duration;

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
};
use thiserror::Error;

use crate::KafkaClients;

/// How the models topic is created when it does not exist yet.
#[derive(Debug, Clone)]
pub struct ModelsTopicSettings {
    pub topic: String,
    /// `None`: as many replicas as the cluster has brokers, up to 3.
    pub replication_factor: Option<i32>,
    /// Must hold one weight chunk plus record overhead.
    pub max_message_bytes: usize,
    /// Extra topic configs, e.g. a small `segment.ms` so compaction runs quickly in development.
    pub extra_configs: Vec<(String, String)>,
}

#[derive(Debug, Error)]
pub enum TopicError {
    #[error(
        "topic {topic:?} has cleanup.policy={policy}, so Kafka would delete models when retention expires. \
         Make it compacted (kafka-configs.sh --alter --entity-type topics --entity-name {topic} \
         --add-config cleanup.policy=compact) or point --models-topic at another topic"
    )]
    NotCompacted { topic: String, policy: String },
    #[error(
        "topic {topic:?} has {partitions} partitions; the models topic must have exactly 1 so that \
         every reader sees versions and aliases in one order. Use a new single-partition topic"
    )]
    WrongPartitionCount { topic: String, partitions: usize },
    #[error(
        "topic {topic:?} is compacted and cannot be tiered: Kafka's tiered storage copies only \
         delete-policy topics to the remote tier. Remove remote.storage.enable from its configs"
    )]
    TieredCompacted { topic: String },
    #[error(
        "the broker refused to create {topic:?} with tiered storage ({code}). Check that every \
         broker runs with remote.log.storage.system.enable=true and a remote storage manager, or \
         create the topic untiered with --topic-remote-storage=false"
    )]
    TieringRefused { topic: String, code: RDKafkaErrorCode },
    #[error("Kafka admin request for topic {topic:?} failed: {source}")]
    Kafka { topic: String, source: KafkaError },
}

/// The replication factor a new topic gets by default: one replica per broker, up to 3 (a
/// development broker gets 1, a production cluster 3).
pub async fn cluster_replication(clients: &KafkaClients) -> Result<i32, KafkaError> {
    let config = clients.config(&[]);
    tokio::task::spawn_blocking(move || -> Result<i32, KafkaError> {
        let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
        let metadata = rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(30))?;
        Ok((metadata.brokers().len() as i32).clamp(1, 3))
    })
    .await
    .expect("metadata task does not panic")
}

/// Creates the models topic with the compaction config when it is absent, and refuses an existing
/// one that is not compacted or has more than one partition.
pub async fn ensure_models_topic(clients: &KafkaClients, settings: &ModelsTopicSettings) -> Result<(), TopicError> {
    let topic = settings.topic.as_str();
    let kafka = |source| TopicError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let extra = settings.extra_configs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    if crate::tiering::asks_for_tiering(extra) {
        return Err(TopicError::TieredCompacted {
            topic: topic.to_owned(),
        });
    }
    let admin: AdminClient<DefaultClientContext> = clients.config(&[]).create().map_err(kafka)?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));

    let replication = match settings.replication_factor {
        Some(factor) => factor,
        None => cluster_replication(clients).await.map_err(kafka)?,
    };
    let max_bytes = settings.max_message_bytes.to_string();
    let mut new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(replication))
        .set("cleanup.policy", "compact")
        .set("max.message.bytes", &max_bytes);
    for (k, v) in &settings.extra_configs {
        new_topic = new_topic.set(k, v);
    }
    let created = admin.create_topics([&new_topic], &options).await.map_err(kafka)?;
    for result in created {
        match result {
            // Just created with the right settings. Checking them now could read the broker's
            // metadata before the new topic's config has propagated, so there is nothing to check.
            Ok(_) => {
                tracing::info!(topic, replication, "created the compacted topic");
                return Ok(());
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(kafka(KafkaError::AdminOp(code))),
        }
    }

    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(kafka)?;
    for resource in described {
        let resource = resource.map_err(|code| kafka(KafkaError::AdminOp(code)))?;
        let policy = resource
            .get("cleanup.policy")
            .and_then(|entry| entry.value.clone())
            .unwrap_or_else(|| "delete".to_owned());
        let policies: Vec<&str> = policy.split(',').map(str::trim).collect();
        if !policies.contains(&"compact") || policies.contains(&"delete") {
            return Err(TopicError::NotCompacted {
                topic: topic.to_owned(),
                policy,
            });
        }
        let tiered = resource.get("remote.storage.enable").and_then(|e| e.value.as_deref());
        if crate::tiering::asks_for_tiering(tiered.map(|v| ("remote.storage.enable", v))) {
            return Err(TopicError::TieredCompacted {
                topic: topic.to_owned(),
            });
        }
    }

    // Metadata is a blocking call in librdkafka; keep it off the async workers.
    let config = clients.config(&[]);
    let name = topic.to_owned();
    let partitions = tokio::task::spawn_blocking(move || -> Result<usize, KafkaError> {
        let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
        let metadata = rdkafka::consumer::Consumer::fetch_metadata(&consumer, Some(&name), Duration::from_secs(30))?;
        Ok(metadata.topics().first().map_or(0, |t| t.partitions().len()))
    })
    .await
    .expect("metadata task does not panic")
    .map_err(kafka)?;
    if partitions != 1 {
        return Err(TopicError::WrongPartitionCount {
            topic: topic.to_owned(),
            partitions,
        });
    }
    Ok(())
}

/// Creates `topic` with `partitions` partitions (the broker's default replication) and `configs`
/// unless it exists; an existing topic is used as it is. Returns whether it was created.
pub async fn ensure_topic(
    clients: &KafkaClients,
    topic: &str,
    partitions: i32,
    configs: &[(String, String)],
) -> Result<bool, TopicError> {
    let kafka = |source| TopicError::Kafka {
        topic: topic.to_owned(),
        source,
    };
    let admin: AdminClient<DefaultClientContext> = clients.config(&[]).create().map_err(kafka)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let tiered = crate::tiering::asks_for_tiering(configs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let results = admin.create_topics([&new_topic], &options).await.map_err(kafka)?;
    let mut created = false;
    for result in results {
        match result {
            Ok(_) => created = true,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code @ RDKafkaErrorCode::InvalidConfig)) if tiered => {
                return Err(TopicError::TieringRefused {
                    topic: topic.to_owned(),
                    code,
                });
            }
            Err((_, code)) => return Err(kafka(KafkaError::AdminOp(code))),
        }
    }
    Ok(created)
}
