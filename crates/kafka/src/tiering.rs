//! How Kappa creates the topics it writes events and predictions to: with Kafka tiered storage
//! (KIP-405) by default, so months of history stay readable without filling the brokers' disks.
//! The broker copies each closed segment to its remote tier, keeps only `local.retention.ms` of
//! them on its own disk, and serves reads of older offsets from the remote tier; clients see
//! one log. Compacted topics (models, jobs) are never tiered: the broker refuses to tier them.

use std::time::Duration;

use clap::{ArgAction, Args};

/// The topic flags of the binaries that create event or prediction topics.
#[derive(Debug, Clone, Args)]
pub struct TieringArgs {
    /// Create event and prediction topics with Kafka tiered storage (remote.storage.enable=true):
    /// closed segments move to the broker's remote tier and are read back transparently, so
    /// training can read months of history. Needs brokers with
    /// remote.log.storage.system.enable=true; pass false for brokers without a remote tier.
    /// Existing topics are used as they are.
    #[arg(
        long = "topic-remote-storage",
        env = "KAPPA_TOPIC_REMOTE_STORAGE",
        default_value_t = true,
        action = ArgAction::Set,
        value_name = "BOOL"
    )]
    pub remote_storage: bool,

    /// How long a tiered topic's segments stay on the brokers' own disks as well
    /// (local.retention.ms), e.g. 30m, 6h, 2d: recent reads (stream scoring, monitoring) are
    /// served locally, older ones from the remote tier. At most --topic-retention.
    #[arg(
        long = "topic-local-retention",
        env = "KAPPA_TOPIC_LOCAL_RETENTION",
        default_value = "6h",
        value_parser = retention,
        value_name = "DURATION"
    )]
    pub local_retention: Retention,

    /// How long events are kept in all, local and remote (retention.ms): the oldest history a
    /// training job or backtest can read. `forever` keeps everything; e.g. 90d, 365d.
    #[arg(
        long = "topic-retention",
        env = "KAPPA_TOPIC_RETENTION",
        default_value = "180d",
        value_parser = retention,
        value_name = "DURATION"
    )]
    pub retention: Retention,
}

/// A topic retention: a duration, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Retention {
    For(Duration),
    Forever,
}

impl Retention {
    /// The value of Kafka's `*.retention.ms` (`-1` for no limit).
    pub fn kafka_ms(self) -> String {
        match self {
            Self::For(d) => d.as_millis().to_string(),
            Self::Forever => "-1".to_owned(),
        }
    }
}

/// Parses `forever` (or `-1`) and whole numbers with a unit: `ms`, `s`, `m`, `h`, `d`.
pub fn retention(text: &str) -> Result<Retention, String> {
    let text = text.trim();
    if text == "forever" || text == "-1" {
        return Ok(Retention::Forever);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30m, 6h, 90d or forever"))?;
    let seconds = match unit {
        "ms" => return Ok(Retention::For(Duration::from_millis(number))),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} needs a unit: ms, s, m, h or d (e.g. 6h, 90d)")),
    };
    number
        .checked_mul(seconds)
        .map(|s| Retention::For(Duration::from_secs(s)))
        .ok_or_else(|| format!("{text:?} is too long; use forever"))
}

impl TieringArgs {
    /// Checks what the broker would otherwise refuse with a bare INVALID_CONFIG.
    pub fn validate(&self) -> Result<(), String> {
        if self.remote_storage && self.local_retention > self.retention {
            return Err(format!(
                "--topic-local-retention ({}) is longer than --topic-retention ({}); the local \
                 copy cannot outlive the log",
                describe(self.local_retention),
                describe(self.retention)
            ));
        }
        Ok(())
    }

    /// The topic configs a new event or prediction topic gets.
    pub fn topic_configs(&self) -> Vec<(String, String)> {
        let mut configs = vec![("retention.ms".to_owned(), self.retention.kafka_ms())];
        if self.remote_storage {
            configs.push(("remote.storage.enable".to_owned(), "true".to_owned()));
            configs.push(("local.retention.ms".to_owned(), self.local_retention.kafka_ms()));
        }
        configs
    }
}

fn describe(retention: Retention) -> String {
    match retention {
        Retention::For(d) => format!("{d:?}"),
        Retention::Forever => "forever".to_owned(),
    }
}

/// Whether `configs` ask for tiered storage.
pub(crate) fn asks_for_tiering<'a>(configs: impl IntoIterator<Item = (&'a str, &'a str)>) -> bool {
    configs
        .into_iter()
        .any(|(k, v)| k == "remote.storage.enable" && v.trim().eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_carry_their_unit() {
        assert_eq!(retention("6h"), Ok(Retention::For(Duration::from_secs(6 * 3600))));
        assert_eq!(retention("90d").unwrap().kafka_ms(), "7776000000");
        assert_eq!(retention("1500ms").unwrap().kafka_ms(), "1500");
        assert_eq!(retention("forever"), Ok(Retention::Forever));
        assert_eq!(retention("-1").unwrap().kafka_ms(), "-1");
        assert!(retention("6").unwrap_err().contains("unit"));
        assert!(retention("6 weeks").is_err());
        assert!(retention("h").is_err());
        assert!(retention("99999999999999999999d").is_err());
    }

    #[test]
    fn tiered_topics_keep_a_short_local_copy_of_a_long_log() {
        let args = TieringArgs {
            remote_storage: true,
            local_retention: retention("6h").unwrap(),
            retention: retention("180d").unwrap(),
        };
        args.validate().unwrap();
        let configs = args.topic_configs();
        assert!(configs.contains(&("remote.storage.enable".into(), "true".into())));
        assert!(configs.contains(&("local.retention.ms".into(), "21600000".into())));
        assert!(configs.contains(&("retention.ms".into(), "15552000000".into())));

        let inverted = TieringArgs {
            local_retention: retention("200d").unwrap(),
            ..args.clone()
        };
        assert!(inverted.validate().unwrap_err().contains("--topic-local-retention"));
        let forever = TieringArgs {
            retention: Retention::Forever,
            local_retention: retention("200d").unwrap(),
            ..args.clone()
        };
        forever.validate().unwrap();

        let untiered = TieringArgs {
            remote_storage: false,
            ..forever
        };
        untiered.validate().unwrap();
        let configs = untiered.topic_configs();
        assert!(!asks_for_tiering(configs.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        assert_eq!(configs, [("retention.ms".to_owned(), "-1".to_owned())]);
    }
}
