//! `make bench`, the bridge: MQTT → Kafka messages/s through kappa-bridge against a plain MQTT
//! subscriber of the same kind (MQTT 5 shared subscription, QoS 1, persistent session) on the
//! same broker, fed by the same publisher, alternating in one run; then the largest simulated
//! fleet (`kappa fleet --mqtt-url`, one connection per car) whose every message reaches Kafka.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{QoS, v5::Packet},
};

#[derive(Debug, Parser)]
#[command(about = "kappa-bridge against a plain MQTT subscriber, and the largest fleet it carries")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    mqtt_host: String,
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    #[arg(long, env = "KAPPA_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    kafka_bootstrap: String,
    /// Directory of kappa-bridge and kappa (default: beside this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Messages/s through the bridge (all in Kafka) and through a plain subscriber (all received).
    Throughput {
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Alternating rounds of each; the medians are compared.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Fleets of growing size, one MQTT connection per car, each car publishing every
    /// `--car-interval-seconds` for `--seconds`; a size passes when every message the broker
    /// acknowledged is in Kafka within `--drain-seconds` after the fleet stops.
    Fleet {
        #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,4000,8000")]
        sizes: Vec<u32>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 5.0)]
        car_interval_seconds: f64,
        #[arg(long, default_value_t = 60)]
        drain_seconds: u64,
    },
}

impl Args {
    fn broker(&self) -> (String, u16) {
        (self.mqtt_host.clone(), self.mqtt_port)
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

use kappa_bench::{RecordCounter, free_port, metric};

/// A kappa-bridge of the benchmark's own, on its own MQTT prefix and sensor topic.
struct Bridge {
    child: Child,
    metrics: String,
    topic: String,
    prefix: String,
}

impl Bridge {
    async fn start(args: &Args, bin: &Path) -> anyhow::Result<Self> {
        let (prefix, topic) = (unique("bench-cars"), unique("bench.bridged"));
        let metrics = format!("127.0.0.1:{}", free_port());
        let child = Command::new(bin.join("kappa-bridge"))
            .args([
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--metrics-listen",
                &metrics,
            ])
            .args(["--mqtt-url", &format!("mqtt://{}:{}", args.mqtt_host, args.mqtt_port)])
            .args(["--mqtt-topic", &format!("{prefix}/+/telemetry")])
            .args([
                "--mqtt-client-id",
                &unique("bench-bridge"),
                "--mqtt-share-group",
                &unique("bench"),
            ])
            .args(["--kafka-bootstrap", &args.kafka_bootstrap, "--sensor-topic", &topic])
            .args(["--sensor-topic-partitions", "4", "--log", "warn"])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start kappa-bridge (build the release binaries first: make bench does)")?;
        let bridge = Self {
            child,
            metrics,
            topic,
            prefix,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&bridge.metrics, "kappa_bridge_ready").await != Some(1.0) {
            anyhow::ensure!(Instant::now() < deadline, "kappa-bridge did not subscribe within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(bridge)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn kafka_count(bootstrap: &str, topic: &str) -> anyhow::Result<i64> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || RecordCounter::new(&bootstrap)?.count(&topic)).await?
}

/// A car-like JSON payload (the simulator's fields, 18 numbers and an id).
fn payload(i: u64) -> Vec<u8> {
    let mut fields: serde_json::Map<String, serde_json::Value> = kappa_fleet::CAR_FIELDS
        .iter()
        .enumerate()
        .map(|(k, f)| ((*f).to_owned(), serde_json::json!(((i + k as u64) % 97) as f64 * 0.5)))
        .collect();
    fields.insert("car".into(), serde_json::json!(format!("car-{}", i % 100)));
    fields.insert("seq".into(), serde_json::json!(i));
    serde_json::to_vec(&fields).expect("json")
}

/// Publishes `messages` at QoS 1 over 10 connections, as fast as the broker acknowledges.
async fn publish(broker: (String, u16), prefix: &str, messages: u64) -> anyhow::Result<()> {
    let connections: u64 = 10;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mut options = MqttOptions::new(unique("bench-pub"), broker.0.clone(), broker.1);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_outgoing_inflight_upper_limit(kappa_mqtt::OUTGOING_IN_FLIGHT);
        let (client, mut events) = AsyncClient::new(options, 100);
        let prefix = prefix.to_owned();
        let mine = (c..messages).step_by(connections as usize).count() as u64;
        tasks.push(tokio::spawn(async move {
            let sender = {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in (c..messages).step_by(connections as usize) {
                        let topic = format!("{prefix}/car-{}/telemetry", i % 100);
                        client.publish(topic, QoS::AtLeastOnce, false, payload(i)).await?;
                    }
                    anyhow::Ok(())
                })
            };
            let mut acked = 0;
            while acked < mine {
                if let Event::Incoming(Packet::PubAck(_)) = events.poll().await? {
                    acked += 1;
                }
            }
            sender.await??;
            let _ = client.disconnect().await;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// The ceiling: a subscriber like the bridge's (shared subscription, QoS 1, persistent session,
/// the broker's window of 1,000) that acknowledges at once and does nothing else. Messages/s.
async fn plain_subscriber(args: &Args, messages: u64) -> anyhow::Result<f64> {
    let prefix = unique("bench-cars");
    let mut options = MqttOptions::new(unique("bench-sub"), args.mqtt_host.clone(), args.mqtt_port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(60))
        .set_receive_maximum(Some(1000))
        .set_outgoing_inflight_upper_limit(kappa_mqtt::OUTGOING_IN_FLIGHT);
    let (client, mut events) = AsyncClient::new(options, 100);
    client
        .subscribe(
            format!("$share/{}/{prefix}/+/telemetry", unique("bench")),
            QoS::AtLeastOnce,
        )
        .await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            break;
        }
    }
    let received = Arc::new(AtomicU64::new(0));
    let counting = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            let mut first = None;
            loop {
                if let Event::Incoming(Packet::Publish(_)) = events.poll().await? {
                    first.get_or_insert_with(Instant::now);
                    if received.fetch_add(1, Ordering::Relaxed) + 1 == messages {
                        return anyhow::Ok(first.expect("set above").elapsed());
                    }
                }
            }
        })
    };
    publish(args.broker(), &prefix, messages).await?;
    let elapsed = tokio::time::timeout(Duration::from_secs(600), counting)
        .await
        .context("the plain subscriber did not receive every message within 600 s")???;
    let _ = client.disconnect().await;
    Ok(messages as f64 / elapsed.as_secs_f64())
}

/// Through the bridge: from the first record in Kafka to the last. Messages/s.
async fn through_bridge(args: &Args, bin: &Path, messages: u64) -> anyhow::Result<f64> {
    let bridge = Bridge::start(args, bin).await?;
    let publishing = {
        let (prefix, broker) = (bridge.prefix.clone(), args.broker());
        tokio::spawn(async move { publish(broker, &prefix, messages).await })
    };
    let rate = {
        let (bootstrap, topic) = (args.kafka_bootstrap.clone(), bridge.topic.clone());
        tokio::task::spawn_blocking(move || RecordCounter::new(&bootstrap)?.rate_until(&topic, messages as usize))
            .await??
    };
    publishing.await??;
    Ok(rate)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn throughput(args: &Args, bin: &Path, messages: u64, rounds: usize) -> anyhow::Result<()> {
    let (mut plain, mut bridged) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        plain.push(plain_subscriber(args, messages).await?);
        bridged.push(through_bridge(args, bin, messages).await?);
        eprintln!(
            "round {round}: plain subscriber {:.0} msg/s, kappa-bridge {:.0} msg/s",
            plain[round - 1],
            bridged[round - 1]
        );
    }
    let (plain, bridged) = (median(&mut plain), median(&mut bridged));
    println!("| MQTT → Kafka, {messages} messages, median of {rounds} | msg/s | ratio | target |");
    println!("|---|---|---|---|");
    println!("| plain MQTT subscriber (shared subscription, QoS 1, acks at once, no Kafka) | {plain:.0} | 1.00× | |");
    println!(
        "| kappa-bridge (each message in Kafka, acks=all, before its PUBACK) | {bridged:.0} | {:.2}× | ≥ 0.5× |",
        bridged / plain
    );
    Ok(())
}

async fn fleet(args: &Args, bin: &Path, sizes: &[u32], seconds: u64, interval: f64, drain: u64) -> anyhow::Result<()> {
    println!(
        "| cars (MQTT connections) | msg/s offered | acknowledged by HiveMQ | in Kafka | lost | caught up after the fleet stopped |"
    );
    println!("|---|---|---|---|---|---|");
    let mut largest = None;
    for &cars in sizes {
        let bridge = Bridge::start(args, bin).await?;
        let rate = f64::from(cars) / interval;
        let out = tokio::process::Command::new(bin.join("kappa"))
            .args([
                "fleet",
                "--mqtt-url",
                &format!("mqtt://{}:{}", args.mqtt_host, args.mqtt_port),
            ])
            .args(["--mqtt-topic", &format!("{}/+/telemetry", bridge.prefix)])
            .args(["--cars", &cars.to_string(), "--rate", &format!("{rate}")])
            .args(["--duration-seconds", &seconds.to_string()])
            .output()
            .await?;
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        let stopped = Instant::now();
        let acknowledged: Option<i64> = report
            .split(" acknowledged by")
            .next()
            .and_then(|head| head.rsplit(' ').next())
            .and_then(|n| n.parse().ok());
        let Some(acknowledged) = acknowledged.filter(|_| out.status.success()) else {
            println!(
                "| {cars} | {rate:.0} | the fleet failed: {} | | | |",
                String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ")
            );
            break;
        };
        let deadline = stopped + Duration::from_secs(drain);
        let mut in_kafka = 0;
        while Instant::now() < deadline {
            in_kafka = kafka_count(&args.kafka_bootstrap, &bridge.topic).await.unwrap_or(0);
            if in_kafka >= acknowledged {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let lost = (acknowledged - in_kafka).max(0);
        let caught_up = if lost == 0 {
            format!("{:.1} s", stopped.elapsed().as_secs_f64())
        } else {
            format!("not within {drain} s")
        };
        println!("| {cars} | {rate:.0} | {acknowledged} | {in_kafka} | {lost} | {caught_up} |");
        if lost > 0 {
            break;
        }
        largest = Some(cars);
    }
    match largest {
        Some(cars) => println!(
            "\nlargest fleet carried with zero loss: {cars} cars on {cars} MQTT connections, one message each every {interval} s for {seconds} s"
        ),
        None => bail!("not even the smallest fleet was carried without loss"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("binary directory")?
            .to_owned(),
    };
    match &args.command {
        Bench::Throughput { messages, rounds } => throughput(&args, &bin, *messages, *rounds).await,
        Bench::Fleet {
            sizes,
            seconds,
            car_interval_seconds,
            drain_seconds,
        } => fleet(&args, &bin, sizes, *seconds, *car_interval_seconds, *drain_seconds).await,
    }
}
