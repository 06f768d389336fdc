//! Predictor benchmarks, each against a baseline in the same invocation:
//! - `serve`: unary Predict against kappa-predictor and against a bare tonic server of the same
//!   API that answers without scoring (`echo-server`, started as its own process by
//!   scripts/bench.sh), driven by the same client: throughput with 64 in flight, p50/p99 with 1.
//! - `forward`: the hand-written forward pass against candle on the same model and rows.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use kappa_api::predictor::{
    PredictRequest, PredictResponse,
    predictor_client::PredictorClient,
    predictor_server::{Predictor, PredictorServer},
};
use kappa_model::{Backend, Mlp, example::SENSOR_FIELDS};
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
    },
    /// Compare a predictor with the echo server.
    Serve {
        #[arg(long)]
        predictor: String,
        #[arg(long)]
        echo: String,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Compare the native and candle forward passes.
    Forward {
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
    },
}

struct Echo;

#[tonic::async_trait]
impl Predictor for Echo {
    async fn predict(&self, request: Request<PredictRequest>) -> Result<Response<PredictResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(PredictResponse {
            request_id: request.request_id,
            model_name: "echo".into(),
            ..Default::default()
        }))
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
        features: SENSOR_FIELDS
            .iter()
            .enumerate()
            .map(|(i, f)| ((*f).to_owned(), i as f64 * 1.5))
            .collect(),
        ..Default::default()
    }
}

struct Run {
    requests: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
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
        Mode::EchoServer { listen } => {
            tonic::transport::Server::builder()
                .add_service(PredictorServer::new(Echo))
                .serve(listen)
                .await?;
        }
        Mode::Serve {
            predictor,
            echo,
            seconds,
        } => {
            let mut kappa64 = drive(&predictor, 64, seconds).await?;
            let mut echo64 = drive(&echo, 64, seconds).await?;
            let mut kappa1 = drive(&predictor, 1, seconds).await?;
            let mut echo1 = drive(&echo, 1, seconds).await?;
            println!("| measurement | kappa-predictor | tonic echo baseline | ratio | budget |");
            println!("|---|---|---|---|---|");
            println!(
                "| unary Predict throughput, 64 in flight | {:.0} req/s | {:.0} req/s | {:.2}x | >= 0.7x |",
                kappa64.rps(),
                echo64.rps(),
                kappa64.rps() / echo64.rps()
            );
            println!(
                "| p99 latency, 64 in flight | {:.3} ms | {:.3} ms | {:.2}x | |",
                ms(kappa64.percentile(0.99)),
                ms(echo64.percentile(0.99)),
                ms(kappa64.percentile(0.99)) / ms(echo64.percentile(0.99))
            );
            let (k50, e50) = (kappa1.percentile(0.5), echo1.percentile(0.5));
            let (k99, e99) = (kappa1.percentile(0.99), echo1.percentile(0.99));
            println!(
                "| p50 latency, 1 in flight | {:.3} ms | {:.3} ms | {:.2}x | |",
                ms(k50),
                ms(e50),
                ms(k50) / ms(e50)
            );
            println!(
                "| p99 latency, 1 in flight | {:.3} ms | {:.3} ms | {:.2}x | <= 2x |",
                ms(k99),
                ms(e99),
                ms(k99) / ms(e99)
            );
        }
        Mode::Forward { rows } => {
            let manifest = kappa_model::example::sensor_autoencoder_manifest("bench", 8);
            let weights = kappa_model::example::random_weights(&manifest, 1);
            let input: Vec<f32> = (0..SENSOR_FIELDS.len()).map(|i| i as f32).collect();
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
                    rates.push((n * data.len() / SENSOR_FIELDS.len()) as f64 / t.elapsed().as_secs_f64());
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
