//! kappa-predictor against another Open Inference Protocol server serving the same weights
//! (MLServer with `bench/mlserver/kappa_runtime.py`, started by scripts/bench.sh), both driven by
//! the same third-party load client, ghz, with the same request: rounds alternate between the
//! two servers, at 1 and at 64 in flight, so both see the same noise. A bare tonic server of
//! the same API that answers without a model (`echo-server`) shows the client's own ceiling.
//!
//! Each round sends a fixed number of requests (what the server did in the warm-up, times the
//! round's seconds) rather than running for a time: ghz cancels what is in flight when its time
//! is up and counts those as failed calls.

use std::{net::SocketAddr, path::PathBuf, process::Command};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kappa_api::inference::{
    self as pb,
    grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer},
};
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// A tonic server of inference.GRPCInferenceService answering ModelInfer at once, no model.
    EchoServer {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Drive kappa-predictor, the other server and (optionally) the echo server with ghz.
    Compare(Box<Args>),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// The ghz binary.
    #[arg(long)]
    ghz: PathBuf,
    /// The Open Inference Protocol proto (grpc_predict_v2.proto).
    #[arg(long)]
    proto: PathBuf,
    /// kappa-predictor's gRPC address (host:port).
    #[arg(long)]
    kappa: String,
    /// The other server's gRPC address.
    #[arg(long)]
    other: String,
    /// What to call it in the table.
    #[arg(long, default_value = "MLServer")]
    other_name: String,
    /// The echo server's address, for the client's ceiling.
    #[arg(long)]
    echo: Option<String>,
    /// The model name both serve.
    #[arg(long)]
    model: String,
    /// The manifest both serve (proto3 JSON): the request is one row of its feature offsets.
    #[arg(long, required_unless_present = "rows")]
    manifest: Option<PathBuf>,
    /// Or a fixture JSON (`rows`, `features`, as tests/onnx's scripts write): each request
    /// carries its first --batch rows.
    #[arg(long)]
    rows: Option<PathBuf>,
    /// The input tensor's name in the requests.
    #[arg(long, default_value = "input")]
    input: String,
    /// Rows a request carries; each is measured in turn.
    #[arg(long = "batch", default_values_t = [1])]
    batches: Vec<usize>,
    /// Process ids of kappa-predictor and of the other server: CPU time a request is then
    /// measured from /proc around every run.
    #[arg(long, requires = "other_pid")]
    kappa_pid: Option<u32>,
    #[arg(long, requires = "kappa_pid")]
    other_pid: Option<u32>,
    /// Throughput targets, kappa / other, at 64 and at 1 in flight (0: none).
    #[arg(long, default_value_t = 15.0)]
    target_64: f64,
    #[arg(long, default_value_t = 8.0)]
    target_1: f64,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// What one ghz run measured.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    requests: u64,
    ok: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU seconds the server spent in the run, when its process is known.
    cpu_seconds: f64,
}

/// User plus system CPU seconds `pid` has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces, inside parentheses).
    let rest = stat.rsplit_once(')').context("an unreadable /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // The kernel's USER_HZ, 100 on every Linux this runs on.
    Ok(ticks / 100.0)
}

fn ghz(
    args: &Args,
    target: &str,
    request: &str,
    in_flight: usize,
    requests: u64,
    pid: Option<u32>,
) -> anyhow::Result<Run> {
    let cpu_before = pid.map(cpu_seconds).transpose()?;
    let out = Command::new(&args.ghz)
        .arg("--insecure")
        .arg("--proto")
        .arg(&args.proto)
        .args(["--call", "inference.GRPCInferenceService/ModelInfer"])
        .args(["-d", request])
        .args(["-c", &in_flight.to_string()])
        .args(["-n", &requests.max(in_flight as u64).to_string()])
        .args(["--format", "json"])
        .arg(target)
        .output()
        .with_context(|| format!("running {}", args.ghz.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "ghz against {target} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("ghz printed no JSON report")?;
    let latency = |p: u64| {
        report["latencyDistribution"]
            .as_array()
            .and_then(|d| d.iter().find(|l| l["percentage"].as_u64() == Some(p)))
            .and_then(|l| l["latency"].as_f64())
            .map_or(f64::NAN, |ns| ns / 1e6)
    };
    Ok(Run {
        requests: report["count"].as_u64().unwrap_or(0),
        ok: report["statusCodeDistribution"]["OK"].as_u64().unwrap_or(0),
        seconds: report["total"].as_f64().unwrap_or(0.0) / 1e9,
        p50_ms: latency(50),
        p99_ms: latency(99),
        cpu_seconds: match (pid, cpu_before) {
            (Some(pid), Some(before)) => cpu_seconds(pid)? - before,
            _ => 0.0,
        },
    })
}

/// Sums rounds: counts add up, latencies are the rounds' median.
fn combine(runs: &[Run]) -> Run {
    let median = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Run {
        requests: runs.iter().map(|r| r.requests).sum(),
        ok: runs.iter().map(|r| r.ok).sum(),
        seconds: runs.iter().map(|r| r.seconds).sum(),
        p50_ms: median(|r| r.p50_ms),
        p99_ms: median(|r| r.p99_ms),
        cpu_seconds: runs.iter().map(|r| r.cpu_seconds).sum(),
    }
}

struct Echo;

#[tonic::async_trait]
impl GrpcInferenceService for Echo {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: true }))
    }
    async fn model_ready(&self, _: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        Ok(Response::new(pb::ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Err(Status::unimplemented("the echo server has no metadata"))
    }
    async fn model_metadata(
        &self,
        _: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        Err(Status::unimplemented("the echo server has no metadata"))
    }
    /// One score per row, all zero: decoding and encoding, no model.
    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let request = request.into_inner();
        let rows = request
            .inputs
            .first()
            .and_then(|i| i.shape.first())
            .copied()
            .unwrap_or(1);
        Ok(Response::new(pb::ModelInferResponse {
            model_name: request.model_name,
            id: request.id,
            outputs: vec![pb::model_infer_response::InferOutputTensor {
                name: "score".into(),
                datatype: "FP32".into(),
                shape: vec![rows],
                contents: Some(pb::InferTensorContents {
                    fp32_contents: vec![0.0; rows.max(0) as usize],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().mode {
        Mode::EchoServer { listen } => {
            tonic::transport::Server::builder()
                .add_service(GrpcInferenceServiceServer::new(Echo))
                .serve(listen)
                .await?;
            Ok(())
        }
        Mode::Compare(args) => tokio::task::spawn_blocking(move || compare(&args)).await?,
    }
}

/// The rows a request carries, and their width.
fn request_rows(args: &Args, batch: usize) -> anyhow::Result<(Vec<f64>, usize)> {
    if let Some(path) = &args.rows {
        let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
        let width = fixture["features"]
            .as_array()
            .context("the fixture has no features")?
            .len();
        let rows: Vec<f64> = fixture["rows"]
            .as_array()
            .context("the fixture has no rows")?
            .iter()
            .take(batch * width)
            .filter_map(serde_json::Value::as_f64)
            .collect();
        anyhow::ensure!(rows.len() == batch * width, "the fixture has fewer than {batch} rows");
        return Ok((rows, width));
    }
    let path = args.manifest.as_ref().context("give --manifest or --rows")?;
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let row: Vec<f64> = manifest["features"]
        .as_array()
        .context("the manifest has no features")?
        .iter()
        .map(|f| f["offset"].as_f64().unwrap_or(0.0) + 0.5 * f["scale"].as_f64().unwrap_or(1.0))
        .collect();
    let width = row.len();
    Ok((row.iter().copied().cycle().take(batch * width).collect(), width))
}

fn compare(args: &Args) -> anyhow::Result<()> {
    let mut targets = vec![
        (&args.kappa, "kappa-predictor".to_owned(), args.kappa_pid),
        (&args.other, args.other_name.clone(), args.other_pid),
    ];
    if let Some(echo) = &args.echo {
        targets.push((echo, "bare tonic OIP server, no model".to_owned(), None));
    }
    println!(
        "| OIP ModelInfer, ghz | {} | ratio kappa / {} | target |",
        targets
            .iter()
            .map(|(_, n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        args.other_name
    );
    println!("|---|{}---|---|", "---|".repeat(targets.len()));
    for &batch in &args.batches {
        let (rows, width) = request_rows(args, batch)?;
        let request = serde_json::json!({
            "model_name": args.model,
            "inputs": [{
                "name": args.input,
                "datatype": "FP32",
                "shape": [batch, width],
                "contents": {"fp32_contents": rows},
            }],
        })
        .to_string();
        let rows_label = if batch == 1 {
            "one row".to_owned()
        } else {
            format!("{batch} rows")
        };
        for (in_flight, target) in [(64, args.target_64), (1, args.target_1)] {
            // Warm-up, which also sizes each target's rounds to about `seconds`.
            let mut sizes = Vec::new();
            for (address, _, _) in &targets {
                let warm = ghz(args, address, &request, in_flight, 2_000, None)?;
                sizes.push((warm.ok as f64 / warm.seconds * args.seconds as f64) as u64);
            }
            let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
            for _ in 0..args.rounds {
                for (i, (address, _, pid)) in targets.iter().enumerate() {
                    runs[i].push(ghz(args, address, &request, in_flight, sizes[i], *pid)?);
                }
            }
            let combined: Vec<Run> = runs.iter().map(|r| combine(r)).collect();
            let rps: Vec<f64> = combined.iter().map(|r| r.ok as f64 / r.seconds).collect();
            println!(
                "| throughput, {rows_label} a request, {in_flight} in flight | {} | {:.1}x | {} |",
                rps.iter()
                    .map(|r| format!("{r:.0} req/s"))
                    .collect::<Vec<_>>()
                    .join(" | "),
                rps[0] / rps[1],
                if target > 0.0 {
                    format!(">= {target}x")
                } else {
                    String::new()
                }
            );
            println!(
                "| p50 / p99 latency, {rows_label}, {in_flight} in flight | {} | {:.1}x / {:.1}x faster | |",
                combined
                    .iter()
                    .map(|r| format!("{:.3} / {:.3} ms", r.p50_ms, r.p99_ms))
                    .collect::<Vec<_>>()
                    .join(" | "),
                combined[1].p50_ms / combined[0].p50_ms,
                combined[1].p99_ms / combined[0].p99_ms
            );
            if args.kappa_pid.is_some() {
                let per_thousand: Vec<f64> = combined
                    .iter()
                    .map(|r| r.cpu_seconds * 1e6 / r.ok.max(1) as f64)
                    .collect();
                println!(
                    "| server CPU per 1,000 requests, {rows_label}, {in_flight} in flight | {:.0} ms | {:.0} ms |{} {:.2}x | <= 0.33x |",
                    per_thousand[0],
                    per_thousand[1],
                    if targets.len() > 2 { " |" } else { "" },
                    per_thousand[0] / per_thousand[1]
                );
            }
            println!(
                "| failed calls, {rows_label}, {in_flight} in flight | {} | | 0 |",
                combined
                    .iter()
                    .map(|r| format!("{} of {}", r.requests - r.ok, r.requests))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
    Ok(())
}
