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

mod serve;
mod stream;
mod swaps;

use self::{serve::*, stream::*, swaps::*};

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
        /// One event in this many has the spread-out readings the example model flags; the
        /// others read near zero, which it scores as normal (1: every event as spread out).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        unusual_every: u32,
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
    /// Wait until a predictor in stream mode has produced `events` predictions; print its
    /// events/s and the share of them flagged anomalous (the ones whose records are explained).
    StreamRate {
        #[arg(long, default_value = "127.0.0.1:9092")]
        kafka_bootstrap: String,
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
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
            unusual_every,
        } => stream_fill(&kafka_bootstrap, &topics, events, unusual_every as usize).await?,
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
        Mode::StreamRate {
            kafka_bootstrap,
            topic,
            events,
        } => {
            let (rate, flagged) = tokio::task::spawn_blocking(move || {
                let rate = wait_for_records(&kafka_bootstrap, &topic, events)?;
                anyhow::Ok((rate, anomaly_share(&kafka_bootstrap, &topic, events)?))
            })
            .await??;
            println!("{rate:.0} {flagged:.3}");
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
