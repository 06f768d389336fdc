//! `kappa predictions`: what stream scoring produced over a recent window of the predictions
//! topic: how many events, the anomaly rate, the cars flagged, and which model versions answered.

use std::collections::BTreeMap;

use clap::Args;
use kappa_api::events::Prediction;

#[derive(Debug, Args)]
pub struct PredictionsArgs {
    #[command(flatten)]
    kafka: kappa_kafka::KafkaArgs,

    /// Topic the predictors write predictions to.
    #[arg(long, default_value = "model-predictions")]
    topic: String,

    /// Summarise the predictions of events that happened in the last N seconds (event time:
    /// a replayed backlog of older events is left out).
    #[arg(long, default_value_t = 60)]
    last_seconds: u64,

    /// A car is flagged when at least this share of its scored events are anomalies.
    #[arg(long, default_value_t = 0.2)]
    flag_share: f64,
}

#[derive(Default)]
struct PerCar {
    scored: u64,
    anomalies: u64,
}

pub async fn run(args: PredictionsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.flag_share),
        "--flag-share is a share: between 0 and 1"
    );
    tokio::task::spawn_blocking(move || summarise(&args)).await?
}

fn summarise(args: &PredictionsArgs) -> anyhow::Result<()> {
    let (mut scored, mut anomalies, mut errors) = (0_u64, 0_u64, BTreeMap::<String, u64>::new());
    let mut versions = BTreeMap::<(String, u64), u64>::new();
    let mut cars = BTreeMap::<String, PerCar>::new();
    crate::recent::read_recent(
        &args.kafka,
        &args.topic,
        args.last_seconds,
        "cli-predictions",
        "has a predictor run in stream mode yet?",
        &mut |payload, since_ms| {
            let Some(prediction) = payload.and_then(|p| serde_json::from_slice::<Prediction>(p).ok()) else {
                *errors.entry("not a prediction record".into()).or_default() += 1;
                return;
            };
            if prediction.event_time_ms > 0 && prediction.event_time_ms < since_ms {
                return;
            }
            if !prediction.error.is_empty() {
                *errors.entry(prediction.error).or_default() += 1;
                return;
            }
            scored += 1;
            *versions
                .entry((prediction.model_name, prediction.model_version))
                .or_default() += 1;
            let car = cars.entry(prediction.key).or_default();
            car.scored += 1;
            if prediction.is_anomaly {
                anomalies += 1;
                car.anomalies += 1;
            }
        },
    )?;

    println!(
        "{} predictions in the last {} s of {}: {scored} scored, {} refused",
        scored + errors.values().sum::<u64>(),
        args.last_seconds,
        args.topic,
        errors.values().sum::<u64>()
    );
    if scored > 0 {
        println!(
            "anomaly rate {:.1} % ({anomalies} of {scored} events)",
            100.0 * anomalies as f64 / scored as f64
        );
    }
    let answered: Vec<String> = versions.iter().map(|((m, v), n)| format!("{m} v{v} x{n}")).collect();
    println!("answered by: {}", answered.join(", "));
    let mut flagged: Vec<(&String, &PerCar)> = cars
        .iter()
        .filter(|(_, c)| c.scored > 0 && c.anomalies as f64 >= args.flag_share * c.scored as f64)
        .collect();
    flagged.sort_by(|a, b| (b.1.anomalies * a.1.scored).cmp(&(a.1.anomalies * b.1.scored)));
    println!(
        "cars flagged (>= {:.0} % of their events anomalous): {} of {}",
        args.flag_share * 100.0,
        flagged.len(),
        cars.len()
    );
    const SHOWN: usize = 10;
    for (car, c) in flagged.iter().take(SHOWN) {
        println!("  {car:<8} {:>4} of {:>4} events anomalous", c.anomalies, c.scored);
    }
    if flagged.len() > SHOWN {
        println!("  ... and {} more", flagged.len() - SHOWN);
    }
    for (reason, n) in &errors {
        println!("refused x{n}: {reason}");
    }
    Ok(())
}
