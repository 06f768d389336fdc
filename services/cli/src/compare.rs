//! `kappa compare --model M`: how a shadow version's answers compare with the served version's
//! on the same live traffic, per window: agreement of the anomaly flags, flips each way, and
//! the score deltas.

use std::collections::BTreeMap;

use clap::{Args, ValueEnum};
use kappa_api::events::ShadowPrediction;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    kafka: kappa_kafka::KafkaArgs,

    /// The model whose shadow answers to compare.
    #[arg(long)]
    model: String,

    /// Topic the predictors write shadow answers to (their --shadow-topic).
    #[arg(long, default_value = "shadow-predictions")]
    topic: String,

    /// Compare the shadow answers of the last N seconds.
    #[arg(long, default_value_t = 300)]
    last_seconds: u64,

    /// Length of each window of the summary, in seconds (by the time the shadow scored).
    #[arg(long, default_value_t = 60)]
    window_seconds: u64,

    /// Readable text, or JSON for scripts.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// One window's comparison of a (live, shadow) pair of versions.
#[derive(Debug, Default, Serialize)]
struct Window {
    window_start_ms: i64,
    live_version: u64,
    shadow_version: u64,
    answers: u64,
    /// Share of answers whose flags agree.
    agreement: f64,
    /// Flagged by the live version only, and by the shadow only.
    live_only: u64,
    shadow_only: u64,
    /// Mean of shadow minus live score, and of its absolute value.
    mean_delta: f64,
    mean_abs_delta: f64,
    #[serde(skip)]
    agreeing: u64,
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.window_seconds > 0, "--window-seconds must be at least 1");
    tokio::task::spawn_blocking(move || compare(&args)).await?
}

fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let window_ms = args.window_seconds as i64 * 1000;
    let mut windows: BTreeMap<(i64, u64, u64), Window> = BTreeMap::new();
    let mut unreadable = 0_u64;
    crate::recent::read_recent(
        &args.kafka,
        &args.topic,
        args.last_seconds,
        "cli-compare",
        "has a predictor run with --shadow yet?",
        &mut |payload, since_ms| {
            let Some(answer) = payload.and_then(|p| serde_json::from_slice::<ShadowPrediction>(p).ok()) else {
                unreadable += 1;
                return;
            };
            if answer.model_name != args.model || answer.scored_at_ms < since_ms {
                return;
            }
            let start = answer.scored_at_ms - answer.scored_at_ms.rem_euclid(window_ms);
            let w = windows
                .entry((start, answer.live_version, answer.shadow_version))
                .or_insert_with(|| Window {
                    window_start_ms: start,
                    live_version: answer.live_version,
                    shadow_version: answer.shadow_version,
                    ..Window::default()
                });
            w.answers += 1;
            match (answer.live_is_anomaly, answer.shadow_is_anomaly) {
                (true, false) => w.live_only += 1,
                (false, true) => w.shadow_only += 1,
                _ => w.agreeing += 1,
            }
            let delta = answer.shadow_score - answer.live_score;
            w.mean_delta += delta;
            w.mean_abs_delta += delta.abs();
        },
    )?;
    let windows: Vec<Window> = windows
        .into_values()
        .map(|mut w| {
            let n = w.answers.max(1) as f64;
            w.agreement = w.agreeing as f64 / n;
            w.mean_delta /= n;
            w.mean_abs_delta /= n;
            w
        })
        .collect();
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&windows)?);
        return Ok(());
    }
    let total: u64 = windows.iter().map(|w| w.answers).sum();
    println!(
        "{total} shadow answers for {} in the last {} s of {}{}",
        args.model,
        args.last_seconds,
        args.topic,
        if unreadable > 0 {
            format!(" ({unreadable} records not shadow answers)")
        } else {
            String::new()
        }
    );
    if windows.is_empty() {
        return Ok(());
    }
    println!(
        "  {:<24} {:>6} {:>7} {:>8} {:>10} {:>10} {:>11} {:>11}",
        "window start (UTC ms)", "live", "shadow", "answers", "agreement", "live only", "shadow only", "mean |Δ|"
    );
    for w in &windows {
        println!(
            "  {:<24} {:>6} {:>7} {:>8} {:>9.2}% {:>10} {:>11} {:>11.4}",
            w.window_start_ms,
            format!("v{}", w.live_version),
            format!("v{}", w.shadow_version),
            w.answers,
            w.agreement * 100.0,
            w.live_only,
            w.shadow_only,
            w.mean_abs_delta
        );
    }
    Ok(())
}
