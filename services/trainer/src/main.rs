use std::process::ExitCode;

use kappa_runtime::{ServiceStart, service_main};
use kappa_trainer::{TrainerConfig, run};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match kappa_runtime::parse_config::<TrainerConfig>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let start = ServiceStart {
        name: "kappa-trainer",
        validation: config
            .kafka
            .validate()
            .and_then(|()| config.security.check())
            .and_then(|()| config.registry_security().map(|_| ())),
        check_config: config.check_config,
        summary: format!(
            "{} {} registry={} jobs_topic={} max_concurrent_jobs={}",
            config.kafka.summary(),
            config.security.summary(),
            config.registry,
            config.jobs_topic,
            config.max_concurrent_jobs
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
