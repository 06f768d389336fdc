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
use kappa_api::model::ModelManifest;
use rand::SeedableRng as _;
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

        // The same rows as FP64, and as raw FP32 bytes (Triton's clients' way): the same answer.
        let first = &rows[..10 * features];
        let mut fp64 = fp32_input(input, first, features);
        fp64.datatype = "FP64".into();
        fp64.contents = Some(oip::InferTensorContents {
            fp64_contents: first.iter().map(|v| f64::from(*v)).collect(),
            ..Default::default()
        });
        let mut raw = fp32_input(input, first, features);
        raw.contents = None;
        let ask = |tensor: InferInputTensor, raw_bytes: Vec<Vec<u8>>| oip::ModelInferRequest {
            model_name: name.clone(),
            inputs: vec![tensor],
            raw_input_contents: raw_bytes,
            ..Default::default()
        };
        let typed = client
            .model_infer(ask(fp32_input(input, first, features), vec![]))
            .await
            .unwrap()
            .into_inner();
        let wide = client.model_infer(ask(fp64, vec![])).await.unwrap().into_inner();
        let bytes = vec![first.iter().flat_map(|v| v.to_le_bytes()).collect()];
        let packed = client.model_infer(ask(raw, bytes)).await.unwrap().into_inner();
        assert_eq!(
            kappa_scores(&wide),
            kappa_scores(&typed),
            "{}: FP64 rows score as FP32 ones",
            fixture.name
        );
        let at = packed.outputs.iter().position(|o| o.name == "score").unwrap();
        let raw_scores: Vec<f32> = packed.raw_output_contents[at]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(
            raw_scores,
            kappa_scores(&typed),
            "{}: raw FP32 bytes in, raw bytes out",
            fixture.name
        );
    }
}

/// The manifest of a graph over `features` columns `f0..`, scored by `output` above `threshold`.
fn onnx_manifest(name: &str, features: usize, input: &str, output: &str, threshold: f64) -> ModelManifest {
    use kappa_api::model::{Feature, ModelFormat, OnnxModel, OnnxScoring};
    ModelManifest {
        name: name.into(),
        format: ModelFormat::Onnx as i32,
        features: (0..features)
            .map(|i| Feature {
                name: format!("f{i}"),
                scale: 1.0,
                ..Feature::default()
            })
            .collect(),
        anomaly_threshold: threshold,
        onnx: Some(OnnxModel {
            features_input: input.into(),
            scoring: Some(OnnxScoring {
                score_output: output.into(),
                ..OnnxScoring::default()
            }),
            graph: None,
        }),
        ..ModelManifest::default()
    }
}

fn make_bad_models(dir: &Path, huge: bool) {
    run_ok(
        Command::new(python())
            .arg(repo().join("tests/onnx/bad_models.py"))
            .arg(dir)
            .args(huge.then_some("--huge")),
        "bad_models.py",
    );
}

/// Keys of the committed records in the models topic.
async fn committed_keys(topic: &str) -> Vec<String> {
    read_partition(topic, "read_committed")
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect()
}

#[tokio::test]
async fn bad_graphs_are_refused_with_the_reason_and_nothing_reaches_the_log() {
    use kappa_model::signing::ModelSigner;
    let dir = tempfile::tempdir().unwrap();
    make_sklearn_fixtures(dir.path(), &["iforest"], &[]);
    make_bad_models(dir.path(), true);
    let signer = ModelSigner::generate();
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("ci.pem"), signer.public_pem().unwrap()).unwrap();

    let setup = RegistrySetup::new().verifying(keys.path());
    let registry = setup.start().await;
    let mut client = kappa_client::Registry::from(registry_client(&registry).await);
    let name = unique("refused");
    let good = std::fs::read(dir.path().join("iforest.onnx")).unwrap();
    let mut good_manifest = onnx_manifest(&name, 6, "X", "scores", 0.0);
    good_manifest
        .onnx
        .as_mut()
        .unwrap()
        .scoring
        .as_mut()
        .unwrap()
        .lower_is_anomalous = true;
    client
        .publish_signed(&good_manifest, &good, "", Some(&signer))
        .await
        .unwrap();
    let before = committed_keys(&setup.topic).await;

    let mut random = vec![0_u8; 4096];
    rand::RngCore::fill_bytes(&mut rand::rngs::StdRng::seed_from_u64(5), &mut random);
    let read = |file: &str| std::fs::read(dir.path().join(file)).unwrap();
    // The bad graphs of bad_models.py take `x` and give `score`; the others reuse the good one's.
    let bad = onnx_manifest(&name, 6, "x", "score", 0.0);
    let cases: Vec<(&str, Vec<u8>, &ModelManifest, tonic::Code, &str)> = vec![
        (
            "a truncated file",
            good[..good.len() / 3].to_vec(),
            &good_manifest,
            tonic::Code::InvalidArgument,
            "ONNX",
        ),
        (
            "random bytes",
            random,
            &good_manifest,
            tonic::Code::InvalidArgument,
            "not an ONNX model",
        ),
        (
            "an unsupported operator",
            read("unsupported_op.onnx"),
            &bad,
            tonic::Code::InvalidArgument,
            "com.example:Frobnicate (opset 1)",
        ),
        (
            "a features input of the wrong width",
            read("wrong_width.onnx"),
            &bad,
            tonic::Code::InvalidArgument,
            "takes rows of 5 values, but the manifest lists 6 features",
        ),
        (
            "an external-data tensor",
            read("external_data.onnx"),
            &bad,
            tonic::Code::InvalidArgument,
            "external file",
        ),
        (
            "a probe that scores NaN",
            read("nan_probe.onnx"),
            &bad,
            tonic::Code::InvalidArgument,
            "non-finite scores",
        ),
        (
            "a 300 MiB graph",
            read("huge.onnx"),
            &bad,
            tonic::Code::ResourceExhausted,
            "over this registry's limit",
        ),
    ];
    for (what, bytes, manifest, code, reason) in cases {
        let refused = client
            .publish_signed(manifest, &bytes, "", Some(&signer))
            .await
            .expect_err(&format!("{what} was accepted"));
        assert_eq!(refused.code(), code, "{what}: {}", refused.message());
        assert!(
            refused.message().contains(reason),
            "{what}: {:?} should say {reason:?}",
            refused.message()
        );
    }

    // Signed over other bytes: the manifest signed carries another graph's digest.
    let other = read("nan_probe.onnx");
    let mut signed_for_other = good_manifest.clone();
    signed_for_other.version = 2;
    signed_for_other.weights_sha256 = sha256(&other);
    signed_for_other.weights_size = good.len() as u64;
    let (signature, signing_key_id) = signer.sign(&signed_for_other);
    let mut sent = good_manifest.clone();
    sent.version = 2;
    sent.weights_size = good.len() as u64;
    use kappa_api::registry::{PublishHeader, PublishRequest, publish_request::Part};
    let messages = vec![
        PublishRequest {
            part: Some(Part::Header(PublishHeader {
                manifest: Some(sent),
                idempotency_key: String::new(),
                signature,
                signing_key_id,
            })),
        },
        PublishRequest {
            part: Some(Part::Chunk(good.clone())),
        },
    ];
    let refused = client.rpc().publish(tokio_stream::iter(messages)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
    assert!(refused.message().contains("does not verify"), "{}", refused.message());

    assert_eq!(
        committed_keys(&setup.topic).await,
        before,
        "no refused version left a record"
    );
}

#[tokio::test]
async fn a_predictor_refuses_a_forged_graph_from_the_log_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    make_sklearn_fixtures(dir.path(), &["iforest"], &[]);
    make_bad_models(dir.path(), false);
    let fixture = fixtures_in(dir.path()).remove(0);
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let name = unique("forged");
    cli_publish(&registry, &name, &fixture.publish_args()).unwrap();
    let predictor = PredictorSetup::new(&setup.topic, &name, "latest").start().await;
    let mut client = GrpcInferenceServiceClient::new(predictor.channel().await);
    wait_for_metadata(&mut client, &name, 1).await;

    // Straight into the topic, past the registry: digests right, graphs unservable.
    for (version, file) in [(2, "nan_probe.onnx"), (3, "unsupported_op.onnx")] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        let mut manifest = onnx_manifest(&name, 6, "x", "score", 0.0);
        manifest.version = version;
        manifest.weights_sha256 = sha256(&bytes);
        manifest.weights_size = bytes.len() as u64;
        write_raw_version(&setup.topic, manifest, &bytes).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(predictor.log_text_contains("version 3 refused") && predictor.log_text_contains("Frobnicate")) {
        assert!(
            Instant::now() < deadline,
            "the forged version 3 was not refused within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = fixture.rows();
    let answer = client
        .model_infer(oip::ModelInferRequest {
            model_name: name.clone(),
            inputs: vec![fp32_input("X", &rows[..60], 6)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_version, "1", "version 1 keeps serving");
    let failures = predictor
        .metric("kappa_predictor_load_failures_total{reason=\"invalid_model\"}")
        .await;
    assert!(failures.unwrap_or(0.0) >= 1.0, "{}", predictor.metrics().await);
}

/// Kappa's score output of an OIP answer, one value a row.
fn kappa_scores(answer: &oip::ModelInferResponse) -> Vec<f32> {
    let score = answer
        .outputs
        .iter()
        .find(|o| o.name == "score")
        .expect("a score output");
    score.contents.clone().unwrap_or_default().fp32_contents
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_clients_see_no_failure_while_mlp_onnx_mlp_swap_and_each_answer_is_its_versions() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use kappa_model::{
        Backend, Mlp,
        example::{autoencoder_over, random_weights},
    };
    let torch = fixtures_in(&repo().join("tests/onnx/torch"));
    let graph = torch.iter().find(|f| f.name == "torch_mlp").unwrap();
    let paths = graph.features();
    let f = paths.len();
    let rows: Vec<f32> = graph.rows()[..64 * f].to_vec();

    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let name = unique("swap-formats");
    let path_refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let mlp = |seed: u64| {
        let manifest = autoencoder_over(&name, &path_refs, &[4]);
        let weights = random_weights(&manifest, seed);
        let model = Mlp::load(&manifest, &weights, Backend::Native).unwrap();
        let scores: Vec<f32> = rows.chunks(f).map(|row| model.score(row).unwrap()[0]).collect();
        (manifest, weights, scores)
    };
    let (m1, w1, scores1) = mlp(1);
    let (m3, w3, scores3) = mlp(3);
    // The graph's reference: ONNX Runtime's output, which is Kappa's score (not negated).
    let scores2: Vec<f32> = graph.json["outputs"]["score"]["data"].as_array().unwrap()[..64]
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let expected = [scores1, scores2, scores3];

    publish(&mut client, &m1, &w1, "").await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, &name, "latest").start().await;
    let channel = predictor.channel().await;
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|c| {
            let (mut oip, stop, rows, name) = (
                GrpcInferenceServiceClient::new(channel.clone()),
                Arc::clone(&stop),
                rows.clone(),
                name.clone(),
            );
            tokio::spawn(async move {
                let (mut answers, mut failures) = (Vec::new(), Vec::new());
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let row = i % 64;
                    i += 7;
                    let request = oip::ModelInferRequest {
                        model_name: name.clone(),
                        inputs: vec![fp32_input("input", &rows[row * f..(row + 1) * f], f)],
                        ..Default::default()
                    };
                    match oip.model_infer(request).await {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            answers.push((
                                answer.model_version.parse::<usize>().unwrap(),
                                row,
                                kappa_scores(&answer)[0],
                            ));
                        }
                        Err(status) => failures.push(status.to_string()),
                    }
                }
                (answers, failures)
            })
        })
        .collect();

    let mut oip_client = GrpcInferenceServiceClient::new(channel.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    cli_publish(&registry, &name, &graph.publish_args()).unwrap();
    wait_for_metadata(&mut oip_client, &name, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish(&mut client, &m3, &w3, "").await.unwrap();
    wait_for_metadata(&mut oip_client, &name, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut seen = [0_usize; 3];
    for caller in callers {
        let (answers, failures) = caller.await.unwrap();
        assert!(failures.is_empty(), "failed calls during the swaps: {failures:?}");
        for (version, row, score) in answers {
            let want = expected[version - 1][row];
            assert!(
                (score - want).abs() <= 1e-4 * want.abs().max(1.0),
                "row {row} answered by v{version} scored {score}, but v{version} scores it {want}"
            );
            seen[version - 1] += 1;
        }
    }
    assert!(seen.iter().all(|n| *n > 0), "answers from every version: {seen:?}");
}

/// Runs examples/bring-your-own-model/train.py on `topic` (IsolationForest only: PyTorch is not
/// in the tests' venv) and returns its summary.json.
fn run_example(topic: &str, range: &[&str], out: &Path) -> Value {
    let run = Command::new(python())
        .arg(repo().join("examples/bring-your-own-model/train.py"))
        .args(["--bootstrap", &bootstrap(), "--topic", topic, "--no-torch", "--out"])
        .arg(out)
        .args(range)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        printed.contains("kappa models publish --name fleet-iforest --onnx"),
        "{printed}"
    );
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

/// The publish flags the example prints for its IsolationForest.
fn example_publish_args(out: &Path, summary: &Value) -> Vec<String> {
    let features: Vec<&str> = summary["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    [
        "--onnx",
        &out.join("iforest.onnx").display().to_string(),
        "--features",
        &features.join(","),
        "--score-output",
        "scores",
        "--lower-is-anomalous",
        "--threshold",
        "0",
        "--label",
        "failure_occurred",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test]
async fn the_example_isolation_forest_scores_the_fleet_stream_as_scikit_learn_does() {
    use std::collections::HashMap;

    use kappa_api::events::Prediction;
    use kappa_model::evaluate::roc_auc;

    // The fleet's last hour: labelled telemetry, some cars failing.
    let topic = unique("test.byom-fleet");
    let fleet = Command::new(binary("kappa"))
        .args(["fleet", "--kafka-bootstrap", &bootstrap(), "--topic", &topic])
        .args(["--seed", "17", "--cars", "40", "--events", "6000", "--rate", "0"])
        .args(["--failing-share", "0.3", "--backdate-seconds", "3600"])
        .output()
        .unwrap();
    assert!(fleet.status.success(), "{}", String::from_utf8_lossy(&fleet.stderr));

    // The data scientist's script: that hour into pandas, an IsolationForest on its normal rows,
    // exported to ONNX, and scikit-learn's own ROC AUC on the hour's labelled events.
    let out = tempfile::tempdir().unwrap();
    let summary = run_example(&topic, &["--last-minutes", "90"], out.path());
    assert_eq!(summary["rows"], 6000, "{summary}");
    let sklearn_auc = summary["iforest"]["roc_auc"].as_f64().unwrap();

    // Published as the script says, then scored by a stream-mode predictor.
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let name = unique("fleet-iforest");
    // With a reference profile sampled from the topic, so the predictor monitors drift.
    let mut args = example_publish_args(out.path(), &summary);
    args.extend(
        [
            "--reference-topic",
            &topic,
            "--reference-minutes",
            "120",
            "--kafka-bootstrap",
            &bootstrap(),
        ]
        .map(String::from),
    );
    cli_publish(&registry, &name, &args).unwrap();
    let predictions = unique("test.byom-predictions");
    let predictor = PredictorSetup::new(&setup.topic, &name, "latest")
        .stream(&topic, &predictions)
        .arg("--monitor-window-seconds=2")
        .arg("--monitor-min-rows=500")
        .start()
        .await;
    let events = read_positioned(&topic, "read_committed").await;
    let scored = wait_for_records(&predictions, events.len(), Duration::from_secs(180)).await;
    let by_source: HashMap<(i32, i64), Prediction> = scored
        .iter()
        .map(|r| {
            let p: Prediction = serde_json::from_slice(r.value.as_ref().unwrap()).unwrap();
            ((p.source_partition, p.source_offset), p)
        })
        .collect();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for event in &events {
        let json: Value = serde_json::from_slice(event.value.as_ref().unwrap()).unwrap();
        let p = &by_source[&(event.partition, event.offset)];
        assert!(p.error.is_empty(), "{}", p.error);
        scores.push(p.score as f32);
        labels.push(json["failure_occurred"] == "true");
    }
    let stream_auc = roc_auc(&scores, &labels);
    println!("fleet IsolationForest: scikit-learn ROC AUC {sklearn_auc:.4}, Kappa's stream {stream_auc:.4}");
    assert!(
        (stream_auc - sklearn_auc).abs() <= 0.01,
        "stream ROC AUC {stream_auc} is not within 0.01 of scikit-learn's {sklearn_auc}"
    );

    // The reference the CLI sampled from the topic, and the predictor's drift series against it.
    // (Windows hold a time-ordered slice of the hour, in which failing cars heat up, so a single
    // window's PSI says nothing about the reference's correctness: it is only required to exist.)
    let mut models = registry_client(&registry).await;
    let (version, _) = get_model(&mut models, &name, by_version(1)).await.unwrap();
    let lineage = version.manifest.unwrap().lineage.expect("the CLI wrote a lineage");
    assert_eq!(lineage.source_topic, topic);
    let reference = lineage.reference.expect("a reference profile");
    assert_eq!(reference.features.len(), 18);
    for feature in &reference.features {
        assert_eq!(feature.shares.len(), feature.edges.len() + 1, "{feature:?}");
        assert!((feature.shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{feature:?}");
    }
    assert!(
        reference.validation_scores.is_some(),
        "the graph's own scores of the sampled events"
    );
    let series =
        format!("kappa_predictor_feature_drift_psi{{model=\"{name}\",version=\"1\",feature=\"coolant_temp\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let psi = loop {
        if let Some(psi) = predictor.metric(&series).await {
            break psi;
        }
        assert!(
            Instant::now() < deadline,
            "no drift series for the graph: {}",
            predictor.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(psi.is_finite() && psi >= 0.0, "coolant_temp PSI {psi}");
}

#[tokio::test]
async fn an_onnx_holder_meets_an_mlp_challenger_on_the_same_hold_out_and_in_a_backtest() {
    use kappa_api::{
        predictor::{PredictRequest, predictor_client::PredictorClient},
        trainer::{BacktestGate, FeatureSpec, JobPhase, PromotionGate, TimeRange, TrainingSpec},
    };

    use crate::{
        backtest::{backtest, truth},
        trainer::{spec, start_job, trainer_client, wait_done},
    };

    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let trainer = TrainerSetup::new(&registry).start().await;
    let mut jobs = trainer_client(&trainer).await;
    let history = unique("test.byom-gate");
    create_topic_with_partitions(&history, 3).await;
    run_fleet(
        &history,
        &[
            "--cars",
            "24",
            "--events",
            "8000",
            "--rate",
            "0",
            "--failing-share",
            "0.3",
            "--seed",
            "9",
            "--backdate-seconds",
            "7200",
        ],
    );
    let records = read_positioned(&history, "read_committed").await;
    let first = records.iter().map(|r| r.timestamp_ms).min().unwrap();
    let last = records.iter().map(|r| r.timestamp_ms).max().unwrap();
    let (split, end) = (first + (last - first) / 2, last + 1);

    // v1, the holder: the data scientist's IsolationForest on the first half.
    let out = tempfile::tempdir().unwrap();
    let summary = run_example(
        &history,
        &["--from-ms", &first.to_string(), "--to-ms", &split.to_string()],
        out.path(),
    );
    let name = "gated";
    cli_publish(&registry, name, &example_publish_args(out.path(), &summary)).unwrap();
    let mut models = registry_client(&registry).await;
    set_alias(&mut models, name, "production", 1).await.unwrap();

    // v2, the challenger: Kappa's MLP on the same range and features, gated on the hold-out and
    // on a backtest of the second half against the graph. The allowance lets both comparisons
    // run whichever model wins; what matters here is that they compare the two formats.
    let features: Vec<FeatureSpec> = summary["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| FeatureSpec {
            path: f.as_str().unwrap().into(),
            ..Default::default()
        })
        .collect();
    let challenger = TrainingSpec {
        epochs: 12,
        hidden_layers: vec![12, 6, 12],
        features,
        promote_alias: "production".into(),
        gate: Some(PromotionGate {
            max_regression: Some(1.0),
            backtest: Some(BacktestGate {
                topic: String::new(),
                window: Some(TimeRange {
                    from_ms: split,
                    to_ms: end,
                }),
                metric: "roc_auc".into(),
            }),
            ..Default::default()
        }),
        ..spec(name, &history, first, split)
    };
    let job = start_job(&mut jobs, challenger).await;
    let done = wait_done(&mut jobs, &job.job_id, Duration::from_secs(300)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    assert_eq!(done.published_version, 2);
    let reason = &done.promotion_reason;
    println!("MLP challenger against the ONNX holder: {reason}");
    assert!(
        reason.contains("holder v1's") && reason.contains("on the same hold-out"),
        "{reason}"
    );
    assert!(reason.contains("on the backtest on"), "{reason}");

    // The backtest as a user runs it, and the graph's numbers computed independently from a
    // predictor serving it.
    let window = [
        "--registry",
        &registry.address,
        "--kafka-bootstrap",
        &bootstrap(),
        "--model",
        name,
        "--version",
        "2",
        "--against",
        "1",
        "--from-ms",
        &split.to_string(),
        "--to-ms",
        &end.to_string(),
    ];
    let json: Value = serde_json::from_str(&backtest(&[&window[..], &["--output", "json"]].concat())).unwrap();
    println!("{}", backtest(&window));
    set_alias(&mut models, name, "pinned-v1", 1).await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, name, "pinned-v1").start().await;
    let mut typed = PredictorClient::new(predictor.channel().await);
    let (mut scores, mut flags, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for r in records
        .iter()
        .filter(|r| r.timestamp_ms >= split && r.timestamp_ms < end)
    {
        let event = String::from_utf8(r.value.clone().unwrap()).unwrap();
        labels.push(serde_json::from_str::<Value>(&event).unwrap()["failure_occurred"] == "true");
        let request = PredictRequest {
            event_json: event,
            ..Default::default()
        };
        let answer = typed.predict(request).await.unwrap().into_inner();
        assert_eq!(answer.model_version, 1);
        scores.push(answer.score);
        flags.push(answer.is_anomaly);
    }
    let graph = &json["versions"][1];
    assert_eq!(graph["version"], 1, "{json:#}");
    let t = truth(&scores, &flags, &labels);
    assert_eq!(graph["anomalies"], t.anomalies, "{graph:#}");
    for (field, expected) in [("precision", t.precision), ("recall", t.recall), ("roc_auc", t.roc_auc)] {
        let actual = graph[field].as_f64().unwrap();
        assert!(
            (actual - expected).abs() < 1e-9,
            "{field}: backtest {actual}, predictor {expected}"
        );
    }
    assert!(json["versions"][0]["roc_auc"].as_f64().is_some(), "{json:#}");
}

#[tokio::test]
async fn an_onnx_shadow_scores_a_copy_of_an_mlps_live_answers() {
    use kappa_api::predictor::{PredictRequest, predictor_client::PredictorClient};
    use kappa_fleet::{CAR_FIELDS, car_autoencoder};
    use kappa_model::example::{onnx_autoencoder, random_weights};

    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let name = unique("onnx-shadow");
    let live = car_autoencoder(&name, &[8]);
    publish(&mut client, &live, &random_weights(&live, 1), "")
        .await
        .unwrap();
    let (candidate, graph) = onnx_autoencoder(&name, &CAR_FIELDS, &[6], 7);
    publish(&mut client, &candidate, &graph, "").await.unwrap();
    for (alias, version) in [("production", 1), ("candidate", 2)] {
        set_alias(&mut client, &name, alias, version).await.unwrap();
    }
    let shadows = unique("test.onnx-shadow-answers");
    create_topic(&shadows, &[]).await;
    let predictor = PredictorSetup::new(&setup.topic, &name, "production")
        .arg("--shadow=candidate")
        .arg(format!("--shadow-topic={shadows}"))
        .start()
        .await;
    predictor
        .wait_for_metric(
            "kappa_predictor_shadow_version",
            2.0,
            "the graph never became the shadow",
        )
        .await;

    let graph_model = kappa_model::admission::load(&candidate, &graph).unwrap().model;
    let mut typed = PredictorClient::new(predictor.channel().await);
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..100 {
        let row: Vec<f32> = (0..CAR_FIELDS.len())
            .map(|f| ((i * 7 + f * 3) % 11) as f32 * 0.3)
            .collect();
        let event: serde_json::Map<String, Value> = CAR_FIELDS
            .iter()
            .zip(&row)
            .map(|(name, v)| ((*name).to_owned(), serde_json::json!(v)))
            .collect();
        let request = PredictRequest {
            event_json: serde_json::to_string(&event).unwrap(),
            request_id: format!("req-{i}"),
            ..Default::default()
        };
        let answer = typed.predict(request).await.unwrap().into_inner();
        assert_eq!(answer.model_version, 1, "the MLP answers live");
        expected.insert(answer.request_id, graph_model.score(&row).unwrap()[0]);
    }
    let records = crate::shadow::shadow_answers(&shadows, 100, &|| predictor.service.log_text()).await;
    assert_eq!(records.len(), 100, "one shadow answer per live answer");
    for (key, a) in &records {
        assert_eq!(
            (a["liveVersion"].as_str(), a["shadowVersion"].as_str()),
            (Some("1"), Some("2")),
            "{a}"
        );
        let (shadow, want) = (a["shadowScore"].as_f64().unwrap() as f32, expected[key]);
        assert!(
            (shadow - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{key}: the graph's shadow score {shadow}, its own {want}"
        );
    }
}

/// An ONNX version cannot say in its scoring pass which features made a row anomalous; with a
/// reference profile, the predictor explains its flagged events by setting each feature in turn
/// to its training median. The shares it answers are the score's falls computed here from the
/// graph and the reference data, the pushed sensor comes first, and past `--explain-budget-rows`
/// flagged events go unexplained and are counted.
#[tokio::test]
async fn an_onnx_versions_flagged_events_are_explained_by_median_replacement_within_its_budget() {
    use kappa_api::{
        model::{Lineage, ReferenceProfile},
        predictor::{PredictRequest, predictor_client::PredictorClient},
    };
    use kappa_fleet::CAR_FIELDS;
    use kappa_model::example::onnx_autoencoder;

    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let name = unique("onnx-explained");
    let (mut manifest, graph) = onnx_autoencoder(&name, &CAR_FIELDS, &[6], 11);
    let features = CAR_FIELDS.len();
    // The training data: every feature a little above 1.
    let normal = |i: usize, f: usize| 1.0 + ((i * 7 + f * 3) % 11) as f64 * 0.02;
    let reference: Vec<Vec<f64>> = (0..features)
        .map(|f| (0..501).map(|i| normal(i, f)).collect())
        .collect();
    manifest.lineage = Some(Lineage {
        reference: Some(ReferenceProfile {
            features: CAR_FIELDS
                .iter()
                .zip(&reference)
                .map(|(path, values)| kappa_model::drift::of(path, values.iter().copied()).unwrap())
                .collect(),
            ..ReferenceProfile::default()
        }),
        ..Lineage::default()
    });
    let medians: Vec<f32> = reference
        .iter()
        .map(|values| {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            sorted[sorted.len() / 2] as f32
        })
        .collect();
    let graph_model = kappa_model::admission::load(&manifest, &graph).unwrap().model;
    let normal_rows: Vec<f32> = (0..200)
        .flat_map(|i| (0..features).map(move |f| normal(i, f) as f32))
        .collect();
    let highest_normal = graph_model
        .score(&normal_rows)
        .unwrap()
        .into_iter()
        .fold(0.0_f32, f32::max);
    manifest.anomaly_threshold = f64::from(highest_normal) * 2.0;
    publish(&mut client, &manifest, &graph, "").await.unwrap();

    // Ten flagged events' worth of rows a second.
    let predictor = PredictorSetup::new(&setup.topic, &name, "latest")
        .arg(format!("--explain-budget-rows={}", features * 10))
        .start()
        .await;
    // The falls of the score, one feature at its median at a time, over their sum.
    let shares_by_median_replacement = |row: &[f32]| -> Vec<f32> {
        let score = graph_model.score(row).unwrap()[0];
        let falls: Vec<f32> = (0..features)
            .map(|j| {
                let mut at_median = row.to_vec();
                at_median[j] = medians[j];
                (score - graph_model.score(&at_median).unwrap()[0]).max(0.0)
            })
            .collect();
        let total: f32 = falls.iter().sum();
        falls.iter().map(|fall| fall / total).collect()
    };
    let mut typed = PredictorClient::new(predictor.channel().await);
    let started = Instant::now();
    let (mut explained, mut unexplained) = (0, 0);
    let mut events = Vec::new();
    for i in 0..40 {
        // One sensor far off its usual value: anomalous for the graph.
        let pushed = i % features;
        let mut row: Vec<f32> = (0..features).map(|f| normal(i, f) as f32).collect();
        row[pushed] = 6.0;
        let event: serde_json::Map<String, Value> = CAR_FIELDS
            .iter()
            .zip(&row)
            .map(|(p, v)| ((*p).to_owned(), serde_json::json!(f64::from(*v))))
            .collect();
        events.push((format!("unit{i}"), serde_json::to_vec(&event).unwrap()));
        let answer = typed
            .predict(PredictRequest {
                features: CAR_FIELDS
                    .iter()
                    .map(|p| (*p).to_owned())
                    .zip(row.iter().map(|v| f64::from(*v)))
                    .collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            answer.is_anomaly,
            "row {i} (feature {pushed} pushed) scored {}",
            answer.score
        );
        if answer.explanation.is_empty() {
            unexplained += 1;
            continue;
        }
        explained += 1;
        let shares = shares_by_median_replacement(&row);
        assert_eq!(
            answer.explanation[0].feature, CAR_FIELDS[pushed],
            "row {i}: {:?}",
            answer.explanation
        );
        for contribution in &answer.explanation {
            let j = CAR_FIELDS.iter().position(|p| *p == contribution.feature).unwrap();
            assert!(
                (contribution.share - f64::from(shares[j])).abs() < 1e-4,
                "row {i}, {}: answered {}, falls give {}",
                contribution.feature,
                contribution.share,
                shares[j]
            );
        }
    }
    // The budget: ten at once, then ten a second.
    let allowed = 10 + (started.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        explained >= 10 && explained <= allowed,
        "{explained} explained of 40 ({allowed} allowed)"
    );
    assert_eq!(explained + unexplained, 40);
    let skipped = predictor
        .metric("kappa_predictor_explanations_skipped_total{reason=\"budget\"}")
        .await
        .unwrap_or(0.0);
    assert_eq!(
        skipped as usize, unexplained,
        "every flagged event over the budget is counted"
    );

    // OIP: the graph's request names the `explanation` output (listed in its metadata); the
    // flagged rows carry the same shares, the normal row NaN. A second refills the budget.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut oip_client = GrpcInferenceServiceClient::new(predictor.channel().await);
    let metadata = wait_for_metadata(&mut oip_client, &name, 1).await;
    let listed = metadata.outputs.iter().find(|o| o.name == "explanation");
    assert_eq!(
        listed.map(|o| (o.datatype.as_str(), o.shape.clone())),
        Some(("FP32", vec![-1, features as i64])),
        "{metadata:?}"
    );
    let mut rows: Vec<Vec<f32>> = (0..3)
        .map(|i| (0..features).map(|f| normal(i, f) as f32).collect())
        .collect();
    rows[1][2] = 6.0;
    rows[2][5] = 6.0;
    let mut request = kappa_client::oip::infer_request(&name, rows.concat(), features);
    request.outputs = ["score", "explanation"]
        .map(|n| oip::model_infer_request::InferRequestedOutputTensor {
            name: n.into(),
            ..Default::default()
        })
        .into();
    let answer = oip_client.model_infer(request).await.unwrap().into_inner();
    let explanation = answer
        .outputs
        .iter()
        .find(|o| o.name == "explanation")
        .expect("explanation output");
    assert_eq!(explanation.shape, vec![3, features as i64]);
    let got = output_values(explanation);
    assert!(
        got[..features].iter().all(|s| s.is_nan()),
        "a normal row is not explained: {got:?}"
    );
    for r in 1..3 {
        let want = shares_by_median_replacement(&rows[r]);
        for (j, (g, w)) in got[r * features..(r + 1) * features].iter().zip(&want).enumerate() {
            assert!(
                (g - f64::from(*w)).abs() < 1e-4,
                "row {r}, feature {j}: answered {g}, falls give {w}"
            );
        }
    }

    // A backtest of the same 40 events names, for each pushed sensor, the events it was pushed
    // in: every flagged event explained offline, with no budget.
    let topic = unique("test.onnx-explained-events");
    create_topic_with_partitions(&topic, 1).await;
    produce_keyed(&topic, &events).await;
    let json = run_ok(
        kappa_backtest(&registry.address, &name, "1", &topic).args(["--output", "json"]),
        "kappa backtest",
    );
    let report: Value = serde_json::from_str(&json).unwrap();
    let version = &report["versions"][0];
    assert_eq!(version["anomalies"], 40, "{version}");
    let mut blamed: Vec<(String, u64)> = version["top_features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["feature"].as_str().unwrap().to_owned(),
                t["flagged_events"].as_u64().unwrap(),
            )
        })
        .collect();
    blamed.sort();
    let mut pushed: Vec<(String, u64)> = CAR_FIELDS
        .iter()
        .enumerate()
        .map(|(j, p)| ((*p).to_owned(), (0..40).filter(|i| i % features == j).count() as u64))
        .collect();
    pushed.sort();
    assert_eq!(blamed, pushed, "{version}");
}
