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

    /// A file of librdkafka properties, one KEY=VALUE per line (`#` starts a comment), e.g. a
    /// mounted Kubernetes Secret with credentials. --kafka-property wins over the file.
    #[arg(
        long = "kafka-properties-file",
        env = "KAPPA_KAFKA_PROPERTIES_FILE",
        value_name = "PATH"
    )]
    pub properties_file: Option<std::path::PathBuf>,

    /// SASL user name (sets sasl.username); pair it with a security.protocol of SASL_SSL or
    /// SASL_PLAINTEXT and a sasl.mechanism.
    #[arg(long = "kafka-sasl-username", env = "KAPPA_KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password (sets sasl.password). Prefer the environment variable, filled from a
    /// secret, to the flag, which other users of the machine can see.
    #[arg(
        long = "kafka-sasl-password",
        env = "KAPPA_KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,
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
            properties_file: None,
            sasl_username: None,
            sasl_password: None,
        }
    }

    /// Checks what can be checked before connecting: the properties file reads and parses.
    pub fn validate(&self) -> Result<(), String> {
        self.file_properties().map(|_| ())
    }

    fn file_properties(&self) -> Result<Vec<(String, String)>, String> {
        let Some(path) = &self.properties_file else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --kafka-properties-file {}: {e}", path.display()))?;
        text.lines()
            .map(str::trim)
            .enumerate()
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
            .map(|(i, line)| parse_property(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
            .collect()
    }

    /// Every passthrough property, in the order they apply: the file, the SASL credentials,
    /// then --kafka-property.
    fn all_properties(&self) -> Vec<(String, String)> {
        let mut all = self.file_properties().unwrap_or_default();
        if let Some(user) = &self.sasl_username {
            all.push(("sasl.username".into(), user.clone()));
        }
        if let Some(password) = &self.sasl_password {
            all.push(("sasl.password".into(), password.clone()));
        }
        all.extend(self.properties.iter().cloned());
        all
    }

    /// The connection settings, parsed once: the bootstrap servers and the operator's
    /// properties (the file, the SASL credentials, then --kafka-property).
    pub fn clients(&self) -> Result<KafkaClients, String> {
        self.validate()?;
        Ok(KafkaClients {
            bootstrap: self.bootstrap.clone(),
            properties: self.all_properties(),
        })
    }

    /// `kafka=… properties=[…]` for `--check-config`: property names only, never values.
    pub fn summary(&self) -> String {
        format!("kafka={} properties={:?}", self.bootstrap, self.property_names())
    }

    /// Property names only: values may hold secrets (sasl.password) and must never be logged.
    pub fn property_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.all_properties().into_iter().map(|(k, _)| k).collect();
        names.dedup();
        names
    }
}

/// How every Kappa client reaches Kafka. Each client is configured in three layers: Kappa's
/// defaults for that client (`acks=all`, `linger.ms`, fetch sizes…), then the operator's
/// properties, which override any default, then the few settings the client's correctness rests
/// on (its group id, `isolation.level=read_committed` for a models reader, a transactional id),
/// which nothing overrides.
#[derive(Debug, Clone)]
pub struct KafkaClients {
    bootstrap: String,
    properties: Vec<(String, String)>,
}

/// librdkafka postpones a partition's next fetch by `fetch.queue.backoff.ms` (1 s by default)
/// whenever its local queue is over `queued.min.messages` / `queued.max.messages.kbytes`, that
/// is, whenever the application reads slower than the broker sends for a moment. A reader of a
/// backlog (a training range, a model's chunks, a stream catching up) then stalls a second at a
/// time: training reads ran at half speed, stalled 0.6 s at a time. Kappa's readers ask again
/// after 10 ms; an operator's property still overrides it.
pub const FETCH_QUEUE_BACKOFF: (&str, &str) = ("fetch.queue.backoff.ms", "10");

/// The producers of events and predictions compress their batches with lz4: the car fleet's
/// JSON events take 275 bytes each on the broker's disk instead of 686, on the local and the
/// remote tier alike, and a training read from the remote tier, where the broker copies every
/// byte through its heap, ran 1.3x faster (and a local one 1.03x to 1.1x) than uncompressed. An
/// operator's `compression.type` still wins.
pub const COMPRESSION: (&str, &str) = ("compression.type", "lz4");

impl KafkaClients {
    /// Settings for a plain client at `bootstrap` with no operator properties (tests, tools).
    pub fn plain(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            properties: Vec::new(),
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// A client with Kappa's `defaults`, overridden by the operator's properties.
    pub fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        self.config_with(defaults, &[])
    }

    /// A reader of a compacted log (the models topic, the jobs topic): only committed records,
    /// no offsets committed to a group (each reader positions itself), end-of-partition events.
    /// The readers rely on those, so an operator's properties cannot turn them off.
    ///
    /// A fetch may carry 16 MiB of the partition: the models topic is mostly 1 MiB weight
    /// chunks, and librdkafka's default (1 MiB) made every reader of it (a chunk read, a
    /// follower catching up on a just-published version) take one chunk per round trip. An
    /// operator's `max.partition.fetch.bytes` still wins.
    ///
    /// Every record's CRC-32C (written by the producer, kept by the broker) is checked on the
    /// way in: a weight chunk's bytes are then the ones its Publish hashed, so a GetModel need
    /// not hash the whole model again on every read (its client checks the digest anyway).
    pub fn log_reader(&self, group: &str) -> ClientConfig {
        self.config_with(
            &[
                ("auto.offset.reset", "earliest"),
                // The broker holds an empty fetch this long; it bounds how late a reader learns
                // it has reached the end of the log (start-up replay), not how late it sees new
                // records.
                ("fetch.wait.max.ms", "50"),
                FETCH_QUEUE_BACKOFF,
                ("max.partition.fetch.bytes", "16777216"),
            ],
            &[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("isolation.level", "read_committed"),
                ("enable.partition.eof", "true"),
                ("check.crcs", "true"),
            ],
        )
    }

    /// Like [`Self::config`], then `required` on top: what the client cannot work without.
    pub fn config_with(&self, defaults: &[(&str, &str)], required: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        for (k, v) in required {
            config.set(*k, *v);
        }
        config
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
            properties: vec![("acks".into(), "1".into())],
            ..KafkaArgs::for_bootstrap("k:9092")
        };
        let clients = args.clients().unwrap();
        let config = clients.config_with(&[("acks", "all"), ("linger.ms", "5")], &[("group.id", "mine")]);
        assert_eq!(
            config.get("acks"),
            Some("1"),
            "the operator's property overrides Kappa's default"
        );
        assert_eq!(config.get("linger.ms"), Some("5"), "a default nobody overrides stays");
        assert_eq!(config.get("bootstrap.servers"), Some("k:9092"));
        let pinned = KafkaArgs {
            properties: vec![("group.id".into(), "theirs".into())],
            ..KafkaArgs::for_bootstrap("k:9092")
        };
        let config = pinned.clients().unwrap().config_with(&[], &[("group.id", "mine")]);
        assert_eq!(
            config.get("group.id"),
            Some("mine"),
            "what correctness needs is not overridable"
        );
    }

    #[test]
    fn a_properties_file_and_sasl_credentials_apply_under_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.properties");
        std::fs::write(&path, "# from a secret\nsecurity.protocol=SASL_SSL\n\nacks = 0\n").unwrap();
        let args = KafkaArgs {
            properties: vec![("acks".into(), "1".into())],
            properties_file: Some(path.clone()),
            sasl_username: Some("svc".into()),
            sasl_password: Some("s3cret".into()),
            ..KafkaArgs::for_bootstrap("k:9092")
        };
        assert_eq!(args.validate(), Ok(()));
        let config = args.clients().unwrap().config(&[]);
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.username"), Some("svc"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("acks"), Some("1"), "the flag wins over the file");
        let names = args.property_names();
        assert!(names.contains(&"sasl.password".to_owned()));
        assert!(!format!("{names:?}").contains("s3cret"), "values are never listed");

        std::fs::write(&path, "security.protocol=SSL\nnot a property\n").unwrap();
        let e = args.validate().unwrap_err();
        assert!(e.contains("client.properties:2"), "{e}");
        let missing = KafkaArgs {
            properties_file: Some(dir.path().join("absent")),
            ..KafkaArgs::for_bootstrap("k:9092")
        };
        assert!(
            missing
                .validate()
                .unwrap_err()
                .contains("cannot read --kafka-properties-file")
        );
    }
}
