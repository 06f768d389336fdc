//! Models users bring: ONNX graphs from scikit-learn (made at test time by
//! tests/onnx/sklearn_fixtures.py) and PyTorch (committed in tests/onnx/torch), published
//! through the CLI, served by a real predictor, answered over the Open Inference Protocol with
//! ONNX Runtime's outputs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use kappa_api::inference::{
    self as oip, grpc_inference_service_client::GrpcInferenceServiceClient, model_infer_request::InferInputTensor,
};
use serde_json::Value;

use crate::support::*;

/// The tests' Python (scripts/tools.sh makes the venv).
fn python() -> PathBuf {
    std::env::var_os("KAPPA_PYTHON").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kappa/py/bin/python"),
        PathBuf::from,
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fixture: the graph, its rows and ONNX Runtime's outputs, and the publish flags.
pub struct OnnxFixture {
    pub name: String,
    pub graph: PathBuf,
    pub json: Value,
}

impl OnnxFixture {
    pub fn rows(&self) -> Vec<f32> {
        self.json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect()
    }

    pub fn features(&self) -> Vec<String> {
        self.json["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }

    /// `kappa models publish --onnx` flags for this fixture.
    pub fn publish_args(&self) -> Vec<String> {
        let s = &self.json["scoring"];
        let mut args = vec![
            "--onnx".to_owned(),
            self.graph.display().to_string(),
            format!("--features={}", self.features().join(",")),
        ];
        if let Some(output) = s["score_output"].as_str() {
            args.push(format!("--score-output={output}"));
            args.push(format!("--threshold={}", s["threshold"].as_f64().unwrap()));
            if let Some(column) = s["score_column"].as_u64() {
                args.push(format!("--score-column={column}"));
            }
            if s["lower_is_anomalous"].as_bool() == Some(true) {
                args.push("--lower-is-anomalous".into());
            }
            if s["score_kind"].as_str() == Some("reconstruction_error") {
                args.push("--reconstruction-error".into());
            }
        }
        if let Some(output) = s["label_output"].as_str() {
            let labels: Vec<&str> = s["positive_labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            args.push(format!("--label-output={output}"));
            args.push(format!("--anomalous-labels={}", labels.join(",")));
        }
        args
    }
}

/// Every fixture in `dir`.
pub fn fixtures_in(dir: &Path) -> Vec<OnnxFixture> {
    let mut out: Vec<OnnxFixture> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| OnnxFixture {
            name: p.file_stem().unwrap().to_str().unwrap().to_owned(),
            graph: p.with_extension("onnx"),
            json: serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Makes the scikit-learn fixtures into `dir` (optionally only some families).
pub fn make_sklearn_fixtures(dir: &Path, only: &[&str], extra: &[&str]) {
    let out = Command::new(python())
        .arg(repo().join("tests/onnx/sklearn_fixtures.py"))
        .arg(dir)
        .arg(format!("--only={}", only.join(",")))
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): run scripts/tools.sh", python().display()));
    assert!(
        out.status.success(),
        "fixture script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `kappa models publish` against `registry`; the CLI's output, or its error.
pub fn cli_publish(registry: &Service, name: &str, args: &[String]) -> Result<String, String> {
    let out = Command::new(binary("kappa"))
        .args(["models", "--registry", &registry.address, "publish", "--name", name])
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn fp32_input(name: &str, rows: &[f32], features: usize) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![(rows.len() / features) as i64, features as i64],
        parameters: Default::default(),
        contents: Some(oip::InferTensorContents {
            fp32_contents: rows.to_vec(),
            ..Default::default()
        }),
    }
}

/// Values of an output as f64, whatever its datatype.
fn output_values(tensor: &oip::model_infer_response::InferOutputTensor) -> Vec<f64> {
    let c = tensor.contents.clone().unwrap_or_default();
    match tensor.datatype.as_str() {
        "FP32" => c.fp32_contents.iter().map(|v| f64::from(*v)).collect(),
        "FP64" => c.fp64_contents,
        "INT64" => c.int64_contents.iter().map(|v| *v as f64).collect(),
        "INT32" => c.int_contents.iter().map(|v| f64::from(*v)).collect(),
        "BOOL" => c.bool_contents.iter().map(|v| f64::from(u8::from(*v))).collect(),
        other => panic!("unexpected datatype {other}"),
    }
}

/// Waits until the predictor's ModelMetadata names `version`; returns the metadata.
pub async fn wait_for_metadata(
    client: &mut GrpcInferenceServiceClient<kappa_client::TracedChannel>,
    name: &str,
    version: u64,
) -> oip::ModelMetadataResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = oip::ModelMetadataRequest {
            name: name.into(),
            version: String::new(),
        };
        if let Ok(m) = client.model_metadata(request).await
            && m.get_ref().versions == [version.to_string()]
        {
            return m.into_inner();
        }
        assert!(Instant::now() < deadline, "version {version} not served within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sklearn_and_pytorch_graphs_published_through_the_cli_answer_as_onnx_runtime_does() {
    let dir = tempfile::tempdir().unwrap();
    make_sklearn_fixtures(dir.path(), &[], &[]);
    let mut fixtures = fixtures_in(dir.path());
    fixtures.extend(fixtures_in(&repo().join("tests/onnx/torch")));
    assert_eq!(
        fixtures.len(),
        12,
        "seven scikit-learn families and five PyTorch models"
    );

    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let name = unique("byom");
    // One predictor follows the name while every fixture is published as its next version:
    // each answer below comes from a graph swapped in under load of the one before.
    let first = cli_publish(&registry, &name, &fixtures[0].publish_args()).unwrap();
    assert!(first.contains("version 1"), "{first}");
    let predictor = PredictorSetup::new(&setup.topic, &name, "latest").start().await;
    let mut client = GrpcInferenceServiceClient::new(predictor.channel().await).max_decoding_message_size(64 << 20);

    for (i, fixture) in fixtures.iter().enumerate() {
        let version = i as u64 + 1;
        if i > 0 {
            let out = cli_publish(&registry, &name, &fixture.publish_args())
                .unwrap_or_else(|e| panic!("{}: publish refused: {e}", fixture.name));
            assert!(out.contains(&format!("version {version}")), "{}: {out}", fixture.name);
        }
        let metadata = wait_for_metadata(&mut client, &name, version).await;
        let input = fixture.json["input"].as_str().unwrap();
        assert_eq!(metadata.platform, "onnx", "{}", fixture.name);
        assert_eq!(
            metadata.inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            [input],
            "{}: metadata names the graph's input",
            fixture.name
        );
        let expected = fixture.json["outputs"].as_object().unwrap();
        let listed: Vec<&str> = metadata.outputs.iter().map(|t| t.name.as_str()).collect();
        for output in expected.keys() {
            assert!(
                listed.contains(&output.as_str()),
                "{}: metadata lists {output}: {listed:?}",
                fixture.name
            );
        }

        let rows = fixture.rows();
        let features = fixture.features().len();
        let answer = client
            .model_infer(oip::ModelInferRequest {
                model_name: name.clone(),
                inputs: vec![fp32_input(input, &rows, features)],
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", fixture.name))
            .into_inner();
        assert_eq!(answer.model_version, version.to_string(), "{}", fixture.name);
        for (output, reference) in expected {
            let got = answer
                .outputs
                .iter()
                .find(|o| &o.name == output)
                .unwrap_or_else(|| panic!("{}: no output {output}", fixture.name));
            let shape: Vec<i64> = reference["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_i64().unwrap())
                .collect();
            assert_eq!(got.shape, shape, "{}.{output}: shape", fixture.name);
            let want: Vec<f64> = reference["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let values = output_values(got);
            let off = values
                .iter()
                .zip(&want)
                .filter(|(g, w)| (*g - *w).abs() > 1e-4 * w.abs().max(1.0))
                .count();
            assert_eq!(
                off, 0,
                "{}.{output}: values differ from ONNX Runtime's beyond 1e-4",
                fixture.name
            );
        }
        let scores = answer
            .outputs
            .iter()
            .find(|o| o.name == "score")
            .expect("Kappa's score output");
        assert_eq!(output_values(scores).len(), rows.len() / features, "{}", fixture.name);
    }
}
