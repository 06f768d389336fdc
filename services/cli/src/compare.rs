//! `kappa compare --model M`: how a shadow version's answers compare with the served version's
//! on the same live traffic, per window: agreement of the anomaly flags, flips each way, and
//! the score deltas.

use clap::{Args, ValueEnum};
use kappa_backtest::shadow::ShadowSummary;

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

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.window_seconds > 0, "--window-seconds must be at least 1");
    tokio::task::spawn_blocking(move || compare(&args)).await?
}

fn compare(args: &CompareArgs) -> anyhow::Result<()> {
    let since_ms = kappa_runtime::now_ms() - args.last_seconds as i64 * 1000;
    let mut summary = ShadowSummary::new(&args.model, since_ms, args.window_seconds as i64 * 1000);
    crate::recent::read_recent(
        &args.kafka,
        &args.topic,
        args.last_seconds,
        "cli-compare",
        "has a predictor run with --shadow yet?",
        &mut |payload, _| summary.add(payload),
    )?;
    let unreadable = summary.unreadable;
    let windows = summary.finish();
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
