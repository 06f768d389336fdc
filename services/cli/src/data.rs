//! `kappa data inspect`: what a topic's events hold, field by field, and the training spec the
//! trainer would use on them. It runs the trainer's own sampling and inference code, so what it
//! prints is what a job started with the same flags would train on.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kappa_api::trainer::TrainingSpec;
use kappa_dataset::{TimeRangeArgs, resolve_range};
use kappa_kafka::KafkaArgs;
use kappa_model::schema::Profile;
use serde_json::json;

use crate::train::SchemaArgs;

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Sample a time range of a topic and print each field's path, type, presence and
    /// min/median/max, the label's balance, and the training spec the trainer would use.
    Inspect(Box<InspectArgs>),
}

#[derive(Debug, Args)]
struct InspectArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic of events to inspect.
    #[arg(long)]
    topic: String,
    /// The range to inspect (default: the whole topic).
    #[command(flatten)]
    range: TimeRangeArgs,
    /// Events to sample, spread over every partition of the range.
    #[arg(long, default_value_t = 2000)]
    sample: usize,
    #[command(flatten)]
    schema: SchemaArgs,
    /// text, or json for scripts.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
}

pub async fn run(args: DataArgs) -> anyhow::Result<()> {
    match args.command {
        DataCommand::Inspect(args) => tokio::task::spawn_blocking(move || inspect(&args)).await?,
    }
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let found = sample(args)?;
    if args.output == "json" {
        print_json(&found)
    } else {
        print_text(&found)
    }
}

/// What `kappa data inspect` found in a sample of the range.
struct Inspection {
    topic: String,
    from_ms: i64,
    to_ms: i64,
    records_in_range: i64,
    sampled: usize,
    profile: Profile,
    truncated: Vec<kappa_dataset::range::Truncated>,
    label_field: String,
    /// Sampled events whose label is positive, normal, and missing.
    label: Option<(u64, u64, u64)>,
    notes: Vec<String>,
    spec: TrainingSpec,
}

fn sample(args: &InspectArgs) -> anyhow::Result<Inspection> {
    let now = kappa_runtime::now_ms();
    let range = args.range.range();
    let (from_ms, to_ms) = resolve_range(range.as_ref(), now).unwrap_or((0, now + 3_600_000));
    anyhow::ensure!(
        from_ms < to_ms,
        "the range [{from_ms}, {to_ms}) is empty; --from-ms must be before --to-ms"
    );
    let config = args.kafka.clients().map_err(anyhow::Error::msg)?;
    let kappa_dataset::range::RangeSample {
        ranges,
        samples,
        truncated,
    } = kappa_dataset::range::sample_range(
        &config,
        "cli-inspect",
        &args.topic,
        from_ms,
        to_ms,
        kappa_dataset::range::SampleLimits {
            max: args.sample,
            budget: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
        },
    )
    .with_context(|| {
        format!(
            "cannot read topic {} from Kafka at {} (--kafka-bootstrap)",
            args.topic, args.kafka.bootstrap
        )
    })?;
    anyhow::ensure!(
        !ranges.is_empty(),
        "topic {} does not exist or has no partitions",
        args.topic
    );
    let in_range: i64 = ranges.iter().map(|r| r.end_offset - r.start_offset).sum();
    let profile = Profile::of(&samples);
    let time_field = args.schema.time_field.clone().unwrap_or_default();
    let named = args.schema.features()?;
    let (features, notes) = if named.is_empty() {
        let inferred = kappa_dataset::infer::features(&profile, &args.schema.label, &time_field, &args.schema.exclude);
        (inferred.features, inferred.notes)
    } else {
        (named, Vec::new())
    };
    let spec = TrainingSpec {
        source_topic: args.topic.clone(),
        range,
        ..args.schema.spec(features)
    };
    let label = (!args.schema.label.is_empty()).then(|| {
        let rule = kappa_model::schema::LabelRule::new(&args.schema.label, &args.schema.positive);
        label_balance(&profile, &rule)
    });
    Ok(Inspection {
        topic: args.topic.clone(),
        from_ms,
        to_ms,
        records_in_range: in_range,
        sampled: samples.len(),
        profile,
        truncated,
        label_field: args.schema.label.clone(),
        label,
        notes,
        spec,
    })
}

fn print_json(found: &Inspection) -> anyhow::Result<()> {
    let profile = &found.profile;
    let fields: Vec<serde_json::Value> = profile
        .fields
        .values()
        .map(|f| {
            json!({
                "path": f.path,
                "type": f.kind(),
                "present": f.present,
                "presence": f.present as f64 / profile.events.max(1) as f64,
                "numeric": f.numeric,
                "min": f.min(),
                "median": f.median(),
                "max": f.max(),
                "values": f.low_cardinality().then_some(&f.distinct),
            })
        })
        .collect();
    let out = json!({
        "topic": found.topic,
        "from_ms": found.from_ms,
        "to_ms": found.to_ms,
        "records_in_range": found.records_in_range,
        "sampled": found.sampled,
        "events": profile.events,
        "malformed": profile.malformed,
        "fields": fields,
        "label": found.label.as_ref().map(|(positive, normal, missing)| json!({
            "field": found.label_field, "positive": positive, "normal": normal, "missing": missing,
        })),
        "notes": found.notes,
        "truncated": found.truncated.iter().map(|t| json!({
            "partition": t.partition, "log_start": t.log_start, "oldest_ms": t.oldest_ms,
        })).collect::<Vec<_>>(),
        "spec": serde_json::to_value(&found.spec)?,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn print_text(found: &Inspection) -> anyhow::Result<()> {
    let Inspection {
        topic,
        from_ms,
        to_ms,
        records_in_range,
        sampled,
        profile,
        truncated,
        label_field,
        label,
        notes,
        spec,
    } = found;
    println!(
        "{topic}: {records_in_range} records in [{from_ms}, {to_ms}); sampled {sampled} ({} JSON/protobuf events, {} malformed)",
        profile.events, profile.malformed
    );
    for t in truncated {
        println!("warning: the range's start is gone: {t}; the trainer refuses it without --allow-truncated-start");
    }
    println!();
    println!(
        "{:<40} {:<15} {:>8} {:>14} {:>14} {:>14}",
        "field", "type", "present", "min", "median", "max"
    );
    let number = |v: Option<f64>| {
        v.map_or_else(
            || "-".to_owned(),
            |v| format!("{v:.6}").trim_end_matches('0').trim_end_matches('.').to_owned(),
        )
    };
    for f in profile.fields.values() {
        println!(
            "{:<40} {:<15} {:>7.1}% {:>14} {:>14} {:>14}",
            f.path,
            f.kind(),
            100.0 * f.present as f64 / profile.events.max(1) as f64,
            number(f.min()),
            number(f.median()),
            number(f.max())
        );
        if f.low_cardinality() && !f.distinct.is_empty() && f.distinct.len() <= 8 {
            let values: Vec<String> = f.distinct.iter().map(|(v, n)| format!("{v:?} ×{n}")).collect();
            println!("{:<40} values: {}", "", values.join(", "));
        }
    }
    println!();
    match label {
        Some((positive, normal, missing)) => println!(
            "label {}: {positive} anomalous, {normal} normal, {missing} without a label ({:.1}% anomalous)",
            label_field,
            100.0 * *positive as f64 / (*positive + *normal).max(1) as f64
        ),
        None => {
            let candidates: Vec<&str> = profile
                .fields
                .values()
                .filter(|f| f.numeric == 0 && (1..=4).contains(&f.distinct.len()) && (f.bools > 0 || f.texts > 0))
                .map(|f| f.path.as_str())
                .collect();
            println!(
                "no label named (--label); fields that could be one: {}",
                if candidates.is_empty() {
                    "none".to_owned()
                } else {
                    candidates.join(", ")
                }
            );
        }
    }
    for note in notes {
        println!("left out {note}");
    }
    println!();
    println!("the trainer would use this spec (proto3 JSON; add a model name, layers and epochs):");
    println!("{}", serde_json::to_string_pretty(spec)?);
    Ok(())
}

/// Sampled events whose label is positive, normal, and missing.
fn label_balance(profile: &Profile, rule: &kappa_model::schema::LabelRule) -> (u64, u64, u64) {
    let Some(field) = profile.fields.get(&rule.path) else {
        return (0, 0, profile.events);
    };
    let positive: u64 = field
        .distinct
        .iter()
        .filter(|(v, _)| rule.is_positive(v))
        .map(|(_, n)| *n)
        .sum();
    let normal = field.present - positive;
    (positive, normal, profile.events - field.present)
}
