//! gRPC: health and readiness, the registry client and its calls, grpcurl, OIP metadata.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use kappa_api::{
    model::ModelManifest,
    registry::{self as pb, registry_client::RegistryClient},
};
use kappa_client::TracedChannel;
use tonic::{Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use super::*;

pub use tonic_health::pb::health_check_response::ServingStatus as HealthStatus;

/// One grpc.health.v1 check of `service_name`; None when the call fails.
pub async fn health_status(service: &Service, service_name: &str) -> Option<HealthStatus> {
    let channel = Channel::from_shared(service.address.clone())
        .unwrap()
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service_name.to_owned(),
        })
        .await
        .ok()?;
    HealthStatus::try_from(response.into_inner().status).ok()
}

/// Polls grpc.health.v1 until `service_name` is SERVING (bounded: 60 s).
pub async fn wait_serving(service: &Service, service_name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = Channel::from_shared(service.address.clone()).unwrap().connect().await {
            let mut health = HealthClient::new(channel);
            if let Ok(r) = health
                .check(HealthCheckRequest {
                    service: service_name.to_owned(),
                })
                .await
                && r.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{service_name} at {} not SERVING within 60 s; log:\n{}",
            service.address,
            service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn registry_client(service: &Service) -> RegistryClient<TracedChannel> {
    kappa_client::Registry::connect(&service.address)
        .await
        .unwrap()
        .rpc()
        .clone()
}

/// Publishes with the project's one registry client (a streamed header, then 1 MiB chunks).
pub async fn publish(
    client: &mut RegistryClient<TracedChannel>,
    manifest: &ModelManifest,
    weights: &[u8],
    key: &str,
) -> Result<pb::PublishResponse, Status> {
    kappa_client::Registry::from(client.clone())
        .publish(manifest, weights, key)
        .await
}

/// The version numbers the registry lists for `name`.
pub async fn listed_versions(client: &mut RegistryClient<TracedChannel>, name: &str) -> Vec<u64> {
    client
        .list_versions(pb::ListVersionsRequest { name: name.to_owned() })
        .await
        .unwrap()
        .into_inner()
        .versions
        .iter()
        .map(|v| v.version)
        .collect()
}

/// Points `alias` of `name` at `version`.
pub async fn set_alias(
    client: &mut RegistryClient<TracedChannel>,
    name: &str,
    alias: &str,
    version: u64,
) -> Result<(), Status> {
    client
        .set_alias(pb::SetAliasRequest {
            name: name.to_owned(),
            alias: alias.to_owned(),
            version,
            effective_from_ms: 0,
        })
        .await
        .map(drop)
}

/// A version and its weights through the project's registry client; a digest mismatch fails
/// the test, any other error is the registry's status.
pub async fn get_model(
    client: &mut RegistryClient<TracedChannel>,
    name: &str,
    selector: Option<pb::get_model_request::Selector>,
) -> Result<(pb::ModelVersion, Vec<u8>), Status> {
    use kappa_client::{GetError, Selector};
    let selector = match selector {
        None => Selector::Latest,
        Some(pb::get_model_request::Selector::Version(v)) => Selector::Version(v),
        Some(pb::get_model_request::Selector::Alias(a)) => Selector::Alias(a),
    };
    match kappa_client::Registry::from(client.clone()).get(name, selector).await {
        Ok(got) => Ok(got),
        Err(GetError::Status(status)) => Err(status),
        Err(other) => panic!("GetModel {name}: {other}"),
    }
}

pub fn by_version(v: u64) -> Option<pb::get_model_request::Selector> {
    Some(pb::get_model_request::Selector::Version(v))
}

pub fn by_alias(a: &str) -> Option<pb::get_model_request::Selector> {
    Some(pb::get_model_request::Selector::Alias(a.to_owned()))
}

/// grpcurl, installed by `scripts/tools.sh` (which `make test` runs).
pub fn grpcurl() -> PathBuf {
    let path = std::env::var_os("KAPPA_GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kappa/bin/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl is missing at {}: run scripts/tools.sh (make test does)",
        path.display()
    );
    path
}

/// Runs `grpcurl -plaintext [-d DATA] ADDRESS COMMAND` against `service` and returns stdout;
/// panics with grpcurl's stderr when it fails.
pub fn run_grpcurl(service: &Service, data: Option<&str>, command: &str) -> String {
    let mut cmd = Command::new(grpcurl());
    cmd.arg("-plaintext");
    if let Some(data) = data {
        cmd.args(["-d", data]);
    }
    run_ok(
        cmd.arg(service.address.trim_start_matches("http://")).arg(command),
        &format!("grpcurl {command}"),
    )
}

/// The messages of a Publish stream (a header, then 1 MiB chunks), for tests that drive the raw
/// RPC (stalls, floods, cancellations).
pub fn publish_messages(manifest: &ModelManifest, weights: &[u8], key: &str) -> Vec<pb::PublishRequest> {
    use pb::publish_request::Part;
    let header = pb::PublishRequest {
        part: Some(Part::Header(pb::PublishHeader {
            manifest: Some(manifest.clone()),
            idempotency_key: key.to_owned(),
            ..Default::default()
        })),
    };
    std::iter::once(header)
        .chain(weights.chunks(1024 * 1024).map(|c| pb::PublishRequest {
            part: Some(Part::Chunk(c.to_vec())),
        }))
        .collect()
}

/// The version's feature paths in input-column order, as ModelMetadata gives them to OIP clients.
pub async fn oip_feature_columns(
    oip: &mut kappa_api::inference::grpc_inference_service_client::GrpcInferenceServiceClient<TracedChannel>,
    model: &str,
) -> Vec<String> {
    use kappa_api::inference::{ModelMetadataRequest, infer_parameter::ParameterChoice};
    let metadata = oip
        .model_metadata(ModelMetadataRequest {
            name: model.to_owned(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    match metadata
        .parameters
        .get("features_json")
        .and_then(|p| p.parameter_choice.clone())
    {
        Some(ParameterChoice::StringParam(json)) => serde_json::from_str(&json).unwrap(),
        other => panic!("ModelMetadata has no features_json parameter: {other:?}"),
    }
}
