//! The one decision on whether a version may be written (the registry, before a byte reaches
//! Kafka) or served (a predictor, before it swaps): manifest, size, digest, signature, the
//! model's structure and operators, finite weights, and a probe batch run once. It returns the
//! model built and ready, so nothing after it parses the bytes again.

use crate::{
    Backend, Mlp, Model, ModelError, ModelFormat, ModelManifest, format_of,
    onnx::{OnnxModel, graph},
    sha256_hex,
    signing::TrustedKeys,
    validate_manifest,
};

/// What a version is checked against besides itself.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// Largest model accepted, in bytes.
    pub max_bytes: u64,
    /// When set, only versions signed by one of these keys are admitted.
    pub trusted_keys: Option<&'a TrustedKeys>,
    /// The MLP's forward pass.
    pub backend: Backend,
}

/// A version's signature as stored beside it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signature<'a> {
    pub bytes: &'a [u8],
    pub key_id: &'a str,
}

/// An admitted version: its manifest completed (digest, size, what the registry reads from an
/// ONNX graph) and its model, built and warmed up.
#[derive(Debug)]
pub struct Admitted {
    pub manifest: ModelManifest,
    pub model: Model,
    /// The version's schema, compiled once: how every reader of it decodes events.
    pub decoder: crate::schema::EventDecoder,
}

/// Decides on `bytes` under `manifest`. `sha256` is the bytes' digest when the caller hashed them
/// already (while they arrived); otherwise they are hashed here. A manifest that declares a
/// digest, a size or an ONNX graph description must declare what the bytes are.
pub fn admit(
    mut manifest: ModelManifest,
    bytes: &[u8],
    sha256: Option<String>,
    signature: Signature,
    policy: &Policy,
) -> Result<Admitted, ModelError> {
    let decoder = validate_manifest(&manifest)?;
    // One span a step, under the caller's: a roll-out's trace shows where a load spent its time.
    let verifying = tracing::info_span!("verify", bytes = bytes.len()).entered();
    let size = bytes.len() as u64;
    if size > policy.max_bytes || manifest.weights_size > policy.max_bytes {
        return Err(ModelError::TooLarge {
            size: size.max(manifest.weights_size),
            limit: policy.max_bytes,
        });
    }
    let actual = sha256.unwrap_or_else(|| sha256_hex(bytes));
    if !manifest.weights_sha256.is_empty() && !manifest.weights_sha256.eq_ignore_ascii_case(&actual) {
        return Err(ModelError::DigestMismatch {
            declared: manifest.weights_sha256,
            actual,
        });
    }
    if manifest.weights_size != 0 && manifest.weights_size != size {
        return Err(ModelError::InvalidWeights(format!(
            "the manifest declares {} bytes but {size} arrived",
            manifest.weights_size
        )));
    }
    manifest.weights_sha256 = actual;
    manifest.weights_size = size;
    // Before the bytes are parsed: only a trusted key's signature makes them worth parsing.
    if let Some(trusted) = policy.trusted_keys {
        trusted.verify(&manifest, signature.bytes, signature.key_id)?;
    }
    verifying.exit();
    let building = tracing::info_span!("build", format = ?format_of(&manifest)?, backend = ?policy.backend).entered();
    let model = match format_of(&manifest)? {
        ModelFormat::Onnx => {
            let checked = graph::inspect(bytes, &crate::onnx::engine::runnable)?;
            let onnx = manifest
                .onnx
                .as_mut()
                .expect("validated: an ONNX manifest has its onnx section");
            match &onnx.graph {
                Some(declared) if *declared != checked.info => {
                    return Err(ModelError::InvalidManifest(
                        "its onnx.graph does not describe the graph it comes with; leave it empty and the registry fills it in".into(),
                    ));
                }
                _ => onnx.graph = Some(checked.info.clone()),
            }
            Model::Onnx(OnnxModel::build(&manifest, checked)?)
        }
        ModelFormat::Mlp | ModelFormat::Unspecified => Model::Mlp(Mlp::build(&manifest, bytes, policy.backend)?),
    };
    drop(building);
    tracing::info_span!("warm_up", rows = 2).in_scope(|| probe(&manifest, &model))?;
    Ok(Admitted {
        manifest,
        model,
        decoder,
    })
}

/// Runs the probe batch once: two rows inside what the manifest knows of each feature (its
/// declared range, else its scaling's centre and one scale off), and two more of a single row each
/// so a fixed-batch graph and the batched path are both exercised. Every score must be finite.
fn probe(manifest: &ModelManifest, model: &Model) -> Result<(), ModelError> {
    let centre = |f: &crate::Feature| match (f.min, f.max) {
        (Some(lo), Some(hi)) => (lo + hi) / 2.0,
        (Some(lo), None) => lo.max(f.offset),
        (None, Some(hi)) => hi.min(f.offset),
        (None, None) => f.offset,
    };
    let off = |f: &crate::Feature| {
        let v = centre(f) + f.scale;
        v.clamp(f.min.unwrap_or(f64::NEG_INFINITY), f.max.unwrap_or(f64::INFINITY))
    };
    let mut rows: Vec<f32> = manifest.features.iter().map(|f| centre(f) as f32).collect();
    rows.extend(manifest.features.iter().map(|f| off(f) as f32));
    let scores = model
        .score(&rows)
        .map_err(|e| ModelError::Probe(format!("could not be scored: {e}")))?;
    if scores.len() != 2 {
        return Err(ModelError::Probe(format!("of 2 rows got {} scores", scores.len())));
    }
    if let Some(bad) = scores.iter().find(|s| !s.is_finite()) {
        return Err(ModelError::Probe(format!(
            "scored {bad}: the model yields non-finite scores for ordinary rows"
        )));
    }
    let f = manifest.features.len();
    let single = model
        .score(&rows[..f])
        .map_err(|e| ModelError::Probe(format!("of one row could not be scored: {e}")))?;
    if single.len() != 1 || (single[0] - scores[0]).abs() > 1e-3 * scores[0].abs().max(1.0) {
        return Err(ModelError::Probe(format!(
            "scored a row {} alone and {} in a batch: the model's rows are not independent",
            single.first().copied().unwrap_or(f32::NAN),
            scores[0]
        )));
    }
    Ok(())
}

/// A version the registry admitted already, loaded by a client of it (backtests, the trainer's
/// champion): the same checks without a size limit or keys, so every format loads one way.
pub fn load(manifest: &ModelManifest, bytes: &[u8]) -> Result<Admitted, ModelError> {
    let policy = Policy {
        max_bytes: u64::MAX,
        trusted_keys: None,
        backend: Backend::Native,
    };
    admit(manifest.clone(), bytes, None, Signature::default(), &policy)
}
