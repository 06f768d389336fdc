//! Sensor events as they arrive on the sensor topic (read by the predictor's stream mode and by
//! the trainer): JSON objects with the 18 sensor fields, or
//! protobuf `SensorReading`. Numbers may be JSON numbers or numeric strings (CSV-born JSON often
//! quotes them). Decoding into a struct, not a generic JSON map, keeps the per-event cost to one
//! pass without allocating a key per field.

use kappa_api::telemetry::SensorReading;
use prost::Message as _;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Event {
    pub car: String,
    #[serde(deserialize_with = "flexible")]
    time: Option<f64>,
    #[serde(alias = "timeMs", deserialize_with = "flexible")]
    time_ms: Option<f64>,
    /// Ground truth from the simulator: `true`/`false`, as a bool or a string.
    #[serde(deserialize_with = "flexible_bool")]
    pub failure_occurred: Option<bool>,
    #[serde(flatten)]
    pub fields: SensorFields,
}

macro_rules! sensor_fields {
    ($($name:ident => $camel:literal),* $(,)?) => {
        /// The sensor values present in an event, by field name.
        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct SensorFields {
            $(#[serde(alias = $camel, deserialize_with = "flexible")] $name: Option<f64>,)*
        }

        impl SensorFields {
            /// `None` for a name that is not a sensor field; `Some(None)` for a field the event
            /// lacks or that is not a number.
            pub fn get(&self, name: &str) -> Option<Option<f64>> {
                match name {
                    $(stringify!($name) => Some(self.$name),)*
                    _ => None,
                }
            }
        }
    };
}

// The camelCase aliases are the proto3 JSON names, used when a protobuf reading is decoded.
sensor_fields! {
    coolant_temp => "coolantTemp",
    intake_air_temp => "intakeAirTemp",
    intake_air_flow_speed => "intakeAirFlowSpeed",
    battery_percentage => "batteryPercentage",
    battery_voltage => "batteryVoltage",
    current_draw => "currentDraw",
    speed => "speed",
    engine_vibration_amplitude => "engineVibrationAmplitude",
    throttle_pos => "throttlePos",
    tire_pressure_1_1 => "tirePressure11",
    tire_pressure_1_2 => "tirePressure12",
    tire_pressure_2_1 => "tirePressure21",
    tire_pressure_2_2 => "tirePressure22",
    accelerometer_1_1_value => "accelerometer11Value",
    accelerometer_1_2_value => "accelerometer12Value",
    accelerometer_2_1_value => "accelerometer21Value",
    accelerometer_2_2_value => "accelerometer22Value",
    control_unit_firmware => "controlUnitFirmware",
}

/// Physically plausible range of each sensor field, generous on purpose: a value outside it is a
/// broken sensor or a broken producer (the demo's CSV has battery percentages below zero and a
/// coolant temperature of 1976 °C), not a car to learn from. Units follow the reference demo.
pub fn plausible_range(field: &str) -> Option<(f64, f64)> {
    Some(match field {
        "coolant_temp" | "intake_air_temp" => (-50.0, 250.0),
        "intake_air_flow_speed" => (0.0, 1000.0),
        "battery_percentage" | "throttle_pos" => (0.0, 1.0),
        "battery_voltage" => (0.0, 1000.0),
        "current_draw" => (-1000.0, 1000.0),
        "speed" => (0.0, 400.0),
        "engine_vibration_amplitude" => (0.0, 100_000.0),
        "tire_pressure_1_1" | "tire_pressure_1_2" | "tire_pressure_2_1" | "tire_pressure_2_2" => (0.0, 100.0),
        "accelerometer_1_1_value"
        | "accelerometer_1_2_value"
        | "accelerometer_2_1_value"
        | "accelerometer_2_2_value" => (-50.0, 50.0),
        "control_unit_firmware" => (0.0, 1_000_000.0),
        _ => return None,
    })
}

/// A number, a numeric string, or null; any other string counts as absent.
fn flexible<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flexible {
        Number(f64),
        Text(String),
        Null(()),
    }
    Ok(match Flexible::deserialize(d)? {
        Flexible::Number(n) => Some(n),
        Flexible::Text(s) => s.trim().parse().ok(),
        Flexible::Null(()) => None,
    })
}

/// A bool, or the strings "true"/"false" (any case); anything else counts as absent.
fn flexible_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flexible {
        Bool(bool),
        Text(String),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Flexible::deserialize(d)? {
        Flexible::Bool(b) => Some(b),
        Flexible::Text(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Flexible::Text(s) if s.eq_ignore_ascii_case("false") => Some(false),
        Flexible::Text(_) | Flexible::Other(_) => None,
    })
}

impl Event {
    pub fn decode(payload: &[u8], protobuf: bool) -> Result<Self, String> {
        if protobuf {
            let reading = SensorReading::decode(payload).map_err(|e| format!("not a SensorReading: {e}"))?;
            let json = serde_json::to_vec(&reading).map_err(|e| e.to_string())?;
            return serde_json::from_slice(&json).map_err(|e| format!("SensorReading: {e}"));
        }
        serde_json::from_slice::<Self>(payload).map_err(|e| {
            if e.is_syntax() || e.is_eof() {
                format!("the event is not JSON: {e}")
            } else {
                format!("the event is not a JSON object of sensor fields: {e}")
            }
        })
    }

    /// Event time in milliseconds (from `time_ms`, or `time` in seconds as in the demo's CSV).
    pub fn time_ms(&self) -> i64 {
        match (self.time_ms, self.time) {
            (Some(ms), _) => ms as i64,
            (None, Some(seconds)) => (seconds * 1000.0) as i64,
            (None, None) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_events_take_numbers_or_numeric_strings() {
        let e = Event::decode(
            br#"{"car":"car7","time":1567606196,"speed":"24.9","coolant_temp":39.4,"x":[1]}"#,
            false,
        )
        .unwrap();
        assert_eq!(e.car, "car7");
        assert_eq!(e.time_ms(), 1_567_606_196_000);
        assert_eq!(e.fields.get("speed"), Some(Some(24.9)));
        assert_eq!(e.fields.get("coolant_temp"), Some(Some(39.4)));
        assert_eq!(e.fields.get("throttle_pos"), Some(None));
        assert_eq!(e.fields.get("no_such_field"), None);
        assert_eq!(e.failure_occurred, None);
        let labelled = Event::decode(br#"{"failure_occurred":"true"}"#, false).unwrap();
        assert_eq!(labelled.failure_occurred, Some(true));
        assert!(Event::decode(b"[1,2]", false).is_err());
        assert!(Event::decode(b"{not json", false).unwrap_err().contains("not JSON"));
    }

    #[test]
    fn protobuf_readings_decode_to_the_same_fields() {
        let reading = SensorReading {
            car: "car1".into(),
            speed: 3.5,
            tire_pressure_1_1: 31.0,
            ..Default::default()
        };
        let e = Event::decode(&reading.encode_to_vec(), true).unwrap();
        assert_eq!(e.car, "car1");
        assert_eq!(e.fields.get("tire_pressure_1_1"), Some(Some(31.0)));
        assert_eq!(e.fields.get("speed"), Some(Some(3.5)));
    }
}
