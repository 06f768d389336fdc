//! Security: signing keys, the secure broker's principals, the secure MQTT broker.

use std::{path::PathBuf, process::Command};

use rdkafka::ClientConfig;

use super::*;

/// A signing key pair made by `kappa keys new` in `dir`: (private key, public key) paths.
pub fn signing_keys(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let made = Command::new(binary("kappa"))
        .args(["keys", "new", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    (dir.join("kappa-signing.key"), dir.join("kappa-signing.pub.pem"))
}

/// The secure local broker (`make kafka-secure-up`, which `make test` starts): its bootstrap and
/// the directory of its principals' librdkafka property files.
pub fn secure_broker() -> (String, PathBuf) {
    let bootstrap = std::env::var("KAPPA_TEST_SECURE_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9094".to_owned());
    let clients = std::env::var_os("KAPPA_TEST_SECURE_KAFKA_CLIENTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/.state-secure/clients"));
    assert!(
        clients.join("registry.properties").exists() && std::net::TcpStream::connect(&bootstrap).is_ok(),
        "the secure broker is not running at {bootstrap} with its clients in {}: run `make kafka-secure-up` (make test does)",
        clients.display()
    );
    (bootstrap, clients)
}

/// A plain librdkafka client configuration for `bootstrap` from a properties file, read here
/// independently of Kappa's own parsing.
pub fn client_config_from(bootstrap: &str, properties: &std::path::Path) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for line in std::fs::read_to_string(properties).unwrap().lines() {
        let line = line.trim();
        if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
            config.set(k.trim(), v.trim());
        }
    }
    config
}

/// The local MQTT broker's TLS listener (`make mqtt-up`): its URL, its CA and the directory of
/// the users' password files (`bridge.password`, `fleet.password`).
pub fn secure_mqtt() -> (String, PathBuf, PathBuf) {
    let port = std::env::var("KAPPA_TEST_MQTT_TLS_PORT").unwrap_or_else(|_| "8883".to_owned());
    let state = std::env::var_os("KAPPA_TEST_MQTT_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/mqtt/.state"));
    let (ca, clients) = (state.join("tls/ca.pem"), state.join("clients"));
    assert!(
        ca.exists() && std::net::TcpStream::connect(format!("127.0.0.1:{port}")).is_ok(),
        "the MQTT broker's TLS listener is not up on 127.0.0.1:{port} with its CA at {}: run `make mqtt-up` (make test does)",
        ca.display()
    );
    (format!("mqtts://127.0.0.1:{port}"), ca, clients)
}
