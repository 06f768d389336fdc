use std::collections::HashSet;

use crate::{Activation, Layer, ModelError, ModelFormat, ModelManifest, OutputKind};

const MAX_NAME_LEN: usize = 64;
/// Bounds the work a single forward pass can demand; far above any anomaly detector we serve.
const MAX_LAYER_WIDTH: u32 = 65_536;
const MAX_LAYERS: usize = 64;

/// Model and alias names end up in Kafka keys (`model/<name>/<version>`), so they must not
/// contain `/` and are kept to a conservative, URL- and shell-safe alphabet.
pub fn validate_name(name: &str) -> Result<(), ModelError> {
    check_identifier(name).map_err(|reason| ModelError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

/// Same alphabet as model names; `latest` is reserved because predictors use it to mean
/// "the highest version".
pub fn validate_alias(alias: &str) -> Result<(), ModelError> {
    if alias == "latest" {
        return Err(ModelError::InvalidName {
            name: alias.to_owned(),
            reason: "'latest' is reserved for the highest version and cannot be an alias",
        });
    }
    validate_name(alias)
}

fn check_identifier(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("must be at most 64 characters");
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err("must start with a lower-case letter or a digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("may contain only lower-case letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Largest encoded manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// Checks everything about a manifest that does not need the weights: name, features and their
/// scaling, the layer chain, the output kind and the threshold.
pub fn validate_manifest(manifest: &ModelManifest) -> Result<crate::schema::EventDecoder, ModelError> {
    validate_name(&manifest.name)?;
    let invalid = |msg: String| Err(ModelError::InvalidManifest(msg));
    // The version record (this manifest and a little more) must fit one Kafka record; a
    // manifest past the limit is the caller's error, not a broker error after the fact.
    let size = prost::Message::encoded_len(manifest);
    if size > MAX_MANIFEST_BYTES {
        return invalid(format!(
            "it encodes to {size} bytes, over the limit of {MAX_MANIFEST_BYTES} (description, tags and lineage included)"
        ));
    }

    if manifest.features.is_empty() {
        return invalid("it declares no input features".into());
    }
    let mut seen = HashSet::with_capacity(manifest.features.len());
    for feature in &manifest.features {
        if feature.name.is_empty() {
            return invalid("a feature has an empty name".into());
        }
        if !seen.insert(feature.name.as_str()) {
            return invalid(format!("feature {:?} is declared twice", feature.name));
        }
        if !feature.offset.is_finite() {
            return invalid(format!("feature {:?} has a non-finite offset", feature.name));
        }
        if !(feature.scale.is_finite() && feature.scale > 0.0) {
            return invalid(format!(
                "feature {:?} has scale {}; it must be finite and greater than zero",
                feature.name, feature.scale
            ));
        }
    }

    // Paths, rules, label and time fields: the schema every reader of this version decodes with,
    // compiled here once and handed back to be kept with the version.
    let decoder = crate::schema::EventDecoder::for_manifest(manifest)
        .map_err(|e| ModelError::InvalidManifest(format!("its schema: {e}")))?;

    match crate::format_of(manifest)? {
        ModelFormat::Onnx => validate_onnx(manifest)?,
        ModelFormat::Mlp | ModelFormat::Unspecified => validate_layers(manifest)?,
    }

    if !manifest.anomaly_threshold.is_finite() {
        return invalid("the anomaly threshold is not a finite number".into());
    }
    Ok(decoder)
}

/// The MLP's layer chain and output kind.
fn validate_layers(manifest: &ModelManifest) -> Result<(), ModelError> {
    let invalid = |msg: String| Err(ModelError::InvalidManifest(msg));
    if manifest.onnx.is_some() {
        return invalid("an MLP version carries no onnx section; set format to onnx for a graph".into());
    }
    if manifest.layers.is_empty() {
        return invalid("it declares no layers".into());
    }
    if manifest.layers.len() > MAX_LAYERS {
        return invalid(format!(
            "it declares {} layers; at most {MAX_LAYERS} are allowed",
            manifest.layers.len()
        ));
    }
    let mut expected_in = manifest.features.len() as u64;
    for (i, layer) in manifest.layers.iter().enumerate() {
        if u64::from(layer.in_features) != expected_in {
            let source = if i == 0 {
                format!("the {} declared features", manifest.features.len())
            } else {
                format!("layer {} outputs", i - 1)
            };
            return invalid(format!(
                "layer {i} takes {} inputs but {source} give {expected_in}",
                layer.in_features
            ));
        }
        if layer.out_features == 0 || layer.out_features > MAX_LAYER_WIDTH {
            return invalid(format!(
                "layer {i} has {} outputs; it must have between 1 and {MAX_LAYER_WIDTH}",
                layer.out_features
            ));
        }
        match Activation::try_from(layer.activation) {
            Ok(Activation::Unspecified) | Err(_) => {
                return invalid(format!(
                    "layer {i} has activation {}; use linear, relu, tanh or sigmoid",
                    layer.activation
                ));
            }
            Ok(_) => {}
        }
        expected_in = u64::from(layer.out_features);
    }

    match OutputKind::try_from(manifest.output) {
        Ok(OutputKind::ReconstructionError) => {
            if expected_in != manifest.features.len() as u64 {
                return invalid(format!(
                    "an autoencoder (reconstruction_error) must output its {} features, but the last layer outputs {expected_in}",
                    manifest.features.len()
                ));
            }
        }
        Ok(OutputKind::Raw) => {
            if expected_in != 1 {
                return invalid(format!(
                    "a raw-score model must end in a single output, but the last layer outputs {expected_in}"
                ));
            }
        }
        Ok(OutputKind::Unspecified) | Err(_) => {
            return invalid("the output kind must be reconstruction_error or raw".into());
        }
    }

    Ok(())
}

/// What Kappa needs to know to score with an ONNX graph; the graph itself is checked with its
/// bytes, in admission.
fn validate_onnx(manifest: &ModelManifest) -> Result<(), ModelError> {
    let invalid = |msg: String| Err(ModelError::InvalidManifest(msg));
    if !manifest.layers.is_empty() || manifest.output != OutputKind::Unspecified as i32 {
        return invalid("an ONNX version declares no layers or output kind: the graph is the model".into());
    }
    if let Some(f) = manifest.features.iter().find(|f| f.offset != 0.0 || f.scale != 1.0) {
        return invalid(format!(
            "feature {:?} has offset {} and scale {}; an ONNX graph takes raw values (offset 0, scale 1): put scaling inside the graph (a StandardScaler step, a normalising layer)",
            f.name, f.offset, f.scale
        ));
    }
    let Some(onnx) = &manifest.onnx else {
        return invalid("an ONNX version needs its onnx section: the features input and how to score".into());
    };
    if onnx.features_input.is_empty() {
        return invalid("onnx.features_input is empty: name the graph input that takes the features".into());
    }
    let scoring = onnx.scoring.clone().unwrap_or_default();
    match (scoring.score_output.is_empty(), scoring.label_output.is_empty()) {
        (false, true) => {
            if !scoring.positive_labels.is_empty() {
                return invalid("positive labels go with a label output, not a score output".into());
            }
        }
        (true, false) => {
            crate::model::parse_positive_labels(&scoring.positive_labels)?;
            if manifest.anomaly_threshold != 0.5 {
                return invalid(format!(
                    "a label output scores 1 for a positive label and 0 otherwise, so the threshold is 0.5, not {}",
                    manifest.anomaly_threshold
                ));
            }
        }
        (false, false) => return invalid("name a score output or a label output, not both".into()),
        (true, true) => {
            return invalid("name the output that scores (onnx.scoring.score_output) or labels (label_output)".into());
        }
    }
    Ok(())
}

/// The layers of Kappa's autoencoder over `features` inputs: relu hidden layers of the given
/// widths, then a linear layer back to the features (the trainer's, the examples', the one
/// `train::train_autoencoder` fits).
pub fn autoencoder_layers(features: u32, hidden: &[u32]) -> Vec<Layer> {
    let widths: Vec<u32> = std::iter::once(features)
        .chain(hidden.iter().copied())
        .chain(std::iter::once(features))
        .collect();
    let last = widths.len() - 2;
    widths
        .windows(2)
        .enumerate()
        .map(|(i, w)| Layer {
            in_features: w[0],
            out_features: w[1],
            activation: if i == last {
                Activation::Linear
            } else {
                Activation::Relu
            } as i32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::numbered_autoencoder;

    #[test]
    fn names_follow_the_key_safe_alphabet() {
        assert!(validate_name("car-engine_v2.1").is_ok());
        for bad in ["", "Car", "-lead", "a/b", "spa ce", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(validate_alias("latest").is_err());
        assert!(validate_alias("production").is_ok());
    }

    #[test]
    fn example_manifest_is_valid() {
        validate_manifest(&numbered_autoencoder("fleet", 18, 4)).unwrap();
    }

    #[test]
    fn broken_layer_chains_are_refused_with_the_layer_named() {
        let mut m = numbered_autoencoder("fleet", 18, 4);
        m.layers[1].in_features += 1;
        let err = validate_manifest(&m).unwrap_err().to_string();
        assert!(
            err.contains("layer 1 takes 5 inputs but layer 0 outputs give 4"),
            "{err}"
        );

        let mut m = numbered_autoencoder("fleet", 18, 4);
        m.features.pop();
        assert!(
            validate_manifest(&m)
                .unwrap_err()
                .to_string()
                .contains("declared features")
        );

        let mut m = numbered_autoencoder("fleet", 18, 4);
        m.features[0].scale = 0.0;
        assert!(validate_manifest(&m).is_err());

        let mut m = numbered_autoencoder("fleet", 18, 4);
        (m.features[2].min, m.features[2].max) = (Some(5.0), Some(1.0));
        assert!(
            validate_manifest(&m)
                .unwrap_err()
                .to_string()
                .contains("min 5 above max 1")
        );

        let mut m = numbered_autoencoder("fleet", 18, 4);
        m.features[3].name = "engine..rpm".into();
        assert!(validate_manifest(&m).unwrap_err().to_string().contains("empty segment"));

        let mut m = numbered_autoencoder("fleet", 18, 4);
        m.description = "x".repeat(MAX_MANIFEST_BYTES);
        assert!(
            validate_manifest(&m)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );

        let mut m = numbered_autoencoder("fleet", 18, 4);
        m.output = OutputKind::Raw as i32;
        assert!(validate_manifest(&m).unwrap_err().to_string().contains("single output"));
    }
}
