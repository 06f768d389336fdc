//! Trainer benchmarks against baselines in the same invocation:
//! - `train`: Kappa's candle training loop on synthetic 18-feature rows; prints samples/s for the
//!   README table next to `bench/torch_train.py` (PyTorch, same MLP, batch size and threads).
//! - `read`: the trainer's range reader over a topic against a plain librdkafka consumer reading
//!   the same records.
//! - `tiered`: the trainer's range reader over a tiered topic while its segments are on the
//!   broker's disk, then again once the broker has moved them to its remote tier and deleted
//!   the local copies; with the bytes on the broker's disk before and after.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kappa_dataset::rows::{RangeQuery, read_range};
use kappa_model::train::{TrainData, TrainSettings, train_autoencoder};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Train 18-16-8-16-18 with AdamW, batch 64; prints samples/s.
    Train {
        #[arg(long, default_value_t = 50_000)]
        rows: usize,
        #[arg(long, default_value_t = 3)]
        epochs: u32,
    },
    /// Read a whole topic with the trainer's reader, then with a plain consumer, `rounds` times
    /// in turn (the machine's noise then falls on both alike); prints both totals.
    Read {
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Move a tiered topic (remote.storage.enable=true, segments rolled) to the remote tier
    /// (local.retention.ms=1000, the rest of `--topic-config` kept), wait until its local
    /// copies are gone, then read it and its twin on the broker's disk (the same fleet, the same
    /// seed) with the trainer's reader, `rounds` times each in turn, so the machine's noise
    /// falls on both alike; prints both rates and the moved topic's local bytes before and after.
    Tiered {
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        /// The topic to move to the remote tier.
        #[arg(long)]
        topic: String,
        /// Its twin, left on the broker's disk.
        #[arg(long)]
        local_topic: String,
        /// The topic's configs, KEY=VALUE, as created (AlterConfigs replaces the whole set).
        #[arg(long = "topic-config", value_parser = parse_config)]
        configs: Vec<(String, String)>,
        /// The broker's log directory, to measure the topic's bytes on its disk.
        #[arg(long)]
        log_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// Create a topic with topic-level configs (the tiered benchmark's, with small segments).
    CreateTopic {
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 4)]
        partitions: i32,
        #[arg(long = "topic-config", value_parser = parse_config)]
        configs: Vec<(String, String)>,
    },
}

fn parse_config(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// The car fleet's schema, as a training job on the fleet reads it.
fn car_query(topic: &str) -> anyhow::Result<RangeQuery> {
    Ok(RangeQuery {
        topic: topic.to_owned(),
        from_ms: 0,
        to_ms: i64::MAX / 2,
        decoder: std::sync::Arc::new(
            kappa_model::schema::EventDecoder::new(
                kappa_fleet::CAR_FIELDS
                    .iter()
                    .map(|f| kappa_model::schema::FeatureRule {
                        path: (*f).to_owned(),
                        min: None,
                        max: None,
                    })
                    .collect(),
                Some(kappa_model::schema::LabelRule::new("failure_occurred", &[])),
                None,
            )
            .map_err(|e| anyhow::anyhow!("the car schema: {e}"))?,
        ),
        lateness_ms: 0,
        max_rows: usize::MAX,
        timeout: Duration::from_secs(30),
    })
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Mode::Train { rows, epochs } => {
            let mut rng = StdRng::seed_from_u64(1);
            let data: Vec<f32> = (0..rows * 18).map(|_| rng.random_range(-2.0..2.0)).collect();
            let settings = TrainSettings {
                hidden: vec![16, 8, 16],
                epochs,
                batch_size: 64,
                learning_rate: 1e-3,
                weight_decay: 0.01,
                seed: 1,
            };
            let started = Instant::now();
            let trained = train_autoencoder(
                TrainData::InMemory(&data),
                &data[..18 * 1000],
                18,
                &settings,
                &mut |_, _, _| true,
                &|| false,
            )?;
            anyhow::ensure!(trained.completed);
            println!(
                "{:.0}",
                (rows * epochs as usize) as f64 / started.elapsed().as_secs_f64()
            );
        }
        Mode::Read {
            kafka_bootstrap,
            topic,
            rounds,
        } => {
            let query = car_query(&topic)?;
            let clients = kappa_kafka::KafkaClients::plain(kafka_bootstrap.clone());
            let (mut kappa_time, mut plain_time, mut events) = (Duration::ZERO, Duration::ZERO, 0_u64);
            for _ in 0..rounds.max(1) {
                let started = Instant::now();
                let data = read_range(&clients, &query, &mut |_, _| true)?;
                kappa_time += started.elapsed();
                anyhow::ensure!(data.read > 0, "{topic} holds no events");
                events += data.read;
                plain_time += plain_read(&kafka_bootstrap, &topic, data.read, |payload| {
                    std::hint::black_box(payload);
                })?;
            }
            let kappa_rate = events as f64 / kappa_time.as_secs_f64();
            let plain_rate = events as f64 / plain_time.as_secs_f64();
            let per_round = events / u64::from(rounds.max(1));
            // The decoding alone, on the payloads held in memory and on every core: no read of
            // Kafka can go faster than its own polling and this, one after the other, allow.
            let mut payloads = Vec::new();
            plain_read(&kafka_bootstrap, &topic, per_round, |payload| {
                payloads.push(payload.to_vec())
            })?;
            let decode_time = decode_all(&query.decoder, &payloads);
            let decode_rate = payloads.len() as f64 / decode_time.as_secs_f64();
            let serial_rate = 1.0 / (1.0 / plain_rate + 1.0 / decode_rate);
            println!("| measurement | kappa-trainer | baseline | ratio | target |");
            println!("|---|---|---|---|---|");
            println!(
                "| Kafka read during training ({per_round} events x {rounds} rounds, decoded and checked) | {kappa_rate:.0} events/s | plain consumer, no decoding: {plain_rate:.0} events/s | {:.2}x | >= 0.5x |",
                kappa_rate / plain_rate
            );
            println!(
                "| the same | {kappa_rate:.0} events/s | decoding alone, the payloads in memory, every core: {decode_rate:.0} events/s | {:.2}x | |",
                kappa_rate / decode_rate
            );
            println!(
                "| the same | {kappa_rate:.0} events/s | the plain read and that decoding one after the other: {serial_rate:.0} events/s | {:.2}x | |",
                kappa_rate / serial_rate
            );
        }
        Mode::Tiered {
            kafka_bootstrap,
            topic,
            local_topic,
            configs,
            log_dir,
            rounds,
        } => tiered(
            &kafka_bootstrap,
            [&topic, &local_topic],
            &configs,
            &log_dir,
            rounds.max(1),
        )?,
        Mode::CreateTopic {
            kafka_bootstrap,
            topic,
            partitions,
            configs,
        } => {
            let clients = kappa_kafka::KafkaClients::plain(kafka_bootstrap);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(kappa_kafka::ensure_topic(&clients, &topic, partitions, &configs))?;
        }
    }
    Ok(())
}

fn tiered(
    bootstrap: &str,
    [topic, local_topic]: [&str; 2],
    configs: &[(String, String)],
    log_dir: &std::path::Path,
    rounds: u32,
) -> anyhow::Result<()> {
    let clients = kappa_kafka::KafkaClients::plain(bootstrap.to_owned());
    let bytes_before = topic_bytes(log_dir, topic)?;
    let mut tiered: Vec<(&str, &str)> = configs
        .iter()
        .filter(|(k, _)| k != "local.retention.ms")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    tiered.push(("local.retention.ms", "1000"));
    // Deleted segments wait file.delete.delay.ms (a minute) on disk before they go.
    tiered.push(("file.delete.delay.ms", "1000"));
    alter_topic(bootstrap, topic, &tiered)?;
    // Every closed segment uploaded and deleted locally: the earliest local offset stops moving
    // and sits past the start on every partition.
    let deadline = Instant::now() + Duration::from_secs(300);
    let (mut previous, mut stable_since) = (None, Instant::now());
    loop {
        let now = kappa_kafka::earliest_local_offsets(&clients, topic, Duration::from_secs(10))?;
        if previous.as_ref() != Some(&now) {
            (previous, stable_since) = (Some(now.clone()), Instant::now());
        }
        let settled = stable_since.elapsed() > Duration::from_secs(5) && !pending_deletes(log_dir, topic)?;
        if now.values().all(|o| *o > 0) && settled {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the broker kept local copies: {now:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let bytes_after = topic_bytes(log_dir, topic)?;

    let (remote_query, local_query) = (car_query(topic)?, car_query(local_topic)?);
    let (mut remote_time, mut local_time) = (Duration::ZERO, Duration::ZERO);
    let (mut remote, mut local) = (None, None);
    for _ in 0..rounds {
        let data = read_range(&clients, &remote_query, &mut |_, _| true)?;
        remote_time += data.read_duration;
        remote = Some(data);
        let data = read_range(&clients, &local_query, &mut |_, _| true)?;
        local_time += data.read_duration;
        local = Some(data);
    }
    let (remote, local) = (remote.expect("a round"), local.expect("a round"));
    anyhow::ensure!(
        remote.read > 0 && remote.read == local.read && remote.rows.len() == local.rows.len(),
        "the twins differ: {} records, {} rows remote against {} and {} local",
        remote.read,
        remote.rows.len(),
        local.read,
        local.rows.len()
    );
    let from_remote: i64 = remote
        .partitions
        .iter()
        .filter_map(kappa_dataset::range::remote_records)
        .sum();
    let rate = |time: Duration| remote.read as f64 * f64::from(rounds) / time.as_secs_f64();
    let (remote_rate, local_rate) = (rate(remote_time), rate(local_time));
    println!("| measurement | from the remote tier | from the broker's disk | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| trainer read, {} events x {rounds} rounds ({from_remote} of them remote), alternating, decoded and checked | {remote_rate:.0} events/s | the same fleet in a topic on the broker's disk: {local_rate:.0} events/s | {:.2}x | >= 0.7x |",
        remote.read,
        remote_rate / local_rate
    );
    println!(
        "| the topic's bytes on the broker's disk | {:.1} MiB after tiering | {:.1} MiB before | {:.3}x | |",
        bytes_after as f64 / 1048576.0,
        bytes_before as f64 / 1048576.0,
        bytes_after as f64 / bytes_before as f64
    );
    // Two copies of a million events, and the remote one: not left to fill the disk.
    delete_topics(bootstrap, &[topic, local_topic])
}

fn delete_topics(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for result in runtime.block_on(admin.delete_topics(topics, &AdminOptions::new()))? {
        result.map_err(|(topic, code)| anyhow::anyhow!("deleting {topic}: {code}"))?;
    }
    Ok(())
}

/// Whether segments of the topic are still waiting for their delayed deletion (`*.deleted`).
fn pending_deletes(log_dir: &std::path::Path, topic: &str) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir(log_dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&format!("{topic}-")) {
            for file in std::fs::read_dir(entry.path())? {
                if file?.file_name().to_string_lossy().ends_with(".deleted") {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Bytes of the topic's partition directories (segments and indexes) under `log_dir`.
fn topic_bytes(log_dir: &std::path::Path, topic: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(log_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_partition = name
            .strip_prefix(topic)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|p| p.parse::<u32>().is_ok());
        if is_partition {
            for file in std::fs::read_dir(entry.path())? {
                total += file?.metadata()?.len();
            }
        }
    }
    Ok(total)
}

fn alter_topic(bootstrap: &str, topic: &str, configs: &[(&str, &str)]) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(topic));
    for (k, v) in configs {
        change = change.set(k, v);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for result in runtime.block_on(admin.alter_configs(&[change], &AdminOptions::new()))? {
        result.map_err(|(_, code)| anyhow::anyhow!("altering {topic}: {code}"))?;
    }
    Ok(())
}

/// Reads `records` records of `topic` from the start with a bare librdkafka consumer, handing
/// each payload to `on_payload` and doing nothing more; returns how long it took from nothing,
/// as the trainer's read is timed (both connect and look the topic up; the trainer also
/// resolves its range's offsets).
fn plain_read(
    bootstrap: &str,
    topic: &str,
    records: u64,
    mut on_payload: impl FnMut(&[u8]),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-read-{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in metadata.topics().first().map(|t| t.partitions()).unwrap_or_default() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut read = 0_u64;
    while read < records {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                read += 1;
                on_payload(m.payload().unwrap_or_default());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("the plain consumer stalled after {read} records"),
        }
    }
    Ok(started.elapsed())
}

/// Decodes every payload with `decoder`, split evenly across the machine's cores; returns the
/// time it took. An event the decoder refuses costs its time too, as it does in the trainer.
fn decode_all(decoder: &kappa_model::schema::EventDecoder, payloads: &[Vec<u8>]) -> Duration {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = payloads.len().div_ceil(threads).max(1);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for part in payloads.chunks(per_thread) {
            scope.spawn(move || {
                let mut event = kappa_model::schema::DecodedEvent::default();
                for payload in part {
                    let decoded = decoder.decode_into(payload, kappa_model::schema::PayloadFormat::Json, &mut event);
                    let _ = std::hint::black_box((decoded, &event));
                }
            });
        }
    });
    started.elapsed()
}
