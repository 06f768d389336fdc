//! `kappa fleet`: produces the simulator's telemetry (`kappa-fleet`: cars, cars in the
//! reference demo's units, or wind turbines) to Kafka. Records are JSON, keyed by unit id, with
//! the Kafka timestamp set to the event time (which may start in the past, to make history
//! quickly).

use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::Args;
use kappa_fleet::{Fleet, FleetSpec, Profile};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    kafka: kappa_kafka::KafkaArgs,
    /// Topic the telemetry goes to.
    #[arg(long, default_value = "sensor-data")]
    topic: String,
    /// What to simulate: car, car-reference (car in the reference demo's units) or turbine.
    #[arg(long, default_value = "car", value_parser = str::parse::<Profile>)]
    profile: Profile,
    /// Number of units (cars or turbines).
    #[arg(long, default_value_t = 100)]
    cars: u32,
    /// Target rate in events per second across the fleet; 0 produces as fast as Kafka accepts.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Stop after this many events.
    #[arg(long, conflicts_with = "duration_seconds")]
    events: Option<u64>,
    /// Stop after this many seconds of wall-clock time.
    #[arg(long)]
    duration_seconds: Option<f64>,
    /// Random seed: the same seed and settings produce the same telemetry.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of cars that may develop failures (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    failing_share: f64,
    /// Chance per sample that a failure mode starts on a failing car.
    #[arg(long, default_value_t = 0.01)]
    failure_chance: f64,
    /// Event time of the first sample, in seconds before now; event time then advances by one
    /// sampling interval per fleet round (the interval is --sample-interval-ms).
    #[arg(long, default_value_t = 0.0)]
    backdate_seconds: f64,
    /// Event-time spacing between two samples of one car.
    #[arg(long, default_value_t = 1000)]
    sample_interval_ms: u64,
    /// Also write every event as a JSON line to this file (for `kappa predict`, or inspection).
    #[arg(long)]
    jsonl: Option<std::path::PathBuf>,
    /// Create the topic with this many partitions when it does not exist yet (several
    /// predictor replicas in one consumer group share the partitions). An existing topic is
    /// used as it is.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
}

/// Deliveries awaited at once; bounds memory when the broker is slow or away.
const MAX_IN_FLIGHT: usize = 10_000;

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.cars > 0, "--cars must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.failing_share),
        "--failing-share must be between 0 and 1"
    );
    anyhow::ensure!(args.rate >= 0.0, "--rate must be 0 (unpaced) or positive");
    anyhow::ensure!(
        args.events.is_some() || args.duration_seconds.is_some(),
        "give --events N or --duration-seconds S so the simulator knows when to stop"
    );
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    let kafka = args.kafka.clients().map_err(anyhow::Error::msg)?;
    ensure_topic(&kafka, &args.topic, args.partitions).await?;
    let producer: FutureProducer = kafka
        .config(&[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("linger.ms", "5"),
            ("message.timeout.ms", "60000"),
        ])
        .create()
        .context("cannot create the Kafka producer (check --kafka-property)")?;
    let mut fleet = Fleet::new(&FleetSpec {
        profile: args.profile,
        units: args.cars,
        seed: args.seed,
        failing_share: args.failing_share,
        failure_chance: args.failure_chance,
    });
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let mut event_time = now_ms - (args.backdate_seconds * 1000.0) as i64;

    let mut jsonl = match &args.jsonl {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    let started = Instant::now();
    let deadline = args.duration_seconds.map(|s| started + Duration::from_secs_f64(s));
    let mut in_flight = VecDeque::new();
    let (mut sent, mut acked, mut failed, mut failing_events) = (0_u64, 0_u64, 0_u64, 0_u64);
    loop {
        if args.events.is_some_and(|n| sent >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / args.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let Some(reading) = fleet.sample(event_time) else { break };
        if reading.failing {
            failing_events += 1;
        }
        let payload = serde_json::to_vec(&reading.fields)?;
        if let Some(out) = jsonl.as_mut() {
            use std::io::Write as _;
            out.write_all(&payload)?;
            out.write_all(b"\n")?;
        }
        let record = FutureRecord::to(&args.topic)
            .key(&reading.unit)
            .payload(&payload)
            .timestamp(event_time);
        match producer.send_result(record) {
            Ok(delivery) => in_flight.push_back(delivery),
            Err((e, _)) => {
                failed += 1;
                eprintln!("could not queue an event: {e}");
            }
        }
        sent += 1;
        while in_flight.len() >= MAX_IN_FLIGHT {
            settle(in_flight.pop_front(), &mut acked, &mut failed).await;
        }
        if fleet.round_complete() {
            event_time += args.sample_interval_ms as i64;
        }
    }
    while let Some(delivery) = in_flight.pop_front() {
        settle(Some(delivery), &mut acked, &mut failed).await;
    }
    if let Some(mut out) = jsonl {
        use std::io::Write as _;
        out.flush()?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "fleet of {} {}s: {sent} events sent, {acked} acknowledged by Kafka, {failed} failed; {failing_events} from cars with a failure; achieved {:.0} events/s{}",
        args.cars,
        args.profile.unit_noun(),
        acked as f64 / elapsed,
        if args.rate > 0.0 {
            format!(" (target {:.0})", args.rate)
        } else {
            String::new()
        }
    );
    anyhow::ensure!(
        failed == 0,
        "{failed} events were not acknowledged (is the broker reachable?)"
    );
    Ok(())
}

async fn settle(delivery: Option<rdkafka::producer::DeliveryFuture>, acked: &mut u64, failed: &mut u64) {
    let Some(delivery) = delivery else { return };
    match delivery.await {
        Ok(Ok(_)) => *acked += 1,
        Ok(Err((e, _))) => {
            *failed += 1;
            eprintln!("an event was not acknowledged: {e}");
        }
        Err(_) => *failed += 1,
    }
}

/// Creates `topic` with `partitions` partitions unless it exists.
async fn ensure_topic(kafka: &kappa_kafka::KafkaClients, topic: &str, partitions: i32) -> anyhow::Result<()> {
    use rdkafka::{
        admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
        client::DefaultClientContext,
        types::RDKafkaErrorCode,
    };
    let bootstrap = kafka.bootstrap();
    let admin: AdminClient<DefaultClientContext> = kafka
        .config(&[])
        .create()
        .context("cannot create the Kafka admin client (check --kafka-property and --kafka-properties-file)")?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(
            [&NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))],
            &options,
        )
        .await
        .with_context(|| format!("cannot reach Kafka at {bootstrap} to create {topic} (--kafka-bootstrap)"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}
