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
    let mut check = WeightsCheck::default();
    check.extend(bytes);
    check.finish(manifest, bytes)
}

/// [`validate_weights`] without the digest, for weights whose digest the caller has verified
/// already (a loader that checked them against their manifest).
pub fn check_tensors(manifest: &ModelManifest, bytes: &[u8]) -> Result<(), ModelError> {
    let mut scan = ValueScan::default();
    scan.extend(bytes);
    check_structure(manifest, bytes, &scan)
}

/// The SHA-256 of bytes that arrive in pieces: each [`Self::extend`] hashes what is new.
#[derive(Default)]
pub struct DigestStream {
    digest: Sha256,
    hashed: usize,
}

impl DigestStream {
    /// Takes in `bytes`, everything that has arrived so far (what came before, then the new).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.digest.update(&bytes[self.hashed..]);
        self.hashed = bytes.len();
    }

    /// Lower-case hex digest of `bytes`, all of them, of which [`Self::extend`] saw a prefix.
    pub fn finish(mut self, bytes: &[u8]) -> String {
        self.extend(bytes);
        hex::encode(self.digest.finalize())
    }
}

/// [`validate_weights`] run as the weights arrive: each [`Self::extend`] hashes the bytes
/// that are new and, once the safetensors header is in, scans their FP32 values, so a large
/// upload is hashed and scanned while it goes on and only the header's structure is left to
/// check once the last byte is in.
#[derive(Default)]
pub struct WeightsCheck {
    digest: DigestStream,
    scan: ValueScan,
}

impl WeightsCheck {
    /// Takes in `bytes`, everything that has arrived so far (what came before, then the new).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.digest.extend(bytes);
        self.scan.extend(bytes);
    }

    /// The verdict on `bytes`, all the weights, of which [`Self::extend`] saw a prefix.
    pub fn finish(mut self, manifest: &ModelManifest, bytes: &[u8]) -> Result<ValidatedWeights, ModelError> {
        self.scan.extend(bytes);
        check_structure(manifest, bytes, &self.scan)?;
        let validated = ValidatedWeights {
            sha256: self.digest.finish(bytes),
            size: bytes.len() as u64,
        };
        if !manifest.weights_sha256.is_empty() && !manifest.weights_sha256.eq_ignore_ascii_case(&validated.sha256) {
            return Err(ModelError::DigestMismatch {
                declared: manifest.weights_sha256.clone(),
                actual: validated.sha256,
            });
        }
        if manifest.weights_size != 0 && manifest.weights_size != validated.size {
            return Err(ModelError::InvalidWeights(format!(
                "the manifest declares {} bytes of weights but {} arrived",
                manifest.weights_size, validated.size
            )));
        }
        Ok(validated)
    }
}

/// The scan for non-finite values, over the FP32 tensors the safetensors header lays out, as
/// far as the bytes have arrived. Nothing here is trusted: the header is checked in full by
/// [`check_structure`], which scans directly any tensor this scan did not lay out the same.
#[derive(Default)]
struct ValueScan {
    /// The FP32 tensors in file order, once the header is in and parses.
    tensors: Vec<ScannedTensor>,
    header: HeaderState,
    /// The first tensor not scanned to its end.
    next: usize,
}

#[derive(Default, PartialEq)]
enum HeaderState {
    #[default]
    Incomplete,
    Parsed,
    /// Unreadable: nothing is scanned, and the structure check says what is wrong.
    Unusable,
}

struct ScannedTensor {
    name: String,
    /// Byte range in the file.
    start: usize,
    end: usize,
    /// Bytes from `start` scanned, whole values only.
    scanned: usize,
    first_non_finite: Option<usize>,
}

/// librdkafka's, and safetensors', bound on a header: more is not a model's header.
const MAX_HEADER_BYTES: usize = 100_000_000;

impl ValueScan {
    fn extend(&mut self, bytes: &[u8]) {
        if self.header == HeaderState::Incomplete {
            self.read_header(bytes);
        }
        while let Some(tensor) = self.tensors.get_mut(self.next) {
            let available = bytes.len().min(tensor.end).saturating_sub(tensor.start);
            let upto = available - available % 4;
            if upto > tensor.scanned {
                if tensor.first_non_finite.is_none() {
                    let found = first_non_finite(&bytes[tensor.start + tensor.scanned..tensor.start + upto]);
                    tensor.first_non_finite = found.map(|i| tensor.scanned / 4 + i);
                }
                tensor.scanned = upto;
            }
            if tensor.start + tensor.scanned + 4 > tensor.end {
                self.next += 1;
            } else {
                break;
            }
        }
    }

    fn read_header(&mut self, bytes: &[u8]) {
        let Some(size) = bytes.get(..8) else { return };
        let size = u64::from_le_bytes(size.try_into().expect("8 bytes"));
        let Some(size) = usize::try_from(size).ok().filter(|s| *s <= MAX_HEADER_BYTES) else {
            self.header = HeaderState::Unusable;
            return;
        };
        let Some(header) = bytes.get(8..8 + size) else { return };
        let Ok(metadata) = serde_json::from_slice::<safetensors::tensor::Metadata>(header) else {
            self.header = HeaderState::Unusable;
            return;
        };
        let data = 8 + size;
        self.tensors = metadata
            .tensors()
            .into_iter()
            .filter(|(_, info)| info.dtype == Dtype::F32)
            .map(|(name, info)| ScannedTensor {
                name,
                start: data.saturating_add(info.data_offsets.0),
                end: data.saturating_add(info.data_offsets.1),
                scanned: 0,
                first_non_finite: None,
            })
            .collect();
        self.tensors.sort_by_key(|t| t.start);
        self.header = HeaderState::Parsed;
    }

    /// The first non-finite element of tensor `name` occupying `range` of the file, if this
    /// scan covered exactly that.
    fn scanned(&self, name: &str, range: std::ops::Range<usize>) -> Option<Option<usize>> {
        let tensor = self.tensors.iter().find(|t| t.name == name)?;
        let whole = tensor.start == range.start && tensor.end == range.end && tensor.scanned == range.len();
        whole.then_some(tensor.first_non_finite)
    }
}

/// Index of the first value in `data` (little-endian FP32) that is NaN or infinite.
fn first_non_finite(data: &[u8]) -> Option<usize> {
    data.chunks_exact(4)
        .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
}

/// Everything but the digest: the file's structure against the manifest, and its values,
/// as `scan` found them.
fn check_structure(manifest: &ModelManifest, bytes: &[u8], scan: &ValueScan) -> Result<(), ModelError> {
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
        // Where the tensor lies in the file; a view borrows from `bytes`.
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        let found = scan
            .scanned(name, start..start + view.data().len())
            .unwrap_or_else(|| first_non_finite(view.data()));
        if let Some(pos) = found {
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
    Ok(())
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

    /// The weights split at every kind of boundary: inside the length, inside the header,
    /// inside a value, between tensors; and one byte at a time.
    fn fed_in_pieces(manifest: &ModelManifest, bytes: &[u8], piece: usize) -> Result<ValidatedWeights, ModelError> {
        let mut check = WeightsCheck::default();
        let mut end = 0;
        while end < bytes.len() {
            end = (end + piece).min(bytes.len());
            check.extend(&bytes[..end]);
        }
        // Scanned as it arrived, not left to the direct scan of the structure check.
        if let Ok(file) = SafeTensors::deserialize(bytes) {
            assert_eq!(check.scan.tensors.len(), file.len(), "every tensor laid out");
            assert!(
                check.scan.tensors.iter().all(|t| t.start + t.scanned == t.end),
                "all scanned"
            );
        }
        check.finish(manifest, bytes)
    }

    #[test]
    fn checked_as_they_arrive_the_weights_get_the_verdict_and_digest_of_the_whole() {
        let m = numbered_autoencoder("fleet", 18, 4);
        let bytes = random_weights(&m, 7);
        for piece in [1, 3, 7, 8, 64, 1000, bytes.len()] {
            let v = fed_in_pieces(&m, &bytes, piece).unwrap();
            assert_eq!(v.sha256, hex::encode(Sha256::digest(&bytes)), "piece {piece}");
            assert_eq!(v.size, bytes.len() as u64);
        }
        // A non-finite value in the first tensor and in the last, each wherever it falls.
        let tensors = crate::example::random_tensors(&m, 1);
        for (tensor, element, value) in [(0, 3, f32::NAN), (tensors.len() - 1, 1, f32::INFINITY)] {
            let mut bad = tensors.clone();
            bad[tensor].2[element] = value;
            let bytes = serialize_tensors(&bad);
            let expected = format!(
                "tensor {:?} holds a non-finite value at element {element}",
                bad[tensor].0
            );
            for piece in [1, 5, 4096, bytes.len()] {
                let err = fed_in_pieces(&m, &bytes, piece).unwrap_err().to_string();
                assert!(err.contains(&expected), "piece {piece}: {err}");
            }
            let err = check_tensors(&m, &bytes).unwrap_err().to_string();
            assert!(err.contains(&expected), "{err}");
        }
        // A header cut short or garbage: the same refusal as for the whole file.
        for bytes in [
            &b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"[..],
            b"\xff\xff\xff\xff\xff\xff\xff\xff",
            b"x",
        ] {
            let err = fed_in_pieces(&m, bytes, 2).unwrap_err().to_string();
            assert!(err.contains("not a safetensors file"), "{err}");
        }
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
