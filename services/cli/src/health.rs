//! `kappa health URL`: one grpc.health.v1 check through the project's client (TLS, client
//! certificate, token), for exec probes where the kubelet's own gRPC probe cannot do TLS.

use std::time::Duration;

use clap::Args;
use kappa_client::ClientSecurity;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The service's URL, e.g. https://127.0.0.1:50051.
    url: String,
    /// The grpc.health.v1 service name to ask: `liveness` (the process serves), or the
    /// service's own name for readiness (e.g. kappa.registry.v1.Registry).
    #[arg(long, default_value = "liveness")]
    service: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 2.0)]
    timeout_seconds: f64,
}

pub async fn run(args: HealthArgs, security: &ClientSecurity) -> anyhow::Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout_seconds)
        .map_err(|_| anyhow::anyhow!("--timeout-seconds must be a positive number"))?;
    let check = async {
        let channel = kappa_client::connect_with("the service", &args.url, security).await?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
        anyhow::Ok(answer.into_inner().status)
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within {timeout:?}", args.url))??;
    anyhow::ensure!(
        status == ServingStatus::Serving as i32,
        "{} reports {} for {:?}",
        args.url,
        ServingStatus::try_from(status).map_or("an unknown status", |s| s.as_str_name()),
        args.service
    );
    println!("{} serves {:?}", args.url, args.service);
    Ok(())
}
