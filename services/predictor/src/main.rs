use std::process::ExitCode;

use kappa_predictor::{PredictorConfig, run};
use kappa_runtime::{ServiceStart, service_main};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match kappa_runtime::parse_config::<PredictorConfig>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let start = ServiceStart {
        name: "kappa-predictor",
        validation: config.kafka.validate().and_then(|()| config.security.check()),
        check_config: config.check_config,
        summary: format!(
            "{} {} topic={} model={} follow={} max_batch_size={} backend={:?} stream={}",
            config.kafka.summary(),
            config.security.summary(),
            config.models_topic,
            config.model,
            config.follow,
            config.max_batch_size,
            config.backend,
            config.stream
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
