use clap::Args;
use rdkafka::ClientConfig;

/// The Kafka flags every Kappa binary takes, with their `KAPPA_*` environment equivalents.
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port pairs.
    #[arg(
        long = "kafka-bootstrap",
        env = "KAPPA_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,

    /// Any librdkafka property as KEY=VALUE, e.g. security.protocol=SASL_SSL or
    /// sasl.mechanism=SCRAM-SHA-512. Repeatable; in the environment, comma-separated.
    #[arg(
        long = "kafka-property",
        env = "KAPPA_KAFKA_PROPERTIES",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = parse_property
    )]
    pub properties: Vec<(String, String)>,
}

fn parse_property(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{raw:?} is not KEY=VALUE (for example security.protocol=SSL)")),
    }
}

impl KafkaArgs {
    pub fn for_bootstrap(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            properties: Vec::new(),
        }
    }

    /// A client configuration with the bootstrap servers and every passthrough property.
    /// Passthrough properties come last so an operator can override any default Kappa sets.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// Like [`Self::client_config`], with Kappa's defaults applied first.
    pub fn client_config_with(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }

    /// Property names only: values may hold secrets (sasl.password) and must never be logged.
    pub fn property_names(&self) -> Vec<&str> {
        self.properties.iter().map(|(k, _)| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_and_override_defaults() {
        assert_eq!(parse_property("a.b = c").unwrap(), ("a.b".into(), "c".into()));
        assert!(parse_property("novalue").is_err());
        let args = KafkaArgs {
            bootstrap: "k:9092".into(),
            properties: vec![("acks".into(), "1".into())],
        };
        let config = args.client_config_with(&[("acks", "all"), ("linger.ms", "5")]);
        assert_eq!(config.get("acks"), Some("1"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
    }
}
