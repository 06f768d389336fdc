//! ONNX graphs in Kappa's engine against ONNX Runtime, in process, one thread each: rows/s at
//! each batch size on the same graph and the same rows, rounds alternating between the two so
//! both see the same noise. ONNX Runtime runs from Python (`bench/onnx_ort.py`, a session with
//! one intra-op and one inter-op thread), the way data scientists call it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use kappa_model::{
    Feature, ModelFormat, ModelManifest, OnnxScoring, OnnxSpec,
    onnx::{OnnxModel, engine::runnable, inspect},
};

#[derive(Debug, Parser)]
struct Args {
    /// The graph.
    #[arg(long)]
    graph: PathBuf,
    /// A fixture JSON with `rows` (row-major) and `features` (tests/onnx's scripts write them).
    #[arg(long)]
    rows: PathBuf,
    /// What to call the graph in the table.
    #[arg(long)]
    label: String,
    #[arg(long = "batch", default_values_t = [1, 64])]
    batches: Vec<usize>,
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The Python with onnxruntime and numpy.
    #[arg(long)]
    python: PathBuf,
    /// bench/onnx_ort.py.
    #[arg(long)]
    ort: PathBuf,
    /// The ratio the table states as the target, if any.
    #[arg(long)]
    target: Option<f64>,
}

/// The graph built as admission builds it, scoring its first output: the engine runs every
/// output whatever is scored, as ONNX Runtime does.
fn build(graph: &[u8], features: usize) -> anyhow::Result<OnnxModel> {
    let checked = inspect(graph, &runnable)?;
    let input = checked
        .info
        .inputs
        .first()
        .context("the graph has no input")?
        .name
        .clone();
    let output = checked
        .info
        .outputs
        .first()
        .context("the graph has no output")?
        .name
        .clone();
    let manifest = ModelManifest {
        name: "bench".into(),
        format: ModelFormat::Onnx as i32,
        features: (0..features)
            .map(|i| Feature {
                name: format!("f{i}"),
                scale: 1.0,
                ..Feature::default()
            })
            .collect(),
        onnx: Some(OnnxSpec {
            features_input: input,
            scoring: Some(OnnxScoring {
                score_output: output,
                ..OnnxScoring::default()
            }),
            graph: None,
        }),
        ..ModelManifest::default()
    };
    Ok(OnnxModel::build(&manifest, checked)?)
}

/// Rows/s of Kappa's engine over `seconds`, `batch` rows a call, cycling through `rows`.
fn kappa_rate(model: &OnnxModel, rows: &[f64], batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let f = model.n_features();
    let n = rows.len() / f;
    let batches: Vec<&[f64]> = (0..n / batch)
        .map(|b| &rows[b * batch * f..(b + 1) * batch * f])
        .collect();
    anyhow::ensure!(!batches.is_empty(), "fewer rows than a batch of {batch}");
    for b in batches.iter().take(8) {
        model.infer(b, batch)?;
    }
    let (start, mut done) = (Instant::now(), 0);
    while start.elapsed() < Duration::from_secs_f64(seconds) {
        for b in &batches {
            model.infer(b, batch)?;
            done += batch;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn ort_rate(args: &Args, batch: usize) -> anyhow::Result<f64> {
    let out = Command::new(&args.python)
        .arg(&args.ort)
        .arg("--graph")
        .arg(&args.graph)
        .arg("--rows")
        .arg(&args.rows)
        .args(["--batch", &batch.to_string(), "--seconds", &args.seconds.to_string()])
        .output()
        .with_context(|| format!("running {}", args.python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "onnx_ort.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("onnx_ort.py printed no rate")
}

fn read_rows(path: &Path) -> anyhow::Result<(Vec<f64>, usize)> {
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path)?)?;
    let features = fixture["features"]
        .as_array()
        .context("no features in the fixture")?
        .len();
    let rows = fixture["rows"]
        .as_array()
        .context("no rows in the fixture")?
        .iter()
        .filter_map(serde_json::Value::as_f64)
        .collect();
    Ok((rows, features))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (rows, features) = read_rows(&args.rows)?;
    let model = build(&std::fs::read(&args.graph)?, features)?;
    for &batch in &args.batches {
        let (mut kappa, mut ort) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            kappa.push(kappa_rate(&model, &rows, batch, args.seconds)?);
            ort.push(ort_rate(&args, batch)?);
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (k, o) = (median(&mut kappa), median(&mut ort));
        println!(
            "| {}, batch {batch} | {k:.0} rows/s | {o:.0} rows/s | {:.2}x | {} |",
            args.label,
            k / o,
            args.target.map_or(String::new(), |t| format!(">= {t}x"))
        );
    }
    Ok(())
}
