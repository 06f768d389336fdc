//! `kappa data inspect`: what a topic's events hold, field by field, and the training spec the
//! trainer would use on them. It runs the trainer's own sampling and inference code, so what it
//! prints is what a job started with the same flags would train on. `kappa data tiers`: which
//! offsets of a topic only the brokers' remote tier holds.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kappa_api::trainer::TrainingSpec;
use kappa_dataset::{
    TimeRangeArgs,
    inspect::{Inspection, LabelBalance},
    range::PartitionTiers,
};
use kappa_kafka::KafkaArgs;
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
    /// Where each partition of a topic is stored: the offsets only the brokers' remote tier
    /// holds (Kafka tiered storage), and those on their disks too.
    Tiers(TiersArgs),
}

#[derive(Debug, Args)]
struct TiersArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The topic to look at.
    #[arg(long)]
    topic: String,
    /// text, or json for scripts.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
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
        DataCommand::Tiers(args) => tokio::task::spawn_blocking(move || tiers(&args)).await?,
    }
}

fn tiers(args: &TiersArgs) -> anyhow::Result<()> {
    let config = args.kafka.clients().map_err(anyhow::Error::msg)?;
    let tiers = kappa_dataset::range::tiers(&config, &args.topic, Duration::from_secs(30)).with_context(|| {
        format!(
            "looking at {} on Kafka at {} (--kafka-bootstrap)",
            args.topic, args.kafka.bootstrap
        )
    })?;
    anyhow::ensure!(
        !tiers.is_empty(),
        "topic {} does not exist or has no partitions",
        args.topic
    );
    if args.output == "json" {
        let partitions: Vec<serde_json::Value> = tiers
            .iter()
            .map(|t| {
                json!({
                    "partition": t.partition, "log_start": t.log_start, "earliest_local": t.earliest_local,
                    "end": t.end, "remote_records": t.remote(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "topic": args.topic, "partitions": partitions }))?
        );
        return Ok(());
    }
    println!(
        "{:>9} {:>12} {:>14} {:>12} {:>14} {:>14}",
        "partition", "log start", "local from", "end", "remote only", "on disk too"
    );
    for t in &tiers {
        let local = t.earliest_local.map_or_else(|| "unknown".to_owned(), |o| o.to_string());
        let remote = t.remote().map_or_else(|| "unknown".to_owned(), |n| n.to_string());
        let on_disk = t.earliest_local.map_or_else(
            || "unknown".to_owned(),
            |o| (t.end - o.max(t.log_start)).max(0).to_string(),
        );
        println!(
            "{:>9} {:>12} {:>14} {:>12} {:>14} {:>14}",
            t.partition, t.log_start, local, t.end, remote, on_disk
        );
    }
    let known: Option<Vec<i64>> = tiers.iter().map(PartitionTiers::remote).collect();
    let total: i64 = tiers.iter().map(|t| t.end - t.log_start).sum();
    match known {
        Some(remote) => println!(
            "{}: {} of {total} records only on the remote tier",
            args.topic,
            remote.iter().sum::<i64>()
        ),
        None => println!(
            "{}: the broker did not say where its remote tier ends (see the warning)",
            args.topic
        ),
    }
    Ok(())
}

fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let spec = TrainingSpec {
        source_topic: args.topic.clone(),
        range: args.range.range(),
        ..args.schema.spec(args.schema.features()?)
    };
    let config = args.kafka.clients().map_err(anyhow::Error::msg)?;
    let found = kappa_dataset::inspect::inspect(
        &config,
        "cli-inspect",
        &spec,
        args.sample,
        Duration::from_secs(30),
        kappa_runtime::now_ms(),
    )
    .with_context(|| format!("inspecting with Kafka at {} (--kafka-bootstrap)", args.kafka.bootstrap))?;
    if args.output == "json" {
        print_json(&found)
    } else {
        print_text(&found)
    }
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
        "label": found.label.map(|l| json!({
            "field": found.spec.label_field, "positive": l.positive, "normal": l.normal, "missing": l.missing,
        })),
        "notes": found.notes,
        "partitions": found.partitions.iter().map(|r| json!({
            "partition": r.partition, "start_offset": r.start_offset, "end_offset": r.end_offset,
            "earliest_local_offset": r.earliest_local_offset,
            "remote_records": kappa_dataset::range::remote_records(r),
        })).collect::<Vec<_>>(),
        "read_duration_ms": found.read_duration.as_millis() as u64,
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
        partitions,
        read_duration,
        label,
        notes,
        spec,
    } = found;
    println!(
        "{topic}: {records_in_range} records in [{from_ms}, {to_ms}); sampled {sampled} ({} JSON/protobuf events, {} malformed)",
        profile.events, profile.malformed
    );
    println!(
        "tiers: {}; looked up and sampled in {:.1} s",
        kappa_dataset::range::describe_tiers(partitions),
        read_duration.as_secs_f64()
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
        Some(LabelBalance {
            positive,
            normal,
            missing,
        }) => println!(
            "label {}: {positive} anomalous, {normal} normal, {missing} without a label ({:.1}% anomalous)",
            spec.label_field,
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
