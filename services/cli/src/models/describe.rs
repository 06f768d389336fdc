//! What the `kappa models` commands print of registry events and of a version's format.

use kappa_api::{model::ModelManifest, registry as pb};

pub(super) fn describe_event(event: &pb::WatchModelsResponse) -> String {
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

/// What `kappa models get` says of a version's format: for an ONNX graph, its inputs, outputs,
/// operators and how Kappa scores with it.
pub(super) fn describe_format(manifest: &ModelManifest) -> String {
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
