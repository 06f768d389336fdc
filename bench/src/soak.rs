//! `make soak`: minutes of load on the real binaries while things go wrong, on a broker of its
//! own. Two predictors follow `latest` and score a sensor stream in one consumer group; callers
//! keep OIP requests in flight against both (a call that fails on one replica is retried once
//! on the other, as a client behind a load balancer would); a new version is published every few
//! seconds; the broker is stopped and started again, and one predictor killed with -9 and
//! restarted, at intervals. At the end it reads the predictions topic back and prints requests,
//! failures, p50/p99, swaps, events in and out, lost and duplicated events, and RSS, as markdown.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use kappa_api::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use kappa_fleet::{CAR_FIELDS, car_autoencoder};
use kappa_model::example::random_weights;
use rdkafka::{
    ClientConfig, Message,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    producer::{FutureProducer, FutureRecord},
};

#[derive(Debug, Parser)]
#[command(about = "Soak test: load, publishes, stream scoring, broker restarts and kill -9s")]
struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 10)]
    minutes: u64,
    /// Directory of the kappa-registry and kappa-predictor binaries (default: beside this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Seconds between publishes of a new version.
    #[arg(long, default_value_t = 5)]
    publish_every: u64,
    /// Seconds between broker restarts (each stops it for `outage_seconds`).
    #[arg(long, default_value_t = 150)]
    restart_every: u64,
    #[arg(long, default_value_t = 15)]
    outage_seconds: u64,
    /// Seconds between kill -9s of the second predictor (restarted at once).
    #[arg(long, default_value_t = 120)]
    kill_every: u64,
    /// Sensor events produced per second.
    #[arg(long, default_value_t = 200)]
    events_per_second: u64,
    /// OIP callers per predictor.
    #[arg(long, default_value_t = 4)]
    callers: usize,
}

const MODEL: &str = "soak";

use kappa_bench::{free_port, metric};

/// A single-node broker of the soak's own, started and stopped through deploy/kafka/kafka.sh.
struct Broker {
    script: PathBuf,
    env: Vec<(String, String)>,
    bootstrap: String,
    _state: tempdir::Dir,
}

mod tempdir {
    /// A directory removed when dropped.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Broker {
    fn start(repo: &Path) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("kappa-soak-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port();
        let broker = Self {
            script: repo.join("deploy/kafka/kafka.sh"),
            env: vec![
                ("KAFKA_STATE_DIR".into(), dir.display().to_string()),
                ("KAFKA_PORT".into(), port.to_string()),
                ("KAFKA_CONTROLLER_PORT".into(), free_port().to_string()),
            ],
            bootstrap: format!("127.0.0.1:{port}"),
            _state: tempdir::Dir(dir),
        };
        broker.run("up")?;
        Ok(broker)
    }

    fn run(&self, action: &str) -> anyhow::Result<()> {
        let out = Command::new(&self.script)
            .arg(action)
            .envs(self.env.iter().cloned())
            .output()?;
        if !out.status.success() {
            bail!("kafka.sh {action}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

/// A service process with its gRPC and metrics addresses.
struct Proc {
    child: Child,
    grpc: String,
    metrics: String,
}

impl Proc {
    fn spawn(binary: &Path, args: &[String], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_on(binary, args, log, free_port(), free_port())
    }

    fn spawn_on(binary: &Path, args: &[String], log: &Path, port: u16, metrics_port: u16) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(binary)
            .args(args)
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            grpc: format!("http://127.0.0.1:{port}"),
            metrics: format!("127.0.0.1:{metrics_port}"),
        })
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One metric's value from a Prometheus text scrape.
async fn wait_ready(address: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(mut client) = kappa_client::connect("soak", address)
            .await
            .map(GrpcInferenceServiceClient::new)
            && client
                .server_ready(kappa_api::inference::ServerReadyRequest {})
                .await
                .is_ok_and(|r| r.get_ref().ready)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{address} not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Default)]
struct Calls {
    ok: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

/// Keeps one call in flight at a time, preferring `first`, falling back to `second`.
async fn caller(first: String, second: String, calls: Arc<Calls>, stop: Arc<AtomicBool>) {
    let connect = |address: String| async move {
        kappa_client::connect("soak", &address)
            .await
            .ok()
            .map(GrpcInferenceServiceClient::new)
    };
    let (mut a, mut b) = (connect(first.clone()).await, connect(second.clone()).await);
    let row = vec![0.5_f32; CAR_FIELDS.len()];
    let mut latencies = Vec::with_capacity(1 << 16);
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let mut answered = false;
        for (attempt, (client, address)) in [(&mut a, &first), (&mut b, &second)].into_iter().enumerate() {
            if client.is_none() {
                *client = connect(address.clone()).await;
            }
            let Some(c) = client.as_mut() else { continue };
            if attempt == 1 {
                calls.retried.fetch_add(1, Ordering::Relaxed);
            }
            match tokio::time::timeout(
                Duration::from_secs(5),
                c.model_infer(kappa_client::oip::infer_request(MODEL, row.clone(), row.len())),
            )
            .await
            {
                Ok(Ok(_)) => {
                    answered = true;
                    break;
                }
                // A refused connection (the replica was killed) is reconnected next time.
                _ => *client = None,
            }
        }
        if answered {
            calls.ok.fetch_add(1, Ordering::Relaxed);
            latencies.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        } else {
            calls.failed.fetch_add(1, Ordering::Relaxed);
        }
        // Paced: a steady load, not a CPU-bound one that starves the services on 2 cores.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    calls.latencies_us.lock().unwrap().extend(latencies);
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn kafka(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// (partition, offset) of each prediction's source event, duplicates included.
fn read_predictions(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64)>> {
    let consumer: BaseConsumer = kafka(bootstrap)
        .set("group.id", format!("soak-reader-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[topic])?;
    let mut sources = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default())?;
                let partition = value["sourcePartition"].as_i64().unwrap_or(0) as i32;
                let offset = value["sourceOffset"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
                sources.push((partition, offset));
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(sources),
            Some(Err(e)) => bail!("reading the predictions: {e}"),
            None => {}
        }
    }
    bail!("the predictions topic was not read to its end within 120 s")
}

/// The topics of one soak run, on its own broker.
const MODELS: &str = "soak.models";
const SENSORS: &str = "soak.sensors";
const PREDICTIONS: &str = "soak.predictions";

/// Records by (partition, offset).
type Positions = BTreeSet<(i32, i64)>;

/// The services under load: the registry, a predictor left alone, and one that is killed.
struct Mesh {
    registry: Proc,
    steady: Proc,
    victim: Proc,
    /// How to start the victim again, on the same ports so callers find it.
    predictor_bin: PathBuf,
    predictor_args: Vec<String>,
    victim_ports: (u16, u16),
    logs: PathBuf,
}

impl Mesh {
    async fn start(bin_dir: &Path, bootstrap: &str, logs: PathBuf) -> anyhow::Result<Self> {
        let common = |extra: &[&str]| -> Vec<String> {
            let mut a = vec![
                format!("--kafka-bootstrap={bootstrap}"),
                format!("--models-topic={MODELS}"),
            ];
            a.extend(extra.iter().map(|s| (*s).to_owned()));
            a
        };
        let registry = Proc::spawn(
            &bin_dir.join("kappa-registry"),
            &common(&["--transactional-id=soak-registry"]),
            &logs.join("registry.log"),
        )?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let predictor_args = common(&[
            &format!("--model={MODEL}"),
            "--stream",
            &format!("--sensor-topic={SENSORS}"),
            &format!("--predictions-topic={PREDICTIONS}"),
            "--consumer-group=soak-scorers",
            "--kafka-property=session.timeout.ms=6000",
        ]);
        let predictor_bin = bin_dir.join("kappa-predictor");
        let steady = Proc::spawn(&predictor_bin, &predictor_args, &logs.join("predictor-a.log"))?;
        let victim = Proc::spawn(&predictor_bin, &predictor_args, &logs.join("predictor-b.log"))?;
        let port_of = |address: &str| -> u16 { address.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0) };
        let victim_ports = (port_of(&victim.grpc), port_of(&victim.metrics));
        Ok(Self {
            registry,
            steady,
            victim,
            predictor_bin,
            predictor_args,
            victim_ports,
            logs,
        })
    }

    /// kill -9 of the victim, started again at once.
    fn kill_victim(&mut self) -> anyhow::Result<()> {
        self.victim.kill9();
        self.victim = Proc::spawn_on(
            &self.predictor_bin,
            &self.predictor_args,
            &self.logs.join("predictor-b.log"),
            self.victim_ports.0,
            self.victim_ports.1,
        )?;
        Ok(())
    }
}

/// Callers keeping OIP requests in flight against both predictors until `stop`.
fn start_callers(
    mesh: &Mesh,
    per_predictor: usize,
    calls: &Arc<Calls>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..per_predictor * 2)
        .map(|i| {
            let (first, second) = if i % 2 == 0 {
                (mesh.steady.grpc.clone(), mesh.victim.grpc.clone())
            } else {
                (mesh.victim.grpc.clone(), mesh.steady.grpc.clone())
            };
            tokio::spawn(caller(first, second, Arc::clone(calls), Arc::clone(stop)))
        })
        .collect()
}

/// Sensor events at `rate` a second until `stop`, held by the producer while the broker is away;
/// ends with the (partition, offset) of every event Kafka acknowledged, and how many it did not.
fn feed_events(
    bootstrap: &str,
    rate: u64,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<(Positions, u64)>> {
    let producer: FutureProducer = kafka(bootstrap)
        .set("message.timeout.ms", "600000")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let stop = Arc::clone(stop);
    Ok(tokio::spawn(async move {
        let mut deliveries = Vec::new();
        let every = Duration::from_micros(1_000_000 / rate.max(1));
        let mut i = 0_u64;
        let mut tick = tokio::time::interval(every);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let event: serde_json::Map<String, serde_json::Value> = CAR_FIELDS
                .iter()
                .map(|f| ((*f).to_owned(), serde_json::json!(0.5 + (i % 5) as f64)))
                .collect();
            let (key, value) = (format!("car{}", i % 50), serde_json::to_vec(&event).unwrap());
            match producer.send_result(FutureRecord::to(SENSORS).key(&key).payload(&value)) {
                Ok(delivery) => deliveries.push(delivery),
                Err((e, _)) => eprintln!("soak: an event could not be queued: {e}"),
            }
            i += 1;
        }
        let mut sent = BTreeSet::new();
        let mut undelivered = 0_u64;
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(d)) => {
                    sent.insert((d.partition, d.offset));
                }
                _ => undelivered += 1,
            }
        }
        (sent, undelivered)
    }))
}

/// What went wrong on purpose, and what was published meanwhile.
#[derive(Default)]
struct Chaos {
    published: u64,
    publish_refused: u64,
    restarts: u64,
    kills: u64,
    /// Swaps the victim counted before each of its deaths.
    victim_swaps: f64,
}

const SWAPS: &str = "kappa_predictor_swaps_total";

/// Publishes, broker restarts and kill -9s on their own clocks until the run's end.
async fn chaos(
    args: &Args,
    broker: &Broker,
    mesh: &mut Mesh,
    publisher: &mut kappa_client::Registry,
    manifest: &kappa_api::model::ModelManifest,
) -> anyhow::Result<Chaos> {
    let mut done = Chaos::default();
    let started = Instant::now();
    let end = started + Duration::from_secs(args.minutes * 60);
    let (mut next_publish, mut next_restart, mut next_kill) = (
        started + Duration::from_secs(args.publish_every),
        started + Duration::from_secs(args.restart_every),
        started + Duration::from_secs(args.kill_every),
    );
    // While set, the broker is down until then; publishes meanwhile are answered UNAVAILABLE.
    let mut outage_until: Option<Instant> = None;
    let mut seed = 1_u64;
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_publish {
            next_publish = now + Duration::from_secs(args.publish_every);
            seed += 1;
            match tokio::time::timeout(
                Duration::from_secs(30),
                publisher.publish(manifest, &random_weights(manifest, seed), ""),
            )
            .await
            {
                Ok(Ok(_)) => done.published += 1,
                _ => done.publish_refused += 1,
            }
        }
        if outage_until.is_none() && now >= next_restart {
            next_restart = now + Duration::from_secs(args.restart_every);
            eprintln!("soak: stopping the broker for {} s", args.outage_seconds);
            broker.run("down")?;
            outage_until = Some(Instant::now() + Duration::from_secs(args.outage_seconds));
        }
        if outage_until.is_some_and(|until| Instant::now() >= until) {
            broker.run("up")?;
            outage_until = None;
            done.restarts += 1;
        }
        if now >= next_kill {
            next_kill = now + Duration::from_secs(args.kill_every);
            eprintln!("soak: kill -9 of the second predictor");
            done.victim_swaps += metric(&mesh.victim.metrics, SWAPS).await.unwrap_or(0.0);
            mesh.kill_victim()?;
            done.kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if outage_until.is_some() {
        broker.run("up")?;
        done.restarts += 1;
    }
    Ok(done)
}

/// The source (partition, offset) of every prediction, once `sent` are all answered or three
/// minutes have passed.
async fn answers(bootstrap: &str, sent: &BTreeSet<(i32, i64)>) -> anyhow::Result<Vec<(i32, i64)>> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let bootstrap = bootstrap.to_owned();
        let sources = tokio::task::spawn_blocking(move || read_predictions(&bootstrap, PREDICTIONS)).await??;
        let answered: BTreeSet<(i32, i64)> = sources.iter().copied().collect();
        if sent.is_subset(&answered) || Instant::now() > deadline {
            return Ok(sources);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the soak binary has no directory")?
            .to_owned(),
    };
    let logs = std::env::temp_dir().join(format!("kappa-soak-logs-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    eprintln!("soak: logs in {}", logs.display());

    let broker = Broker::start(&repo)?;
    let bootstrap = broker.bootstrap.clone();
    let admin: AdminClient<DefaultClientContext> = kafka(&bootstrap).create()?;
    let topics = [
        NewTopic::new(SENSORS, 6, TopicReplication::Fixed(1)),
        NewTopic::new(PREDICTIONS, 1, TopicReplication::Fixed(1)),
    ];
    for created in admin.create_topics(&topics, &AdminOptions::new()).await? {
        created.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let mut mesh = Mesh::start(&bin_dir, &bootstrap, logs.clone()).await?;
    let mut publisher = kappa_client::Registry::connect(&mesh.registry.grpc).await?;
    let manifest = car_autoencoder(MODEL, &[16]);
    publisher.publish(&manifest, &random_weights(&manifest, 0), "").await?;
    wait_ready(&mesh.steady.grpc, Duration::from_secs(60)).await?;
    wait_ready(&mesh.victim.grpc, Duration::from_secs(60)).await?;
    let rss_start = (mesh.registry.rss_mib(), mesh.steady.rss_mib());

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Calls::default());
    let callers = start_callers(&mesh, args.callers, &calls, &stop);
    let feeding = feed_events(&bootstrap, args.events_per_second, &stop)?;
    let done = chaos(&args, &broker, &mut mesh, &mut publisher, &manifest).await?;
    let rss_end = (mesh.registry.rss_mib(), mesh.steady.rss_mib());
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }
    let swaps = metric(&mesh.steady.metrics, SWAPS).await.unwrap_or(0.0)
        + done.victim_swaps
        + metric(&mesh.victim.metrics, SWAPS).await.unwrap_or(0.0);
    let (sent, undelivered) = feeding.await?;

    // Every event answered? Give the scorers time to catch up, then read the topic back.
    let sources = answers(&bootstrap, &sent).await?;
    let answered: BTreeSet<(i32, i64)> = sources.iter().copied().collect();
    let lost = sent.difference(&answered).count();
    let duplicated = sources.len() - answered.len();

    let mut latencies = std::mem::take(&mut *calls.latencies_us.lock().unwrap());
    latencies.sort_unstable();
    let (ok, failed, retried) = (
        calls.ok.load(Ordering::Relaxed),
        calls.failed.load(Ordering::Relaxed),
        calls.retried.load(Ordering::Relaxed),
    );
    println!("| soak ({} min, 2 predictors, release build) | value |", args.minutes);
    println!("|---|---|");
    println!("| inference requests answered | {ok} |");
    println!("| requests failed (after one retry on the other replica) | {failed} |");
    println!("| requests retried on the other replica | {retried} |");
    println!(
        "| latency p50 / p99 | {:.2} ms / {:.2} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "| versions published (refused while the broker was away) | {} ({}) |",
        done.published, done.publish_refused
    );
    println!("| swaps (both predictors) | {swaps} |");
    println!(
        "| broker restarts ({} s each) / predictor kill -9s | {} / {} |",
        args.outage_seconds, done.restarts, done.kills
    );
    println!(
        "| events in (acknowledged) / predictions out | {} / {} |",
        sent.len(),
        sources.len()
    );
    println!("| events lost / duplicated | {lost} / {duplicated} |");
    println!("| events the producer could not deliver | {undelivered} |");
    println!(
        "| RSS registry, steady predictor: start → end | {:.0} → {:.0} MiB, {:.0} → {:.0} MiB |",
        rss_start.0, rss_end.0, rss_start.1, rss_end.1
    );
    drop(broker);
    if lost > 0 {
        bail!("{lost} events were never answered (logs in {})", logs.display());
    }
    Ok(())
}
