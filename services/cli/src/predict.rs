//! `kappa predict`: score a CSV file (the reference demo's format) or JSON lines through a
//! running predictor and print one line per row.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use futures::StreamExt as _;
use kappa_api::predictor::{PredictRequest, predictor_client::PredictorClient};
use tonic::transport::Endpoint;

/// Requests in flight at once.
const CONCURRENCY: usize = 32;

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Where kappa-predictor listens.
    #[arg(long, env = "KAPPA_PREDICTOR", default_value = "http://127.0.0.1:50052")]
    predictor: String,

    /// Model name to ask for; empty for whatever the predictor serves.
    #[arg(long, default_value = "")]
    model: String,

    /// A CSV file with a header row (e.g. the demo's car-sensor-data.csv), or JSON lines (one
    /// object of sensor fields per line); `-` reads standard input.
    input: PathBuf,

    /// Print only rows flagged as anomalies (errors are always printed).
    #[arg(long)]
    anomalies_only: bool,
}

/// Non-feature columns that identify a row.
const ID_COLUMNS: [&str; 2] = ["car", "time"];

pub fn rows(text: &str) -> anyhow::Result<Vec<(String, PredictRequest)>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    let json = lines.peek().is_some_and(|l| l.trim_start().starts_with('{'));
    let mut out = Vec::new();
    if json {
        for (i, line) in lines.enumerate() {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).with_context(|| format!("line {} is not a JSON object", i + 1))?;
            let id = object
                .get("car")
                .and_then(|v| v.as_str())
                .map_or_else(|| format!("line {}", i + 1), str::to_owned);
            let features = object
                .iter()
                .filter(|(k, _)| !ID_COLUMNS.contains(&k.as_str()) && k.as_str() != "failure_occurred")
                .filter_map(|(k, v)| v.as_f64().or_else(|| v.as_str()?.parse().ok()).map(|v| (k.clone(), v)))
                .collect();
            out.push((
                id,
                PredictRequest {
                    features,
                    request_id: (i + 1).to_string(),
                    ..Default::default()
                },
            ));
        }
    } else {
        let header: Vec<&str> = lines
            .next()
            .context("the CSV file is empty")?
            .split(',')
            .map(str::trim)
            .collect();
        for (i, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let cell = |name: &str| {
                header
                    .iter()
                    .position(|h| *h == name)
                    .and_then(|p| cells.get(p).copied())
            };
            let id = match (cell("car"), cell("time")) {
                (Some(car), Some(time)) => format!("{car}@{time}"),
                (Some(car), None) => car.to_owned(),
                _ => format!("row {}", i + 1),
            };
            let features = header
                .iter()
                .zip(&cells)
                .filter(|(h, _)| !ID_COLUMNS.contains(h) && **h != "failure_occurred")
                .filter_map(|(h, c)| c.parse::<f64>().ok().map(|v| ((*h).to_owned(), v)))
                .collect();
            out.push((
                id,
                PredictRequest {
                    features,
                    request_id: (i + 1).to_string(),
                    ..Default::default()
                },
            ));
        }
    }
    Ok(out)
}

pub async fn run(mut args: PredictArgs) -> anyhow::Result<()> {
    let text = if args.input.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()?
            .join("\n")
    } else {
        std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?
    };
    let channel = Endpoint::from_shared(args.predictor.clone())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| {
            format!(
                "cannot reach kappa-predictor at {}; is it running? (--predictor)",
                args.predictor
            )
        })?;
    let client = PredictorClient::new(kappa_telemetry::traced(channel));
    let model = args.model.clone();
    let mut answers = futures::stream::iter(rows(&text)?)
        .map(|(id, mut request)| {
            let mut client = client.clone();
            request.model.clone_from(&model);
            async move { (id, client.predict(request).await) }
        })
        .buffered(CONCURRENCY);
    let (mut total, mut flagged, mut failed) = (0, 0, 0);
    let mut out = std::io::stdout().lock();
    while let Some((id, answer)) = answers.next().await {
        total += 1;
        match answer {
            Ok(r) => {
                let r = r.into_inner();
                if r.is_anomaly {
                    flagged += 1;
                }
                let printed = (args.anomalies_only && !r.is_anomaly)
                    || writeln!(
                        out,
                        "{id}  score {:.6}  {}  {} v{}",
                        r.score,
                        if r.is_anomaly { "ANOMALY" } else { "normal " },
                        r.model_name,
                        r.model_version
                    )
                    .is_ok();
                // The reader went away (e.g. `| head`): keep counting, stop printing.
                if !printed {
                    args.anomalies_only = true;
                }
            }
            Err(status) => {
                failed += 1;
                let _ = writeln!(out, "{id}  refused: {:?}: {}", status.code(), status.message());
            }
        }
    }
    eprintln!("{total} rows: {flagged} anomalies, {failed} refused");
    Ok(())
}
