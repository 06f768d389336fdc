use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use kappa_api::{model::ModelManifest, registry as pb};
use kappa_client::{ClientSecurity, Registry};
use tokio_stream::StreamExt as _;

use self::{
    describe::{describe_event, describe_format},
    example::write_example,
};

mod describe;
mod example;

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
    let registry = || connect(&args.registry, security);
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
            let mut registry = registry().await?;
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
            publish(
                &mut registry,
                output,
                &manifest,
                &bytes,
                idempotency_key,
                signing_key.as_ref(),
            )
            .await
        }
        ModelsCommand::List => list(&mut registry().await?, output).await,
        ModelsCommand::Versions { name } => versions(&mut registry().await?, output, name).await,
        ModelsCommand::Get {
            name,
            version,
            alias,
            out,
        } => {
            use kappa_client::Selector;
            let selector = match (version, alias) {
                (Some(v), _) => Selector::Version(v),
                (None, Some(a)) => Selector::Alias(a),
                (None, None) => Selector::Latest,
            };
            get(&mut registry().await?, output, &name, selector, out).await
        }
        ModelsCommand::Alias {
            name,
            alias,
            delete: true,
            ..
        } => delete_alias(&mut registry().await?, name, alias).await,
        ModelsCommand::Alias {
            name,
            alias,
            version,
            effective_from_ms,
            ..
        } => {
            let version = version.context("give the version the alias should point at")?;
            set_alias(&mut registry().await?, name, alias, version, effective_from_ms).await
        }
        ModelsCommand::Delete { name, version, force } => {
            delete_version(&mut registry().await?, name, version, force).await
        }
        ModelsCommand::Watch { name, from, limit } => watch(&mut registry().await?, output, name, from, limit).await,
    }
}

async fn publish(
    registry: &mut Registry,
    output: Output,
    manifest: &ModelManifest,
    bytes: &[u8],
    idempotency_key: Option<String>,
    signing_key: Option<&kappa_model::signing::ModelSigner>,
) -> anyhow::Result<()> {
    let key = idempotency_key.unwrap_or_else(|| default_idempotency_key(manifest, bytes));
    let response = registry
        .publish_signed(manifest, bytes, &key, signing_key)
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

async fn list(registry: &mut Registry, output: Output) -> anyhow::Result<()> {
    let models = registry
        .rpc()
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

async fn versions(registry: &mut Registry, output: Output, name: String) -> anyhow::Result<()> {
    let versions = registry
        .rpc()
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

async fn get(
    registry: &mut Registry,
    output: Output,
    name: &str,
    selector: kappa_client::Selector,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    // The digest is checked before anything is written: a corrupt copy never lands.
    let header = match &out {
        Some(path) => {
            let (header, weights) = registry.get(name, selector).await?;
            std::fs::write(path, &weights).with_context(|| format!("cannot write {}", path.display()))?;
            header
        }
        None => registry.get_manifest(name, selector).await?,
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

async fn delete_alias(registry: &mut Registry, name: String, alias: String) -> anyhow::Result<()> {
    let r = registry
        .rpc()
        .delete_alias(pb::DeleteAliasRequest {
            name: name.clone(),
            alias: alias.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("deleted alias {name}@{alias} (was version {})", r.previous_version);
    Ok(())
}

async fn set_alias(
    registry: &mut Registry,
    name: String,
    alias: String,
    version: u64,
    effective_from_ms: Option<i64>,
) -> anyhow::Result<()> {
    let r = registry
        .rpc()
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
    Ok(())
}

async fn delete_version(registry: &mut Registry, name: String, version: u64, force: bool) -> anyhow::Result<()> {
    let r = registry
        .rpc()
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

async fn watch(
    registry: &mut Registry,
    output: Output,
    name: Option<String>,
    from: i64,
    limit: Option<usize>,
) -> anyhow::Result<()> {
    let mut stream = registry
        .rpc()
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

pub fn read_manifest(path: &Path) -> anyhow::Result<ModelManifest> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a ModelManifest in proto3 JSON (see `kappa models example`)",
            path.display()
        )
    })
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
