//! `make bench` and the console's load test: predictions for many units produced to a topic at a
//! steady rate while page readers time the console's API and one event stream times how late
//! each anomaly reaches a page. Prints one JSON object: the rates reached, page latencies, event
//! latencies, the units the console holds and its resident memory over the run.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, client::conn::http1};
use hyper_util::rt::TokioIo;
use rand::{Rng as _, SeedableRng as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "Load on kappa-console: predictions for many units at a steady rate, pages and events timed")]
struct Args {
    #[arg(long, env = "KAPPA_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// The predictions topic the console follows.
    #[arg(long)]
    topic: String,
    /// The console's pages, e.g. 127.0.0.1:8080 (no TLS, no tokens).
    #[arg(long)]
    console: String,
    /// The console's process id, to read its resident memory.
    #[arg(long)]
    console_pid: Option<u32>,
    /// Distinct units (record keys), cycled through.
    #[arg(long, default_value_t = 100_000)]
    units: u32,
    /// Predictions per second (0: none, the idle baseline).
    #[arg(long, default_value_t = 50_000)]
    rate: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Share of predictions that are anomalies.
    #[arg(long, default_value_t = 0.02)]
    anomaly_share: f64,
    /// Concurrent page readers, each on its own connection.
    #[arg(long, default_value_t = 4)]
    readers: usize,
}

fn prediction(unit: u32, score: f64, anomaly: bool, now_ms: i64) -> String {
    let features = if anomaly {
        r#","topFeatures":[{"feature":"coolant_temp","share":0.81,"value":131.5,"typicalLow":82.0,"typicalHigh":96.0},{"feature":"engine_vibration_amplitude","share":0.12,"value":3.1}]"#
    } else {
        ""
    };
    format!(
        r#"{{"key":"unit-{unit}","eventTimeMs":"{now_ms}","score":{score},"isAnomaly":{anomaly},"modelName":"bench","modelVersion":"1","latencyMs":0.4{features}}}"#
    )
}

/// Produces `rate` predictions a second for `seconds`, in 10 ms slices; the count produced.
fn produce(args: &Args, stop: &AtomicBool) -> anyhow::Result<u64> {
    let producer: BaseProducer = kappa_kafka::KafkaClients::plain(&args.kafka_bootstrap)
        .config(&[
            ("linger.ms", "5"),
            kappa_kafka::COMPRESSION,
            ("queue.buffering.max.messages", "1000000"),
        ])
        .create()?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let started = Instant::now();
    let (mut sent, mut unit) = (0_u64, 0_u32);
    while started.elapsed() < Duration::from_secs(args.seconds) && !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * f64::from(args.rate)) as u64;
        while sent < due {
            let anomaly = rng.random_bool(args.anomaly_share);
            let score = if anomaly {
                rng.random_range(50.0..90.0)
            } else {
                rng.random_range(0.0..10.0)
            };
            let key = format!("unit-{unit}");
            let value = prediction(unit, score, anomaly, kappa_runtime::now_ms());
            let mut record = BaseRecord::to(&args.topic).key(&key).payload(&value);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        producer.poll(Duration::from_millis(5));
                        record = back;
                    }
                }
            }
            sent += 1;
            unit = (unit + 1) % args.units;
        }
        producer.poll(Duration::from_millis(10));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(sent)
}

async fn connect(address: &str) -> anyhow::Result<http1::SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach the console at {address}"))?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

fn get(address: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", address)
        .body(Empty::new())
        .expect("a valid request")
}

/// Reads pages until `stop`, each read timed (ms).
async fn read_pages(address: String, units: u32, seed: u64, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<f64>> {
    let mut sender = connect(&address).await?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let path = match rng.random_range(0..6) {
            0 | 1 => "/api/fleet".to_owned(),
            2 => format!("/api/units/unit-{}", rng.random_range(0..units)),
            3 => "/api/models".to_owned(),
            4 => "/api/monitoring".to_owned(),
            _ => "/api/serving".to_owned(),
        };
        let started = Instant::now();
        let response = sender.send_request(get(&address, &path)).await?;
        let status = response.status();
        response.into_body().collect().await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if !(status.is_success() || status == hyper::StatusCode::NOT_FOUND) {
            bail!("{path}: HTTP {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(latencies)
}

/// Follows `/api/live` until `stop`: for each anomaly a summary lists for the first time, how
/// long after its event time the page got it (ms); and the units the last summary counted.
async fn follow_events(address: String, stop: Arc<AtomicBool>) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut sender = connect(&address).await?;
    let response = sender.send_request(get(&address, "/api/live")).await?;
    let mut body = response.into_body();
    let (mut buffer, mut seen, mut latencies, mut units) = (Vec::new(), HashSet::new(), Vec::new(), 0);
    while !stop.load(Ordering::Relaxed) {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = tokio::time::sleep(Duration::from_millis(500)) => continue,
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else { continue };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if !text.starts_with("event: fleet") {
                continue;
            }
            let received_ms = kappa_runtime::now_ms();
            let Some(json) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let summary: serde_json::Value = serde_json::from_str(json)?;
            units = summary["units"].as_u64().unwrap_or(0);
            for anomaly in summary["latest"].as_array().into_iter().flatten() {
                let key = (anomaly["key"].to_string(), anomaly["atMs"].as_i64().unwrap_or(0));
                if key.1 > 0 && seen.insert(key.clone()) {
                    latencies.push((received_ms - key.1) as f64);
                }
            }
        }
    }
    Ok((latencies, units))
}

fn resident_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let stop = Arc::new(AtomicBool::new(false));
    let events = tokio::spawn(follow_events(args.console.clone(), Arc::clone(&stop)));
    let readers: Vec<_> = (0..args.readers)
        .map(|i| {
            tokio::spawn(read_pages(
                args.console.clone(),
                args.units,
                i as u64,
                Arc::clone(&stop),
            ))
        })
        .collect();
    let memory = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = {
        let (memory, stop, pid) = (Arc::clone(&memory), Arc::clone(&stop), args.console_pid);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(mib) = pid.and_then(resident_mib) {
                    memory.lock().expect("memory lock").push(mib);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let produced = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let producing = {
        let (args, stop, produced) = (Arc::clone(&args), Arc::clone(&stop), Arc::clone(&produced));
        tokio::task::spawn_blocking(move || {
            let sent = if args.rate == 0 {
                std::thread::sleep(Duration::from_secs(args.seconds));
                0
            } else {
                produce(&args, &stop)?
            };
            produced.store(sent, Ordering::Relaxed);
            anyhow::Ok(())
        })
    };
    producing.await??;
    let elapsed = started.elapsed().as_secs_f64();
    // The console gets two more summaries to show the last records.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut pages = Vec::new();
    for reader in readers {
        pages.extend(reader.await??);
    }
    let (mut event_latencies, units) = events.await??;
    sampler.await?;
    let memory = memory.lock().expect("memory lock").clone();
    let half = memory.len() / 2;
    let max = |m: &[f64]| m.iter().copied().fold(f64::NAN, f64::max);
    let produced = produced.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "predictions": produced,
        "predictions_per_second": produced as f64 / elapsed,
        "page_requests": pages.len(),
        "page_p50_ms": percentile(&mut pages, 0.5),
        "page_p99_ms": percentile(&mut pages, 0.99),
        "page_max_ms": percentile(&mut pages, 1.0),
        "anomalies_seen_on_pages": event_latencies.len(),
        "event_p50_ms": percentile(&mut event_latencies, 0.5),
        "event_p99_ms": percentile(&mut event_latencies, 0.99),
        "units_on_page": units,
        "rss_mib_first_half_max": max(&memory[..half]),
        "rss_mib_second_half_max": max(&memory[half..]),
    });
    println!("{report}");
    Ok(())
}
