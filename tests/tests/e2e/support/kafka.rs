//! Kafka: the test broker, topics, raw produce and read (read_committed or not), offsets by time, records written behind Kappa's back, prediction feeds.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use kappa_api::model::ModelManifest;
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
};

use super::*;

pub fn bootstrap() -> String {
    std::env::var("KAPPA_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn kafka_config() -> ClientConfig {
    kafka_config_at(&bootstrap())
}

pub fn kafka_config_at(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Creates a topic directly with the admin API, bypassing Kappa.
pub async fn create_topic(topic: &str, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let mut new_topic = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let results = admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap();
    for r in results {
        r.unwrap();
    }
}

/// (low, high) watermarks of partition 0: high counts every record ever written, aborted ones
/// and transaction markers included.
pub async fn watermarks(topic: &str) -> (i64, i64) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config().set("group.id", "kappa-e2e").create().unwrap();
        consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap()
    })
    .await
    .unwrap()
}

/// A raw record as any Kafka consumer sees it.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// A record with its position, as any Kafka consumer sees it.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
    pub headers: Vec<(String, String)>,
}

impl Positioned {
    /// The value of the record's header `name`, when it has one.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Reads every partition of `topic` with a plain librdkafka consumer at the given isolation
/// level: (key, value or None for a tombstone, timestamp in ms) of every record, in offset order
/// within a partition.
pub async fn read_partition(topic: &str, isolation: &str) -> Vec<(String, Option<Vec<u8>>, i64)> {
    read_positioned(topic, isolation)
        .await
        .into_iter()
        .map(|r| (r.key, r.value, r.timestamp_ms))
        .collect()
}

/// Every record of every partition of `topic`, with its partition and offset.
pub async fn read_positioned(topic: &str, isolation: &str) -> Vec<Positioned> {
    read_positioned_at(&bootstrap(), topic, isolation).await
}

/// [`read_positioned`] on the broker at `bootstrap`.
pub async fn read_positioned_at(bootstrap: &str, topic: &str, isolation: &str) -> Vec<Positioned> {
    let (topic, isolation, bootstrap) = (topic.to_owned(), isolation.to_owned(), bootstrap.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config_at(&bootstrap)
            .set("group.id", unique("kappa-e2e-reader"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10)).unwrap();
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        // A topic nobody has written to yet holds nothing.
        if partitions.is_empty() {
            return Vec::new();
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let mut at_end = std::collections::BTreeSet::new();
        let mut records = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "reading {topic} did not reach its end within 30 s"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => records.push(Positioned {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default(),
                    value: m.payload().map(<[u8]>::to_vec),
                    timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
                    headers: m
                        .headers()
                        .map(|h| {
                            use rdkafka::message::Headers as _;
                            h.iter()
                                .map(|x| {
                                    let value = String::from_utf8_lossy(x.value.unwrap_or_default());
                                    (x.key.to_owned(), value.into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }),
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                    if at_end.len() == partitions.len() {
                        return records;
                    }
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => {}
            }
        }
    })
    .await
    .unwrap()
}

/// Every record of partition 0 as any `isolation` consumer sees it.
pub async fn read_topic(topic: &str, isolation: &str) -> Vec<RawRecord> {
    read_partition(topic, isolation)
        .await
        .into_iter()
        .map(|(key, value, _)| RawRecord { key, value })
        .collect()
}

/// Produces records straight into a topic with a plain producer, bypassing Kappa entirely.
pub async fn produce_raw(topic: &str, records: Vec<(String, Vec<u8>)>) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config().create().unwrap();
    for (key, value) in records {
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value).partition(0),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

/// Changes settings of `topic` with the admin API, as an operator fixing it would.
pub async fn alter_topic(topic: &str, configs: &[(&str, &str)]) {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        change = change.set(k, v);
    }
    for result in admin.alter_configs(&[change], &AdminOptions::new()).await.unwrap() {
        result.unwrap();
    }
}

/// Writes a tombstone (a null value) for `key` straight into a topic, bypassing Kappa.
pub async fn produce_tombstone(topic: &str, key: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config().create().unwrap();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(topic).key(key).partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// Produces keyed records with the default partitioner; returns (partition, offset) of each.
pub async fn produce_keyed(topic: &str, records: &[(String, Vec<u8>)]) -> Vec<(i32, i64)> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config().set("linger.ms", "5").create().unwrap();
    let sends = records
        .iter()
        .map(|(key, value)| producer.send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10)));
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| {
            let delivered = r.unwrap();
            (delivered.partition, delivered.offset)
        })
        .collect()
}

pub async fn create_topic_with_partitions(topic: &str, partitions: i32) {
    create_topic_with_partitions_at(&bootstrap(), topic, partitions).await;
}

/// Creates a topic of `partitions` partitions with topic-level `configs`.
pub async fn create_topic_with_configs(topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    for r in admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

/// The topic-level configs `topic` has, as the broker describes them (defaults included).
pub async fn topic_configs(topic: &str) -> BTreeMap<String, String> {
    try_topic_configs(topic)
        .await
        .unwrap_or_else(|| panic!("topic {topic} does not exist"))
}

/// [`topic_configs`], or `None` while the topic does not exist.
pub async fn try_topic_configs(topic: &str) -> Option<BTreeMap<String, String>> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let mut configs = BTreeMap::new();
    for resource in described {
        configs.extend(
            resource
                .ok()?
                .entries
                .into_iter()
                .filter_map(|e| Some((e.name, e.value?))),
        );
    }
    Some(configs)
}

/// The single broker's remote tier (deploy/kafka/kafka.sh puts it under the broker's state).
pub fn remote_tier_dir() -> PathBuf {
    let dir = std::env::var("KAFKA_REMOTE_TIER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("KAFKA_STATE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/.state"))
                .join("remote-tier")
        });
    assert!(
        dir.is_dir(),
        "{} is not the broker's remote tier: start Kafka with deploy/kafka/kafka.sh (make kafka-up), \
         or set KAFKA_REMOTE_TIER_DIR",
        dir.display()
    );
    dir
}

/// Each partition's earliest offset still on the broker's local disk (ListOffsets with
/// `earliest-local`, KIP-1005), asked with Kafka's own GetOffsetShell: librdkafka does not speak
/// that ListOffsets version. Offsets below it are served from the remote tier.
pub fn earliest_local_offsets(topic: &str) -> BTreeMap<i32, i64> {
    let lib = std::env::var("KAFKA_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/.state/lib"));
    let out = Command::new("java")
        // Kafka's test jars log to a relative path: not into the repository.
        .current_dir(std::env::temp_dir())
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=error")
        .arg("org.apache.kafka.tools.GetOffsetShell")
        .args([
            "--bootstrap-server",
            &bootstrap(),
            "--topic",
            topic,
            "--time",
            "earliest-local",
        ])
        .output()
        .expect("java runs Kafka's GetOffsetShell");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut parts = line.rsplitn(3, ':');
            let offset = parts.next()?.parse().ok()?;
            let partition = parts.next()?.parse().ok()?;
            Some((partition, offset))
        })
        .collect()
}

pub async fn create_topic_with_partitions_at(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = kafka_config_at(bootstrap).create().unwrap();
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&new_topic], &AdminOptions::new()).await.unwrap() {
        r.unwrap();
    }
}

/// (key, value, timestamp ms) of every committed record in partition 0.
pub async fn read_topic_with_timestamps(topic: &str) -> Vec<(String, Vec<u8>, i64)> {
    read_partition(topic, "read_committed")
        .await
        .into_iter()
        .map(|(key, value, ts)| (key, value.unwrap_or_default(), ts))
        .collect()
}

/// offsets_for_times for `ms` on every partition, as any Kafka client would resolve it.
pub async fn offsets_for_time(topic: &str, partitions: i32, ms: i64) -> Vec<i64> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka_config().set("group.id", "kappa-e2e").create().unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Offset(ms))
                .unwrap();
        }
        let found = consumer.offsets_for_times(tpl, Duration::from_secs(10)).unwrap();
        (0..partitions)
            .map(|p| match found.find_partition(&topic, p).unwrap().offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap().1,
            })
            .collect()
    })
    .await
    .unwrap()
}

/// Produces keyed records with explicit Kafka timestamps.
pub async fn produce_with_timestamps(topic: &str, records: &[(String, Vec<u8>)], timestamps: &[i64]) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka_config().set("linger.ms", "5").create().unwrap();
    let sends = records.iter().zip(timestamps).map(|((key, value), ts)| {
        producer.send(
            FutureRecord::to(topic).key(key).payload(value).timestamp(*ts),
            Duration::from_secs(10),
        )
    });
    for result in futures::future::join_all(sends).await {
        result.unwrap();
    }
}

/// Writes a version straight into the models topic, as a buggy or hostile writer could.
pub async fn write_raw_version(topic: &str, manifest: ModelManifest, weights: &[u8]) {
    write_raw_record(
        topic,
        kappa_api::model::VersionRecord {
            manifest: Some(manifest),
            ..Default::default()
        },
        weights,
    )
    .await;
}

/// Writes `record` (its manifest names the version) and the weights as one chunk, bypassing Kappa.
pub async fn write_raw_record(topic: &str, mut record: kappa_api::model::VersionRecord, weights: &[u8]) {
    use prost::Message as _;
    let manifest = record.manifest.clone().unwrap_or_default();
    let (name, version) = (manifest.name, manifest.version);
    let chunk = kappa_api::model::WeightChunk {
        index: 0,
        data: weights.to_vec(),
    };
    record.chunk_count = 1;
    produce_raw(
        topic,
        vec![
            (format!("model/{name}/{version}/chunk/0"), chunk.encode_to_vec()),
            (format!("model/{name}/{version}"), record.encode_to_vec()),
        ],
    )
    .await;
}

/// Moves `alias` of `name` to `version` by writing its record straight into the models topic.
pub async fn write_raw_alias(topic: &str, name: &str, alias: &str, version: u64) {
    use prost::Message as _;
    let record = kappa_api::model::AliasRecord {
        name: name.to_owned(),
        alias: alias.to_owned(),
        version,
        ..Default::default()
    };
    produce_raw(topic, vec![(format!("alias/{name}/{alias}"), record.encode_to_vec())]).await;
}

/// Deletes the records of `partition` before `offset`, as retention would, with the admin API.
pub async fn delete_records_before(topic: &str, partition: i32, offset: i64) {
    let admin: AdminClient<DefaultClientContext> = kafka_config().create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .unwrap();
    let result = admin.delete_records(&tpl, &AdminOptions::new()).await.unwrap();
    for element in result.elements() {
        element.error().unwrap();
    }
}

/// Sensor events sent at a steady pace until stopped, by a producer that (like a device gateway
/// or the MQTT bridge) holds what it cannot deliver until the broker is back.
pub struct EventFeed {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(i32, i64)>>,
}

impl EventFeed {
    /// One JSON event with `features` set to `row` every `every`, keyed by one of 7 cars.
    pub fn start(bootstrap: &str, topic: &str, features: Vec<String>, row: Vec<f32>, every: Duration) -> Self {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        use std::sync::atomic::Ordering;
        let producer: FutureProducer = kafka_config_at(bootstrap)
            .set("message.timeout.ms", "180000")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, topic) = (Arc::clone(&stop), topic.to_owned());
        let task = tokio::spawn(async move {
            let mut deliveries = Vec::new();
            let mut i = 0_u64;
            while !flag.load(Ordering::Relaxed) {
                let event: serde_json::Map<String, serde_json::Value> = features
                    .iter()
                    .zip(&row)
                    .map(|(f, v)| (f.clone(), serde_json::json!(v)))
                    .collect();
                let (key, value) = (format!("car{}", i % 7), serde_json::to_vec(&event).unwrap());
                let record = FutureRecord::to(&topic).key(&key).payload(&value);
                deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                i += 1;
                tokio::time::sleep(every).await;
            }
            let mut sent = Vec::new();
            for delivery in deliveries {
                let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
                sent.push((delivered.partition, delivered.offset));
            }
            sent
        });
        Self { stop, task }
    }

    /// Stops sending and returns where every event landed (each acknowledged by the broker).
    pub async fn stop(self) -> std::collections::BTreeSet<(i32, i64)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap().into_iter().collect()
    }
}

/// Waits (up to `within`) until every event in `sent` has a prediction in `predictions`, none
/// of them an error; returns how many predictions there were (duplicates included).
pub async fn wait_all_answered(
    bootstrap: &str,
    predictions: &str,
    sent: &std::collections::BTreeSet<(i32, i64)>,
    within: Duration,
    log: &dyn Fn() -> String,
) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let records = read_positioned_at(bootstrap, predictions, "read_committed").await;
        let answered: std::collections::BTreeSet<(i32, i64)> = records
            .iter()
            .map(|r| {
                let a: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                assert!(a["error"].as_str().is_none_or(str::is_empty), "{a}");
                let partition = a["sourcePartition"].as_i64().unwrap_or(0) as i32;
                (partition, a["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap()))
            })
            .collect();
        let missing = sent.difference(&answered).count();
        if missing == 0 {
            return records.len();
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never answered:\n{}",
            sent.len(),
            log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until `topic` holds at least `n` records, then returns them.
pub async fn wait_for_records(topic: &str, n: usize, limit: Duration) -> Vec<Positioned> {
    let deadline = Instant::now() + limit;
    loop {
        let (_, high) = watermarks_all(topic).await;
        if high >= n as i64 {
            return read_positioned(topic, "read_committed").await;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} holds {high} of {n} records after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// (partitions, records) of a topic, summed over its partitions; (0, 0) while it does not exist.
pub async fn watermarks_all(topic: &str) -> (usize, i64) {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let Ok(metadata) = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) else {
            return (0, 0);
        };
        let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
        let total = partitions
            .iter()
            .filter_map(|p| consumer.fetch_watermarks(&topic, *p, Duration::from_secs(5)).ok())
            .map(|(low, high)| high - low)
            .sum();
        (partitions.len(), total)
    })
    .await
    .unwrap()
}
