//! The fleet simulator behind `kappa fleet`, in one of three profiles:
//!
//! - [`Profile::Car`]: the worked example, connected cars with plausible physics and the reference
//!   demo's failure modes; flat JSON, label `failure_occurred`.
//! - [`Profile::CarReference`]: the same cars in the units of the reference demo's generator:
//!   battery in percent (30–100), battery voltage in the thousands, current draw floored at 80
//!   and up to 2,000.
//! - [`Profile::Turbine`]: wind turbines with other sensors, nested JSON, RFC 3339 event time.
//!
//! These physics and field names belong to the simulator only: the trainer and the predictor
//! read whatever schema the data has. Tests and benches that need "the car's fields" take them
//! from here ([`CAR_FIELDS`]), never from the model crate.

mod car;
mod time;
mod turbine;

use kappa_model::ModelManifest;
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::{Map, Value};

use crate::{car::Car, turbine::Turbine};

/// The 18 numeric sensor fields of a simulated car, in the order its example models expect them.
pub const CAR_FIELDS: [&str; 18] = [
    "coolant_temp",
    "intake_air_temp",
    "intake_air_flow_speed",
    "battery_percentage",
    "battery_voltage",
    "current_draw",
    "speed",
    "engine_vibration_amplitude",
    "throttle_pos",
    "tire_pressure_1_1",
    "tire_pressure_1_2",
    "tire_pressure_2_1",
    "tire_pressure_2_2",
    "accelerometer_1_1_value",
    "accelerometer_1_2_value",
    "accelerometer_2_1_value",
    "accelerometer_2_2_value",
    "control_unit_firmware",
];

/// The car's label field: `"true"` while any failure mode is active, else `"false"`.
pub const CAR_LABEL: &str = "failure_occurred";

/// An untrained autoencoder over [`CAR_FIELDS`]: relu hidden layers of the given widths, then a
/// linear layer back to the 18 fields.
pub fn car_autoencoder(name: &str, hidden: &[u32]) -> ModelManifest {
    kappa_model::example::autoencoder_over(name, &CAR_FIELDS, hidden)
}

/// What to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Car,
    CarReference,
    Turbine,
}

impl Profile {
    /// The names `--profile` takes.
    pub const NAMES: [&'static str; 3] = ["car", "car-reference", "turbine"];

    /// What one simulated unit is called, for summaries.
    pub fn unit_noun(self) -> &'static str {
        match self {
            Self::Car | Self::CarReference => "car",
            Self::Turbine => "turbine",
        }
    }
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "car" => Ok(Self::Car),
            "car-reference" => Ok(Self::CarReference),
            "turbine" => Ok(Self::Turbine),
            other => Err(format!("unknown profile {other:?}; use one of {:?}", Self::NAMES)),
        }
    }
}

/// How a fleet is made.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub profile: Profile,
    pub units: u32,
    /// The same seed and settings produce the same readings.
    pub seed: u64,
    /// Share of units that may develop failures (0 to 1).
    pub failing_share: f64,
    /// Chance per sample that a failure mode starts on a failing unit.
    pub failure_chance: f64,
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

/// One reading of one unit.
#[derive(Debug, Clone)]
pub struct Reading {
    /// The unit's id (`car7`, `wt-007`): the Kafka key or the MQTT topic segment.
    pub unit: String,
    /// Whether a failure mode was active when the reading was taken.
    pub failing: bool,
    pub fields: Map<String, Value>,
}

/// A seeded fleet; each call to [`Fleet::sample`] advances one unit by one sample, in turn.
pub struct Fleet {
    units: Vec<Unit>,
    rng: StdRng,
    failure_chance: f64,
    next: usize,
}

impl Fleet {
    /// A fleet as `spec` says; `failing_share` and `failure_chance` are clamped to 0–1.
    pub fn new(spec: &FleetSpec) -> Self {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let share = spec.failing_share.clamp(0.0, 1.0);
        let units = (0..spec.units)
            .map(|i| {
                let prone = rng.random_bool(share);
                match spec.profile {
                    Profile::Turbine => Unit::Turbine(Turbine::new(i, prone, &mut rng)),
                    profile => Unit::Car {
                        car: Car::new(i, prone, &mut rng),
                        reference: profile == Profile::CarReference,
                    },
                }
            })
            .collect();
        Self {
            units,
            rng,
            failure_chance: spec.failure_chance.clamp(0.0, 1.0),
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.units.len()
    }

    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The next unit's reading at `event_time_ms`, or None for an empty fleet. Units take turns,
    /// so [`Fleet::round_complete`] after a sample says a round of the whole fleet is done.
    pub fn sample(&mut self, event_time_ms: i64) -> Option<Reading> {
        let count = self.units.len();
        let unit = self.units.get_mut(self.next)?;
        let fields = unit.sample(&mut self.rng, self.failure_chance, event_time_ms);
        let reading = Reading {
            unit: unit.id().to_owned(),
            failing: unit.failing(),
            fields,
        };
        self.next = (self.next + 1) % count;
        Some(reading)
    }

    /// True when the last sample was the last unit's of a round.
    pub fn round_complete(&self) -> bool {
        self.next == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(profile: Profile, seed: u64) -> Fleet {
        Fleet::new(&FleetSpec {
            profile,
            units: 5,
            seed,
            failing_share: 0.5,
            failure_chance: 0.05,
        })
    }

    #[test]
    fn a_car_reading_has_exactly_the_car_fields_as_numbers_plus_id_and_label() {
        let mut cars = fleet(Profile::Car, 1);
        for _ in 0..50 {
            let reading = cars.sample(0).unwrap();
            let numeric: std::collections::BTreeSet<&str> = reading
                .fields
                .iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, _)| k.as_str())
                .collect();
            assert_eq!(numeric, CAR_FIELDS.into_iter().collect(), "{:?}", reading.fields);
            assert_eq!(reading.fields["car"], Value::from(reading.unit.clone()));
            let label = reading.fields[CAR_LABEL].as_str().unwrap();
            assert_eq!(label == "true", reading.failing);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_readings_and_units_take_turns() {
        let (mut a, mut b) = (fleet(Profile::Turbine, 7), fleet(Profile::Turbine, 7));
        let ids: Vec<String> = (0..10).map(|_| a.sample(1_000).unwrap().unit).collect();
        assert_eq!(&ids[..5], &ids[5..]);
        assert!(a.round_complete());
        let mut a = fleet(Profile::Turbine, 7);
        for _ in 0..20 {
            assert_eq!(a.sample(1_000).unwrap().fields, b.sample(1_000).unwrap().fields);
        }
    }

    #[test]
    fn profiles_parse_by_their_flag_names() {
        for name in Profile::NAMES {
            assert!(name.parse::<Profile>().is_ok());
        }
        assert!("bus".parse::<Profile>().unwrap_err().contains("car-reference"));
    }
}
