//! `kappa load`: keep calling one or more predictors with real rows for a while, and report what
//! a client saw: requests, failures, latency percentiles and, per predictor, the model versions
//! that answered (so a roll-out under load can be watched from the outside).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use kappa_api::predictor::{PredictRequest, predictor_client::PredictorClient};
use kappa_client::TracedChannel;

use crate::predict::rows;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// A predictor to call; repeat the flag to spread calls over several replicas.
    #[arg(
        long = "predictor",
        env = "KAPPA_PREDICTOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50052"
    )]
    predictors: Vec<String>,

    /// Rows to send, cycled: a CSV file with a header row or JSON lines (see `kappa predict`).
    input: PathBuf,

    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,

    /// Stop earlier, once every predictor has answered with this model version (or a newer one).
    #[arg(long)]
    until_version: Option<u64>,

    /// Calls in flight at once, over all predictors.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,

    /// Print a progress line every this many seconds (0: none).
    #[arg(long, default_value_t = 5.0)]
    progress_seconds: f64,
}

/// Latency histogram with buckets 2 % apart from 1 µs to about 100 s: fixed memory however long
/// the run, percentiles within 2 %.
struct Latencies {
    counts: Vec<u64>,
}

const GROWTH: f64 = 1.02;

impl Latencies {
    fn new() -> Self {
        Self { counts: vec![0; 940] }
    }

    fn record(&mut self, elapsed: Duration) {
        let micros = elapsed.as_secs_f64() * 1e6;
        let bucket = (micros.max(1.0).ln() / GROWTH.ln()) as usize;
        let last = self.counts.len() - 1;
        self.counts[bucket.min(last)] += 1;
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return GROWTH.powi(bucket as i32 + 1) / 1000.0;
            }
        }
        GROWTH.powi(self.counts.len() as i32) / 1000.0
    }
}

struct Tally {
    latencies: Latencies,
    /// Per predictor: answers by model version.
    versions: Vec<BTreeMap<u64, u64>>,
    failures: BTreeMap<String, u64>,
}

pub async fn run(args: LoadArgs, security: &kappa_client::ClientSecurity) -> anyhow::Result<()> {
    anyhow::ensure!(!args.predictors.is_empty(), "name at least one --predictor");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?;
    let requests: Arc<Vec<PredictRequest>> = Arc::new(rows(&text, None)?.into_iter().map(|(_, r)| r).collect());
    anyhow::ensure!(!requests.is_empty(), "{} holds no rows", args.input.display());
    let mut clients = Vec::new();
    for url in &args.predictors {
        let channel = kappa_client::connect_with("kappa-predictor", url, security)
            .await
            .map_err(|e| anyhow::anyhow!("{e} (--predictor)"))?;
        clients.push(PredictorClient::new(channel));
    }
    let tally = Arc::new(Mutex::new(Tally {
        latencies: Latencies::new(),
        versions: vec![BTreeMap::new(); clients.len()],
        failures: BTreeMap::new(),
    }));
    let (sent, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (clients, requests, tally, sent, stop) = (
                clients.clone(),
                Arc::clone(&requests),
                Arc::clone(&tally),
                Arc::clone(&sent),
                Arc::clone(&stop),
            );
            tokio::spawn(worker(clients, requests, tally, sent, stop, deadline))
        })
        .collect();

    let mut last_progress = Instant::now();
    let mut reached: Option<Instant> = None;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = tally.lock().expect("tally lock poisoned");
        if let Some(target) = args.until_version
            && t.versions
                .iter()
                .all(|v| v.keys().next_back().is_some_and(|top| *top >= target))
        {
            // Keep calling a moment longer: the calls right after a swap matter most.
            if reached.get_or_insert_with(Instant::now).elapsed() >= Duration::from_secs(1) {
                break;
            }
        }
        if args.progress_seconds > 0.0 && last_progress.elapsed().as_secs_f64() >= args.progress_seconds {
            last_progress = Instant::now();
            eprintln!(
                "  {:>5.1} s: {} calls, {} failed, serving {}",
                started.elapsed().as_secs_f64(),
                sent.load(Ordering::Relaxed),
                t.failures.values().sum::<u64>(),
                serving_now(&args.predictors, &t.versions)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    let t = tally.lock().expect("tally lock poisoned");
    let seconds = started.elapsed().as_secs_f64();
    let total = sent.load(Ordering::Relaxed);
    let failed: u64 = t.failures.values().sum();
    println!(
        "{total} calls in {seconds:.1} s ({:.0}/s), {failed} failed; latency p50 {:.2} ms, p99 {:.2} ms, max bucket {:.2} ms",
        total as f64 / seconds,
        t.latencies.percentile_ms(50.0),
        t.latencies.percentile_ms(99.0),
        t.latencies.percentile_ms(100.0)
    );
    for (url, versions) in args.predictors.iter().zip(&t.versions) {
        let answered: Vec<String> = versions.iter().map(|(v, n)| format!("v{v} x{n}")).collect();
        println!("  {url}: {}", answered.join(", "));
    }
    for (reason, n) in &t.failures {
        println!("  failed x{n}: {reason}");
    }
    if let Some(target) = args.until_version
        && !t
            .versions
            .iter()
            .all(|v| v.keys().next_back().is_some_and(|top| *top >= target))
    {
        anyhow::bail!("not every predictor reached version {target} within {} s", args.seconds);
    }
    anyhow::ensure!(failed == 0, "{failed} of {total} calls failed");
    Ok(())
}

async fn worker(
    mut clients: Vec<PredictorClient<TracedChannel>>,
    requests: Arc<Vec<PredictRequest>>,
    tally: Arc<Mutex<Tally>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) {
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let n = sent.fetch_add(1, Ordering::Relaxed) as usize;
        let target = n % clients.len();
        let request = requests[n % requests.len()].clone();
        let begun = Instant::now();
        let answer = clients[target].predict(request).await;
        let elapsed = begun.elapsed();
        let mut t = tally.lock().expect("tally lock poisoned");
        match answer {
            Ok(response) => {
                t.latencies.record(elapsed);
                *t.versions[target]
                    .entry(response.into_inner().model_version)
                    .or_default() += 1;
            }
            Err(status) => {
                *t.failures
                    .entry(format!("{:?}: {}", status.code(), status.message()))
                    .or_default() += 1;
            }
        }
    }
}

fn serving_now(urls: &[String], versions: &[BTreeMap<u64, u64>]) -> String {
    urls.iter()
        .zip(versions)
        .map(|(url, v)| {
            let host = url.rsplit('/').next().unwrap_or(url);
            match v.keys().next_back() {
                Some(top) => format!("{host} v{top}"),
                None => format!("{host} -"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_latencies_within_two_percent() {
        let mut l = Latencies::new();
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        for (p, expected) in [(50.0, 50.0), (99.0, 99.0), (100.0, 100.0)] {
            let got = l.percentile_ms(p);
            assert!((got / expected - 1.0).abs() <= 0.021, "p{p}: {got} vs {expected}");
        }
        assert_eq!(Latencies::new().percentile_ms(99.0), 0.0);
        l.record(Duration::from_secs(1000));
        assert!(
            l.percentile_ms(100.0) > 10_000.0,
            "off-scale values land in the last bucket"
        );
    }
}
