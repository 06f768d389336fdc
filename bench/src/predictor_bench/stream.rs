//! Stream scoring against a plain consume → produce pipe.

use super::*;

pub(super) fn kafka(bootstrap: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Writes `events` sensor events (JSON, keyed by car) to each topic: every `unusual_every`-th
/// with readings spread over 0 to 12, the others near zero.
pub(super) async fn stream_fill(
    bootstrap: &str,
    topics: &[String],
    events: usize,
    unusual_every: usize,
) -> anyhow::Result<()> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    // Compressed as Kappa's bridge and fleet produce events.
    let producer: FutureProducer = kafka(bootstrap)
        .set("linger.ms", "5")
        .set(kappa_kafka::COMPRESSION.0, kappa_kafka::COMPRESSION.1)
        .create()?;
    for topic in topics {
        for start in (0..events).step_by(10_000) {
            let batch = (start..(start + 10_000).min(events)).map(|i| {
                let mut fields: serde_json::Map<String, serde_json::Value> = CAR_FIELDS
                    .iter()
                    .map(|f| {
                        let value = if i % unusual_every == 0 {
                            (i % 13) as f64
                        } else {
                            (i % 3) as f64 / 10.0
                        };
                        ((*f).to_owned(), serde_json::json!(value))
                    })
                    .collect();
                fields.insert("car".into(), serde_json::json!(format!("car{}", i % 100)));
                let (key, value) = (format!("car{}", i % 100), serde_json::to_vec(&fields).expect("json"));
                let producer = producer.clone();
                async move {
                    producer
                        .send(
                            FutureRecord::to(topic).key(&key).payload(&value),
                            Duration::from_secs(30),
                        )
                        .await
                }
            });
            for result in futures::future::join_all(batch).await {
                result.map_err(|(e, _)| e)?;
            }
        }
    }
    Ok(())
}

/// The baseline: consume -> produce with the predictor's settings (acks=all, idempotent, lz4, the
/// same fetch back-off, offsets stored after the ack, 1024 in flight) but no decoding and no
/// model. Returns events/s as the predictor's are measured: records landing in the output topic,
/// counted from outside, the clock starting at the first.
pub(super) async fn stream_pipe(
    bootstrap: &str,
    from: &str,
    to: &str,
    events: usize,
    decode: bool,
) -> anyhow::Result<f64> {
    use futures::{FutureExt as _, StreamExt as _, stream::FuturesOrdered};
    use rdkafka::{
        Message,
        consumer::{Consumer, StreamConsumer},
        producer::{FutureProducer, FutureRecord},
    };
    let (backoff_key, backoff) = kappa_kafka::FETCH_QUEUE_BACKOFF;
    let consumer: StreamConsumer = kafka(bootstrap)
        .set("group.id", format!("pipe-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(backoff_key, backoff)
        .create()?;
    consumer.subscribe(&[from])?;
    let producer: FutureProducer = kafka(bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set(kappa_kafka::COMPRESSION.0, kappa_kafka::COMPRESSION.1)
        .create()?;
    let (from, to_topic) = (from.to_owned(), to.to_owned());
    let decoder = decode
        .then(|| kappa_model::schema::EventDecoder::for_manifest(&kappa_fleet::car_autoencoder("bench", &[8])))
        .transpose()
        .map_err(|e| anyhow::anyhow!("the car model's schema: {e}"))?
        .map(Arc::new);
    let pipe = tokio::spawn(async move {
        let mut pending = FuturesOrdered::new();
        let mut done = 0;
        while done < events {
            tokio::select! {
                Some(result) = pending.next(), if !pending.is_empty() => {
                    let (partition, offset): (i32, i64) = result?;
                    consumer.store_offset(&from, partition, offset)?;
                    done += 1;
                }
                message = consumer.recv(), if pending.len() < 1024 => {
                    let message = message?;
                    let key = message.key().map(<[u8]>::to_vec).unwrap_or_default();
                    let (partition, offset) = (message.partition(), message.offset());
                    let producer = producer.clone();
                    let to = to_topic.clone();
                    if let Some(decoder) = &decoder {
                        let (decoder, payload) = (Arc::clone(decoder), message.payload().unwrap_or_default().to_vec());
                        pending.push_back(tokio::spawn(async move {
                            let value = decode_and_serialise(&decoder, &payload, &key, partition, offset);
                            producer.send(FutureRecord::to(&to).key(&key).payload(&value), Duration::from_secs(30)).await.expect("pipe produce");
                            (partition, offset)
                        }).boxed());
                    } else {
                        pending.push_back(async move {
                            let value = format!("{{\"source_offset\":{offset}}}");
                            producer.send(FutureRecord::to(&to).key(&key).payload(&value), Duration::from_secs(30)).await.expect("pipe produce");
                            Ok((partition, offset))
                        }.boxed());
                    }
                }
            }
        }
        anyhow::Ok(())
    });
    let (bootstrap, to) = (bootstrap.to_owned(), to.to_owned());
    let rate = tokio::task::spawn_blocking(move || wait_for_records(&bootstrap, &to, events)).await??;
    pipe.await??;
    Ok(rate)
}

/// What the decoding pipe does per event: the car's fields read from JSON into a row, and a
/// prediction (score 0) serialised.
pub(super) fn decode_and_serialise(
    decoder: &kappa_model::schema::EventDecoder,
    payload: &[u8],
    key: &[u8],
    partition: i32,
    offset: i64,
) -> Vec<u8> {
    let mut event = kappa_model::schema::DecodedEvent::default();
    let mut row = Vec::with_capacity(CAR_FIELDS.len());
    let decoded = decoder
        .decode_into(payload, kappa_model::schema::PayloadFormat::Json, &mut event)
        .and_then(|()| decoder.extend_row(&event, &mut row).map_err(|p| decoder.describe(&p)));
    let prediction = kappa_api::events::Prediction {
        key: String::from_utf8_lossy(key).into_owned(),
        source_partition: partition,
        source_offset: offset,
        model_name: "bench".into(),
        error: decoded.err().unwrap_or_default(),
        ..Default::default()
    };
    let mut value = Vec::with_capacity(256);
    serde_json::to_writer(&mut value, &prediction).expect("a prediction serialises");
    value
}

/// Waits until `topic` holds `events` records; the clock starts at the first one.
pub(super) fn wait_for_records(bootstrap: &str, topic: &str, events: usize) -> anyhow::Result<f64> {
    kappa_bench::RecordCounter::new(bootstrap)?.rate_until(topic, events)
}

/// The share of the first `events` predictions on `topic` that flag an anomaly.
pub(super) fn anomaly_share(bootstrap: &str, topic: &str, events: usize) -> anyhow::Result<f64> {
    use rdkafka::{
        Message as _, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer as _},
    };
    let consumer: BaseConsumer = kafka(bootstrap).set("group.id", "bench-anomaly-share").create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut read, mut flagged) = (0_usize, 0_usize);
    let deadline = Instant::now() + Duration::from_secs(120);
    while read < events {
        anyhow::ensure!(Instant::now() < deadline, "read {read} of {events} predictions");
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let payload = message?.payload().unwrap_or_default().to_vec();
            read += 1;
            flagged += usize::from(payload.windows(16).any(|w| w == b"\"isAnomaly\":true"));
        }
    }
    Ok(flagged as f64 / read as f64)
}
