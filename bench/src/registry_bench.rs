//! Registry benchmarks. `throughput`: publish and get a large model through kappa-registry,
//! against a baseline of the same bytes produced (transactionally, in the same chunk size) and
//! consumed straight through librdkafka in the same run, and, with `--bare`, against a bare
//! tonic server of the same API (`bare-server`, its own process) that keeps the upload in memory:
//! what gRPC alone allows. `fill`: publish many small versions, to measure the registry's
//! start-up replay afterwards (see scripts/bench.sh).

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
    /// Publish and get a ~52 MiB model `iterations` times; compare with raw Kafka and, given
    /// `--bare`, with the bare server at that URL.
    Throughput {
        #[arg(long, default_value_t = 3)]
        iterations: u32,
        /// URL of a `bare-server`.
        #[arg(long)]
        bare: Option<String>,
    },
    /// Serve the Registry API with no checks: each upload's chunks are produced to Kafka in
    /// one transaction as they arrive (answered once it commits), and kept in memory, which is
    /// what every GetModel returns, in 1 MiB chunks.
    BareServer {
        #[arg(long, default_value = "127.0.0.1:50152")]
        listen: std::net::SocketAddr,
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
    if let Mode::BareServer { listen } = args.command {
        let bare = BareRegistry::new(&args.kafka_bootstrap)?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        // The transport settings of Kappa's own servers, so the ceiling differs by the registry only.
        tonic::transport::Server::builder()
            .max_frame_size(kappa_runtime::HTTP2_MAX_FRAME_SIZE)
            .initial_stream_window_size(kappa_runtime::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(kappa_runtime::HTTP2_CONNECTION_WINDOW)
            .add_service(pb::registry_server::RegistryServer::new(bare))
            .serve_with_incoming(incoming)
            .await?;
        return Ok(());
    }
    let security = args.security.security().map_err(anyhow::Error::msg)?;
    let mut client = Registry::connect_with(&args.registry, &security).await?;
    match args.command {
        Mode::Throughput { iterations, bare } => {
            let bare = match bare {
                Some(url) => Some(Registry::connect_with(&url, &kappa_client::ClientSecurity::default()).await?),
                None => None,
            };
            throughput(&mut client, bare, &args.kafka_bootstrap, iterations).await
        }
        Mode::Fill { versions } => fill(&mut client, versions).await,
        Mode::BareServer { .. } => unreachable!("served above"),
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

async fn throughput(
    client: &mut Registry,
    mut bare: Option<Registry>,
    bootstrap: &str,
    iterations: u32,
) -> anyhow::Result<()> {
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
    let (mut bare_publish, mut bare_get) = (Duration::ZERO, Duration::ZERO);
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
        if let Some(bare) = bare.as_mut() {
            let started = Instant::now();
            publish(bare, &manifest, &weights, "").await?;
            bare_publish += started.elapsed();
            let started = Instant::now();
            let read = get(bare, &name, 1).await?;
            bare_get += started.elapsed();
            anyhow::ensure!(read == size, "the bare server returned {read} bytes, expected {size}");
        }
    }

    let total = size * iterations as usize;
    let (publish_rate, get_rate) = (mib_per_s(total, publish_time), mib_per_s(total, get_time));
    let mut rows = vec![
        (
            "publish (registry)",
            publish_rate,
            mib_per_s(total, raw_produce),
            "raw transactional produce",
            ">= 0.7x",
        ),
        (
            "get (registry)",
            get_rate,
            mib_per_s(total, raw_consume),
            "raw read_committed consume",
            ">= 0.7x",
        ),
    ];
    if bare.is_some() {
        rows.push((
            "publish (registry)",
            publish_rate,
            mib_per_s(total, bare_publish),
            "bare tonic server of the same API: chunks produced to Kafka in one transaction as they arrive, no checks",
            "",
        ));
        rows.push((
            "get (registry)",
            get_rate,
            mib_per_s(total, bare_get),
            "bare tonic server of the same API, served from memory",
            "",
        ));
        // What reading from Kafka and serving over gRPC cost together when neither overlaps
        // the other: both measured above, on the same two cores the registry shares with its
        // client and the broker. Overlapping them gains only what CPU is left idle.
        rows.push((
            "get (registry)",
            get_rate,
            mib_per_s(total, raw_consume + bare_get),
            "raw consume then bare serve, one after the other (sum of their times)",
            "",
        ));
    }
    println!("| operation | Kappa MiB/s | baseline | baseline MiB/s | ratio | target |");
    println!("|---|---|---|---|---|---|");
    for (op, kappa, base, base_name, target) in rows {
        println!(
            "| {op} | {kappa:.1} | {base_name} | {base:.1} | {:.2}x | {target} |",
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

/// The Registry API with the least behind it: an upload's chunks go to Kafka in one
/// transaction as they arrive, with no checks, no catalog and no read-back; the last upload is
/// kept in memory and served back in 1 MiB chunks, each copied into its message as the registry
/// copies a record's.
struct BareRegistry {
    weights: std::sync::Mutex<Arc<Vec<u8>>>,
    producer: rdkafka::producer::FutureProducer,
    topic: String,
}

impl BareRegistry {
    fn new(bootstrap: &str) -> anyhow::Result<Self> {
        let topic = format!("bench.bare-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let producer: rdkafka::producer::FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("transactional.id", format!("{topic}-producer"))
            .set("message.max.bytes", (CHUNK + 64 * 1024).to_string())
            .set("linger.ms", "2")
            .create()?;
        producer.init_transactions(Timeout::After(Duration::from_secs(30)))?;
        Ok(Self {
            weights: std::sync::Mutex::new(Arc::new(Vec::new())),
            producer,
            topic,
        })
    }
}

type Answers<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

fn not_here<T>() -> Result<tonic::Response<T>, tonic::Status> {
    Err(tonic::Status::unimplemented(
        "the bare baseline serves Publish and GetModel only",
    ))
}

#[tonic::async_trait]
impl pb::registry_server::Registry for BareRegistry {
    async fn publish(
        &self,
        request: tonic::Request<tonic::Streaming<pb::PublishRequest>>,
    ) -> Result<tonic::Response<pb::PublishResponse>, tonic::Status> {
        use rdkafka::producer::FutureRecord;
        let failed = |e: rdkafka::error::KafkaError| tonic::Status::unavailable(e.to_string());
        let mut stream = request.into_inner();
        let mut weights = Vec::new();
        tokio::task::block_in_place(|| self.producer.begin_transaction()).map_err(failed)?;
        let mut deliveries = Vec::new();
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(pb::publish_request::Part::Header(header)) => {
                    let declared = header.manifest.map_or(0, |m| m.weights_size);
                    weights.reserve(usize::try_from(declared).unwrap_or(0));
                }
                Some(pb::publish_request::Part::Chunk(chunk)) => {
                    let key = format!("chunk/{}", deliveries.len());
                    let record = FutureRecord::<str, [u8]>::to(&self.topic).key(&key).payload(&chunk);
                    deliveries.push(self.producer.send_result(record).map_err(|(e, _)| failed(e))?);
                    weights.extend_from_slice(&chunk);
                }
                None => {}
            }
        }
        tokio::task::block_in_place(|| {
            self.producer
                .commit_transaction(Timeout::After(Duration::from_secs(60)))
        })
        .map_err(failed)?;
        for delivery in deliveries {
            delivery
                .await
                .map_err(|_| tonic::Status::unavailable("a delivery was cancelled"))?
                .map_err(|(e, _)| failed(e))?;
        }
        *self.weights.lock().expect("weights lock") = Arc::new(weights);
        Ok(tonic::Response::new(pb::PublishResponse {
            version: Some(pb::ModelVersion {
                version: 1,
                ..Default::default()
            }),
            deduplicated: false,
        }))
    }

    type GetModelStream = Answers<pb::GetModelResponse>;

    async fn get_model(
        &self,
        _request: tonic::Request<pb::GetModelRequest>,
    ) -> Result<tonic::Response<Self::GetModelStream>, tonic::Status> {
        let weights = Arc::clone(&self.weights.lock().expect("weights lock"));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in weights.chunks(CHUNK) {
                let part = pb::get_model_response::Part::Chunk(chunk.to_vec());
                if tx.send(Ok(pb::GetModelResponse { part: Some(part) })).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_models(
        &self,
        _: tonic::Request<pb::ListModelsRequest>,
    ) -> Result<tonic::Response<pb::ListModelsResponse>, tonic::Status> {
        not_here()
    }

    async fn list_versions(
        &self,
        _: tonic::Request<pb::ListVersionsRequest>,
    ) -> Result<tonic::Response<pb::ListVersionsResponse>, tonic::Status> {
        not_here()
    }

    async fn set_alias(
        &self,
        _: tonic::Request<pb::SetAliasRequest>,
    ) -> Result<tonic::Response<pb::SetAliasResponse>, tonic::Status> {
        not_here()
    }

    async fn delete_alias(
        &self,
        _: tonic::Request<pb::DeleteAliasRequest>,
    ) -> Result<tonic::Response<pb::DeleteAliasResponse>, tonic::Status> {
        not_here()
    }

    async fn delete_version(
        &self,
        _: tonic::Request<pb::DeleteVersionRequest>,
    ) -> Result<tonic::Response<pb::DeleteVersionResponse>, tonic::Status> {
        not_here()
    }

    type WatchModelsStream = Answers<pb::WatchModelsResponse>;

    async fn watch_models(
        &self,
        _: tonic::Request<pb::WatchModelsRequest>,
    ) -> Result<tonic::Response<Self::WatchModelsStream>, tonic::Status> {
        not_here()
    }
}
