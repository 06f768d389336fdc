//! OpenTelemetry across the mesh, read back from a real Jaeger's HTTP API: W3C trace context
//! through gRPC metadata and Kafka headers, and one trace per model journey.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use kappa_api::{
    predictor::{PredictRequest, predictor_client::PredictorClient},
    trainer::{JobPhase, StartTrainingRequest},
};
use kappa_fleet::{CAR_FIELDS, car_autoencoder};
use kappa_model::example::random_weights;
use rdkafka::{
    ClientConfig, Message as _,
    consumer::{Consumer, StreamConsumer},
    message::{Header, Headers as _, OwnedHeaders},
    producer::{FutureProducer, FutureRecord},
};
use serde_json::Value;

use crate::{
    support::*,
    trainer::{spec, trainer_client, wait_done},
};

#[derive(Debug, Clone)]
pub(crate) struct SpanInfo {
    pub(crate) id: String,
    pub(crate) parent: Option<String>,
    pub(crate) operation: String,
    pub(crate) service: String,
    pub(crate) tags: BTreeMap<String, Value>,
}

#[derive(Debug)]
pub(crate) struct Trace(Vec<SpanInfo>);

impl Trace {
    fn parse(body: &str) -> Option<Self> {
        let json: Value = serde_json::from_str(body).ok()?;
        let trace = json["data"].as_array()?.first()?;
        let services: BTreeMap<&str, &str> = trace["processes"]
            .as_object()?
            .iter()
            .filter_map(|(id, p)| Some((id.as_str(), p["serviceName"].as_str()?)))
            .collect();
        let spans = trace["spans"]
            .as_array()?
            .iter()
            .map(|s| SpanInfo {
                id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                parent: s["references"].as_array().and_then(|refs| {
                    refs.iter()
                        .find(|r| r["refType"] == "CHILD_OF")
                        .and_then(|r| r["spanID"].as_str().map(str::to_owned))
                }),
                operation: s["operationName"].as_str().unwrap_or_default().to_owned(),
                tags: s["tags"]
                    .as_array()
                    .map(|tags| {
                        tags.iter()
                            .filter_map(|t| Some((t["key"].as_str()?.to_owned(), t["value"].clone())))
                            .collect()
                    })
                    .unwrap_or_default(),
                service: s["processID"]
                    .as_str()
                    .and_then(|p| services.get(p))
                    .copied()
                    .unwrap_or_default()
                    .to_owned(),
            })
            .collect();
        Some(Self(spans))
    }

    /// The one span of `service` named `operation` (panics, with the trace, when not exactly one).
    pub(crate) fn one(&self, service: &str, operation: &str) -> &SpanInfo {
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|s| s.service == service && s.operation == operation)
            .collect();
        assert_eq!(found.len(), 1, "{service}/{operation} in {:#?}", self.0);
        found[0]
    }

    pub(crate) fn has(&self, service: &str, operation: &str) -> bool {
        self.0.iter().any(|s| s.service == service && s.operation == operation)
    }

    fn assert_child(&self, child: &SpanInfo, parent: &SpanInfo) {
        assert_eq!(
            child.parent.as_deref(),
            Some(parent.id.as_str()),
            "{}/{} should be a child of {}/{}; trace: {:#?}",
            child.service,
            child.operation,
            parent.service,
            parent.operation,
            self.0
        );
    }
}

/// Polls Jaeger until the trace holds what `complete` wants (bounded: 60 s, past the exporters'
/// 30 s timeout).
pub(crate) async fn jaeger_trace(trace_id: &str, complete: impl Fn(&Trace) -> bool) -> Trace {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = http_get(&jaeger_api(), &format!("/api/traces/{trace_id}")).await;
        let trace = if status == 200 { Trace::parse(&body) } else { None };
        // Name what did arrive (service/operation), so a failure says which span is missing.
        let arrived: Vec<String> = match trace {
            Some(trace) if complete(&trace) => return trace,
            Some(trace) => trace
                .0
                .iter()
                .map(|s| format!("{}/{}", s.service, s.operation))
                .collect(),
            None => Vec::new(),
        };
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} incomplete in Jaeger after 60 s; HTTP {status}; spans that arrived: \
             {arrived:?}; answer: {}",
            body.chars().take(2000).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn with_traceparent<T>(message: T, traceparent: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test]
async fn a_models_journey_is_one_trace_from_the_training_call_to_every_predictors_swap() {
    let setup = RegistrySetup::new().traced().arg("--log-format=json");
    let registry = setup.start().await;
    let predictors: Vec<Predictor> = (0..2)
        .map(|_| PredictorSetup::new(&setup.topic, "journey", "latest").traced().spawn())
        .collect();
    let trainer = TrainerSetup::new(&registry).envs(&tracing_env()).start().await;
    let topic = unique("test.traced-fleet");
    run_fleet(
        &topic,
        &[
            "--cars",
            "5",
            "--events",
            "600",
            "--rate",
            "0",
            "--backdate-seconds",
            "600",
        ],
    );

    let (traceparent, trace_id, client_span) = new_traceparent();
    let mut client = trainer_client(&trainer).await;
    let job = client
        .start_training(with_traceparent(
            StartTrainingRequest {
                spec: Some(spec("journey", &topic, 0, i64::MAX / 2)),
            },
            &traceparent,
        ))
        .await
        .unwrap()
        .into_inner();
    let done = wait_done(&mut client, &job.job_id, Duration::from_secs(120)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    // The lineage names the trace of the job that produced the model.
    let lineage_trace = &done.lineage.as_ref().unwrap().trace_context;
    assert!(
        lineage_trace["traceparent"].contains(&trace_id),
        "{lineage_trace:?} should continue trace {trace_id}"
    );

    // Services export on their own schedules (a predictor may swap before the registry's
    // Publish span has even ended), so wait until every expected span has arrived.
    let trace = jaeger_trace(&trace_id, |t| {
        t.0.iter()
            .filter(|s| s.service == "kappa-predictor" && s.operation == "swap")
            .count()
            == predictors.len()
            && t.has("kappa-registry", "kafka.transaction")
            && t.has("kappa-registry", "kappa.registry.v1.Registry/Publish")
            && t.has("kappa-trainer", "training_job")
            && t.has("kappa-trainer", "kappa.trainer.v1.Trainer/StartTraining")
    })
    .await;
    // The search API finds the same trace from any of the three services.
    for service in ["kappa-trainer", "kappa-registry", "kappa-predictor"] {
        let (_, body) = http_get(
            &jaeger_api(),
            &format!("/api/traces?service={service}&lookback=1h&limit=1000"),
        )
        .await;
        assert!(body.contains(&trace_id), "{service}'s traces lack {trace_id}");
    }
    let services: BTreeSet<&str> = trace.0.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["kappa-predictor", "kappa-registry", "kappa-trainer"])
    );

    let call = trace.one("kappa-trainer", "kappa.trainer.v1.Trainer/StartTraining");
    assert_eq!(
        call.parent.as_deref(),
        Some(client_span.as_str()),
        "the caller's span is the parent"
    );
    let job_span = trace.one("kappa-trainer", "training_job");
    trace.assert_child(job_span, call);
    let round = trace.one("kappa-trainer", "training_round");
    trace.assert_child(round, job_span);
    for phase in ["read_kafka", "train", "evaluate", "publish"] {
        trace.assert_child(trace.one("kappa-trainer", phase), round);
    }
    let publish_client = trace.one("kappa-trainer", "kappa.registry.v1.Registry/Publish");
    trace.assert_child(publish_client, trace.one("kappa-trainer", "publish"));
    let publish_server = trace.one("kappa-registry", "kappa.registry.v1.Registry/Publish");
    trace.assert_child(publish_server, publish_client);
    let transaction = trace.one("kappa-registry", "kafka.transaction");
    trace.assert_child(transaction, publish_server);

    let loads: Vec<&SpanInfo> = trace
        .0
        .iter()
        .filter(|s| s.service == "kappa-predictor" && s.operation == "model.load")
        .collect();
    assert_eq!(loads.len(), predictors.len(), "one load per predictor: {:#?}", trace.0);
    for load in loads {
        trace.assert_child(load, transaction);
        for step in ["verify", "build", "warm_up", "swap"] {
            let steps: Vec<&SpanInfo> = trace
                .0
                .iter()
                .filter(|s| s.operation == step && s.parent.as_deref() == Some(load.id.as_str()))
                .collect();
            assert_eq!(steps.len(), 1, "{step} under load {}: {:#?}", load.id, trace.0);
        }
    }
    // Log lines name their trace: the registry logs JSON, the trainer text.
    let publish_line = registry
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "published a new model version")
        .expect("the registry logged the publish as a JSON line");
    assert_eq!(publish_line["trace_id"], trace_id.as_str(), "{publish_line}");
    let trainer_log = trainer.log_text();
    let published = trainer_log
        .lines()
        .find(|l| l.contains("published a trained model"))
        .expect("the trainer logged the publish");
    assert!(published.ends_with(&format!("trace_id={trace_id}")), "{published}");

    // Both replicas serve what they loaded.
    for predictor in &predictors {
        wait_serving(&predictor.service, "kappa.predictor.v1.Predictor").await;
        assert_eq!(
            predictor.metric("kappa_predictor_loaded_version").await,
            Some(done.published_version as f64)
        );
    }
}

#[tokio::test]
async fn a_predict_call_and_a_sensor_event_continue_their_callers_traces() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let m = car_autoencoder("traced", &[8]);
    publish(&mut registry_client(&registry).await, &m, &random_weights(&m, 1), "")
        .await
        .unwrap();
    let sensors = unique("test.traced-sensors");
    let predictions = unique("test.traced-predictions");
    create_topic(&sensors, &[]).await;
    create_topic(&predictions, &[]).await;
    let predictor = PredictorSetup::new(&setup.topic, "traced", "latest")
        .traced()
        .stream(&sensors, &predictions)
        .start()
        .await;

    // gRPC: the client's span is the parent of the predictor's server span.
    let (traceparent, trace_id, client_span) = new_traceparent();
    let request = PredictRequest {
        features: CAR_FIELDS.iter().map(|f| ((*f).to_owned(), 1.0)).collect(),
        ..Default::default()
    };
    let mut client = PredictorClient::new(predictor.channel().await);
    let answer = client
        .predict(with_traceparent(request.clone(), &traceparent))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.model_version, 1);
    // A call without trace context starts a trace of its own, not anyone else's.
    client.predict(request).await.unwrap();
    let trace = jaeger_trace(&trace_id, |t| {
        t.has("kappa-predictor", "kappa.predictor.v1.Predictor/Predict")
    })
    .await;
    let server = trace.one("kappa-predictor", "kappa.predictor.v1.Predictor/Predict");
    assert_eq!(server.parent.as_deref(), Some(client_span.as_str()));
    assert_eq!(
        trace.0.len(),
        1,
        "only the traced call is in this trace: {:#?}",
        trace.0
    );

    // Kafka: an event with a traceparent yields a prediction whose headers continue the trace.
    let (traceparent, trace_id, producer_span) = new_traceparent();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let mut body: serde_json::Map<String, Value> = CAR_FIELDS
        .iter()
        .map(|f| ((*f).to_owned(), serde_json::json!(1.5)))
        .collect();
    body.insert("time".into(), serde_json::json!(1_700_000_000));
    let payload = serde_json::to_vec(&body).unwrap();
    producer
        .send(
            FutureRecord::to(&sensors)
                .key("car-7")
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(traceparent.as_str()),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::to(&sensors).key("car-8").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("test-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&predictions]).unwrap();
    let mut headers_by_car = BTreeMap::new();
    while headers_by_car.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("no prediction within 60 s")
            .unwrap();
        let car = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let traceparent = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "traceparent")
                .and_then(|h| h.value.map(|v| String::from_utf8(v.to_vec()).unwrap()))
        });
        let prediction: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        assert_eq!(prediction["error"].as_str().unwrap_or(""), "", "{prediction}");
        headers_by_car.insert(car, traceparent);
    }
    assert_eq!(
        headers_by_car["car-8"], None,
        "an untraced event yields an untraced prediction"
    );
    let continued = headers_by_car["car-7"]
        .clone()
        .expect("the prediction carries a traceparent");
    let parts: Vec<&str> = continued.split('-').collect();
    assert_eq!(parts.len(), 4, "{continued}");
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(parts[2], producer_span, "its own span: the prediction's");
    let trace = jaeger_trace(&trace_id, |t| t.has("kappa-predictor", "score_event")).await;
    let scored = trace.one("kappa-predictor", "score_event");
    assert_eq!(scored.id, parts[2], "the header names the scoring span");
    assert_eq!(scored.parent.as_deref(), Some(producer_span.as_str()));
}

#[tokio::test]
async fn a_cli_command_is_one_trace_through_the_service_it_calls() {
    let registry = RegistrySetup::new().traced().start().await;
    let marker = unique("traced-cli");
    // Jaeger may hold traces of earlier runs: only this run's count.
    let since_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let out = std::process::Command::new(binary("kappa"))
        .args(["models", "--registry", &registry.address, "versions", &marker])
        .envs(tracing_env())
        .output()
        .unwrap();
    // The model does not exist; the call is traced whatever it answers.
    assert!(out.status.code().is_some(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http_get(
            &jaeger_api(),
            "/api/traces?service=kappa-cli&operation=kappa%20models&limit=50&lookback=1h",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let json: Value = serde_json::from_str(&body).unwrap();
        let found = json["data"].as_array().unwrap().iter().find_map(|t| {
            let recent = t["spans"]
                .as_array()?
                .iter()
                .all(|s| s["startTime"].as_u64() >= Some(since_us));
            if !recent {
                return None;
            }
            let trace = Trace::parse(&format!("{{\"data\":[{t}]}}"))?;
            let server = trace
                .0
                .iter()
                .find(|s| s.service == "kappa-registry" && s.operation == "kappa.registry.v1.Registry/ListVersions")?
                .clone();
            Some((trace, server))
        });
        if let Some((trace, server)) = found {
            let command = trace.one("kappa-cli", "kappa models");
            let client = trace.one("kappa-cli", "kappa.registry.v1.Registry/ListVersions");
            trace.assert_child(client, command);
            trace.assert_child(&server, client);
            // Both ends record the call's final gRPC status (from the trailers of a complete
            // response, or the headers of a trailers-only error), and agree on it.
            let code = &server.tags["rpc.grpc.status_code"];
            assert!(code.is_i64(), "{:?}", server.tags);
            assert_eq!(&client.tags["rpc.grpc.status_code"], code);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no kappa-cli trace reached the registry: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
