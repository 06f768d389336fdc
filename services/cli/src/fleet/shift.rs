//! `--shift PATH=DELTA`: a sensor that reads off by a constant (a recalibrated or swapped
//! part), to show drift monitoring what data it was not trained on looks like.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Shift {
    /// A field path, dot-separated into nested objects.
    pub path: String,
    pub delta: f64,
}

impl std::str::FromStr for Shift {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (path, delta) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not PATH=DELTA (e.g. coolant_temp=+30)"))?;
        kappa_model::schema::validate_path(path)?;
        let delta: f64 = delta
            .trim_start_matches('+')
            .parse()
            .map_err(|_| format!("{delta:?} in {text:?} is not a number"))?;
        if !delta.is_finite() {
            return Err(format!("{text:?}: the shift must be finite"));
        }
        Ok(Self {
            path: path.to_owned(),
            delta,
        })
    }
}

impl Shift {
    /// Adds the delta to the numeric field at the path; the event is left as it is when the
    /// field is absent or not a number.
    pub fn apply(&self, fields: &mut Map<String, Value>) {
        let mut levels = self.path.split('.');
        let Some(first) = levels.next() else { return };
        let mut at = fields.get_mut(first);
        for level in levels {
            at = at.and_then(|v| v.get_mut(level));
        }
        if let Some(value) = at
            && let Some(number) = value.as_f64()
        {
            *value = serde_json::json!(number + self.delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shift_moves_one_numeric_field_by_its_delta() {
        let mut event = serde_json::json!({"coolant_temp": 90.0, "gearbox": {"oil_temp_c": 50.0}, "car": "c1"});
        let fields = event.as_object_mut().unwrap();
        "coolant_temp=+30".parse::<Shift>().unwrap().apply(fields);
        "gearbox.oil_temp_c=-5.5".parse::<Shift>().unwrap().apply(fields);
        "car=+1".parse::<Shift>().unwrap().apply(fields);
        "absent=+1".parse::<Shift>().unwrap().apply(fields);
        assert_eq!(
            event,
            serde_json::json!({"coolant_temp": 120.0, "gearbox": {"oil_temp_c": 44.5}, "car": "c1"})
        );
        assert!("coolant_temp".parse::<Shift>().is_err());
        assert!("coolant_temp=hot".parse::<Shift>().is_err());
        assert!("=3".parse::<Shift>().is_err());
    }
}
