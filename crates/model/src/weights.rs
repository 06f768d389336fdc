use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::{ModelError, ModelManifest, bias_tensor_name, weight_tensor_name};

/// What the registry learns from weights that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedWeights {
    pub sha256: String,
    pub size: u64,
}

/// Lower-case hex SHA-256, the digest format used in manifests and by `sha256sum`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Checks that `bytes` is a safetensors file holding exactly the FP32 tensors the manifest's
/// layers declare, with matching shapes and only finite values, and that it matches any digest
/// or size the manifest already declares. The manifest itself must already be valid.
pub fn validate_weights(manifest: &ModelManifest, bytes: &[u8]) -> Result<ValidatedWeights, ModelError> {
    validate_hashed_weights(manifest, bytes, sha256_hex(bytes))
}

/// [`validate_weights`] for bytes whose SHA-256 (`sha256`, lower-case hex) the caller computed
/// as they arrived, so a large upload is not hashed again once complete.
pub fn validate_hashed_weights(
    manifest: &ModelManifest,
    bytes: &[u8],
    sha256: String,
) -> Result<ValidatedWeights, ModelError> {
    let invalid = |msg: String| ModelError::InvalidWeights(msg);
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| invalid(format!("not a safetensors file ({e})")))?;

    // Checked in layer order so the first error names the first tensor a reader would look at.
    let mut expected = Vec::with_capacity(manifest.layers.len() * 2);
    for (i, layer) in manifest.layers.iter().enumerate() {
        let (out, inp) = (layer.out_features as usize, layer.in_features as usize);
        expected.push((weight_tensor_name(i), vec![out, inp]));
        expected.push((bias_tensor_name(i), vec![out]));
    }
    for (name, shape) in &expected {
        let view = tensors
            .tensor(name)
            .map_err(|_| invalid(format!("tensor {name:?} is missing")))?;
        if view.dtype() != Dtype::F32 {
            return Err(invalid(format!(
                "tensor {name:?} is {:?}; Kappa serves F32 weights",
                view.dtype()
            )));
        }
        if view.shape() != shape.as_slice() {
            return Err(invalid(format!(
                "tensor {name:?} has shape {:?} but the manifest's layers need {shape:?}",
                view.shape()
            )));
        }
        if let Some(pos) = view
            .data()
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
        {
            return Err(invalid(format!(
                "tensor {name:?} holds a non-finite value at element {pos}"
            )));
        }
    }
    if tensors.len() != expected.len() {
        let mut extra: Vec<_> = tensors
            .names()
            .into_iter()
            .filter(|n| !expected.iter().any(|(e, _)| e == n))
            .collect();
        extra.sort();
        return Err(invalid(format!(
            "tensors {extra:?} are not declared by the manifest's {} layers",
            manifest.layers.len()
        )));
    }

    let validated = ValidatedWeights {
        sha256,
        size: bytes.len() as u64,
    };
    if !manifest.weights_sha256.is_empty() && !manifest.weights_sha256.eq_ignore_ascii_case(&validated.sha256) {
        return Err(ModelError::DigestMismatch {
            declared: manifest.weights_sha256.clone(),
            actual: validated.sha256,
        });
    }
    if manifest.weights_size != 0 && manifest.weights_size != validated.size {
        return Err(invalid(format!(
            "the manifest declares {} bytes of weights but {} arrived",
            manifest.weights_size, validated.size
        )));
    }
    Ok(validated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::{numbered_autoencoder, random_weights, serialize_tensors};

    #[test]
    fn generated_weights_validate_and_hash_like_sha256sum() {
        let m = numbered_autoencoder("fleet", 18, 4);
        let bytes = random_weights(&m, 7);
        let v = validate_weights(&m, &bytes).unwrap();
        assert_eq!(v.size, bytes.len() as u64);
        // Digest of the empty input, as printed by `sha256sum /dev/null`.
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn wrong_shapes_nan_and_garbage_are_refused() {
        let m = numbered_autoencoder("fleet", 18, 4);
        let mut other = m.clone();
        other.layers[0].out_features = 5;
        other.layers[1].in_features = 5;
        let err = validate_weights(&m, &random_weights(&other, 1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("has shape [5, 18] but the manifest's layers need [4, 18]"),
            "{err}"
        );

        let mut tensors = crate::example::random_tensors(&m, 1);
        tensors[0].2[3] = f32::NAN;
        let err = validate_weights(&m, &serialize_tensors(&tensors))
            .unwrap_err()
            .to_string();
        assert!(err.contains("non-finite value at element 3"), "{err}");

        assert!(
            validate_weights(&m, b"not safetensors")
                .unwrap_err()
                .to_string()
                .contains("not a safetensors")
        );
    }

    #[test]
    fn declared_digest_must_match() {
        let mut m = numbered_autoencoder("fleet", 18, 4);
        let bytes = random_weights(&m, 7);
        m.weights_sha256 = "00".repeat(32);
        assert!(matches!(
            validate_weights(&m, &bytes),
            Err(ModelError::DigestMismatch { .. })
        ));
    }
}
