use std::process::ExitCode;

use kappa_bridge::{BridgeConfig, run};
use kappa_runtime::{ServiceStart, service_main};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match kappa_runtime::parse_config::<BridgeConfig>() {
        Ok(config) => config,
        Err(code) => return code,
    };
    let start = ServiceStart {
        name: "kappa-bridge",
        validation: config
            .kafka
            .validate()
            .and_then(|()| config.security.check())
            .and_then(|()| config.validate()),
        check_config: config.check_config,
        summary: format!(
            "{} {} mqtt={} topic={} share_group={} client_id={} sensor_topic={} dead_letter_topic={} max_in_flight={}",
            config.kafka.summary(),
            config.security.summary(),
            config.mqtt_url,
            config.mqtt_topic,
            config.mqtt_share_group,
            config.client_id(),
            config.sensor_topic,
            config.dead_letter_topic,
            config.max_in_flight
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
