//! Registry benchmarks. `throughput`: publish and get a large model through kappa-registry,
//! against a baseline of the same bytes produced (transactionally, in the same chunk size) and
//! consumed straight through librdkafka in the same run. `fill`: publish many small versions, to
//! measure the registry's start-up replay afterwards (see scripts/bench.sh).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use kappa_api::registry as pb;
use kappa_client::Registry;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer},
    util::Timeout,
};
use tokio_stream::StreamExt as _;

const CHUNK: usize = 1024 * 1024;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    registry: String,
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// TLS and token for a secured registry, as the CLI takes them.
    #[command(flatten)]
    security: kappa_client::ClientSecurityArgs,
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Publish and get a ~52 MiB model `iterations` times; compare with raw Kafka.
    Throughput {
        #[arg(long, default_value_t = 3)]
        iterations: u32,
    },
    /// Publish `versions` small versions of one model.
    Fill {
        #[arg(long, default_value_t = 1000)]
        versions: u32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let security = args.security.security().map_err(anyhow::Error::msg)?;
    let mut client = Registry::connect_with(&args.registry, &security).await?;
    match args.command {
        Mode::Throughput { iterations } => throughput(&mut client, &args.kafka_bootstrap, iterations).await,
        Mode::Fill { versions } => fill(&mut client, versions).await,
    }
}

async fn publish(
    client: &mut Registry,
    manifest: &kappa_api::model::ModelManifest,
    weights: &[u8],
    key: &str,
) -> anyhow::Result<u64> {
    Ok(client
        .publish(manifest, weights, key)
        .await?
        .version
        .unwrap_or_default()
        .version)
}

/// Bytes of one GetModel answer, counted as they arrive: this measures the registry's read path,
/// not the client's hashing, like the raw consume it is compared with.
async fn get(client: &mut Registry, name: &str, version: u64) -> anyhow::Result<usize> {
    let mut stream = client
        .rpc()
        .get_model(pb::GetModelRequest {
            name: name.to_owned(),
            selector: Some(pb::get_model_request::Selector::Version(version)),
            manifest_only: false,
        })
        .await?
        .into_inner();
    let mut bytes = 0;
    while let Some(m) = stream.next().await {
        if let Some(pb::get_model_response::Part::Chunk(c)) = m?.part {
            bytes += c.len();
        }
    }
    Ok(bytes)
}

fn mib_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
}

async fn throughput(client: &mut Registry, bootstrap: &str, iterations: u32) -> anyhow::Result<()> {
    let name = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let manifest = kappa_fleet::car_autoencoder(&name, &[2048, 2048, 2048, 2560]);
    let weights = kappa_model::example::random_weights(&manifest, 1);
    let size = weights.len();
    println!(
        "model: {:.1} MiB, {iterations} iterations each",
        size as f64 / 1048576.0
    );

    let topic = format!("bench.raw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut raw = tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.to_owned(), topic.clone());
        move || RawKafka::new(&bootstrap, &topic)
    })
    .await??;
    let weights = Arc::new(weights);
    // Kappa and the baseline alternate, so both see the same page cache and the same neighbours.
    let (mut publish_time, mut get_time) = (Duration::ZERO, Duration::ZERO);
    let (mut raw_produce, mut raw_consume) = (Duration::ZERO, Duration::ZERO);
    for i in 0..iterations {
        let started = Instant::now();
        let version = publish(client, &manifest, &weights, &format!("bench-{i}")).await?;
        publish_time += started.elapsed();
        let started = Instant::now();
        let read = get(client, &name, version).await?;
        get_time += started.elapsed();
        anyhow::ensure!(read == size, "GetModel returned {read} bytes, expected {size}");
        let bytes = Arc::clone(&weights);
        let (produced, consumed);
        (raw, produced, consumed) = tokio::task::spawn_blocking(move || {
            let (produced, consumed) = raw.round(&bytes)?;
            anyhow::Ok((raw, produced, consumed))
        })
        .await??;
        raw_produce += produced;
        raw_consume += consumed;
    }

    let total = size * iterations as usize;
    let rows = [
        (
            "publish (registry)",
            mib_per_s(total, publish_time),
            mib_per_s(total, raw_produce),
            "raw transactional produce",
        ),
        (
            "get (registry)",
            mib_per_s(total, get_time),
            mib_per_s(total, raw_consume),
            "raw read_committed consume",
        ),
    ];
    println!("| operation | Kappa MiB/s | baseline | baseline MiB/s | ratio | target |");
    println!("|---|---|---|---|---|---|");
    for (op, kappa, base, base_name) in rows {
        println!(
            "| {op} | {kappa:.1} | {base_name} | {base:.1} | {:.2}x | >= 0.7x |",
            kappa / base
        );
    }
    Ok(())
}

/// The same bytes in the same 1 MiB records, produced in one transaction and consumed back
/// with a consumer kept between rounds and fetching like the registry's, with librdkafka
/// alone: the ceiling the registry's Kafka path can reach on this machine.
struct RawKafka {
    producer: ThreadedProducer<DefaultProducerContext>,
    consumer: BaseConsumer,
    topic: String,
    next_offset: i64,
}

impl RawKafka {
    fn new(bootstrap: &str, topic: &str) -> anyhow::Result<Self> {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", format!("{topic}-producer"))
            .set("message.max.bytes", (CHUNK + 64 * 1024).to_string())
            .set("linger.ms", "2")
            .create()?;
        producer.init_transactions(Timeout::After(Duration::from_secs(30)))?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("{topic}-reader"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            // The registry's chunk readers' fetch settings, so the ceiling is tuned alike.
            .set("max.partition.fetch.bytes", "16777216")
            .set("fetch.wait.max.ms", "50")
            .set(kappa_kafka::FETCH_QUEUE_BACKOFF.0, kappa_kafka::FETCH_QUEUE_BACKOFF.1)
            .create()?;
        let mut raw = Self {
            producer,
            consumer,
            topic: topic.to_owned(),
            next_offset: 0,
        };
        // Untimed: the consumer's first assignment waits for its connection and metadata (0.8 s
        // here), which the registry's kept consumers have long paid.
        raw.round(&[0; 1024])?;
        Ok(raw)
    }

    /// One transaction of `weights`, then reading it back: (produce time, consume time).
    fn round(&mut self, weights: &[u8]) -> anyhow::Result<(Duration, Duration)> {
        let started = Instant::now();
        self.producer.begin_transaction()?;
        for (i, chunk) in weights.chunks(CHUNK).enumerate() {
            let key = format!("chunk/{i}");
            let mut record = BaseRecord::<str, [u8]>::to(&self.topic).key(&key).payload(chunk);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
        }
        self.producer
            .commit_transaction(Timeout::After(Duration::from_secs(60)))?;
        let produce = started.elapsed();

        let chunks = weights.len().div_ceil(CHUNK);
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, 0, Offset::Offset(self.next_offset))?;
        self.consumer.assign(&tpl)?;
        let (mut bytes, mut seen) = (0, 0);
        while seen < chunks {
            if let Some(m) = self.consumer.poll(Duration::from_secs(10)) {
                bytes += m?.payload().map_or(0, <[u8]>::len);
                seen += 1;
            }
        }
        let consume = started.elapsed();
        anyhow::ensure!(bytes == weights.len(), "consumed {bytes} bytes");
        // Each transaction adds its chunks plus one commit marker.
        self.next_offset += chunks as i64 + 1;
        Ok((produce, consume))
    }
}

async fn fill(client: &mut Registry, versions: u32) -> anyhow::Result<()> {
    let manifest = kappa_fleet::car_autoencoder("replay-bench", &[8]);
    let started = Instant::now();
    for seed in 0..versions {
        let weights = kappa_model::example::random_weights(&manifest, u64::from(seed));
        publish(client, &manifest, &weights, "").await?;
    }
    let elapsed = started.elapsed();
    println!(
        "published {versions} versions in {:.1} s ({:.0} publishes/s, one transaction each)",
        elapsed.as_secs_f64(),
        f64::from(versions) / elapsed.as_secs_f64()
    );
    Ok(())
}
