//! The fleet over MQTT, as cars publish: QoS 1 on `cars/<unit>/telemetry` (the `+` of
//! `--mqtt-topic` replaced by the unit), one connection per unit or units sharing a few
//! connections round robin. A kappa-bridge subscribed to the same filter carries the messages
//! on to Kafka. Each connection keeps its session across reconnects, so what the broker had not
//! acknowledged when a connection dropped is published again.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use kappa_mqtt::MqttConnection;
use rumqttc::{
    Outgoing,
    v5::{
        AsyncClient, ConnectionError, Event, EventLoop,
        mqttbytes::{
            QoS,
            v5::{ConnectReturnCode, Packet, PubAckReason, PublishProperties},
        },
    },
};
use tokio::{sync::oneshot, task::JoinHandle};

use super::Delivered;

/// Publishes one connection hands to its event loop without waiting.
const REQUESTS_PER_CONNECTION: usize = 16;
/// How long a connection may take to be accepted.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections opened at once.
const CONNECT_WAVE: usize = 500;
/// How long the broker may take to acknowledge what was sent, at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Acknowledgements counted by the connections' event loops.
#[derive(Default)]
struct Acks {
    accepted: AtomicU64,
    /// Accepted, but the broker had no subscriber for them: the message went nowhere.
    unrouted: AtomicU64,
    refused: AtomicU64,
}

pub struct MqttSink {
    clients: Vec<AsyncClient>,
    loops: Vec<JoinHandle<()>>,
    acks: Arc<Acks>,
    /// The topic around the unit: `cars/` and `/telemetry`.
    topic: (String, String),
    connection_of: HashMap<String, usize>,
    properties: PublishProperties,
    sent: u64,
}

impl MqttSink {
    /// Opens `connections` connections and waits until the broker accepted each, so a wrong
    /// address or credentials fail here with the broker's reason.
    pub async fn open(connection: &MqttConnection, topic: &str, connections: u32) -> anyhow::Result<Self> {
        let (before, after) = split_topic(topic)?;
        let acks = Arc::new(Acks::default());
        let run = format!("kappa-fleet-{}-{}", kappa_runtime::hostname(), std::process::id());
        let (mut clients, mut loops) = (Vec::new(), Vec::new());
        let url = connection.url();
        // Cars come online in waves, as a fleet does: a connect storm of thousands at once
        // times out on a small broker.
        for wave in (0..connections).collect::<Vec<_>>().chunks(CONNECT_WAVE) {
            let mut accepted = Vec::with_capacity(wave.len());
            for i in wave {
                let mut options = connection.options(format!("{run}-{i}"));
                // A session that outlives a dropped connection: unacknowledged publishes are
                // sent again when it resumes (a new session would drop them).
                options
                    .set_clean_start(false)
                    .set_session_expiry_interval(Some(300))
                    .set_connection_timeout(CONNECT_TIMEOUT.as_secs());
                let (client, events) = AsyncClient::new(options, REQUESTS_PER_CONNECTION);
                let (tx, rx) = oneshot::channel();
                loops.push(tokio::spawn(drive(events, Arc::clone(&acks), tx)));
                clients.push(client);
                accepted.push(rx);
            }
            for rx in accepted {
                match tokio::time::timeout(CONNECT_TIMEOUT, rx).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(reason))) => anyhow::bail!("cannot connect to the MQTT broker at {url}: {reason}"),
                    Ok(Err(_)) => anyhow::bail!("an MQTT connection to {url} ended before it was accepted"),
                    Err(_) => anyhow::bail!(
                        "the MQTT broker at {url} did not accept a connection within {} s (is it up? `make mqtt-up`)",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                }
            }
        }
        Ok(Self {
            clients,
            loops,
            acks,
            topic: (before.to_owned(), after.to_owned()),
            connection_of: HashMap::new(),
            properties: PublishProperties {
                content_type: Some("application/json".to_owned()),
                ..PublishProperties::default()
            },
            sent: 0,
        })
    }

    pub async fn send(&mut self, unit: &str, payload: &[u8]) -> anyhow::Result<()> {
        let next = self.connection_of.len() % self.clients.len();
        let index = match self.connection_of.get(unit) {
            Some(index) => *index,
            None => *self.connection_of.entry(unit.to_owned()).or_insert(next),
        };
        let topic = format!("{}{unit}{}", self.topic.0, self.topic.1);
        self.clients[index]
            .publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
                self.properties.clone(),
            )
            .await
            .context("the MQTT connection's event loop stopped")?;
        self.sent += 1;
        Ok(())
    }

    /// Waits (bounded) for the broker to acknowledge everything sent, then disconnects.
    pub async fn finish(self) -> Delivered {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let settled = |acks: &Acks| {
            acks.accepted.load(Ordering::Relaxed)
                + acks.unrouted.load(Ordering::Relaxed)
                + acks.refused.load(Ordering::Relaxed)
        };
        while settled(&self.acks) < self.sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for client in &self.clients {
            // The event loop ends once the DISCONNECT is out.
            let _ = client.disconnect().await;
        }
        for task in self.loops {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
        let (accepted, unrouted, refused) = (
            self.acks.accepted.load(Ordering::Relaxed),
            self.acks.unrouted.load(Ordering::Relaxed),
            self.acks.refused.load(Ordering::Relaxed),
        );
        if unrouted > 0 {
            eprintln!(
                "{unrouted} messages reached no subscriber and went nowhere: start a kappa-bridge subscribed to the topic first"
            );
        }
        Delivered {
            acknowledged: accepted + unrouted,
            failed: refused + self.sent.saturating_sub(accepted + unrouted + refused),
        }
    }
}

/// `cars/+/telemetry` → (`cars/`, `/telemetry`); exactly one whole `+` level, no `#`.
fn split_topic(topic: &str) -> anyhow::Result<(&str, &str)> {
    let plus_levels = topic.split('/').filter(|level| *level == "+").count();
    anyhow::ensure!(
        plus_levels == 1 && topic.matches('+').count() == 1 && !topic.contains('#'),
        "--mqtt-topic {topic:?} must have exactly one `+` level (replaced by the unit id) and no `#`"
    );
    let at = topic.find('+').expect("checked above");
    Ok((&topic[..at], &topic[at + 1..]))
}

/// One connection's event loop: reports the first CONNACK, counts acknowledgements, and rides
/// out dropped connections (rumqttc reconnects on the next poll).
async fn drive(mut events: EventLoop, acks: Arc<Acks>, accepted: oneshot::Sender<Result<(), String>>) {
    let mut accepted = Some(accepted);
    let mut last_warning: Option<Instant> = None;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if let Some(tx) = accepted.take() {
                    let _ = tx.send(if ack.code == ConnectReturnCode::Success {
                        Ok(())
                    } else {
                        Err(format!("{:?}", ack.code))
                    });
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let counter = match ack.reason {
                    PubAckReason::Success => &acks.accepted,
                    PubAckReason::NoMatchingSubscribers => &acks.unrouted,
                    reason => {
                        eprintln!("the MQTT broker refused a message: {reason:?}");
                        &acks.refused
                    }
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(error) => {
                if let Some(tx) = accepted.take() {
                    let hint = match &error {
                        ConnectionError::ConnectionRefused(_) => " (check --mqtt-username and --mqtt-password-file)",
                        _ => " (is the broker up? `make mqtt-up`)",
                    };
                    let _ = tx.send(Err(format!("{error}{hint}")));
                    return;
                }
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                    eprintln!("an MQTT connection dropped ({error}); reconnecting");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split_topic;

    #[test]
    fn the_unit_replaces_the_one_plus_level() {
        assert_eq!(split_topic("cars/+/telemetry").unwrap(), ("cars/", "/telemetry"));
        assert_eq!(split_topic("+").unwrap(), ("", ""));
        assert!(split_topic("cars/telemetry").is_err());
        assert!(split_topic("cars/+/+").is_err());
        assert!(split_topic("cars/a+/x").is_err());
        assert!(split_topic("cars/+/#").is_err());
    }
}
