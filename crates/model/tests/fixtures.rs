//! Kappa's forward pass against PyTorch. The fixtures under `tests/fixtures/` were produced by
//! `make_fixtures.py` with PyTorch (version recorded in each `*.io.json`): weights saved with
//! safetensors, 64 input rows, and PyTorch's scores for them.

use kappa_model::{Backend, Mlp, ModelManifest};

const TOLERANCE: f32 = 1e-5;

struct Fixture {
    manifest: ModelManifest,
    weights: Vec<u8>,
    inputs: Vec<Vec<f32>>,
    scores: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct Io {
    inputs: Vec<Vec<f32>>,
    scores: Vec<f32>,
}

fn fixture(name: &str) -> Fixture {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.manifest.json"))).unwrap()).unwrap();
    let io: Io = serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.io.json"))).unwrap()).unwrap();
    Fixture {
        manifest,
        weights: std::fs::read(dir.join(format!("{name}.safetensors"))).unwrap(),
        inputs: io.inputs,
        scores: io.scores,
    }
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: wrong number of scores");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= TOLERANCE,
            "{what}: row {i} scored {a}, PyTorch {e} (|Δ| = {})",
            (a - e).abs()
        );
    }
}

fn check(name: &str) {
    let f = fixture(name);
    assert_eq!(f.inputs.len(), 64);
    for backend in [Backend::Candle, Backend::Native] {
        let model = Mlp::load(&f.manifest, &f.weights, backend).unwrap();
        let batch: Vec<f32> = f.inputs.iter().flatten().copied().collect();
        assert_close(
            &model.score(&batch).unwrap(),
            &f.scores,
            &format!("{name} {backend:?} batch 64"),
        );
        let singles: Vec<f32> = f.inputs.iter().map(|row| model.score(row).unwrap()[0]).collect();
        assert_close(&singles, &f.scores, &format!("{name} {backend:?} batch 1"));
    }
}

#[test]
fn autoencoder_matches_pytorch_at_batch_1_and_64() {
    check("autoencoder");
}

#[test]
fn classifier_matches_pytorch_at_batch_1_and_64() {
    check("classifier");
}

#[test]
fn rows_that_do_not_match_the_feature_count_are_refused() {
    let f = fixture("autoencoder");
    let model = Mlp::load(&f.manifest, &f.weights, Backend::Native).unwrap();
    assert!(model.score(&[1.0; 17]).is_err());
    assert!(model.score(&[]).is_err());
}
