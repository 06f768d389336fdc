//! `kappa monitor --model M`: the predictors' monitoring windows for one model, as they close:
//! rows scored, anomaly rate against the training reference's, and the features that drifted.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use kappa_api::events::MonitoringWindow;
use rdkafka::{Message as _, Offset, TopicPartitionList, consumer::Consumer};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    kafka: kappa_kafka::KafkaArgs,

    /// The model whose windows to show.
    #[arg(long)]
    model: String,

    /// Topic the predictors write monitoring windows to (their --monitoring-topic).
    #[arg(long, default_value = "model-monitoring")]
    topic: String,

    /// Start with the windows written in the last N seconds, then follow new ones.
    #[arg(long, default_value_t = 300)]
    last_seconds: u64,

    /// Stop after this many windows (default: follow until Ctrl-C).
    #[arg(long)]
    windows: Option<u64>,

    /// Stop after this many seconds without a new window (predictors close one every window,
    /// rows or not, so this means none is running).
    #[arg(long)]
    idle_seconds: Option<u64>,

    /// Print every feature's PSI, not only the drifted ones.
    #[arg(long)]
    all_features: bool,
}

pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || follow(&args)).await?
}

fn follow(args: &MonitorArgs) -> anyhow::Result<()> {
    let (consumer, located, since_ms) = crate::recent::recent(
        &args.kafka,
        &args.topic,
        args.last_seconds,
        "cli-monitor",
        "has a predictor closed a monitoring window yet (--monitoring-topic)?",
    )?;
    let mut assignment = TopicPartitionList::new();
    for p in &located {
        // From the first window that recent, or the end for the windows still to come.
        assignment.add_partition_offset(&args.topic, p.partition, Offset::Offset(p.start))?;
    }
    consumer.assign(&assignment)?;
    println!(
        "windows of {} on {} (from the last {} s{}):",
        args.model,
        args.topic,
        args.last_seconds,
        if args.windows.is_none() && args.idle_seconds.is_none() {
            "; Ctrl-C stops"
        } else {
            ""
        }
    );
    let (mut shown, mut last_seen) = (0_u64, Instant::now());
    loop {
        if args.windows.is_some_and(|n| shown >= n)
            || args
                .idle_seconds
                .is_some_and(|s| last_seen.elapsed() >= Duration::from_secs(s))
        {
            return Ok(());
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.context("reading the monitoring topic")?;
        let Some(window) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<MonitoringWindow>(p).ok())
            .filter(|w| w.model_name == args.model)
            // A late record of an older window is not what was asked for.
            .filter(|w| w.window_end_ms >= since_ms)
        else {
            continue;
        };
        println!("{}", describe(&window, args.all_features));
        shown += 1;
        last_seen = Instant::now();
    }
}

/// One line per window, then the drifted (or all) features with their PSI.
fn describe(w: &MonitoringWindow, all_features: bool) -> String {
    let seconds = (w.window_end_ms - w.window_start_ms) as f64 / 1000.0;
    let mut text = format!(
        "v{} {:>6} rows in {seconds:.0} s  anomaly rate {:.1} % (training {:.1} %)  score PSI {:.3}  {}",
        w.model_version,
        w.events,
        w.anomaly_rate * 100.0,
        w.reference_anomaly_rate * 100.0,
        w.score_psi,
        if w.features.is_empty() {
            "too few rows to measure drift".to_owned()
        } else if w.drifted.is_empty() {
            format!("no feature drifted (PSI < {})", w.psi_threshold)
        } else {
            format!("DRIFT: {}", w.drifted.join(", "))
        }
    );
    for f in &w.features {
        if all_features || f.psi >= w.psi_threshold {
            text.push_str(&format!("\n    {:<40} PSI {:.3}", f.feature, f.psi));
        }
    }
    if !w.predictor.is_empty() {
        text.push_str(&format!("\n    (predictor {})", w.predictor));
    }
    text
}

#[cfg(test)]
mod tests {
    use kappa_api::events::FeatureDrift;

    use super::*;

    #[test]
    fn a_window_says_what_drifted_and_by_how_much() {
        let w = MonitoringWindow {
            model_name: "m".into(),
            model_version: 3,
            window_start_ms: 0,
            window_end_ms: 60_000,
            events: 4000,
            anomaly_rate: 0.05,
            reference_anomaly_rate: 0.01,
            score_psi: 0.4,
            features: vec![
                FeatureDrift {
                    feature: "coolant_temp".into(),
                    psi: 6.8,
                },
                FeatureDrift {
                    feature: "speed".into(),
                    psi: 0.01,
                },
            ],
            drifted: vec!["coolant_temp".into()],
            psi_threshold: 0.2,
            predictor: "p:1".into(),
            score_distribution: None,
        };
        let text = describe(&w, false);
        assert!(
            text.starts_with("v3   4000 rows in 60 s  anomaly rate 5.0 % (training 1.0 %)"),
            "{text}"
        );
        assert!(
            text.contains("DRIFT: coolant_temp") && text.contains("coolant_temp") && !text.contains("speed"),
            "{text}"
        );
        assert!(describe(&w, true).contains("speed"));
    }
}
