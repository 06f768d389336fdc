//! What a sample of events holds, field by field: the basis of `kappa data inspect` and of the
//! trainer's schema inference. Every leaf is profiled by its path (nested objects and array
//! elements included) with its types, presence and numeric spread.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{MAX_FEATURES, PayloadFormat, protobuf};

/// One sampled record.
#[derive(Debug, Clone)]
pub struct Sample {
    pub payload: Vec<u8>,
    pub format: PayloadFormat,
    pub timestamp_ms: Option<i64>,
}

/// Paths profiled at most; beyond this, fields are counted but not profiled.
const MAX_PATHS: usize = 4 * MAX_FEATURES;
/// Distinct text values remembered per field (for label balance).
const MAX_DISTINCT: usize = 16;
/// Array elements profiled per array.
const MAX_ARRAY: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct FieldProfile {
    pub path: String,
    /// Events holding the field with a non-null value.
    pub present: u64,
    /// Numbers and numeric strings among them.
    pub numeric: u64,
    pub numeric_strings: u64,
    pub bools: u64,
    /// Text that is not a number.
    pub texts: u64,
    /// Numeric values, finite only (sorted once the profile is finished).
    pub values: Vec<f64>,
    /// Distinct values as text (bools and short strings) with their counts, up to 16.
    pub distinct: BTreeMap<String, u64>,
}

impl FieldProfile {
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.values.is_empty() {
            return None;
        }
        let i = ((self.values.len() - 1) as f64 * q).round() as usize;
        Some(self.values[i])
    }

    pub fn min(&self) -> Option<f64> {
        self.values.first().copied()
    }

    pub fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }

    pub fn max(&self) -> Option<f64> {
        self.values.last().copied()
    }

    /// Fewer than 16 distinct values in the sample: a category, a flag or a label, whose
    /// counts are worth showing.
    pub fn low_cardinality(&self) -> bool {
        self.distinct.len() < MAX_DISTINCT
    }

    /// The kind of values the field holds, for display.
    pub fn kind(&self) -> &'static str {
        match (self.numeric > 0, self.bools > 0, self.texts > 0) {
            (true, false, false) if self.numeric_strings == self.numeric => "numeric string",
            (true, false, false) => "number",
            (false, true, false) => "bool",
            (false, false, true) => "text",
            (false, false, false) => "object/array",
            _ => "mixed",
        }
    }

    /// Every numeric value lies where epoch seconds or milliseconds of 2000–2100 lie: a
    /// timestamp, not a measurement, whatever the field is called.
    pub fn looks_like_timestamp(&self) -> bool {
        const SECONDS: std::ops::RangeInclusive<f64> = 946_684_800.0..=4_102_444_800.0;
        let ms = (SECONDS.start() * 1000.0)..=(SECONDS.end() * 1000.0);
        !self.values.is_empty()
            && (self.values.iter().all(|v| SECONDS.contains(v)) || self.values.iter().all(|v| ms.contains(v)))
    }
}

/// A profile of sampled events.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub events: u64,
    /// Records that were not JSON objects (or valid protobuf readings).
    pub malformed: u64,
    pub fields: BTreeMap<String, FieldProfile>,
    /// Leaves left unprofiled because the sample held more than 4096 paths.
    pub unprofiled: u64,
}

impl Profile {
    pub fn of(samples: &[Sample]) -> Self {
        let mut profile = Self::default();
        for sample in samples {
            let value = match sample.format {
                PayloadFormat::Json => serde_json::from_slice::<Value>(&sample.payload).map_err(|e| e.to_string()),
                PayloadFormat::Protobuf => protobuf::sensor_reading_to_json(&sample.payload),
            };
            match value {
                Ok(Value::Object(map)) => {
                    profile.events += 1;
                    for (key, value) in &map {
                        profile.walk(key.clone(), value);
                    }
                }
                _ => profile.malformed += 1,
            }
        }
        for field in profile.fields.values_mut() {
            field.values.sort_by(f64::total_cmp);
        }
        profile
    }

    fn walk(&mut self, path: String, value: &Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    self.walk(format!("{path}.{key}"), v);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().take(MAX_ARRAY).enumerate() {
                    self.walk(format!("{path}.{i}"), v);
                }
            }
            Value::Null => {}
            leaf => {
                if !self.fields.contains_key(&path) && self.fields.len() >= MAX_PATHS {
                    self.unprofiled += 1;
                    return;
                }
                let field = self.fields.entry(path.clone()).or_insert_with(|| FieldProfile {
                    path,
                    ..FieldProfile::default()
                });
                field.present += 1;
                let text = match leaf {
                    Value::Number(n) => {
                        field.numeric += 1;
                        field.values.extend(n.as_f64().filter(|v| v.is_finite()));
                        // Counted for label balance (0/1 labels); only the first 16 distinct.
                        Some(n.to_string())
                    }
                    Value::String(s) => match s.trim().parse::<f64>() {
                        Ok(v) => {
                            field.numeric += 1;
                            field.numeric_strings += 1;
                            field.values.extend(Some(v).filter(|v| v.is_finite()));
                            Some(s.clone())
                        }
                        Err(_) => {
                            field.texts += 1;
                            Some(s.clone())
                        }
                    },
                    Value::Bool(b) => {
                        field.bools += 1;
                        Some(b.to_string())
                    }
                    _ => None,
                };
                if let Some(text) = text.filter(|t| t.len() <= 64) {
                    if let Some(count) = field.distinct.get_mut(&text) {
                        *count += 1;
                    } else if field.distinct.len() < MAX_DISTINCT {
                        field.distinct.insert(text, 1);
                    }
                }
            }
        }
    }
}

/// The features inferred from a profile, and why each other field was left out.
#[derive(Debug, Clone, Default)]
pub struct Inferred {
    pub features: Vec<String>,
    pub notes: Vec<String>,
}

/// Every field numeric in at least half of the sampled events, in path order (array indices
/// numerically), except the label, the time field, the excluded paths and timestamps.
pub fn infer_features(profile: &Profile, label: &str, time: &str, exclude: &[String]) -> Inferred {
    let mut inferred = Inferred::default();
    let events = profile.events.max(1);
    let covered = |path: &str, root: &str| !root.is_empty() && (path == root || path.starts_with(&format!("{root}.")));
    let mut paths: Vec<&FieldProfile> = profile.fields.values().collect();
    paths.sort_by(|a, b| natural(&a.path, &b.path));
    for field in paths {
        let path = field.path.as_str();
        let share = field.numeric as f64 / events as f64;
        let note = if covered(path, label) {
            Some("the label".to_owned())
        } else if covered(path, time) {
            Some("the event time".to_owned())
        } else if exclude.iter().any(|e| covered(path, e)) {
            Some("excluded".to_owned())
        } else if field.numeric == 0 {
            Some(format!("not numeric ({})", field.kind()))
        } else if share < 0.5 {
            Some(format!(
                "numeric in only {:.0}% of the sampled events; name it in the features to use it",
                share * 100.0
            ))
        } else if field.looks_like_timestamp() {
            Some("looks like a timestamp (epoch seconds or milliseconds), not a measurement; set it as the time field to use it as event time".to_owned())
        } else if inferred.features.len() >= MAX_FEATURES {
            Some(format!("beyond the first {MAX_FEATURES} features"))
        } else {
            None
        };
        match note {
            None => inferred.features.push(path.to_owned()),
            Some(note) => inferred.notes.push(format!("{path}: {note}")),
        }
    }
    if profile.unprofiled > 0 {
        inferred.notes.push(format!(
            "{} values beyond the first {MAX_PATHS} paths were not profiled",
            profile.unprofiled
        ));
    }
    inferred
}

/// Path order with numeric segments compared as numbers (`tires.2` before `tires.10`).
fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let order = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    _ => x.cmp(y),
                };
                if order.is_ne() {
                    return order;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(events: &[&str]) -> Vec<Sample> {
        events
            .iter()
            .map(|e| Sample {
                payload: e.as_bytes().to_vec(),
                format: PayloadFormat::Json,
                timestamp_ms: None,
            })
            .collect()
    }

    #[test]
    fn infers_numeric_leaves_and_explains_the_rest() {
        let profile = Profile::of(&samples(&[
            r#"{"id":"t1","ts":1567606196,"rotor":{"rpm":14.2,"pitch":"3.1"},"temps":[60,61,62,63,64,65,66,67,68,69,70],"state":"ok","rare":1,"on":true}"#,
            r#"{"id":"t2","ts":1567606197,"rotor":{"rpm":15.0,"pitch":"2.9"},"temps":[60,61,62,63,64,65,66,67,68,69,70],"state":"failed","on":false}"#,
            r#"{"id":"t3","ts":1567606198,"rotor":{"rpm":13.9,"pitch":"3.0"},"temps":[60,61,62,63,64,65,66,67,68,69,70],"state":"ok","on":true}"#,
            "not json",
        ]));
        assert_eq!((profile.events, profile.malformed), (3, 1));
        let rpm = &profile.fields["rotor.rpm"];
        assert_eq!(
            (rpm.min(), rpm.median(), rpm.max()),
            (Some(13.9), Some(14.2), Some(15.0))
        );
        assert_eq!(profile.fields["rotor.pitch"].kind(), "numeric string");
        assert_eq!(profile.fields["state"].distinct["failed"], 1);

        let inferred = infer_features(&profile, "state", "", &["temps.10".to_owned()]);
        let mut expected = vec!["rotor.pitch".to_owned(), "rotor.rpm".to_owned()];
        expected.extend((0..10).map(|i| format!("temps.{i}")));
        assert_eq!(inferred.features, expected);
        let notes = inferred.notes.join("\n");
        for why in [
            "id: not numeric (text)",
            "on: not numeric (bool)",
            "state: the label",
            "temps.10: excluded",
            "ts: looks like a timestamp",
            "rare: numeric in only 33%",
        ] {
            assert!(notes.contains(why), "{why} missing from\n{notes}");
        }
    }
}
