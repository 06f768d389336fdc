//! A connected car: speed, throttle and engine vibration move together, coolant warms up towards
//! its operating range, the 12 V battery stays between 11.5 and 14.8 V; a car in the failing share
//! develops the reference demo's failure modes (tire pressure loss, shock failure, drive-shaft
//! wear, overheating, outdated firmware), each starting with a small chance per sample and then
//! persisting.

use rand::{Rng, rngs::StdRng};
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Failures {
    tires: bool,
    shock: bool,
    drive_shaft: bool,
    overheating: bool,
    firmware: bool,
}

impl Failures {
    pub(crate) fn any(self) -> bool {
        self.tires || self.shock || self.drive_shaft || self.overheating || self.firmware
    }
}

pub(crate) struct Car {
    pub(crate) id: String,
    prone: bool,
    pub(crate) failures: Failures,
    speed: f64,
    coolant: f64,
    battery: f64,
    tires: [f64; 4],
}

impl Car {
    pub(crate) fn new(i: u32, prone: bool, rng: &mut StdRng) -> Self {
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
    pub(crate) fn sample(&mut self, rng: &mut StdRng, failure_chance: f64, reference: bool) -> Map<String, Value> {
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
