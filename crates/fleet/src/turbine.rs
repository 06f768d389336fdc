//! A 2 MW wind turbine with nested JSON, RFC 3339 event time in `ts`, and its own failure modes
//! (bearing wear, a stuck pitch, gearbox overheating, generator derating); the label is
//! `status.state`, `ok` or `failed`.

use rand::{Rng, rngs::StdRng};
use serde_json::{Map, Value, json};

use crate::time::rfc3339;

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TurbineFailures {
    bearing: bool,
    pitch_stuck: bool,
    gearbox_overheating: bool,
    generator_derating: bool,
}

impl TurbineFailures {
    pub(crate) fn any(self) -> bool {
        self.bearing || self.pitch_stuck || self.gearbox_overheating || self.generator_derating
    }
}

/// A 2 MW wind turbine: power follows the wind on a cubic curve up to rated power at 12 m/s,
/// the rotor speeds up with the wind, blades pitch out above rated wind, and temperatures and
/// vibration follow the load.
pub(crate) struct Turbine {
    pub(crate) id: String,
    prone: bool,
    pub(crate) failures: TurbineFailures,
    wind: f64,
    oil: f64,
}

impl Turbine {
    pub(crate) fn new(i: u32, prone: bool, rng: &mut StdRng) -> Self {
        Self {
            id: format!("wt-{i:03}"),
            prone,
            failures: TurbineFailures::default(),
            wind: rng.random_range(4.0..14.0),
            oil: 50.0,
        }
    }

    pub(crate) fn sample(&mut self, rng: &mut StdRng, failure_chance: f64, event_time_ms: i64) -> Map<String, Value> {
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
