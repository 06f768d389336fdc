//! The ONNX engine against ONNX Runtime: every scikit-learn family the predictor serves, made at
//! test time by `tests/onnx/sklearn_fixtures.py` (skl2onnx, pinned in scripts/tools.sh), and the
//! PyTorch exports committed in `tests/onnx/torch/` by `torch_fixtures.py`, each with ONNX
//! Runtime's outputs on the same 1,000 random rows, is admitted and run here in-process. Every
//! output must match ONNX Runtime's to a relative 1e-4.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use kappa_model::{
    Backend, Feature, ModelFormat, ModelManifest, OnnxScoreKind, OnnxScoring, OnnxSpec,
    admission::{Policy, Signature, admit},
    onnx::TensorData,
};
use serde_json::Value;

/// The tests' Python: `KAPPA_PYTHON`, else the venv scripts/tools.sh makes.
pub fn python() -> PathBuf {
    std::env::var_os("KAPPA_PYTHON").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kappa/py/bin/python"),
        PathBuf::from,
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn make_fixtures(dir: &Path) {
    let status = Command::new(python())
        .arg(repo().join("tests/onnx/sklearn_fixtures.py"))
        .arg(dir)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run scripts/tools.sh to make the tests' venv",
                python().display()
            )
        });
    assert!(status.success(), "the fixture script failed");
}

/// The manifest `kappa models publish --onnx` would write for a fixture.
fn manifest(name: &str, fixture: &Value) -> ModelManifest {
    let s = &fixture["scoring"];
    let text = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
    ModelManifest {
        name: name.replace('_', "-"),
        format: ModelFormat::Onnx as i32,
        features: fixture["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| Feature {
                name: f.as_str().unwrap().into(),
                offset: 0.0,
                scale: 1.0,
                ..Feature::default()
            })
            .collect(),
        anomaly_threshold: s["threshold"].as_f64().unwrap(),
        onnx: Some(OnnxSpec {
            features_input: fixture["input"].as_str().unwrap().into(),
            scoring: Some(OnnxScoring {
                score_output: text("score_output"),
                score_column: s["score_column"].as_u64().unwrap_or(0) as u32,
                score_kind: match s["score_kind"].as_str() {
                    Some("reconstruction_error") => OnnxScoreKind::ReconstructionError as i32,
                    _ => OnnxScoreKind::Value as i32,
                },
                lower_is_anomalous: s["lower_is_anomalous"].as_bool().unwrap_or(false),
                label_output: text("label_output"),
                positive_labels: s["positive_labels"]
                    .as_array()
                    .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default(),
            }),
            graph: None,
        }),
        ..ModelManifest::default()
    }
}

fn as_f64(data: &TensorData) -> Vec<f64> {
    match data {
        TensorData::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::F64(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|x| *x as f64).collect(),
        TensorData::I32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        TensorData::Bool(v) => v.iter().map(|x| f64::from(u8::from(*x))).collect(),
        TensorData::Bytes(_) => panic!("no string outputs in these fixtures"),
    }
}

#[test]
fn every_sklearn_family_matches_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    make_fixtures(dir.path());
    assert_eq!(
        check_fixtures(dir.path()),
        7,
        "every family the fixture script makes was checked"
    );
}

#[test]
fn every_pytorch_export_matches_onnx_runtime() {
    let dir = repo().join("tests/onnx/torch");
    assert_eq!(
        check_fixtures(&dir),
        5,
        "MLP, autoencoder, 1-D CNN, LSTM and GRU were checked"
    );
}

/// Admits and runs every fixture in `dir` against its reference outputs; returns how many.
fn check_fixtures(dir: &Path) -> usize {
    let mut families = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let fixture: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let bytes = std::fs::read(path.with_extension("onnx")).unwrap();
        let policy = Policy {
            max_bytes: 1 << 30,
            trusted_keys: None,
            backend: Backend::Native,
        };
        let admitted = admit(manifest(&name, &fixture), &bytes, None, Signature::default(), &policy)
            .unwrap_or_else(|e| panic!("{name}: refused: {e}"));
        let graph = admitted.manifest.onnx.as_ref().unwrap().graph.as_ref().unwrap();
        let model = admitted.model.onnx().unwrap();
        let rows: Vec<f64> = fixture["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let n = rows.len() / model.n_features();
        let answer = model.infer(&rows, n).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = fixture["outputs"].as_object().unwrap();
        assert_eq!(
            graph.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
            expected.keys().map(String::as_str).collect::<Vec<_>>(),
            "{name}: the manifest lists the graph's outputs"
        );
        for output in &answer.outputs {
            let reference = &expected[&output.name];
            let shape: Vec<usize> = reference["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(output.shape, shape, "{name}.{}: shape", output.name);
            let want: Vec<f64> = reference["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let got = as_f64(&output.data);
            let off: Vec<(usize, f64, f64)> = got
                .iter()
                .zip(&want)
                .enumerate()
                .filter(|(_, (g, w))| (*g - *w).abs() > 1e-4 * w.abs().max(1.0))
                .map(|(i, (g, w))| (i, *g, *w))
                .collect();
            assert!(
                off.is_empty(),
                "{name}.{}: {} of {} values differ from ONNX Runtime's by more than 1e-4 (first: {:?})",
                output.name,
                off.len(),
                want.len(),
                &off[..off.len().min(5)]
            );
        }
        assert_eq!(answer.scores.len(), n, "{name}: a score a row");
        // Requests share a run when every output has a row per input row: the rows of a run
        // taken apart must be what each part alone gives.
        assert!(model.rows_align(), "{name}: outputs with a row per input row");
        let f = model.n_features();
        let (first, second) = (
            model.infer(&rows[..3 * f], 3).unwrap(),
            model.infer(&rows[3 * f..8 * f], 5).unwrap(),
        );
        let together = model.infer(&rows[..8 * f], 8).unwrap();
        for (i, output) in together.outputs.iter().enumerate() {
            for (part, (from, to)) in [(&first, (0, 3)), (&second, (3, 8))] {
                let alone = as_f64(&part.outputs[i].data);
                let sliced = as_f64(&output.rows(from, to).data);
                assert_eq!(sliced.len(), alone.len(), "{name}.{}", output.name);
                for (a, b) in sliced.iter().zip(&alone) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{name}.{}: {a} in a run of 8, {b} alone",
                        output.name
                    );
                }
            }
        }
        families += 1;
    }
    families
}
