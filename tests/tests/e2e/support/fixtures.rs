//! Fixtures: the PyTorch models under crates/model/tests/fixtures, digests.

use std::path::PathBuf;

use kappa_api::model::ModelManifest;

/// SHA-256 computed here, independently of the code under test.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A fixture model produced by PyTorch (crates/model/tests/fixtures).
pub struct Fixture {
    pub manifest: ModelManifest,
    pub weights: Vec<u8>,
    pub inputs: Vec<Vec<f32>>,
    pub scores: Vec<f32>,
}

pub fn fixture(name: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/model/tests/fixtures");
    let manifest =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.manifest.json"))).unwrap()).unwrap();
    let io: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.io.json"))).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect::<Vec<_>>()
    };
    Fixture {
        manifest,
        weights: std::fs::read(dir.join(format!("{name}.safetensors"))).unwrap(),
        inputs: io["inputs"].as_array().unwrap().iter().map(floats).collect(),
        scores: floats(&io["scores"]),
    }
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crates/model/tests/fixtures")
}
