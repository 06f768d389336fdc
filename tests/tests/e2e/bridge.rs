//! kappa-bridge between the real MQTT broker (HiveMQ CE, `make mqtt-up`; `make test` starts it)
//! and the real Kafka broker, fed by a third-party MQTT client (paho-mqtt from PyPI).

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;

const MQTT_PORT: u16 = BridgeSetup::MQTT_PORT;

fn payload(record: &Positioned) -> &[u8] {
    record.value.as_deref().unwrap_or_default()
}

/// The publisher script: `messages` with seq from `first`, `malformed` more, `pause_ms` apart
/// (0: pipelined).
fn publisher(prefix: &str, messages: usize, cars: usize, malformed: usize, pause_ms: u64, first: usize) -> Command {
    let python = std::env::var("KAPPA_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.cache/kappa/py/bin/python", std::env::var("HOME").unwrap()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/mqtt_publish.py");
    let mut command = Command::new(python);
    command
        .arg(script)
        .args(["127.0.0.1", &MQTT_PORT.to_string(), prefix])
        .args([messages, cars, malformed].map(|n| n.to_string()))
        .args([pause_ms.to_string(), first.to_string()]);
    command
}

fn publish_over_mqtt(prefix: &str, messages: usize, cars: usize, malformed: usize) -> serde_json::Value {
    let out = publisher(prefix, messages, cars, malformed, 0, 0).output().unwrap();
    assert!(
        out.status.success(),
        "paho-mqtt publisher failed (is the MQTT broker up? `make mqtt-up`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Publishes `count` messages as car-1 with paho-mqtt at `qos`, in order: `message` is a Python
/// expression of `i`, dumped as JSON.
fn publish_car_1(prefix: &str, message: &str, count: usize, qos: u8) {
    let python = std::env::var("KAPPA_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.cache/kappa/py/bin/python", std::env::var("HOME").unwrap()));
    let script = format!(
        r#"
import json, os, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="{prefix}-pub", protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", {MQTT_PORT}); c.loop_start()
sent = [c.publish("{prefix}/car-1/telemetry", json.dumps({message}), qos={qos}) for i in range({count})]
for s in sent: s.wait_for_publish(30)
c.loop_stop(); c.disconnect()
"#
    );
    let out = Command::new(python).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The records of `topic` once `wanted` are there (or `within` has passed), read again a second
/// later so that anything arriving late, a duplicate, is counted too.
async fn settled(topic: &str, wanted: usize, within: Duration) -> Vec<Positioned> {
    let records = count_reaches(topic, wanted, within).await;
    if records.len() < wanted {
        return records;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    read_positioned(topic, "read_committed").await
}

async fn count_reaches(topic: &str, wanted: usize, within: Duration) -> Vec<Positioned> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_positioned(topic, "read_committed").await;
        if records.len() >= wanted || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn every_mqtt_message_arrives_once_keyed_by_car_with_its_headers_and_bad_ones_are_dead_lettered() {
    let prefix = unique("test-cars");
    let (sensors, dead) = (unique("test.sensors"), unique("test.dead-letter"));
    let bridge = BridgeSetup::new(&prefix, &sensors)
        .dead_letter(Some(&dead))
        .envs(&tracing_env())
        .start()
        .await;
    let (messages, cars, malformed) = (600, 40, 7);
    let sent = publish_over_mqtt(&prefix, messages, cars, malformed);
    assert_eq!(sent["messages"], messages);

    // Anything late would have arrived by now: exactly the messages sent, each once.
    let records = settled(&sensors, messages, Duration::from_secs(60)).await;
    assert_eq!(
        records.len(),
        messages,
        "every message exactly once:\n{}",
        bridge.log_text()
    );
    let mut seqs: Vec<u64> = records
        .iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_slice(payload(r)).unwrap();
            assert_eq!(
                event["car"].as_str().unwrap(),
                r.key,
                "keyed by the car the topic names"
            );
            let topic = r.header("mqtt-topic").unwrap();
            assert_eq!(topic, format!("{prefix}/{}/telemetry", r.key));
            let received: i64 = r.header("mqtt-received-at-ms").unwrap().parse().unwrap();
            assert!(received > 1_700_000_000_000);
            event["seq"].as_u64().unwrap()
        })
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..messages as u64).collect::<Vec<_>>());
    let traced = records.iter().filter(|r| r.header("traceparent").is_some()).count();
    assert_eq!(
        traced,
        messages / 10,
        "a traceparent user property carries the trace into the record's headers"
    );
    let trace_prefix = sent["trace_prefix"].as_str().unwrap();
    let mut bridge_span = None;
    for r in records.iter().filter(|r| r.header("traceparent").is_some()) {
        let event: serde_json::Value = serde_json::from_slice(payload(r)).unwrap();
        let seq = event["seq"].as_u64().unwrap();
        let parts: Vec<&str> = r.header("traceparent").unwrap().split('-').collect();
        assert_eq!(parts.len(), 4, "{:?}", r.headers);
        assert_eq!(
            parts[1],
            format!("{trace_prefix}{:016x}", seq + 1),
            "the publisher's trace"
        );
        assert_ne!(
            parts[2],
            format!("{:016x}", seq + 1),
            "continued from the bridge's own span"
        );
        if seq == 0 {
            bridge_span = Some(parts[2].to_owned());
        }
    }
    // In Jaeger: the bridge's span for the message, a child of the publisher's.
    let trace_id = format!("{trace_prefix}{:016x}", 1);
    let trace = crate::tracing::jaeger_trace(&trace_id, |t| t.has("kappa-bridge", "bridge_message")).await;
    let span = trace.one("kappa-bridge", "bridge_message");
    assert_eq!(
        Some(&span.id),
        bridge_span.as_ref(),
        "the record names the bridge's span"
    );
    assert_eq!(span.parent.as_deref(), Some(format!("{:016x}", 1).as_str()));

    let dead_letters = count_reaches(&dead, malformed, Duration::from_secs(30)).await;
    assert_eq!(dead_letters.len(), malformed);
    for r in &dead_letters {
        assert!(
            r.header("kappa-dead-letter-reason").unwrap().starts_with("not JSON"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.key, "car-bad");
    }
    let metrics = scrape(&bridge.metrics_url).await;
    assert_eq!(
        series_value(&metrics, "kappa_bridge_produced_total"),
        Some(messages as f64)
    );
    assert_eq!(
        series_value(&metrics, "kappa_bridge_dead_lettered_total"),
        Some(malformed as f64)
    );
    assert_eq!(series_value(&metrics, "kappa_bridge_in_flight"), Some(0.0));
}

/// A bridge in share group `group` with `client_id` (what a restart on the same session keeps).
fn bridge(prefix: &str, group: &str, client_id: &str, sensors: &str) -> Launch {
    BridgeSetup::new(prefix, sensors)
        .share_group(Some(group))
        .client_id(client_id)
        .launch()
}

/// The `seq` of every record, in topic order.
fn seqs(records: &[Positioned]) -> Vec<u64> {
    records
        .iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_slice(payload(r)).unwrap();
            event["seq"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_bridge_killed_mid_stream_loses_nothing_and_counts_what_it_gets_again() {
    let (prefix, group, client_id) = (unique("test-cars"), unique("bridges"), unique("bridge"));
    let sensors = unique("test.sensors");
    let first = bridge(&prefix, &group, &client_id, &sensors).start("").await;
    let messages = 1500;
    // About 4 s of publishing at QoS 1, so the kill lands mid-stream.
    let mut publishing = publisher(&prefix, messages, 30, 0, 2, 0)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while series_value(&scrape(&first.metrics_url).await, "kappa_bridge_produced_total").unwrap_or(0.0) < 200.0 {
        assert!(
            Instant::now() < deadline,
            "the bridge produced nothing:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill9();
    // The same client id resumes the persistent session: what was not acknowledged comes again.
    let second = bridge(&prefix, &group, &client_id, &sensors).start("").await;
    assert!(publishing.wait().unwrap().success(), "the publisher failed");
    let records = settled(&sensors, messages, Duration::from_secs(60)).await;
    let all = seqs(&records);
    let distinct: std::collections::BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        distinct,
        (0..messages as u64).collect(),
        "no message lost across the kill:\n{}",
        second.log_text()
    );
    let duplicates = all.len() - distinct.len();
    let redelivered = series_value(&scrape(&second.metrics_url).await, "kappa_bridge_redelivered_total").unwrap();
    println!(
        "{messages} messages, {} records, {duplicates} duplicates, {redelivered} redelivered",
        all.len()
    );
    assert!(
        duplicates as f64 <= redelivered,
        "every duplicate is a redelivery the bridge counted ({duplicates} > {redelivered})"
    );
}

#[tokio::test]
async fn a_bridge_quiet_past_its_idle_period_subscribes_again_and_carries_the_next_messages_once() {
    let (prefix, group) = (unique("test-cars"), unique("bridges"));
    let sensors = unique("test.sensors");
    let quiet = bridge(&prefix, &group, &unique("bridge"), &sensors).start("").await;
    let resubscribed = |text: &str| series_value(text, "kappa_bridge_resubscribed_total").unwrap_or(0.0);
    // Subscribed with nothing arriving: after its 10 s idle period the bridge subscribes again.
    let deadline = Instant::now() + Duration::from_secs(30);
    while resubscribed(&scrape(&quiet.metrics_url).await) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no resubscription after 30 s of quiet:\n{}",
            quiet.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let messages = 300;
    publish_over_mqtt(&prefix, messages, 20, 0);
    let records = settled(&sensors, messages, Duration::from_secs(60)).await;
    assert_eq!(
        seqs(&records).into_iter().collect::<std::collections::BTreeSet<u64>>(),
        (0..messages as u64).collect(),
        "every message after the resubscription:\n{}",
        quiet.log_text()
    );
    assert_eq!(
        records.len(),
        messages,
        "each once: a second SUBSCRIBE delivers nothing twice"
    );
    assert!(quiet.terminate().success(), "a clean stop");
}

#[tokio::test]
async fn two_bridges_in_one_share_group_deliver_each_message_once_and_either_carries_on_alone() {
    let (prefix, group) = (unique("test-cars"), unique("bridges"));
    let sensors = unique("test.sensors");
    let a = bridge(&prefix, &group, &unique("bridge-a"), &sensors).start("").await;
    let b = bridge(&prefix, &group, &unique("bridge-b"), &sensors).start("").await;
    let half = 500;
    publish_over_mqtt(&prefix, half, 50, 0);
    count_reaches(&sensors, half, Duration::from_secs(60)).await;
    let produced = |text: &str| series_value(text, "kappa_bridge_produced_total").unwrap_or(0.0);
    let (first_a, first_b) = (
        produced(&scrape(&a.metrics_url).await),
        produced(&scrape(&b.metrics_url).await),
    );
    // Each message went to one member of the group, not to both (as two plain subscriptions would).
    assert_eq!(first_a + first_b, half as f64, "a: {first_a}, b: {first_b}");
    // The member that took the messages stops; the other takes the rest.
    let (busy, other) = if first_a >= first_b { (a, b) } else { (b, a) };
    assert!(busy.terminate().success(), "a clean stop");
    let more = publisher(&prefix, half, 50, 0, 0, half).output().unwrap();
    assert!(more.status.success(), "{}", String::from_utf8_lossy(&more.stderr));
    let records = settled(&sensors, 2 * half, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 2 * half, "{}", other.log_text());
    let distinct: std::collections::BTreeSet<u64> = seqs(&records).into_iter().collect();
    assert_eq!(distinct, (0..2 * half as u64).collect(), "every message, once");
    let rest = produced(&scrape(&other.metrics_url).await);
    println!("first half: {first_a} / {first_b}; the remaining bridge produced {rest} in all");
    assert!(rest >= half as f64, "the remaining member took the second half");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kafka_away_the_bridge_stops_taking_messages_and_loses_none() {
    let broker = crate::outage::OwnBroker::start();
    let (prefix, group) = (unique("test-cars"), unique("bridges"));
    let sensors = unique("test.sensors");
    let max_in_flight = 50;
    let mut bridge = bridge(&prefix, &group, &unique("bridge"), &sensors)
        .bootstrap(&broker.bootstrap)
        .args([format!("--max-in-flight={max_in_flight}")])
        .start("")
        .await;
    let metric = |name: &'static str| {
        let url = bridge.metrics_url.clone();
        async move { series_value(&scrape(&url).await, name).unwrap_or(0.0) }
    };
    let messages = 2000;
    let mut publishing = publisher(&prefix, messages, 30, 0, 5, 0)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric("kappa_bridge_produced_total").await < 200.0 {
        assert!(Instant::now() < deadline, "nothing produced:\n{}", bridge.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.run("down");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (produced_at_stop, received_at_stop) = (
        metric("kappa_bridge_produced_total").await,
        metric("kappa_bridge_received_total").await,
    );
    let mut most_in_flight: f64 = 0.0;
    for _ in 0..26 {
        most_in_flight = most_in_flight.max(metric("kappa_bridge_in_flight").await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (produced_later, received_later) = (
        metric("kappa_bridge_produced_total").await,
        metric("kappa_bridge_received_total").await,
    );
    println!(
        "Kafka away 15 s: produced {produced_at_stop} -> {produced_later}, received {received_at_stop} -> {received_later}, at most {most_in_flight} in flight"
    );
    assert_eq!(
        produced_later, produced_at_stop,
        "nothing is produced while Kafka is away"
    );
    assert!(
        most_in_flight <= f64::from(max_in_flight),
        "the bridge holds at most --max-in-flight messages: {most_in_flight}"
    );
    assert!(
        received_later - received_at_stop <= f64::from(max_in_flight),
        "it stops taking messages instead of buffering them"
    );
    broker.run("up");
    assert!(publishing.wait().unwrap().success(), "the publisher failed");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seqs: std::collections::BTreeSet<u64> = read_positioned_at(&broker.bootstrap, &sensors, "read_committed")
            .await
            .iter()
            .map(|r| {
                let event: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
                event["seq"].as_u64().unwrap()
            })
            .collect();
        if seqs.len() == messages {
            assert_eq!(seqs, (0..messages as u64).collect());
            break;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} of {messages} messages in Kafka after it came back; the bridge {}",
                seqs.len(),
                bridge.report(60).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `make demo`'s path: `kappa fleet` over MQTT, one connection per car → HiveMQ → kappa-bridge
/// → Kafka → a stream-mode predictor → the predictions topic.
#[tokio::test]
async fn the_fleet_over_mqtt_reaches_kafka_whole_and_every_event_is_scored_by_the_stream_predictor() {
    let setup = RegistrySetup::new();
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;
    let model = kappa_fleet::car_autoencoder("over-mqtt", &[8]);
    publish(
        &mut client,
        &model,
        &kappa_model::example::random_weights(&model, 3),
        "",
    )
    .await
    .unwrap();
    let prefix = unique("test-fleet");
    let (sensors, predictions) = (unique("test.sensors"), unique("test.predictions"));
    let _bridge = bridge(&prefix, &unique("bridges"), &unique("bridge"), &sensors)
        .args(["--sensor-topic-partitions=3"])
        .start("")
        .await;
    create_topic_with_partitions(&predictions, 1).await;
    let predictor = PredictorSetup::new(&setup.topic, "over-mqtt", "latest")
        .stream(&sensors, &predictions)
        .start()
        .await;

    let (cars, events) = (30, 900);
    let jsonl = std::env::temp_dir().join(format!("{}.jsonl", unique("fleet-over-mqtt")));
    let out = Command::new(binary("kappa"))
        .args(["fleet", &format!("--mqtt-url=mqtt://127.0.0.1:{MQTT_PORT}")])
        .arg(format!("--mqtt-topic={prefix}/+/telemetry"))
        .args([
            "--cars",
            &cars.to_string(),
            "--events",
            &events.to_string(),
            "--rate",
            "0",
        ])
        .args(["--failing-share", "0.3", "--seed", "11", "--jsonl"])
        .arg(&jsonl)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kappa fleet failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!(
            "{events} events sent, {events} acknowledged by the MQTT broker, 0 failed"
        )),
        "{report}"
    );

    // Kafka holds exactly the events the fleet wrote, each once, keyed by its car.
    let records = settled(&sensors, events, Duration::from_secs(60)).await;
    let mut written: Vec<serde_json::Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut arrived: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let event: serde_json::Value = serde_json::from_slice(payload(r)).unwrap();
            assert_eq!(event["car"].as_str(), Some(r.key.as_str()), "keyed by the car");
            assert_eq!(r.header("mqtt-topic").unwrap(), format!("{prefix}/{}/telemetry", r.key));
            assert_eq!(r.header("content-type"), Some("application/json"));
            event
        })
        .collect();
    let order = |a: &serde_json::Value, b: &serde_json::Value| a.to_string().cmp(&b.to_string());
    written.sort_by(order);
    arrived.sort_by(order);
    assert_eq!(arrived.len(), events, "each event once");
    assert!(arrived == written, "Kafka holds what the fleet published");
    let keys: std::collections::HashSet<&str> = records.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), cars);

    // Every one of those records is answered by the stream-mode predictor.
    let wanted: std::collections::HashMap<(i64, i64), &str> = records
        .iter()
        .map(|r| ((i64::from(r.partition), r.offset), r.key.as_str()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let answers: Vec<serde_json::Value> = read_topic(&predictions, "read_committed")
            .await
            .iter()
            .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
            .collect();
        let answered: std::collections::HashMap<(i64, i64), &serde_json::Value> = answers
            .iter()
            .map(|a| {
                let partition = a["sourcePartition"].as_i64().unwrap_or(0);
                let offset = a["sourceOffset"].as_str().map_or(0, |s| s.parse().unwrap());
                ((partition, offset), a)
            })
            .collect();
        if wanted.keys().all(|at| answered.contains_key(at)) {
            for (at, car) in &wanted {
                let answer = answered[at];
                assert_eq!(answer["error"].as_str().unwrap_or_default(), "", "{answer}");
                assert_eq!(answer["key"].as_str(), Some(*car), "{answer}");
                assert_eq!(answer["modelVersion"], "1");
                assert!(answer["score"].as_f64().is_some_and(f64::is_finite), "{answer}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {events} events unanswered:\n{}",
            wanted.keys().filter(|at| !answered.contains_key(at)).count(),
            predictor.service.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    std::fs::remove_file(jsonl).unwrap();
}

fn fleet_over(url: &str, prefix: &str, access: &[String], events: usize) -> std::process::Output {
    Command::new(binary("kappa"))
        .args([
            "fleet",
            &format!("--mqtt-url={url}"),
            &format!("--mqtt-topic={prefix}/+/telemetry"),
        ])
        .args(access)
        .args(["--cars", "10", "--events", &events.to_string(), "--rate", "0"])
        .output()
        .unwrap()
}

/// The broker's TLS listener wants a user name and password: the bridge and the fleet reach it
/// over mqtts with the CA and their own credentials; a wrong password or an unknown CA is
/// refused with the reason, and a bridge that cannot log in never reports ready.
#[tokio::test]
async fn over_mqtts_with_credentials_messages_flow_and_a_wrong_password_or_ca_is_refused() {
    let (url, ca, clients) = secure_mqtt();
    let prefix = unique("test-tls-cars");
    let sensors = unique("test.sensors");
    let access = |user: &str, password: &Path, ca: &Path| {
        vec![
            format!("--mqtt-ca={}", ca.display()),
            format!("--mqtt-username={user}"),
            format!("--mqtt-password-file={}", password.display()),
        ]
    };
    let _bridge = BridgeSetup::new(&prefix, &sensors)
        .mqtt_url(&url)
        .dead_letter(None)
        .args(access("bridge", &clients.join("bridge.password"), &ca))
        .start()
        .await;

    let out = fleet_over(
        &url,
        &prefix,
        &access("fleet", &clients.join("fleet.password"), &ca),
        200,
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report.contains("200 events sent, 200 acknowledged by the MQTT broker, 0 failed"),
        "{report}"
    );
    let records = count_reaches(&sensors, 200, Duration::from_secs(60)).await;
    assert_eq!(records.len(), 200, "every message over TLS reached Kafka");

    // A wrong password: refused at connect, with what to check.
    let dir = std::env::temp_dir().join(unique("mqtt-wrong"));
    std::fs::create_dir_all(&dir).unwrap();
    let wrong = dir.join("password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let out = fleet_over(&url, &prefix, &access("fleet", &wrong, &ca), 10);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot connect to the MQTT broker") && stderr.contains("BadUserNamePassword"),
        "{stderr}"
    );
    // A CA that did not sign the broker's certificate: the TLS handshake fails.
    let other_ca = dir.join("other-ca.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=someone-else", "-keyout"])
        .arg(dir.join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let out = fleet_over(
        &url,
        &prefix,
        &access("fleet", &clients.join("fleet.password"), &other_ca),
        10,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot connect to the MQTT broker") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );

    // A bridge with the wrong password never becomes ready and says why.
    let refused = BridgeSetup::new(&prefix, &sensors)
        .mqtt_url(&url)
        .share_group(None)
        .dead_letter(None)
        .args(access("bridge", &wrong, &ca))
        .spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(refused.log_text().contains("BadUserNamePassword")
        && health_status(&refused, "").await == Some(HealthStatus::NotServing))
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged, or ready without a session:\n{}",
            refused.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        health_status(&refused, "").await,
        Some(HealthStatus::NotServing),
        "still not ready: it keeps being refused"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A message Kafka will never take (larger than the topic's max.message.bytes) must not hold up
/// the ones behind it: it is dead-lettered with the reason and its size, the rest flow on.
#[tokio::test]
async fn a_message_too_large_for_the_topic_is_dead_lettered_and_the_rest_flow_on() {
    let prefix = unique("test-big-cars");
    let sensors = unique("test.sensors");
    let dead = format!("{sensors}.dead-letter");
    create_topic(&sensors, &[("max.message.bytes", "2000")]).await;
    let _bridge = bridge(&prefix, &unique("bridges"), &unique("bridge"), &sensors)
        .start("")
        .await;
    // One 5,000-byte reading between small ones, in one ordered stream from one car; random
    // bytes, which the producer's compression cannot shrink under the topic's limit.
    publish_car_1(
        &prefix,
        r#"{"seq": i, "pad": os.urandom(2500 if i == 2 else 5).hex()}"#,
        5,
        1,
    );

    let records = count_reaches(&sensors, 4, Duration::from_secs(30)).await;
    assert_eq!(
        seqs(&records),
        vec![0, 1, 3, 4],
        "the small ones, in order, not held up"
    );
    let dead_letters = count_reaches(&dead, 1, Duration::from_secs(30)).await;
    assert_eq!(dead_letters.len(), 1);
    let letter = &dead_letters[0];
    assert!(payload(letter).is_empty(), "the payload that did not fit is left out");
    assert!(
        letter.header("kappa-dead-letter-reason").unwrap().contains("too large"),
        "{:?}",
        letter.headers
    );
    let size: usize = letter
        .header("kappa-dead-letter-payload-bytes")
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 5000, "{size}");
    assert_eq!(
        letter.header("mqtt-topic"),
        Some(format!("{prefix}/car-1/telemetry").as_str())
    );
}

/// A bridge restarted on its persistent session with another filter takes the new filter's
/// messages (it subscribes again on a resumed session, not only on a new one).
#[tokio::test]
async fn a_bridge_restarted_with_another_topic_on_its_session_subscribes_to_it() {
    let (group, client_id, sensors) = (unique("bridges"), unique("bridge"), unique("test.sensors"));
    let (before, after) = (unique("test-old-cars"), unique("test-new-cars"));
    bridge(&before, &group, &client_id, &sensors)
        .start("")
        .await
        .terminate();
    let restarted = bridge(&after, &group, &client_id, &sensors).start("").await;
    assert!(
        restarted.log_text().contains("session_present=true"),
        "{}",
        restarted.log_text()
    );
    publish_over_mqtt(&after, 50, 5, 0);
    let records = count_reaches(&sensors, 50, Duration::from_secs(30)).await;
    if records.len() != 50 {
        // Once in CI only one of the 50 arrived; what the bridge counted says on which side.
        let metrics = scrape(&restarted.metrics_url).await;
        let counted: Vec<&str> = metrics.lines().filter(|l| l.starts_with("kappa_bridge_")).collect();
        panic!(
            "{} of 50 records in Kafka\nbridge log:\n{}\nbridge metrics:\n{}",
            records.len(),
            restarted.log_text(),
            counted.join("\n")
        );
    }
    assert!(
        records
            .iter()
            .all(|r| r.header("mqtt-topic").unwrap().starts_with(&after))
    );
}

/// While Kafka takes nothing, a QoS 0 flood is bounded by --max-in-flight: the rest is let go
/// (as QoS 0 allows) and counted, the bridge stays up, and what it holds is delivered once
/// Kafka takes records again (issue 30, item 7: it buffered QoS 0 without bound).
#[tokio::test]
async fn a_qos0_flood_while_kafka_refuses_is_bounded_counted_and_the_held_messages_arrive_later() {
    let prefix = unique("test-flood");
    let sensors = unique("test.sensors");
    // Every record refused (older than the broker's clock), and retried, until the topic is fixed.
    create_topic(&sensors, &[("message.timestamp.before.max.ms", "0")]).await;
    let bridge = bridge(&prefix, &unique("bridges"), &unique("bridge"), &sensors)
        .args(["--max-in-flight=5"])
        .start("")
        .await;
    publish_car_1(&prefix, r#"{"seq": i}"#, 500, 0);
    let metric = |text: &str, series: &str| series_value(text, series).unwrap_or(0.0);
    // The broker may let QoS 0 messages go too; what reaches the bridge settles.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1.0;
    let text = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let text = scrape(&bridge.metrics_url).await;
        let received = metric(&text, "kappa_bridge_received_total");
        if received >= 100.0 && received == last {
            break text;
        }
        last = received;
        assert!(Instant::now() < deadline, "{text}");
    };
    let (received, held) = (
        metric(&text, "kappa_bridge_received_total"),
        metric(&text, "kappa_bridge_in_flight"),
    );
    assert_eq!(held, 5.0, "{text}");
    assert_eq!(
        metric(&text, "kappa_bridge_qos0_dropped_total"),
        received - held,
        "{text}"
    );
    assert_eq!(health_status(&bridge, "").await, Some(HealthStatus::Serving));

    alter_topic(&sensors, &[("message.timestamp.before.max.ms", "9223372036854775807")]).await;
    let records = count_reaches(&sensors, 5, Duration::from_secs(30)).await;
    assert_eq!(records.len(), 5, "what the bridge held arrives, once");
}
