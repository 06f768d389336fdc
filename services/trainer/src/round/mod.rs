//! One training round as a sequence of typed steps: [`read`] the range from Kafka, [`prepare`]
//! the rows (split, screen, scale), [`train`] the autoencoder, [`evaluate`] it (threshold,
//! reference profile, hold-out quality), [`publish`] it with its [`lineage`], and [`promote`]
//! it when the decision and the gates allow. Each step takes what the ones before it produced
//! and returns its own output; nothing is published unless every step before succeeds.

mod evaluate;
mod lineage;
mod prepare;
mod promote;
mod publish;
pub mod read;
mod train;

use std::sync::Arc;

use kappa_api::trainer::JobPhase;

use crate::job::{JobContext, JobHandle, Stop};

/// Runs one round of `handle`'s job inside `round`, the span that roots the model's trace.
pub async fn execute_round(handle: &Arc<JobHandle>, ctx: &JobContext, round: &tracing::Span) -> Result<(), Stop> {
    let (job_id, spec) = {
        let job = handle.job.lock().expect("job lock poisoned");
        (job.job_id.clone(), job.spec.clone().unwrap_or_default())
    };
    let read = read::read(handle, ctx, &spec).await?;
    let (prepared, scaled) = prepare::prepare(&spec, read)?;
    let trained = train::train(handle, ctx, &spec, &prepared, scaled).await?;
    handle.set_phase(JobPhase::Evaluating, "scoring validation and hold-out data");
    let evaluated = evaluate::evaluate(&spec, &job_id, &prepared, &trained)?;
    let published = publish::publish(handle, ctx, &spec, &job_id, &prepared, &trained, evaluated, round).await?;
    let version = published.version;
    if !spec.promote_alias.is_empty() {
        promote::promote(handle, ctx, &spec, published, round).await?;
    }
    handle.update(|job| job.runs += 1);
    if spec.continuous.is_none() {
        handle.set_phase(JobPhase::Succeeded, format!("published version {version}"));
    }
    Ok(())
}
