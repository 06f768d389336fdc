//! Predictor benchmarks, each against a baseline in the same invocation:
//! - `serve`: unary Predict against kappa-predictor and against a bare tonic server of the same
//!   API that answers without scoring (`echo-server`, started as its own process by
//!   scripts/bench.sh), driven by the same client: throughput with 64 in flight, p50/p99 with 1;
//!   with `--hop-echo`, also against an echo server that answers from a thread of its own, as the
//!   predictor scores off its async workers, in rounds that alternate.
//! - `forward`: the hand-written forward pass against candle on the same model and rows.
//! - `shadow`: the same predictor with and without `--shadow`, alternating rounds in one run:
//!   p99 and throughput, and what became of the shadow's copies.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kappa_api::predictor::{
    PredictRequest, PredictResponse,
    predictor_client::PredictorClient,
    predictor_server::{Predictor, PredictorServer},
};
use kappa_fleet::CAR_FIELDS;
use kappa_model::{Backend, Mlp};
use tonic::{Request, Response, Status, Streaming, transport::Channel};

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A tonic server of kappa.predictor.v1.Predictor that answers at once, without a model.
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
        /// Answer from a dedicated thread (a bounded queue there, a oneshot back), the hop every
        /// Predict takes to the predictor's inference threads: the ceiling of that design.
        #[arg(long)]
        hop: bool,
    },
    /// Compare a predictor with the echo server (and the hopping one, when given).
    Serve {
        #[arg(long)]
        predictor: String,
        #[arg(long)]
        echo: String,
        #[arg(long)]
        hop_echo: Option<String>,
        /// Seconds of each run; every round runs each server at 64 and at 1 in flight.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        rounds: u32,
    },
    /// Publish-to-first-served latency over `swaps` publishes, and p99 with and without swaps,
    /// under a steady load of 16 in flight. The predictor must follow `latest` of `model`.
    Swaps {
        #[arg(long)]
        predictor: String,
        #[arg(long)]
        registry: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 50)]
        swaps: u64,
    },
    /// Fill topics with sensor events.
    StreamFill {
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        #[arg(long, required = true)]
        topics: Vec<String>,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
    },
    /// Baseline: a plain consume -> produce pipe with no model; prints events/s.
    StreamPipe {
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Also do the work no stream scorer can skip: decode each event's JSON with the car
        /// model's schema and serialise a prediction for it, on both async workers (the ceiling
        /// for JSON in and out on this machine).
        #[arg(long)]
        decode: bool,
    },
    /// Wait until a predictor in stream mode has produced `events` predictions; compare rates.
    StreamWait {
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// The pipe's events/s, from stream-pipe.
        #[arg(long)]
        baseline: f64,
        /// The decoding pipe's events/s, from stream-pipe --decode.
        #[arg(long)]
        decoding_baseline: Option<f64>,
    },
    /// Compare a predictor running `--shadow` with the same predictor without, alternating
    /// `rounds` rounds of each at 1 and at 16 in flight.
    Shadow {
        #[arg(long)]
        plain: String,
        #[arg(long)]
        shadowed: String,
        /// The shadowed predictor's metrics URL (for what became of the shadow's copies).
        #[arg(long)]
        shadowed_metrics: String,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Publish -> first response on the new version for large models: `versions` publishes of
    /// an autoencoder over the car's 18 fields whose two hidden layers make it about `mib` MiB.
    /// The predictor must follow `latest` of `model` (and accept models that large).
    LargeSwap {
        #[arg(long)]
        predictor: String,
        #[arg(long)]
        registry: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 100)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        versions: u64,
    },
    /// A 50 MiB ONNX graph rolled out `swaps` times: publish returned -> first answer on the
    /// new version from `serving` (which must follow `latest` of `model`), and the p99 of the
    /// calls to `other` (a predictor of another model on the same machine, under 16 in flight)
    /// during the swaps against its p99 without them.
    OnnxSwap {
        #[arg(long)]
        serving: String,
        #[arg(long)]
        other: String,
        #[arg(long)]
        registry: String,
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 50)]
        mib: u64,
        #[arg(long, default_value_t = 50)]
        swaps: u64,
    },
    /// Compare the native and candle forward passes.
    Forward {
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
    },
}

/// Answers every Predict without a model; with `hop`, from a thread of its own.
struct Echo {
    hop: Option<crossbeam_channel::Sender<(String, tokio::sync::oneshot::Sender<PredictResponse>)>>,
}

impl Echo {
    fn new(hop: bool) -> Self {
        let hop = hop.then(|| {
            let (tx, rx) = crossbeam_channel::bounded::<(String, tokio::sync::oneshot::Sender<PredictResponse>)>(1024);
            std::thread::Builder::new()
                .name("echo-hop".into())
                .spawn(move || {
                    for (request_id, reply) in rx {
                        let _ = reply.send(echo(request_id));
                    }
                })
                .expect("a thread for the hopping echo");
            tx
        });
        Self { hop }
    }
}

fn echo(request_id: String) -> PredictResponse {
    PredictResponse {
        request_id,
        model_name: "echo".into(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Predictor for Echo {
    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        let request_id = request.into_inner().request_id;
        let Some(hop) = &self.hop else {
            return Ok(Response::new(echo(request_id)));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        hop.try_send((request_id, reply))
            .map_err(|_| Status::resource_exhausted("the echo thread's queue is full"))?;
        answer
            .await
            .map(Response::new)
            .map_err(|_| Status::internal("the echo thread is gone"))
    }

    type PredictStreamStream = futures::stream::Empty<Result<PredictResponse, Status>>;

    async fn predict_stream(
        &self,
        _request: Request<Streaming<PredictRequest>>,
    ) -> Result<Response<Self::PredictStreamStream>, Status> {
        Err(Status::unimplemented("the echo baseline serves unary Predict only"))
    }
}

fn request() -> PredictRequest {
    PredictRequest {
        features: CAR_FIELDS
            .iter()
            .enumerate()
            .map(|(i, f)| ((*f).to_owned(), i as f64 * 1.5))
            .collect(),
        ..Default::default()
    }
}

#[derive(Default)]
struct Run {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.requests += other.requests;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        self.latencies[((self.latencies.len() - 1) as f64 * p) as usize]
    }
}

/// `in_flight` workers, each with its own HTTP/2 stream slot on one shared channel, for `seconds`.
async fn drive(url: &str, in_flight: usize, seconds: u64) -> anyhow::Result<Run> {
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    let template = Arc::new(request());
    // Warm-up: connections, allocators, caches.
    let mut warm = PredictorClient::new(channel.clone());
    for _ in 0..200 {
        warm.predict((*template).clone()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let mut client = PredictorClient::new(channel.clone());
        let template = Arc::clone(&template);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let t = Instant::now();
                client
                    .predict((*template).clone())
                    .await
                    .expect("benchmark request failed");
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await?);
    }
    Ok(Run {
        requests: latencies.len(),
        elapsed: started.elapsed(),
        latencies,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Mode::EchoServer { listen, hop } => {
            tonic::transport::Server::builder()
                .add_service(PredictorServer::new(Echo::new(hop)))
                .serve(listen)
                .await?;
        }
        Mode::Serve {
            predictor,
            echo,
            hop_echo,
            seconds,
            rounds,
        } => {
            let servers: Vec<&str> = [Some(predictor.as_str()), Some(echo.as_str()), hop_echo.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            // [server][0: 64 in flight, 1: 1 in flight]; the servers take turns within each round,
            // so the machine's noise falls on all of them alike.
            let mut runs: Vec<[Run; 2]> = servers.iter().map(|_| Default::default()).collect();
            for _ in 0..rounds.max(1) {
                for (slot, in_flight) in [(0, 64), (1, 1)] {
                    for (server, url) in servers.iter().enumerate() {
                        runs[server][slot].add(drive(url, in_flight, seconds).await?);
                    }
                }
            }
            println!("| measurement | kappa-predictor | baseline | baseline's | ratio | target |");
            println!("|---|---|---|---|---|---|");
            let names = ["tonic echo", "tonic echo answering from its own thread"];
            let (kappa, baselines) = runs.split_at_mut(1);
            let kappa = &mut kappa[0];
            for (name, base) in names.iter().zip(baselines.iter_mut()) {
                // The targets are against the plain echo.
                let target = |t: &'static str| if *name == names[0] { t } else { "" };
                println!(
                    "| unary Predict throughput, 64 in flight | {:.0} req/s | {name} | {:.0} req/s | {:.2}x | {} |",
                    kappa[0].rps(),
                    base[0].rps(),
                    kappa[0].rps() / base[0].rps(),
                    target(">= 0.85x")
                );
                for (label, slot, p, goal) in [
                    ("p99 latency, 64 in flight", 0, 0.99, ""),
                    ("p50 latency, 1 in flight", 1, 0.5, ""),
                    ("p99 latency, 1 in flight", 1, 0.99, "<= 1.3x"),
                ] {
                    let (k, b) = (ms(kappa[slot].percentile(p)), ms(base[slot].percentile(p)));
                    println!(
                        "| {label} | {k:.3} ms | {name} | {b:.3} ms | {:.2}x | {} |",
                        k / b,
                        target(goal)
                    );
                }
            }
        }
        Mode::Swaps {
            predictor,
            registry,
            model,
            swaps,
        } => swap_bench(&predictor, &registry, &model, swaps).await?,
        Mode::StreamFill {
            kafka_bootstrap,
            topics,
            events,
        } => stream_fill(&kafka_bootstrap, &topics, events).await?,
        Mode::StreamPipe {
            kafka_bootstrap,
            from,
            to,
            events,
            decode,
        } => {
            let rate = stream_pipe(&kafka_bootstrap, &from, &to, events, decode).await?;
            println!("{rate:.0}");
        }
        Mode::StreamWait {
            kafka_bootstrap,
            topic,
            events,
            baseline,
            decoding_baseline,
        } => {
            let rate =
                tokio::task::spawn_blocking(move || wait_for_records(&kafka_bootstrap, &topic, events)).await??;
            println!("| measurement | kappa-predictor --stream | baseline | ratio | target |");
            println!("|---|---|---|---|---|");
            println!(
                "| stream scoring, {events} events, vs a plain consume -> produce pipe | {rate:.0} events/s | {baseline:.0} events/s | {:.2}x | >= 0.8x |",
                rate / baseline
            );
            if let Some(decoding) = decoding_baseline {
                println!(
                    "| the same, vs a pipe that also decodes the JSON and serialises a prediction (no model) | {rate:.0} events/s | {decoding:.0} events/s | {:.2}x | |",
                    rate / decoding
                );
            }
        }
        Mode::Shadow {
            plain,
            shadowed,
            shadowed_metrics,
            seconds,
            rounds,
        } => shadow_bench(&plain, &shadowed, &shadowed_metrics, seconds, rounds).await?,
        Mode::LargeSwap {
            predictor,
            registry,
            model,
            mib,
            versions,
        } => large_swap(&predictor, &registry, &model, mib, versions).await?,
        Mode::OnnxSwap {
            serving,
            other,
            registry,
            model,
            mib,
            swaps,
        } => onnx_swap(&serving, &other, &registry, &model, mib, swaps).await?,
        Mode::Forward { rows } => {
            let manifest = kappa_fleet::car_autoencoder("bench", &[8]);
            let weights = kappa_model::example::random_weights(&manifest, 1);
            let input: Vec<f32> = (0..CAR_FIELDS.len()).map(|i| i as f32).collect();
            let batch: Vec<f32> = input.iter().copied().cycle().take(64 * input.len()).collect();
            println!("| forward pass, 18-8-18 autoencoder | native | candle | native / candle |");
            println!("|---|---|---|---|");
            for (label, data, n) in [("batch 1", &input, rows), ("batch 64", &batch, rows / 64)] {
                let mut rates = Vec::new();
                for backend in [Backend::Native, Backend::Candle] {
                    let model = Mlp::load(&manifest, &weights, backend)?;
                    let mut scores = Vec::new();
                    let t = Instant::now();
                    for _ in 0..n {
                        model.score_into(data, &mut scores)?;
                    }
                    rates.push((n * data.len() / CAR_FIELDS.len()) as f64 / t.elapsed().as_secs_f64());
                }
                println!(
                    "| {label} | {:.0} rows/s | {:.0} rows/s | {:.1}x |",
                    rates[0],
                    rates[1],
                    rates[0] / rates[1]
                );
            }
        }
    }
    Ok(())
}

/// Load with `in_flight` workers until `stop`; records latencies and when each version was first seen.
async fn load_until(
    url: &str,
    in_flight: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    first_seen: Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>,
) -> anyhow::Result<Vec<Duration>> {
    use std::sync::atomic::Ordering;
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let mut client = PredictorClient::new(channel.clone());
        let (stop, first_seen) = (Arc::clone(&stop), Arc::clone(&first_seen));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut highest = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let answer = client
                    .predict(request())
                    .await
                    .expect("request failed during swaps")
                    .into_inner();
                latencies.push(t.elapsed());
                if answer.model_version > highest {
                    highest = answer.model_version;
                    first_seen.lock().unwrap().entry(highest).or_insert_with(Instant::now);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }
    Ok(all)
}

/// Alternates rounds against the plain and the shadowed predictor, so both see the same noise.
async fn shadow_bench(
    plain: &str,
    shadowed: &str,
    shadowed_metrics: &str,
    seconds: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    println!("| measurement | with --shadow | without | ratio | target |");
    println!("|---|---|---|---|---|");
    for in_flight in [1, 16] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut with_rps, mut without_rps) = (0.0, 0.0);
        for _ in 0..rounds {
            let run = drive(plain, in_flight, seconds).await?;
            without_rps += run.rps();
            without.extend(run.latencies);
            let run = drive(shadowed, in_flight, seconds).await?;
            with_rps += run.rps();
            with.extend(run.latencies);
        }
        let (w, wo) = (p99(&mut with), p99(&mut without));
        println!(
            "| p99 latency, {in_flight} in flight | {:.3} ms | {:.3} ms | {:.2}x | <= 1.2x |",
            ms(w),
            ms(wo),
            ms(w) / ms(wo)
        );
        println!(
            "| throughput, {in_flight} in flight | {:.0} req/s | {:.0} req/s | {:.2}x | |",
            with_rps / rounds as f64,
            without_rps / rounds as f64,
            with_rps / without_rps
        );
    }
    let mut rows = Vec::new();
    for outcome in ["scored", "dropped", "produce_failed"] {
        let series = format!("kappa_predictor_shadow_rows_total{{outcome=\"{outcome}\"}}");
        rows.push(kappa_bench::metric(shadowed_metrics, &series).await.unwrap_or(0.0));
    }
    println!(
        "\nshadow copies: {:.0} scored and in Kafka, {:.0} dropped while it was behind, {:.0} not produced (every live call answered)",
        rows[0], rows[1], rows[2]
    );
    Ok(())
}

/// Publishes large versions one after another and times each from its publish returning to the
/// predictor's first answer on it (one client polling).
/// Publishes a version and times publish returned -> the first answer `client`'s predictor
/// gives on it (or a later one).
async fn publish_until_served(
    registry: &mut kappa_client::Registry,
    client: &mut PredictorClient<Channel>,
    manifest: &kappa_model::ModelManifest,
    bytes: &[u8],
) -> anyhow::Result<Duration> {
    let version = registry
        .publish(manifest, bytes, "")
        .await?
        .version
        .context("the publish answered no version")?
        .version;
    let published = Instant::now();
    let deadline = published + Duration::from_secs(60);
    loop {
        let answer = client.predict(request()).await.map(Response::into_inner).ok();
        if answer.is_some_and(|a| a.model_version >= version) {
            return Ok(published.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "version {version} not served within 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn large_swap(predictor: &str, registry: &str, model: &str, mib: u64, versions: u64) -> anyhow::Result<()> {
    // Two square hidden layers of width w hold about w * w * 4 bytes.
    let width = (((mib * 1024 * 1024 / 4) as f64).sqrt()) as u32;
    let manifest = kappa_model::example::autoencoder_over(model, &CAR_FIELDS, &[width, width]);
    let mut registry = kappa_client::Registry::connect(registry).await?;
    let mut client = PredictorClient::new(Channel::from_shared(predictor.to_owned())?.connect().await?);
    let mut delays = Vec::new();
    let mut size = 0;
    for seed in 0..versions {
        let weights = kappa_model::example::random_weights(&manifest, 7000 + seed);
        size = weights.len();
        delays.push(publish_until_served(&mut registry, &mut client, &manifest, &weights).await?);
    }
    delays.sort_unstable();
    println!("| measurement | value | budget |");
    println!("|---|---|---|");
    println!(
        "| publish returned -> first response on the new version, {:.0} MiB model, {versions} versions | p50 {:.0} ms, max {:.0} ms | <= 2 s |",
        size as f64 / (1024.0 * 1024.0),
        ms(delays[delays.len() / 2]),
        ms(*delays.last().expect("at least one version"))
    );
    Ok(())
}

async fn onnx_swap(
    serving: &str,
    other: &str,
    registry: &str,
    model: &str,
    mib: u64,
    swaps: u64,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // An autoencoder F -> H -> F holds about 2 * F * H floats.
    let hidden = (mib * 1024 * 1024 / 4 / (2 * CAR_FIELDS.len() as u64)) as u32;
    let mut registry = kappa_client::Registry::connect(registry).await?;
    let mut client = PredictorClient::new(Channel::from_shared(serving.to_owned())?.connect().await?);
    let unused = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let load = |stop: &Arc<AtomicBool>| {
        tokio::spawn(load_until_owned(
            other.to_owned(),
            Arc::clone(stop),
            Arc::clone(&unused),
        ))
    };

    // The graphs are made before either phase, so their making loads neither.
    let graphs: Vec<(kappa_model::ModelManifest, Vec<u8>)> = (0..swaps)
        .map(|seed| kappa_model::example::onnx_autoencoder(model, &CAR_FIELDS, &[hidden], 9000 + seed))
        .collect();
    let size = graphs[0].1.len();

    // Rounds alternate: a tenth of the roll-outs under load, then the same load for as long
    // with nothing published, so both phases see the machine's noise alike.
    let (mut delays, mut with, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for round in graphs.chunks(graphs.len().div_ceil(10)) {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let during = load(&stop);
        for (manifest, graph) in round {
            delays.push(publish_until_served(&mut registry, &mut client, manifest, graph).await?);
        }
        let swapping = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        with.extend(during.await??);

        let stop = Arc::new(AtomicBool::new(false));
        let quiet = load(&stop);
        tokio::time::sleep(swapping).await;
        stop.store(true, Ordering::Relaxed);
        without.extend(quiet.await??);
    }

    delays.sort_unstable();
    let (p_with, p_without) = (p99(&mut with), p99(&mut without));
    println!("| measurement | value | baseline, same run | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| publish returned -> first answer, {:.0} MiB ONNX graph, {swaps} versions | p50 {:.0} ms, max {:.0} ms | | | <= 2 s |",
        size as f64 / (1024.0 * 1024.0),
        ms(delays[delays.len() / 2]),
        ms(*delays.last().expect("at least one swap"))
    );
    println!(
        "| p99 of another model's calls (16 in flight), during the swaps | {:.3} ms ({} calls) | {:.3} ms ({} calls) without | {:.2}x | <= 1.2x |",
        ms(p_with),
        with.len(),
        ms(p_without),
        without.len(),
        ms(p_with) / ms(p_without)
    );
    Ok(())
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort_unstable();
    latencies[(latencies.len() - 1) * 99 / 100]
}

async fn swap_bench(predictor: &str, registry: &str, model: &str, swaps: u64) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let first_seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));

    // Both phases publish `swaps` versions at the same cadence, so the registry and the broker
    // do the same work; in the baseline the versions belong to another model, so the predictor
    // does not swap. The difference is the cost of swapping itself.
    let mut registry = kappa_client::Registry::connect(registry).await?;
    let other = format!("{model}-other");
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load_until_owned(
        predictor.to_owned(),
        Arc::clone(&stop),
        Arc::clone(&first_seen),
    ));
    for seed in 0..swaps {
        publish_version(&mut registry, &other, 5000 + seed).await?;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut quiet = load.await??;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load_until_owned(
        predictor.to_owned(),
        Arc::clone(&stop),
        Arc::clone(&first_seen),
    ));
    let mut published = Vec::new();
    for seed in 0..swaps {
        let version = publish_version(&mut registry, model, 1000 + seed).await?;
        published.push((version, Instant::now()));
        // Wait until served before the next publish, so every version is measured.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !first_seen.lock().unwrap().contains_key(&version) {
            anyhow::ensure!(Instant::now() < deadline, "version {version} not served within 10 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut swapping = load.await??;
    let seen = first_seen.lock().unwrap();
    let mut delays: Vec<Duration> = published
        .iter()
        .map(|(v, at)| seen[v].saturating_duration_since(*at))
        .collect();
    delays.sort_unstable();
    let (q, s) = (p99(&mut quiet), p99(&mut swapping));
    println!("| measurement | value | baseline | ratio | budget |");
    println!("|---|---|---|---|---|");
    println!(
        "| publish returned -> first response on the new version, {swaps} swaps | p50 {:.1} ms, p99 {:.1} ms | | | p99 <= 50 ms |",
        ms(delays[delays.len() / 2]),
        ms(delays[(delays.len() - 1) * 99 / 100])
    );
    println!(
        "| p99 latency, 16 in flight: {swaps} swaps vs {swaps} publishes of another model | {:.3} ms | {:.3} ms | {:.2}x | <= 1.2x |",
        ms(s),
        ms(q),
        ms(s) / ms(q)
    );
    println!("| failed requests during swaps | 0 of {} | | | 0 |", swapping.len());
    Ok(())
}

async fn publish_version(registry: &mut kappa_client::Registry, model: &str, seed: u64) -> anyhow::Result<u64> {
    let manifest = kappa_fleet::car_autoencoder(model, &[8]);
    let weights = kappa_model::example::random_weights(&manifest, seed);
    Ok(registry
        .publish(&manifest, &weights, "")
        .await?
        .version
        .unwrap_or_default()
        .version)
}

async fn load_until_owned(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    first_seen: Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>,
) -> anyhow::Result<Vec<Duration>> {
    load_until(&url, 16, stop, first_seen).await
}

fn kafka(bootstrap: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Writes `events` sensor events (JSON, keyed by car) to each topic.
async fn stream_fill(bootstrap: &str, topics: &[String], events: usize) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = kafka(bootstrap).set("linger.ms", "5").create()?;
    for topic in topics {
        for start in (0..events).step_by(10_000) {
            let batch = (start..(start + 10_000).min(events)).map(|i| {
                let mut fields: serde_json::Map<String, serde_json::Value> = CAR_FIELDS
                    .iter()
                    .map(|f| ((*f).to_owned(), serde_json::json!((i % 13) as f64)))
                    .collect();
                fields.insert("car".into(), serde_json::json!(format!("car{}", i % 100)));
                let (key, value) = (format!("car{}", i % 100), serde_json::to_vec(&fields).expect("json"));
                let producer = producer.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::to(topic).key(&key).payload(&value),
                            Duration::from_secs(30),
                        )
                        .await
                }
            });
            for result in futures::future::join_all(batch).await {
                result.map_err(|(e, _)| e)?;
            }
        }
    }
    Ok(())
}

/// The baseline: consume -> produce with the predictor's settings (acks=all, idempotent, the
/// same fetch back-off, offsets stored after the ack, 1024 in flight) but no decoding and no
/// model. Returns events/s as the predictor's are measured: records landing in the output topic,
/// counted from outside, the clock starting at the first.
async fn stream_pipe(bootstrap: &str, from: &str, to: &str, events: usize, decode: bool) -> anyhow::Result<f64> {
    use futures::{FutureExt as _, StreamExt as _, stream::FuturesOrdered};
    use rdkafka::{
        Message,
        consumer::{Consumer, StreamConsumer},
        producer::{FutureProducer, FutureRecord},
    };
    let (backoff_key, backoff) = kappa_kafka::FETCH_QUEUE_BACKOFF;
    let consumer: StreamConsumer = kafka(bootstrap)
        .set("group.id", format!("pipe-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(backoff_key, backoff)
        .create()?;
    consumer.subscribe(&[from])?;
    let producer: FutureProducer = kafka(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .create()?;
    let (from, to_topic) = (from.to_owned(), to.to_owned());
    let decoder = decode
        .then(|| kappa_model::schema::EventDecoder::for_manifest(&kappa_fleet::car_autoencoder("bench", &[8])))
        .transpose()
        .map_err(|e| anyhow::anyhow!("the car model's schema: {e}"))?
        .map(Arc::new);
    let pipe = tokio::spawn(async move {
        let mut pending = FuturesOrdered::new();
        let mut done = 0;
        while done < events {
            tokio::select! {
                Some(result) = pending.next(), if !pending.is_empty() => {
                    let (partition, offset): (i32, i64) = result?;
                    consumer.store_offset(&from, partition, offset)?;
                    done += 1;
                }
                message = consumer.recv(), if pending.len() < 1024 => {
                    let message = message?;
                    let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
                    let (partition, offset) = (message.partition(), message.offset());
                    let producer = producer.clone();
                    let to = to_topic.clone();
                    if let Some(decoder) = &decoder {
                        let (decoder, payload) = (Arc::clone(decoder), message.payload().unwrap_or_default().to_vec());
                        pending.push_back(tokio::spawn(async move {
                            let value = decode_and_serialise(&decoder, &payload, &key, partition, offset);
                            producer.send(FutureRecord::to(&to).key(&key).payload(&value), Duration::from_secs(30)).await.expect("pipe produce");
                            (partition, offset)
                        }).boxed());
                    } else {
                        pending.push_back(async move {
                            let value = format!("{{\"source_offset\":{offset}}}");
                            producer.send(FutureRecord::to(&to).key(&key).payload(&value), Duration::from_secs(30)).await.expect("pipe produce");
                            Ok((partition, offset))
                        }.boxed());
                    }
                }
            }
        }
        anyhow::Ok(())
    });
    let (bootstrap, to) = (bootstrap.to_owned(), to.to_owned());
    let rate = tokio::task::spawn_blocking(move || wait_for_records(&bootstrap, &to, events)).await??;
    pipe.await??;
    Ok(rate)
}

/// What the decoding pipe does per event: the car's fields read from JSON into a row, and a
/// prediction (score 0) serialised.
fn decode_and_serialise(
    decoder: &kappa_model::schema::EventDecoder,
    payload: &[u8],
    key: &[u8],
    partition: i32,
    offset: i64,
) -> Vec<u8> {
    let mut event = kappa_model::schema::DecodedEvent::default();
    let mut row = Vec::with_capacity(CAR_FIELDS.len());
    let decoded = decoder
        .decode_into(payload, kappa_model::schema::PayloadFormat::Json, &mut event)
        .and_then(|()| decoder.extend_row(&event, &mut row).map_err(|p| decoder.describe(&p)));
    let prediction = kappa_api::events::Prediction {
        key: String::from_utf8_lossy(key).into_owned(),
        source_partition: partition,
        source_offset: offset,
        model_name: "bench".into(),
        error: decoded.err().unwrap_or_default(),
        ..Default::default()
    };
    let mut value = Vec::with_capacity(256);
    serde_json::to_writer(&mut value, &prediction).expect("a prediction serialises");
    value
}

/// Waits until `topic` holds `events` records; the clock starts at the first one.
fn wait_for_records(bootstrap: &str, topic: &str, events: usize) -> anyhow::Result<f64> {
    kappa_bench::RecordCounter::new(bootstrap)?.rate_until(topic, events)
}
