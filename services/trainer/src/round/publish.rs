//! Step 5: the model, with its lineage, published to the registry (signed when the trainer has
//! a key). The alias's current holder is read first: the lineage names it as the parent, and
//! the promotion compares with it.

use std::sync::Arc;

use kappa_api::trainer::{JobPhase, TrainingSpec};
use kappa_client::Registry;
use kappa_runtime::propagation::span_context_map;
use tracing::Instrument as _;

use super::{
    evaluate::Evaluated,
    lineage::{Origin, lineage},
    prepare::Prepared,
    promote::{Holder, current_holder},
    train::Trained,
};
use crate::job::{JobContext, JobHandle, Stop, fail};

/// A published version, and what its promotion needs.
pub struct Published {
    pub version: u64,
    pub registry: Registry,
    pub evaluated: Evaluated,
    pub holder: Holder,
}

#[expect(clippy::too_many_arguments, reason = "one argument per step before it")]
pub async fn publish(
    handle: &Arc<JobHandle>,
    ctx: &JobContext,
    spec: &TrainingSpec,
    job_id: &str,
    prepared: &Prepared,
    trained: &Trained,
    mut evaluated: Evaluated,
    round: &tracing::Span,
) -> Result<Published, Stop> {
    handle.set_phase(JobPhase::Publishing, "publishing to kappa-registry");
    if handle.cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    let mut registry = Registry::connect_with(ctx.registry.as_str(), &ctx.registry_security)
        .await
        .map_err(fail)?;
    let holder = if spec.promote_alias.is_empty() {
        Holder::Free
    } else {
        current_holder(&mut registry, spec).await
    };
    let origin = Origin {
        job_id,
        max_rows: ctx.max_rows,
        parent_version: holder.version(),
        trace_context: span_context_map(round),
    };
    let lineage = lineage(spec, origin, prepared, trained, &evaluated);
    evaluated.manifest.lineage = Some(lineage.clone());
    ctx.metrics.published.inc();
    let key = format!("trainer-job:{job_id}:{}", handle.snapshot().runs);
    let version = registry
        .publish_signed(&evaluated.manifest, &evaluated.weights, &key, ctx.signer.as_ref())
        .instrument(tracing::info_span!("publish", model = %spec.model_name))
        .await
        .map(|r| r.version.unwrap_or_default().version)
        .map_err(|s| fail(format!("publishing failed: {:?}: {}", s.code(), s.message())))?;
    evaluated.manifest.version = version;
    round.record("published_version", version);
    handle.update(|job| {
        job.published_version = version;
        job.published_versions.push(version);
        job.lineage = Some(lineage);
    });
    tracing::info!(
        job = job_id,
        version,
        skipped = trained.skipped.values().sum::<u64>(),
        new_quality = ?evaluated.quality,
        "published a trained model"
    );
    Ok(Published {
        version,
        registry,
        evaluated,
        holder,
    })
}
