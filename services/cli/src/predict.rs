//! `kappa predict`: score a CSV file (the reference demo's format) or JSON lines through a
//! running predictor and print one line per row.

use std::{
    io::{BufRead, Write},
    path::PathBuf,
};

use anyhow::Context;
use clap::Args;
use futures::StreamExt as _;
use kappa_api::predictor::{PredictRequest, predictor_client::PredictorClient};

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

    /// A CSV file with a header row (e.g. data/car-sensor-data.csv), or JSON lines (one event
    /// per line, nested objects fine); `-` reads standard input.
    input: PathBuf,

    /// Field (CSV column or top-level JSON key) that names each row in the output, e.g. `car`;
    /// rows are numbered when unset.
    #[arg(long)]
    id_field: Option<String>,

    /// Print only rows flagged as anomalies (errors are always printed).
    #[arg(long)]
    anomalies_only: bool,
}

/// Each row as a request: a JSON line is sent whole as the event (nested objects fine) and read
/// through the served version's schema; a CSV row sends its numeric cells by column name (the
/// predictor ignores columns the version does not take). Rows are named by `id_field` when set.
pub fn rows(text: &str, id_field: Option<&str>) -> anyhow::Result<Vec<(String, PredictRequest)>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).peekable();
    let json = lines.peek().is_some_and(|l| l.trim_start().starts_with('{'));
    let mut out = Vec::new();
    if json {
        for (i, line) in lines.enumerate() {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).with_context(|| format!("line {} is not a JSON object", i + 1))?;
            let id = id_field.and_then(|f| object.get(f)).map_or_else(
                || format!("line {}", i + 1),
                |v| v.as_str().map_or_else(|| v.to_string(), str::to_owned),
            );
            out.push((
                id,
                PredictRequest {
                    event_json: line.to_owned(),
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
            let id = id_field
                .and_then(|f| header.iter().position(|h| *h == f))
                .and_then(|p| cells.get(p))
                .map_or_else(|| format!("row {}", i + 1), |c| (*c).to_owned());
            let features = header
                .iter()
                .zip(&cells)
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

pub async fn run(mut args: PredictArgs, security: &kappa_client::ClientSecurity) -> anyhow::Result<()> {
    let text = if args.input.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()?
            .join("\n")
    } else {
        std::fs::read_to_string(&args.input).with_context(|| format!("cannot read {}", args.input.display()))?
    };
    let channel = kappa_client::connect_with("kappa-predictor", &args.predictor, security)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (--predictor)"))?;
    let client = PredictorClient::new(channel);
    let model = args.model.clone();
    let mut answers = futures::stream::iter(rows(&text, args.id_field.as_deref())?)
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
    // A script (or the demo waiting for a model) must be able to tell that rows were refused.
    anyhow::ensure!(
        failed == 0,
        "{failed} of {total} rows were refused (each is listed above)"
    );
    Ok(())
}
