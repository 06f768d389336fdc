use std::process::ExitCode;

use kappa_registry::{RegistryConfig, run};
use kappa_runtime::{ServiceStart, service_main};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match kappa_runtime::parse_config::<RegistryConfig>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let start = ServiceStart {
        name: "kappa-registry",
        validation: config.validate().and_then(|()| config.security.check()),
        check_config: config.check_config,
        summary: format!(
            "{} {} topic={} transactional_id={}",
            config.kafka.summary(),
            config.security.summary(),
            config.models_topic,
            config.transactional_id
        ),
        log: &config.log.clone(),
        listen: config.listen,
        metrics_listen: config.metrics_listen,
    };
    service_main(start, |listener, metrics, shutdown| {
        run(config, listener, metrics, shutdown)
    })
    .await
}
