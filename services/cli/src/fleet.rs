//! `kappa fleet`: a fleet simulator producing telemetry to Kafka, in one of three profiles:
//!
//! - `car`: the worked example. Each car drives with plausible physics (speed, throttle and
//!   engine vibration move together, coolant warms up towards its operating range, the 12 V
//!   battery stays between 11.5 and 14.8 V), and cars in the failing share develop the failure
//!   modes of the reference demo: tire pressure loss, shock failure, drive-shaft wear,
//!   overheating and outdated firmware. A mode starts with a small chance per sample and then
//!   persists.
//! - `car-reference`: the same cars in the units of the reference demo's generator: battery in
//!   percent (30–100), battery voltage in the thousands, current draw floored at 80 and up to 2,000.
//! - `turbine`: wind turbines with other sensors, nested JSON, RFC 3339 event time in `ts`, and
//!   their own failure modes (bearing wear, a stuck pitch, gearbox overheating, generator
//!   derating); the label is `status.state`, `ok` or `failed`.
//!
//! Records are JSON, keyed by unit id, with the Kafka timestamp set to the event time (which may
//! start in the past, to make history quickly). These physics belong to the simulator only: the
//! trainer and predictor read whatever schema the data has.

use std::{
    collections::VecDeque,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use clap::Args;
use rand::{Rng, SeedableRng, rngs::StdRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value, json};

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(flatten)]
    kafka: kappa_kafka::KafkaArgs,
    /// Topic the telemetry goes to.
    #[arg(long, default_value = "sensor-data")]
    topic: String,
    /// What to simulate: car, car-reference (car in the reference demo's units) or turbine.
    #[arg(long, default_value = "car", value_parser = ["car", "car-reference", "turbine"])]
    profile: String,
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

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    tires: bool,
    shock: bool,
    drive_shaft: bool,
    overheating: bool,
    firmware: bool,
}

impl Failures {
    fn any(self) -> bool {
        self.tires || self.shock || self.drive_shaft || self.overheating || self.firmware
    }
}

struct Car {
    id: String,
    prone: bool,
    failures: Failures,
    speed: f64,
    coolant: f64,
    battery: f64,
    tires: [f64; 4],
}

impl Car {
    fn new(i: u32, prone: bool, rng: &mut StdRng) -> Self {
        Self {
            id: format!("car{i}"),
            prone,
            failures: Failures::default(),
            speed: rng.random_range(0.0..80.0),
            coolant: rng.random_range(20.0..60.0),
            battery: rng.random_range(0.5..1.0),
            tires: [0; 4].map(|_| rng.random_range(30.0..34.0)),
        }
    }

    /// Advances the car by one sample and returns the reading, in the reference demo's units
    /// when `reference` is set.
    fn sample(&mut self, rng: &mut StdRng, failure_chance: f64, reference: bool) -> Map<String, Value> {
        if self.prone {
            let mut start = || rng.random_bool(failure_chance);
            let f = &mut self.failures;
            f.tires |= start();
            f.shock |= start();
            f.drive_shaft |= start();
            f.overheating |= start();
            f.firmware |= start();
        }
        let f = self.failures;
        self.speed = (self.speed + rng.random_range(-6.0..6.0)).clamp(0.0, 140.0);
        let throttle = (self.speed / 140.0 * 0.8 + rng.random_range(0.0..0.2)).clamp(0.0, 1.0);
        // Coolant approaches 90 °C; an overheating engine creeps past it.
        let target = if f.overheating { 125.0 } else { 90.0 };
        self.coolant += (target - self.coolant) * if f.overheating { 0.08 } else { 0.05 } + rng.random_range(-0.5..0.5);
        let charging = self.speed > 10.0;
        self.battery = (self.battery + if charging { 0.002 } else { -0.003 }).clamp(0.05, 1.0);
        let voltage = 11.8 + 0.9 * self.battery + if charging { 1.2 } else { 0.0 } + rng.random_range(-0.1..0.1);
        let current = if charging {
            rng.random_range(5.0..30.0)
        } else {
            rng.random_range(0.5..8.0)
        };
        let vibration = self.speed * 100.0 * if f.drive_shaft { 1.5 } else { 1.0 } + rng.random_range(0.0..50.0);
        for tire in &mut self.tires {
            *tire = if f.tires {
                rng.random_range(20.0..24.0)
            } else {
                (*tire + rng.random_range(-0.2..0.2)).clamp(30.0, 34.0)
            };
        }
        let bump = rng.random_bool(0.05);
        let mut accel = || {
            let base = if f.shock {
                rng.random_range(3.0..4.0)
            } else {
                rng.random_range(0.0..1.0)
            };
            if bump { base * 1.5 } else { base }
        };
        let accelerometers = [accel(), accel(), accel(), accel()];
        let mut m = Map::new();
        m.insert("car".into(), json!(self.id));
        m.insert("coolant_temp".into(), json!(self.coolant));
        m.insert("intake_air_temp".into(), json!(rng.random_range(15.0..40.0)));
        m.insert(
            "intake_air_flow_speed".into(),
            json!(20.0 + throttle * 200.0 + rng.random_range(-5.0..5.0)),
        );
        if reference {
            // Percent of a battery that the reference generator keeps between 30 and 100, a
            // traction pack in the thousands of volts, and a current draw floored at 80.
            m.insert("battery_percentage".into(), json!(30.0 + self.battery * 70.0));
            m.insert("battery_voltage".into(), json!(voltage * 250.0));
            m.insert("current_draw".into(), json!((current * 66.0_f64).clamp(80.0, 2000.0)));
        } else {
            m.insert("battery_percentage".into(), json!(self.battery));
            m.insert("battery_voltage".into(), json!(voltage));
            m.insert("current_draw".into(), json!(current));
        }
        m.insert("speed".into(), json!(self.speed));
        m.insert("engine_vibration_amplitude".into(), json!(vibration));
        m.insert("throttle_pos".into(), json!(throttle));
        for (name, value) in [
            "tire_pressure_1_1",
            "tire_pressure_1_2",
            "tire_pressure_2_1",
            "tire_pressure_2_2",
        ]
        .iter()
        .zip(self.tires)
        {
            m.insert((*name).into(), json!(value.round()));
        }
        for (name, value) in [
            "accelerometer_1_1_value",
            "accelerometer_1_2_value",
            "accelerometer_2_1_value",
            "accelerometer_2_2_value",
        ]
        .iter()
        .zip(accelerometers)
        {
            m.insert((*name).into(), json!(value));
        }
        m.insert(
            "control_unit_firmware".into(),
            json!(if f.firmware { 1000 } else { 2000 }),
        );
        m.insert("failure_occurred".into(), json!(if f.any() { "true" } else { "false" }));
        m
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct TurbineFailures {
    bearing: bool,
    pitch_stuck: bool,
    gearbox_overheating: bool,
    generator_derating: bool,
}

impl TurbineFailures {
    fn any(self) -> bool {
        self.bearing || self.pitch_stuck || self.gearbox_overheating || self.generator_derating
    }
}

/// A 2 MW wind turbine: power follows the wind on a cubic curve up to rated power at 12 m/s,
/// the rotor speeds up with the wind, blades pitch out above rated wind, and temperatures and
/// vibration follow the load.
struct Turbine {
    id: String,
    prone: bool,
    failures: TurbineFailures,
    wind: f64,
    oil: f64,
}

impl Turbine {
    fn new(i: u32, prone: bool, rng: &mut StdRng) -> Self {
        Self {
            id: format!("wt-{i:03}"),
            prone,
            failures: TurbineFailures::default(),
            wind: rng.random_range(4.0..14.0),
            oil: 50.0,
        }
    }

    fn sample(&mut self, rng: &mut StdRng, failure_chance: f64, event_time_ms: i64) -> Map<String, Value> {
        if self.prone {
            let mut start = || rng.random_bool(failure_chance);
            let f = &mut self.failures;
            f.bearing |= start();
            f.pitch_stuck |= start();
            f.gearbox_overheating |= start();
            f.generator_derating |= start();
        }
        let f = self.failures;
        self.wind = (self.wind + rng.random_range(-0.8..0.8)).clamp(2.0, 24.0);
        let w = self.wind;
        let optimal_pitch = if w > 12.0 { (w - 12.0) * 2.0 } else { 0.0 };
        let pitch = if f.pitch_stuck { 22.0 } else { optimal_pitch } + rng.random_range(-0.3..0.3);
        // A blade pitched out of the wind for the wind it has loses most of its lift.
        let pitch_loss = ((pitch - optimal_pitch).max(0.0) / 25.0).min(0.9);
        let curve = ((w - 3.0) / 9.0_f64).clamp(0.0, 1.0).powi(3);
        let derate = if f.generator_derating { 0.45 } else { 1.0 };
        let power = (2000.0 * curve * (1.0 - pitch_loss) * derate + rng.random_range(-20.0..20.0)).max(0.0);
        let load = power / 2000.0;
        let rpm = (6.0 + 10.0 * curve * (1.0 - pitch_loss)).clamp(6.0, 16.0) + rng.random_range(-0.2..0.2);
        let target_oil =
            45.0 + 15.0 * load + if f.gearbox_overheating { 28.0 } else { 0.0 } + if f.bearing { 6.0 } else { 0.0 };
        self.oil += (target_oil - self.oil) * 0.2 + rng.random_range(-0.4..0.4);
        let generator_temp =
            40.0 + 30.0 * load + if f.generator_derating { 18.0 } else { 0.0 } + rng.random_range(-1.0..1.0);
        let vibration = (0.8 + 0.12 * rpm) * if f.bearing { 2.8 } else { 1.0 } + rng.random_range(0.0..0.3);
        json!({
            "turbine": self.id,
            "ts": rfc3339(event_time_ms),
            "wind": { "speed_m_s": w + rng.random_range(-0.3..0.3) },
            "rotor": { "rpm": rpm, "pitch_deg": pitch },
            "generator": { "power_kw": power, "temp_c": generator_temp },
            "gearbox": { "oil_temp_c": self.oil, "vibration_mm_s": vibration },
            "status": { "state": if f.any() { "failed" } else { "ok" } },
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }
}

/// `2026-12-01T07:42:58.123Z` for epoch milliseconds (civil-from-days, Howard Hinnant's).
fn rfc3339(ms: i64) -> String {
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// One simulated unit of whichever profile was chosen.
enum Unit {
    Car { car: Car, reference: bool },
    Turbine(Turbine),
}

impl Unit {
    fn id(&self) -> &str {
        match self {
            Self::Car { car, .. } => &car.id,
            Self::Turbine(t) => &t.id,
        }
    }

    fn failing(&self) -> bool {
        match self {
            Self::Car { car, .. } => car.failures.any(),
            Self::Turbine(t) => t.failures.any(),
        }
    }

    fn sample(&mut self, rng: &mut StdRng, failure_chance: f64, event_time_ms: i64) -> Map<String, Value> {
        match self {
            Self::Car { car, reference } => car.sample(rng, failure_chance, *reference),
            Self::Turbine(t) => t.sample(rng, failure_chance, event_time_ms),
        }
    }
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
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut cars: Vec<Unit> = (0..args.cars)
        .map(|i| {
            let prone = rng.random_bool(args.failing_share);
            match args.profile.as_str() {
                "turbine" => Unit::Turbine(Turbine::new(i, prone, &mut rng)),
                profile => Unit::Car {
                    car: Car::new(i, prone, &mut rng),
                    reference: profile == "car-reference",
                },
            }
        })
        .collect();
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
    'produce: loop {
        for car in &mut cars {
            if args.events.is_some_and(|n| sent >= n) || deadline.is_some_and(|d| Instant::now() >= d) {
                break 'produce;
            }
            if args.rate > 0.0 {
                let due = started + Duration::from_secs_f64(sent as f64 / args.rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let reading = car.sample(&mut rng, args.failure_chance, event_time);
            if car.failing() {
                failing_events += 1;
            }
            let payload = serde_json::to_vec(&reading)?;
            if let Some(out) = jsonl.as_mut() {
                use std::io::Write as _;
                out.write_all(&payload)?;
                out.write_all(b"\n")?;
            }
            let record = FutureRecord::to(&args.topic)
                .key(car.id())
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
        }
        event_time += args.sample_interval_ms as i64;
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
        if args.profile == "turbine" { "turbine" } else { "car" },
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

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_date() {
        // `date -u -d @1796110978.123 +%FT%T.%3NZ`
        assert_eq!(super::rfc3339(1_796_110_978_123), "2026-12-01T07:42:58.123Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
