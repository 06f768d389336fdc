use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kappa_api::{model::ModelManifest, registry as pb};
use kappa_client::{ClientSecurity, Registry};
use tokio_stream::StreamExt as _;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Where kappa-registry listens.
    #[arg(
        long,
        env = "KAPPA_REGISTRY",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    registry: String,

    /// Output format: readable text, or JSON (proto3 JSON mapping) for scripts.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,

    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Publish a model; prints the assigned version and SHA-256. Either a safetensors file with
    /// its manifest (proto3 JSON of ModelManifest), or an ONNX graph with --onnx and flags that
    /// say what it takes and how it scores.
    Publish {
        /// The safetensors weights (not with --onnx).
        #[arg(required_unless_present = "onnx", conflicts_with = "onnx")]
        weights: Option<PathBuf>,
        /// The manifest JSON file (not with --onnx).
        #[arg(required_unless_present = "onnx", conflicts_with = "onnx")]
        manifest: Option<PathBuf>,
        /// Publish under this name instead of the manifest's (required with --onnx).
        #[arg(long)]
        name: Option<String>,
        /// Retrying with the same key returns the version already stored instead of a new one.
        /// Defaults to a key derived from the name and the weights' SHA-256.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Sign the model with this Ed25519 private key (PKCS#8 PEM, from `kappa keys new`), so
        /// predictors with --trusted-keys serve it.
        #[arg(long, env = "KAPPA_SIGNING_KEY", value_parser = kappa_model::signing::ModelSigner::parse_flag)]
        signing_key: Option<kappa_model::signing::ModelSigner>,
        // Boxed: the ONNX flags are many beside the other subcommands' few.
        #[command(flatten)]
        onnx: Box<crate::onnx::OnnxArgs>,
    },
    /// List every model with its latest version and aliases.
    List,
    /// List the versions of one model.
    Versions { name: String },
    /// Fetch a model version (by default the latest); writes the weights to --out.
    Get {
        name: String,
        #[arg(long, conflicts_with = "alias")]
        version: Option<u64>,
        #[arg(long)]
        alias: Option<String>,
        /// Where to write the safetensors bytes; without it only the manifest is fetched.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Point an alias at a version, or delete it with --delete.
    Alias {
        name: String,
        alias: String,
        /// The version to point at; required unless --delete.
        #[arg(required_unless_present = "delete")]
        version: Option<u64>,
        #[arg(long)]
        delete: bool,
        /// Apply the move by event time: stream scoring uses the new version for events at or
        /// after this time (ms since the Unix epoch) and keeps the alias's current version for
        /// earlier ones, in whatever order they arrive, so a replay gives the same versions.
        /// Choose a time the stream has not reached yet.
        #[arg(long, value_name = "MS", conflicts_with = "delete")]
        effective_from_ms: Option<i64>,
    },
    /// Delete a version (refused while an alias points at it, unless --force).
    Delete {
        name: String,
        version: u64,
        #[arg(long)]
        force: bool,
    },
    /// Print version and alias events in log order as they happen.
    Watch {
        /// Only this model's events.
        #[arg(long)]
        name: Option<String>,
        /// Models-topic position to start from (0 replays everything still in the log).
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Write an untrained example autoencoder (weights.safetensors + manifest.json) to a folder,
    /// to try the registry without a training run.
    Example {
        #[arg(long, default_value = "example")]
        out: PathBuf,
        #[arg(long, default_value = "car-anomaly")]
        name: String,
        /// Widths of the hidden layers.
        #[arg(long, value_delimiter = ',', default_value = "8")]
        hidden: Vec<u32>,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Fit the feature scaling (mean and standard deviation) on a CSV file with the sensor
        /// columns, such as the demo's car-sensor-data.csv.
        #[arg(long)]
        scale_from: Option<PathBuf>,
        /// Anomaly threshold written into the manifest.
        #[arg(long, default_value_t = 3.0)]
        threshold: f64,
    },
}

async fn connect(url: &str, security: &ClientSecurity) -> anyhow::Result<Registry> {
    Registry::connect_with(url, security)
        .await
        .map_err(|e| anyhow::anyhow!("{e} (set --registry or KAPPA_REGISTRY)"))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn run(args: ModelsArgs, security: &ClientSecurity) -> anyhow::Result<()> {
    let output = args.output;
    match args.command {
        ModelsCommand::Example {
            out,
            name,
            hidden,
            seed,
            scale_from,
            threshold,
        } => write_example(&out, &name, &hidden, seed, scale_from.as_deref(), threshold),
        ModelsCommand::Publish {
            weights,
            manifest,
            name,
            idempotency_key,
            signing_key,
            onnx,
        } => {
            let mut registry = connect(&args.registry, security).await?;
            let (bytes, manifest) = match (&onnx.onnx, weights, manifest) {
                (Some(graph), _, _) => {
                    let name = name.context("--name: the name to publish the graph under")?;
                    let bytes = std::fs::read(graph).with_context(|| format!("cannot read {}", graph.display()))?;
                    let manifest = onnx.manifest(&name, &bytes, &mut registry).await?;
                    (bytes, manifest)
                }
                (None, Some(weights), Some(manifest)) => {
                    let bytes =
                        std::fs::read(&weights).with_context(|| format!("cannot read {}", weights.display()))?;
                    let mut manifest = read_manifest(&manifest)?;
                    if let Some(name) = name {
                        manifest.name = name;
                    }
                    (bytes, manifest)
                }
                _ => anyhow::bail!("give WEIGHTS and MANIFEST, or --onnx FILE"),
            };
            let key = idempotency_key.unwrap_or_else(|| default_idempotency_key(&manifest, &bytes));
            let response = registry
                .publish_signed(&manifest, &bytes, &key, signing_key.as_ref())
                .await
                .map_err(status_error)?;
            let version = response.version.unwrap_or_default();
            match output {
                Output::Json => println!("{}", serde_json::to_string(&version)?),
                Output::Text => println!(
                    "{} {} version {} sha256 {} ({} bytes)",
                    if response.deduplicated {
                        "already published:"
                    } else {
                        "published"
                    },
                    version.name,
                    version.version,
                    version.weights_sha256,
                    version.weights_size
                ),
            }
            Ok(())
        }
        ModelsCommand::List => {
            let mut registry = connect(&args.registry, security).await?;
            let client = registry.rpc();
            let models = client
                .list_models(pb::ListModelsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => println!("{}", serde_json::to_string(&models)?),
                Output::Text => {
                    if models.models.is_empty() {
                        println!("no models yet: publish one with `kappa models publish`");
                    }
                    for m in models.models {
                        let mut aliases: Vec<_> = m.aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
                        aliases.sort();
                        println!(
                            "{}  latest {}  versions {}  aliases [{}]",
                            m.name,
                            m.latest_version,
                            m.version_count,
                            aliases.join(", ")
                        );
                    }
                }
            }
            Ok(())
        }
        ModelsCommand::Versions { name } => {
            let mut registry = connect(&args.registry, security).await?;
            let client = registry.rpc();
            let versions = client
                .list_versions(pb::ListVersionsRequest { name })
                .await
                .map_err(status_error)?
                .into_inner();
            match output {
                Output::Json => println!("{}", serde_json::to_string(&versions)?),
                Output::Text => {
                    for v in versions.versions {
                        println!(
                            "{} v{}  sha256 {}  {} bytes  aliases [{}]",
                            v.name,
                            v.version,
                            v.weights_sha256,
                            v.weights_size,
                            v.aliases.join(", ")
                        );
                    }
                }
            }
            Ok(())
        }
        ModelsCommand::Get {
            name,
            version,
            alias,
            out,
        } => {
            use kappa_client::Selector;
            let mut registry = connect(&args.registry, security).await?;
            let selector = match (version, alias) {
                (Some(v), _) => Selector::Version(v),
                (None, Some(a)) => Selector::Alias(a),
                (None, None) => Selector::Latest,
            };
            // The digest is checked before anything is written: a corrupt copy never lands.
            let header = match &out {
                Some(path) => {
                    let (header, weights) = registry.get(&name, selector).await?;
                    std::fs::write(path, &weights).with_context(|| format!("cannot write {}", path.display()))?;
                    header
                }
                None => registry.get_manifest(&name, selector).await?,
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string(&header)?),
                Output::Text => {
                    println!(
                        "{} v{} sha256 {} ({} bytes)",
                        header.name, header.version, header.weights_sha256, header.weights_size
                    );
                    if let Some(manifest) = &header.manifest {
                        print!("{}", describe_format(manifest));
                    }
                    if let Some(path) = out {
                        println!("weights written to {} (digest verified)", path.display());
                    }
                }
            }
            Ok(())
        }
        ModelsCommand::Alias {
            name,
            alias,
            version,
            delete,
            effective_from_ms,
        } => {
            let mut registry = connect(&args.registry, security).await?;
            let client = registry.rpc();
            if delete {
                let r = client
                    .delete_alias(pb::DeleteAliasRequest {
                        name: name.clone(),
                        alias: alias.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                println!("deleted alias {name}@{alias} (was version {})", r.previous_version);
            } else {
                let version = version.context("give the version the alias should point at")?;
                let r = client
                    .set_alias(pb::SetAliasRequest {
                        name: name.clone(),
                        alias: alias.clone(),
                        version,
                        effective_from_ms: effective_from_ms.unwrap_or(0),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                match (r.previous_version, effective_from_ms) {
                    (0, _) => println!("alias {name}@{alias} -> version {version} (new)"),
                    (p, Some(ms)) if p != version => println!(
                        "alias {name}@{alias} -> version {version} for events from {ms} ms on; earlier events keep version {p}"
                    ),
                    (p, _) => println!("alias {name}@{alias} -> version {version} (was {p})"),
                }
            }
            Ok(())
        }
        ModelsCommand::Delete { name, version, force } => {
            let mut registry = connect(&args.registry, security).await?;
            let client = registry.rpc();
            let r = client
                .delete_version(pb::DeleteVersionRequest {
                    name: name.clone(),
                    version,
                    force,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "deleted {name} v{version}; removed aliases [{}]",
                r.removed_aliases.join(", ")
            );
            Ok(())
        }
        ModelsCommand::Watch { name, from, limit } => {
            let mut registry = connect(&args.registry, security).await?;
            let client = registry.rpc();
            let mut stream = client
                .watch_models(pb::WatchModelsRequest {
                    from_position: from,
                    name: name.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut seen = 0;
            while let Some(event) = stream.next().await {
                let event = event.map_err(status_error)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&event)?),
                    Output::Text => println!("{}", describe_event(&event)),
                }
                seen += 1;
                if limit.is_some_and(|l| seen >= l) {
                    break;
                }
            }
            Ok(())
        }
    }
}

fn describe_event(event: &pb::WatchModelsResponse) -> String {
    use pb::watch_models_response::Event;
    let what = match &event.event {
        Some(Event::Published(p)) => {
            let v = p.version.clone().unwrap_or_default();
            format!("published {} v{} sha256 {}", v.name, v.version, v.weights_sha256)
        }
        Some(Event::Deleted(d)) => format!("deleted {} v{}", d.name, d.version),
        Some(Event::AliasSet(a)) => match a.cutover {
            Some(c) => format!(
                "alias {}@{} -> v{} for events from {} ms on (v{} before)",
                a.name, a.alias, a.version, c.effective_from_ms, c.previous_version
            ),
            None => format!("alias {}@{} -> v{}", a.name, a.alias, a.version),
        },
        Some(Event::AliasDeleted(a)) => format!("alias {}@{} deleted", a.name, a.alias),
        None => "unknown event".to_owned(),
    };
    format!("@{} {what}", event.position)
}

pub fn read_manifest(path: &Path) -> anyhow::Result<ModelManifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a ModelManifest in proto3 JSON (see `kappa models example`)",
            path.display()
        )
    })
}

fn write_example(
    out: &Path,
    name: &str,
    hidden: &[u32],
    seed: u64,
    scale_from: Option<&Path>,
    threshold: f64,
) -> anyhow::Result<()> {
    let mut manifest = kappa_fleet::car_autoencoder(name, hidden);
    manifest.anomaly_threshold = threshold;
    if let Some(csv) = scale_from {
        fit_scaling(&mut manifest, csv)?;
    }
    kappa_model::validate_manifest(&manifest)?;
    let weights = kappa_model::example::random_weights(&manifest, seed);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let weights_path = out.join("weights.safetensors");
    let manifest_path = out.join("manifest.json");
    std::fs::write(&weights_path, &weights)?;
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest)? + "\n")?;
    println!("wrote {} and {}", weights_path.display(), manifest_path.display());
    Ok(())
}

/// Sets each feature's offset and scale to the mean and standard deviation of its CSV column.
fn fit_scaling(manifest: &mut ModelManifest, csv: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .context("the CSV file is empty")?
        .split(',')
        .map(str::trim)
        .collect();
    let columns: Vec<usize> = manifest
        .features
        .iter()
        .map(|f| {
            header
                .iter()
                .position(|h| *h == f.name)
                .with_context(|| format!("{} has no column {:?}", csv.display(), f.name))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut sums = vec![(0.0_f64, 0.0_f64, 0_u64); columns.len()];
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        for (sum, &col) in sums.iter_mut().zip(&columns) {
            if let Some(v) = cells
                .get(col)
                .and_then(|c| c.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
            {
                sum.0 += v;
                sum.1 += v * v;
                sum.2 += 1;
            }
        }
    }
    for (feature, (sum, sq, n)) in manifest.features.iter_mut().zip(sums) {
        anyhow::ensure!(n > 1, "column {:?} has no numeric values", feature.name);
        let mean = sum / n as f64;
        let var = (sq / n as f64 - mean * mean).max(0.0);
        feature.offset = mean;
        // A constant column would divide by zero; any positive scale keeps it at zero.
        feature.scale = if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
    }
    Ok(())
}

/// Same weights and same manifest make the same model, so a retried publish must not create a
/// second version; a changed manifest (new scaling, threshold) is a new version.
fn default_idempotency_key(manifest: &ModelManifest, weights: &[u8]) -> String {
    let manifest_json = serde_json::to_vec(manifest).unwrap_or_default();
    format!(
        "{}:{}:{}",
        manifest.name,
        kappa_model::sha256_hex(weights),
        &kappa_model::sha256_hex(&manifest_json)[..16]
    )
}

/// What `kappa models get` says of a version's format: for an ONNX graph, its inputs, outputs,
/// operators and how Kappa scores with it.
fn describe_format(manifest: &ModelManifest) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let features: Vec<&str> = manifest.features.iter().map(|f| f.name.as_str()).collect();
    let Some(onnx) = manifest
        .onnx
        .as_ref()
        .filter(|_| manifest.format == kappa_api::model::ModelFormat::Onnx as i32)
    else {
        let _ = writeln!(
            out,
            "format: mlp, {} layers, features {}",
            manifest.layers.len(),
            features.join(",")
        );
        let _ = writeln!(out, "threshold: {}", manifest.anomaly_threshold);
        return out;
    };
    let graph = onnx.graph.clone().unwrap_or_default();
    let _ = writeln!(out, "format: onnx ({}, IR {})", graph.producer, graph.ir_version);
    let shape = |s: &[i64]| {
        s.iter()
            .map(|d| if *d < 0 { "N".to_owned() } else { d.to_string() })
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (what, tensors) in [("input", &graph.inputs), ("output", &graph.outputs)] {
        for t in tensors {
            let _ = write!(out, "{what}: {} {} [{}]", t.name, t.datatype, shape(&t.shape));
            if !t.column_labels.is_empty() {
                let _ = write!(out, " columns {}", t.column_labels.join(","));
            }
            out.push('\n');
        }
    }
    let opsets: Vec<String> = graph
        .opsets
        .iter()
        .map(|o| {
            format!(
                "{}={}",
                if o.domain.is_empty() { "ai.onnx" } else { &o.domain },
                o.version
            )
        })
        .collect();
    let _ = writeln!(out, "opsets: {}", opsets.join(", "));
    let _ = writeln!(out, "operators: {}", graph.operators.join(", "));
    let _ = writeln!(out, "features ({}): {}", onnx.features_input, features.join(","));
    let scoring = onnx.scoring.clone().unwrap_or_default();
    if scoring.label_output.is_empty() {
        let kind = if scoring.score_kind == kappa_api::model::OnnxScoreKind::ReconstructionError as i32 {
            "reconstruction error of".to_owned()
        } else {
            format!("column {} of", scoring.score_column)
        };
        let (sign, word) = if scoring.lower_is_anomalous {
            (-1.0, "below")
        } else {
            (1.0, "above")
        };
        let _ = writeln!(
            out,
            "score: {kind} {}; anomalous {word} {}",
            scoring.score_output,
            // `+ 0.0` prints a threshold of 0 as 0, not -0.
            sign * manifest.anomaly_threshold + 0.0
        );
    } else {
        let _ = writeln!(
            out,
            "label: {}; anomalous when {}",
            scoring.label_output,
            scoring.positive_labels.join(" or ")
        );
    }
    out
}
