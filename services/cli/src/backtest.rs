//! `kappa backtest`: replays a retained range of a topic through a version (and the versions
//! it is compared with) and reports how each would have done on those events.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use kappa_backtest::{Contender, Window};
use kappa_client::{ClientSecurity, Registry, Selector};
use kappa_model::schema::LabelRule;

#[derive(Debug, Args)]
pub struct BacktestArgs {
    /// Where kappa-registry listens (the versions' weights come from it).
    #[arg(long, env = "KAPPA_REGISTRY", default_value = "http://127.0.0.1:50051")]
    registry: String,

    #[command(flatten)]
    kafka: kappa_kafka::KafkaArgs,

    /// The model.
    #[arg(long)]
    model: String,

    /// The version under test. Its schema says what event time is and which field is the label.
    #[arg(long)]
    version: u64,

    /// Also replay through this version: an alias (`production`) or a version number. Repeat
    /// for more; each is compared with --version event by event.
    #[arg(long, value_name = "ALIAS|VERSION")]
    against: Vec<String>,

    /// Topic to replay (default: the topic --version was trained on).
    #[arg(long)]
    topic: Option<String>,

    /// Start of the range, in milliseconds since the Unix epoch (inclusive), by event time.
    #[arg(long)]
    from_ms: i64,

    /// End of the range, in milliseconds since the Unix epoch (exclusive).
    #[arg(long)]
    to_ms: i64,

    /// Field holding the label, when it is not the one in --version's schema (or it has none).
    #[arg(long, value_name = "FIELD")]
    label: Option<String>,

    /// Label values that mean "anomalous" for --label (comma-separated; default `true`, `1`).
    #[arg(long, value_delimiter = ',', requires = "label")]
    positive_labels: Vec<String>,

    /// Readable text, or JSON for scripts and CI gates.
    #[arg(long, value_enum, default_value = "text")]
    output: Output,

    /// Seconds the read may go without an event before it gives up (and bound of each look-up).
    #[arg(long, default_value_t = 30)]
    timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

pub async fn run(args: BacktestArgs, security: &ClientSecurity) -> anyhow::Result<()> {
    let clients = args.kafka.clients().map_err(anyhow::Error::msg)?;
    let mut registry = Registry::connect_with(&args.registry, security)
        .await
        .with_context(|| format!("connecting to kappa-registry at {}", args.registry))?;
    let mut contenders =
        vec![kappa_backtest::fetch(&mut registry, &args.model, Selector::Version(args.version)).await?];
    for other in &args.against {
        let selector = match other.parse::<u64>() {
            Ok(v) => Selector::Version(v),
            Err(_) => Selector::Alias(other.clone()),
        };
        let contender = kappa_backtest::fetch(&mut registry, &args.model, selector).await?;
        contenders.push(contender);
    }
    let topic = match &args.topic {
        Some(topic) => topic.clone(),
        None => trained_on(&contenders[0])?,
    };
    let window = Window {
        topic,
        from_ms: args.from_ms,
        to_ms: args.to_ms,
        timeout: Duration::from_secs(args.timeout_seconds.max(1)),
        // The user's own machine, the user's own window.
        max_events: None,
    };
    let label = args
        .label
        .as_deref()
        .map(|field| LabelRule::new(field, &args.positive_labels));
    let report = tokio::task::spawn_blocking(move || kappa_backtest::run(&clients, &window, &contenders, label))
        .await?
        .context("the backtest failed")?;
    match args.output {
        Output::Text => print!("{report}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

fn trained_on(contender: &Contender) -> anyhow::Result<String> {
    contender
        .manifest
        .lineage
        .as_ref()
        .map(|l| l.source_topic.clone())
        .filter(|t| !t.is_empty())
        .with_context(|| {
            format!(
                "version {} records no training topic; say which topic to replay with --topic",
                contender.manifest.version
            )
        })
}
