//! The MQTT → Kafka loop. Messages arrive at QoS 1 on a persistent session with manual acks;
//! each is produced (idempotent, acks=all) and its PUBACK sent only once Kafka acknowledged the
//! record, in arrival order (MQTT wants acknowledgements in order). The broker sends at most
//! `--max-in-flight` unacknowledged messages (receive maximum), so when Kafka is slow or away
//! the bridge stops taking messages instead of buffering them; a crash loses nothing, since
//! the broker redelivers what was not acknowledged.

use std::{
    collections::{BTreeMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{FutureExt as _, StreamExt as _, stream::FuturesOrdered};
use opentelemetry::trace::TraceContextExt as _;
use rdkafka::{
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use rumqttc::Outgoing;
use rumqttc::v5::{
    AsyncClient, Event, EventLoop, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{ConnectReturnCode, Packet, Publish, SubscribeReasonCode},
    },
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use kappa_kafka::{KafkaClients, ProducerFailed};

use crate::{
    message::{self, Route},
    metrics::BridgeMetrics,
};

/// The bridge's two Kafka producers (idempotent, acks=all). Kafka judges max.message.bytes per
/// batch, so a record too large for the topic fails the small ones batched with it: those are
/// sent again alone, and only what Kafka refuses alone is too large.
#[derive(Clone)]
pub struct Producers {
    pub batched: FutureProducer,
    pub alone: FutureProducer,
}

impl Producers {
    pub fn new(kafka: &KafkaClients) -> anyhow::Result<Self> {
        let producer = |extra: &[(&str, &str)]| -> anyhow::Result<FutureProducer> {
            let mut settings = vec![
                ("acks", "all"),
                ("enable.idempotence", "true"),
                kappa_kafka::COMPRESSION,
            ];
            settings.extend_from_slice(extra);
            Ok(kafka.config(&settings).create()?)
        };
        Ok(Self {
            batched: producer(&[("linger.ms", "5")])?,
            alone: producer(&[("linger.ms", "0"), ("batch.num.messages", "1")])?,
        })
    }
}

pub struct Settings {
    /// Messages being delivered at once: QoS 1 the broker holds back at this many (receive
    /// maximum); QoS 0 past it are let go and counted.
    pub max_in_flight: usize,
    pub filter: String,
    pub share_group: String,
    pub sensor_topic: String,
    pub dead_letter_topic: String,
}

/// The readiness component of the MQTT connection.
pub const MQTT: &str = "mqtt";

/// How long after subscribing on a resumed session the bridge subscribes again. A broker may
/// read a resumed session's subscriptions for the CONNACK while the new SUBSCRIBE is stored and
/// keep that older list for its cache's lifetime (HiveMQ: one second), polling only the old
/// filters after each PUBACK: then one message arrives and nothing more. Subscribing again to
/// the same filter once that cache has expired makes the broker poll the filter and refresh
/// the list; shared subscriptions get no retained messages, so nothing is delivered twice.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(1500);

/// How long the bridge waits, subscribed and with nothing arriving, before it subscribes again.
/// HiveMQ CE can stop handing a shared subscription's QoS 1 messages to a connected subscriber
/// under load, without an error on either side (hivemq-community-edition#558); CI saw a bridge
/// that way take none of 20,000 acknowledged messages in 120 s. Subscribing again makes the
/// broker poll the filter, as above; with no publishers it costs one SUBSCRIBE per period.
const IDLE_RESUBSCRIBE_AFTER: Duration = Duration::from_secs(10);

/// Resolves at `at`, or never.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A message being delivered, with the connection it came on.
type Pending = Pin<Box<dyn Future<Output = (Result<Publish, ProducerFailed>, u64)> + Send>>;

pub async fn run(
    options: MqttOptions,
    producers: Producers,
    settings: Arc<Settings>,
    metrics: Arc<BridgeMetrics>,
    readiness: Arc<kappa_runtime::Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (client, mut events): (AsyncClient, EventLoop) = AsyncClient::new(options, 64);
    let subscription = format!("$share/{}/{}", settings.share_group, settings.filter);
    let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
    // Requests go to the event loop through a bounded channel that only `poll` drains, so they
    // are queued here and handed over without waiting (waiting inside the loop that must poll
    // would deadlock once the channel is full). Acknowledgements keep their order.
    let mut acks: VecDeque<Publish> = VecDeque::new();
    let mut subscribe = false;
    let mut last_error_log: Option<Instant> = None;
    let mut stopping = false;
    // On a resumed session the subscription is sent again once its cache in the broker has
    // expired; see `RESUBSCRIBE_AFTER`.
    let mut resubscribe_at: Option<tokio::time::Instant> = None;
    // While subscribed: when to subscribe again if nothing arrives; see `IDLE_RESUBSCRIBE_AFTER`.
    let mut idle_resubscribe_at: Option<tokio::time::Instant> = None;
    let mut refreshing = false;
    let mut resumed = false;
    let mut failed = None;
    // Which connection this is: a packet id names a message only on the connection it came on.
    let mut connection: u64 = 0;
    let mut qos0_warned: Option<Instant> = None;
    loop {
        if subscribe && client.try_subscribe(subscription.clone(), QoS::AtLeastOnce).is_ok() {
            subscribe = false;
        }
        while let Some(done) = acks.front() {
            if client.try_ack(done).is_err() {
                break;
            }
            acks.pop_front();
        }
        if shutdown.is_cancelled() && pending.is_empty() && acks.is_empty() {
            break;
        }
        tokio::select! {
            // Wakes the loop to see that it may stop: nothing else may arrive for a keep-alive.
            () = shutdown.cancelled(), if !stopping => stopping = true,
            () = sleep_until(resubscribe_at), if resubscribe_at.is_some() => {
                resubscribe_at = None;
                subscribe = true;
            }
            () = sleep_until(idle_resubscribe_at), if idle_resubscribe_at.is_some() && !stopping => {
                idle_resubscribe_at = None;
                refreshing = true;
                subscribe = true;
                metrics.resubscribed.inc();
            }
            Some((done, came_on)) = pending.next(), if !pending.is_empty() => {
                metrics.in_flight.dec();
                match done {
                    // Acknowledged on the connection it came on only: after a reconnect the
                    // broker delivers it again, and its packet id may name another message now.
                    Ok(_) if came_on != connection => {
                        metrics.stale_acks.inc();
                    }
                    Ok(done) => acks.push_back(done),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            // Also after shutdown, until the acknowledgements are out.
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        anyhow::bail!("the MQTT broker refused the connection: {:?}", ack.code);
                    }
                    tracing::info!(session_present = ack.session_present, "connected to the MQTT broker");
                    resumed = ack.session_present;
                    connection += 1;
                    // Acknowledgements of the last connection's messages would name packet ids
                    // the broker may have given to others; it delivers those messages again.
                    metrics.stale_acks.inc_by(acks.len() as u64);
                    acks.clear();
                    // Subscribed again on a resumed session too: the flags may name another
                    // filter or group than the session has, and subscribing to the same one
                    // again keeps what the broker queued for it.
                    subscribe = true;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    match ack.return_codes.iter().find(|c| !matches!(c, SubscribeReasonCode::Success(_))) {
                        None => {
                            readiness.clear(MQTT);
                            if std::mem::take(&mut refreshing) {
                                tracing::debug!(subscription, "subscribed again after a quiet spell");
                            } else {
                                tracing::info!(subscription, resumed, "subscribed");
                            }
                            idle_resubscribe_at = Some(tokio::time::Instant::now() + IDLE_RESUBSCRIBE_AFTER);
                            if std::mem::take(&mut resumed) {
                                resubscribe_at = Some(tokio::time::Instant::now() + RESUBSCRIBE_AFTER);
                            }
                        }
                        // Not ready, and saying why: nothing would ever arrive.
                        Some(refused) => {
                            let problem = format!("the MQTT broker refused the subscription {subscription}: {refused:?}");
                            tracing::error!("{problem}; check the broker's permissions for this user and --mqtt-topic");
                            readiness.report(MQTT, problem);
                        }
                    }
                }
                // Stopping: not taken, so not acknowledged; the broker hands it to another bridge
                // of the group, or to this one when it is back.
                Ok(Event::Incoming(Packet::Publish(_))) if shutdown.is_cancelled() => {}
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if idle_resubscribe_at.is_some() {
                        idle_resubscribe_at = Some(tokio::time::Instant::now() + IDLE_RESUBSCRIBE_AFTER);
                    }
                    metrics.received.inc();
                    if publish.dup {
                        metrics.redelivered.inc();
                    }
                    // QoS 1 is held back by the broker at the receive maximum; QoS 0 is not, so
                    // past the bound it is let go, as its publisher allowed, and counted.
                    if publish.qos == QoS::AtMostOnce && pending.len() >= settings.max_in_flight {
                        metrics.qos0_dropped.inc();
                        if qos0_warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                            tracing::warn!(in_flight = pending.len(), "letting QoS 0 messages go: --max-in-flight messages are being delivered");
                            qos0_warned = Some(Instant::now());
                        }
                        continue;
                    }
                    metrics.in_flight.inc();
                    let came_on = connection;
                    pending.push_back(Box::pin(
                        deliver(publish, producers.clone(), Arc::clone(&settings), Arc::clone(&metrics))
                            .map(move |done| (done, came_on)),
                    ));
                }
                Ok(_) => {}
                // Stopping: what could not be acknowledged is redelivered to the next bridge.
                Err(_) if shutdown.is_cancelled() => break,
                Err(e) => {
                    // Subscribed again on the next CONNACK anyway.
                    (idle_resubscribe_at, refreshing) = (None, false);
                    readiness.report(MQTT, format!("not connected to the MQTT broker: {e}"));
                    if last_error_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                        last_error_log = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
    // What Kafka took before a failure is still acknowledged; the rest is redelivered.
    metrics.in_flight.dec_by(pending.len() as i64);
    drop(pending);
    while let Some(done) = acks.front() {
        if client.try_ack(done).is_err() {
            break;
        }
        acks.pop_front();
    }
    disconnect(&client, &mut events).await;
    // Only new producers go on: the supervisor starts the loop again with them, and the MQTT
    // broker redelivers what was not acknowledged.
    match failed {
        Some(e) => Err(anyhow::Error::new(e)
            .context("starting again with new producers; the MQTT broker redelivers what was not acknowledged")),
        None => Ok(()),
    }
}

/// Sends DISCONNECT after the acknowledgements queued before it, so the broker ends the
/// connection cleanly (keeping the session) instead of finding it dropped. Only `poll` writes
/// requests, so the loop is polled until the DISCONNECT is out; bounded, since the broker may
/// be gone.
async fn disconnect(client: &AsyncClient, events: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let sent = async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(2), sent).await.is_err() {
        tracing::warn!("the MQTT broker took the DISCONNECT too slowly; closing the connection");
    }
}

/// `headers` with the reason a message is dead-lettered (and the size of a payload left out).
fn dead_letter_headers(headers: OwnedHeaders, reason: &str, left_out: Option<usize>) -> OwnedHeaders {
    let headers = headers.insert(Header {
        key: "kappa-dead-letter-reason",
        value: Some(reason),
    });
    match left_out {
        Some(bytes) => headers.insert(Header {
            key: "kappa-dead-letter-payload-bytes",
            value: Some(bytes.to_string().as_str()),
        }),
        None => headers,
    }
}

/// The span of a message whose publisher sent a W3C `traceparent` (MQTT 5 user property), as a
/// child of the publisher's; none for the others.
fn message_span(publish: &Publish, mqtt_topic: &str, kafka_topic: &str) -> tracing::Span {
    let carried: BTreeMap<String, String> = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), message::user_property(publish, name)?.to_owned())))
        .collect();
    let parent = kappa_runtime::propagation::context_from_map(&carried);
    if !parent.span().span_context().is_valid() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "bridge_message",
        otel.kind = "consumer",
        messaging.system = "mqtt",
        messaging.source.name = mqtt_topic,
        messaging.destination.name = kafka_topic,
    );
    let _ = span.set_parent(parent);
    span
}

/// Produces the message (to the sensor or the dead-letter topic), retrying until Kafka
/// acknowledges it: the message must not be acknowledged to MQTT before. Gives up only when
/// the producer itself has failed for good.
async fn deliver(
    publish: Publish,
    producers: Producers,
    settings: Arc<Settings>,
    metrics: Arc<BridgeMetrics>,
) -> Result<Publish, ProducerFailed> {
    let received = Instant::now();
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let key = message::key_of(&settings.filter, &topic).to_owned();
    let content_type = message::content_type(&publish).map(str::to_owned);
    let route = message::route(&publish.payload, content_type.as_deref());
    let received_ms = kappa_runtime::now_ms().to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "mqtt-topic",
            value: Some(topic.as_str()),
        })
        .insert(Header {
            key: "mqtt-received-at-ms",
            value: Some(received_ms.as_str()),
        });
    if let Some(content_type) = &content_type {
        headers = headers.insert(Header {
            key: "content-type",
            value: Some(content_type.as_str()),
        });
    }
    let mut route = route;
    if let Route::DeadLetter(reason) = &route {
        headers = dead_letter_headers(headers, reason, None);
    }
    let destination = |route: &Route| match route {
        Route::Sensor => settings.sensor_topic.as_str(),
        Route::DeadLetter(_) => settings.dead_letter_topic.as_str(),
    };
    // A message that carries a trace gets a span in it, and its record carries the trace on
    // from that span; untraced messages get none (a trace per reading would bury the rest).
    let span = message_span(&publish, &topic, destination(&route));
    if !span.is_none() {
        headers = kappa_runtime::propagation::kafka_headers::inject(&span.context(), headers);
    }
    let mut payload: &[u8] = publish.payload.as_ref();
    let mut wait = Duration::from_millis(100);
    let mut alone = false;
    loop {
        let producer = if alone { &producers.alone } else { &producers.batched };
        let record = FutureRecord::to(destination(&route))
            .key(&key)
            .payload(payload)
            .headers(headers.clone());
        match producer
            .send(record, Duration::from_secs(30))
            .instrument(span.clone())
            .await
        {
            Ok(_) => break,
            // Kafka will never take this record (the topic's max.message.bytes): retrying would
            // hold up every message behind it. The dead-letter topic gets the reason and the
            // size, without the payload that did not fit.
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _))
                if !alone && !payload.is_empty() =>
            {
                alone = true;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) if !payload.is_empty() => {
                let reason = format!(
                    "Kafka refused the record as too large for {} ({} bytes of payload): raise the topic's max.message.bytes or send smaller messages",
                    destination(&route),
                    payload.len()
                );
                tracing::warn!(topic, %reason, "dead-lettering a message Kafka will not take");
                headers = dead_letter_headers(headers, &reason, Some(payload.len()));
                route = Route::DeadLetter(reason);
                payload = &[];
                alone = false;
            }
            Err((e, _)) => {
                if let Some(failed) = kappa_kafka::failed_for_good(producer.client()) {
                    return Err(failed);
                }
                tracing::warn!(error = %e, retry_in = ?wait, "producing a message failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    match route {
        Route::Sensor => metrics.produced.inc(),
        Route::DeadLetter(_) => metrics.dead_lettered.inc(),
    };
    metrics.produce_latency.observe(received.elapsed().as_secs_f64());
    Ok(publish)
}

#[cfg(test)]
mod tests {
    use rdkafka::{mocking::MockCluster, types::RDKafkaApiKey, types::RDKafkaRespErr};

    use super::*;

    /// librdkafka's in-process mock broker, which can answer a ProduceRequest with the error a
    /// broker that lost its producer state gives: Kafka itself cannot be made to. The outage
    /// the bridge rides out is tested against the real broker (e2e `bridge::`).
    #[tokio::test]
    async fn a_producer_that_failed_for_good_ends_the_delivery_instead_of_retrying_forever() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("sensors", 1, 1).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
        );
        let producers = Producers::new(&KafkaClients::plain(cluster.bootstrap_servers())).unwrap();
        let settings = Arc::new(Settings {
            max_in_flight: 10,
            filter: "cars/+/telemetry".into(),
            share_group: "bridges".into(),
            sensor_topic: "sensors".into(),
            dead_letter_topic: "sensors.dead-letter".into(),
        });
        let publish = Publish::new("cars/car-1/telemetry", QoS::AtLeastOnce, &br#"{"speed": 1}"#[..], None);
        let metrics = Arc::new(BridgeMetrics::default());
        let delivered = tokio::time::timeout(
            Duration::from_secs(60),
            deliver(publish, producers.clone(), settings, Arc::clone(&metrics)),
        )
        .await
        .expect("the delivery gave up within a minute");
        let failure = delivered.expect_err("a failed producer delivers nothing").to_string();
        assert!(failure.contains("failed for good"), "{failure}");
        assert!(producers.batched.client().fatal_error().is_some());
        assert_eq!(metrics.produced.get(), 0, "nothing was counted as produced");
    }
}
