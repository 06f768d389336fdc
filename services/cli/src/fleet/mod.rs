//! `kappa fleet`: the simulator's telemetry (`kappa-fleet`: cars, cars in the reference demo's
//! units, or wind turbines) as JSON, either produced to Kafka (keyed by unit id, the record
//! timestamp set to the event time, which may start in the past to make history quickly) or
//! published over MQTT as cars do (`--mqtt-url`), for a kappa-bridge to carry into Kafka.

mod kafka_sink;
mod mqtt_sink;
mod shift;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use kappa_fleet::{Fleet, FleetSpec, Profile};
use kappa_mqtt::{MqttAccess, MqttUrl};

use self::{kafka_sink::KafkaSink, mqtt_sink::MqttSink};

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    kafka: kappa_kafka::KafkaArgs,
    /// Kafka topic the telemetry goes to (without --mqtt-url).
    #[arg(long, default_value = "sensor-data")]
    topic: String,
    /// Publish over MQTT to this broker instead of producing to Kafka: mqtt://HOST:PORT, or
    /// mqtts://HOST:PORT with --mqtt-ca. QoS 1; a kappa-bridge carries the messages to Kafka.
    #[arg(long, env = "KAPPA_MQTT_URL", value_name = "URL", value_parser = MqttUrl::parse)]
    mqtt_url: Option<MqttUrl>,
    /// MQTT topic of each unit's telemetry: the `+` level is replaced by the unit id.
    #[arg(long, default_value = "cars/+/telemetry")]
    mqtt_topic: String,
    /// MQTT connections to publish over: 0 gives every unit its own, as real cars have; fewer
    /// are shared by the units round robin, to simulate large fleets.
    #[arg(long, default_value_t = 0)]
    mqtt_connections: u32,
    #[command(flatten)]
    mqtt_access: MqttAccess,
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
    /// Make a sensor read off by a constant, PATH=DELTA (e.g. coolant_temp=+30), to see what
    /// drift monitoring makes of data a model was not trained on; repeatable.
    #[arg(long = "shift", value_name = "PATH=DELTA")]
    shifts: Vec<shift::Shift>,
    /// Also write every event as a JSON line to this file (for `kappa predict`, or inspection).
    #[arg(long)]
    jsonl: Option<std::path::PathBuf>,
    /// Create the Kafka topic with this many partitions when it does not exist yet (several
    /// predictor replicas in one consumer group share the partitions). An existing topic is
    /// used as it is.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[command(flatten)]
    tiering: kappa_kafka::TieringArgs,
}

/// Where the events go.
enum Sink {
    Kafka(KafkaSink),
    Mqtt(Box<MqttSink>),
}

/// What the destination acknowledged.
#[derive(Debug, Default)]
pub struct Delivered {
    pub acknowledged: u64,
    pub failed: u64,
}

impl Sink {
    async fn open(args: &FleetArgs) -> anyhow::Result<Self> {
        Ok(match &args.mqtt_url {
            Some(url) => {
                let connection = args.mqtt_access.connection(url)?;
                let connections = match args.mqtt_connections {
                    0 => args.cars,
                    n => n.min(args.cars),
                };
                Self::Mqtt(Box::new(
                    MqttSink::open(&connection, &args.mqtt_topic, connections).await?,
                ))
            }
            None => Self::Kafka(KafkaSink::open(&args.kafka, &args.topic, args.partitions, &args.tiering).await?),
        })
    }

    fn destination(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "Kafka",
            Self::Mqtt(_) => "the MQTT broker",
        }
    }

    async fn send(&mut self, unit: &str, payload: &[u8], event_time_ms: i64) -> anyhow::Result<()> {
        match self {
            Self::Kafka(sink) => sink.send(unit, payload, event_time_ms).await,
            Self::Mqtt(sink) => sink.send(unit, payload).await?,
        }
        Ok(())
    }

    async fn finish(self) -> Delivered {
        match self {
            Self::Kafka(sink) => sink.finish().await,
            Self::Mqtt(sink) => sink.finish().await,
        }
    }
}

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
    let mut sink = Sink::open(&args).await?;
    let mut fleet = Fleet::new(&FleetSpec {
        profile: args.profile,
        units: args.cars,
        seed: args.seed,
        failing_share: args.failing_share,
        failure_chance: args.failure_chance,
    });
    let now_ms = kappa_runtime::now_ms();
    let mut event_time = now_ms - (args.backdate_seconds * 1000.0) as i64;

    let mut jsonl = match &args.jsonl {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => None,
    };
    let started = Instant::now();
    let deadline = args.duration_seconds.map(|s| started + Duration::from_secs_f64(s));
    let (mut sent, mut failing_events) = (0_u64, 0_u64);
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
        let Some(mut reading) = fleet.sample(event_time) else {
            break;
        };
        for shift in &args.shifts {
            shift.apply(&mut reading.fields);
        }
        if reading.failing {
            failing_events += 1;
        }
        let payload = serde_json::to_vec(&reading.fields)?;
        if let Some(out) = jsonl.as_mut() {
            use std::io::Write as _;
            out.write_all(&payload)?;
            out.write_all(b"\n")?;
        }
        sink.send(&reading.unit, &payload, event_time).await?;
        sent += 1;
        if fleet.round_complete() {
            event_time += args.sample_interval_ms as i64;
        }
    }
    let destination = sink.destination();
    let Delivered {
        acknowledged: acked,
        failed,
    } = sink.finish().await;
    if let Some(mut out) = jsonl {
        use std::io::Write as _;
        out.flush()?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "fleet of {} {}s: {sent} events sent, {acked} acknowledged by {destination}, {failed} failed; {failing_events} from cars with a failure; achieved {:.0} events/s{}",
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
