//! Decoding one event with a schema. The paths are compiled into a tree once per model version;
//! an event is then walked in a single pass over its bytes (`walk`) that descends only into the
//! objects the schema names and checks everything else without converting it.

mod walk;

use std::collections::HashMap;

use super::{MAX_FEATURES, PayloadFormat, parse_rfc3339_ms, protobuf, validate_path};
use crate::{EventSchema, ModelManifest, TimeFormat};

/// A feature path and its validity rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureRule {
    pub path: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// The label path and the values that mean "anomalous".
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRule {
    pub path: String,
    /// Lower-case, trimmed.
    texts: Vec<String>,
    numbers: Vec<f64>,
}

impl LabelRule {
    /// `positive` empty means `true` and `1`.
    pub fn new(path: &str, positive: &[String]) -> Self {
        let defaults = ["true".to_owned(), "1".to_owned()];
        let positive = if positive.is_empty() { &defaults[..] } else { positive };
        let texts: Vec<String> = positive.iter().map(|p| p.trim().to_lowercase()).collect();
        let numbers = texts.iter().filter_map(|t| t.parse::<f64>().ok()).collect();
        Self {
            path: path.to_owned(),
            texts,
            numbers,
        }
    }

    /// Whether a label value, as text (`true`, `1`, `failed`), means "anomalous".
    pub fn is_positive(&self, s: &str) -> bool {
        self.text(s)
    }

    fn text(&self, s: &str) -> bool {
        let s = s.trim();
        self.texts.iter().any(|t| t.eq_ignore_ascii_case(s)) || s.parse::<f64>().is_ok_and(|n| self.number(n))
    }

    fn number(&self, n: f64) -> bool {
        self.numbers.contains(&n)
    }
}

/// Where event time is read from.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeRule {
    pub path: String,
    pub format: TimeFormat,
}

impl TimeRule {
    fn number(&self, n: f64) -> Option<i64> {
        let ms = match self.format {
            TimeFormat::EpochMillis => n,
            TimeFormat::EpochSeconds => n * 1000.0,
            TimeFormat::Rfc3339 => return None,
            // 1e11 ms is March 1973; 1e11 s is the year 5138.
            TimeFormat::Unspecified if n.abs() >= 1e11 => n,
            TimeFormat::Unspecified => n * 1000.0,
        };
        ms.is_finite().then_some(ms as i64)
    }

    fn text(&self, s: &str) -> Option<i64> {
        match self.format {
            TimeFormat::Rfc3339 => parse_rfc3339_ms(s),
            TimeFormat::EpochMillis | TimeFormat::EpochSeconds => self.number(s.trim().parse().ok()?),
            TimeFormat::Unspecified => parse_rfc3339_ms(s).or_else(|| self.number(s.trim().parse().ok()?)),
        }
    }
}

/// What an event holds at a feature's path.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum FieldValue {
    #[default]
    Missing,
    Number(f64),
    /// Present but not a number or a numeric string (text, bool, object, array).
    NotNumeric,
}

/// One event read through a schema. Reusable: [`EventDecoder::decode_into`] resets it.
#[derive(Debug, Clone, Default)]
pub struct DecodedEvent {
    pub values: Vec<FieldValue>,
    /// `None` when the event has no (non-null) label.
    pub label: Option<bool>,
    /// `None` when the schema takes time from Kafka, or the event lacks the field.
    pub time_ms: Option<i64>,
    /// The time field is present but is not a time in the schema's format.
    pub time_invalid: bool,
}

/// Why a feature of an event cannot be used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProblemKind {
    Missing,
    NotNumeric,
    NotFinite,
    BelowMin { value: f64, min: f64 },
    AboveMax { value: f64, max: f64 },
}

impl ProblemKind {
    /// Every reason [`ProblemKind::reason`] gives.
    pub const REASONS: [&'static str; 5] = ["missing", "not_numeric", "not_finite", "below_min", "above_max"];

    /// The reason as counted in skip maps, lineage and metrics: `missing`, `not_numeric`, …
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotNumeric => "not_numeric",
            Self::NotFinite => "not_finite",
            Self::BelowMin { .. } => "below_min",
            Self::AboveMax { .. } => "above_max",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub feature: usize,
    pub kind: ProblemKind,
}

/// A compiled schema: the tree of paths, the features' rules, the label and time rules.
#[derive(Debug, Clone)]
pub struct EventDecoder {
    root: Node,
    features: Vec<FeatureRule>,
    label: Option<LabelRule>,
    time: Option<TimeRule>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Target {
    Feature(usize),
    Label,
    Time,
}

/// Keys are hashed with foldhash's fixed-seed hasher, which reads a key eight bytes at a time:
/// hashing is most of a lookup (FNV's byte-at-a-time loop was the hottest code of a fleet
/// event's decode under perf), and SipHash's flood resistance buys nothing here. The table
/// holds only the schema's own few names, so keys an event crafts to collide can cost a lookup
/// no more than a probe over those.
type KeyMap = HashMap<Box<[u8]>, usize, foldhash::fast::FixedState>;

/// One level of the path tree. Children are found by hash, so an event with a thousand fields
/// costs a thousand lookups, not a thousand scans of a thousand names. Keys are matched as
/// bytes: the walk checks a key's UTF-8 only when it holds a byte that is not ASCII.
#[derive(Debug, Clone, Default)]
struct Node {
    target: Option<Target>,
    children: Vec<Node>,
    by_key: KeyMap,
    /// Children whose segment is an array index.
    by_index: HashMap<usize, usize>,
}

impl Node {
    fn insert(&mut self, path: &str, target: Target) -> Result<(), String> {
        let mut node = self;
        for segment in path.split('.') {
            let at = match node.by_key.get(segment.as_bytes()) {
                Some(&at) => at,
                None => {
                    let at = node.children.len();
                    node.children.push(Node::default());
                    node.by_key.insert(segment.as_bytes().into(), at);
                    if let Ok(index) = segment.parse() {
                        node.by_index.insert(index, at);
                    }
                    at
                }
            };
            node = &mut node.children[at];
        }
        if node.target.is_some() {
            return Err(format!("the path {path:?} is used twice"));
        }
        node.target = Some(target);
        Ok(())
    }

    fn child(&self, segment: &[u8]) -> Option<&Node> {
        self.by_key.get(segment).map(|&at| &self.children[at])
    }

    /// The child for an object key. A key holding dots (`{"engine.rpm": 1}`) also matches the
    /// nested path it spells, so flattened and nested producers read the same.
    fn key(&self, key: &[u8]) -> Option<&Node> {
        if let Some(node) = self.child(key) {
            return Some(node);
        }
        if !key.contains(&b'.') {
            return None;
        }
        key.split(|&b| b == b'.')
            .try_fold(self, |node, segment| node.child(segment))
    }

    fn index(&self, i: usize) -> Option<&Node> {
        self.by_index.get(&i).map(|&at| &self.children[at])
    }
}

impl EventDecoder {
    pub fn new(features: Vec<FeatureRule>, label: Option<LabelRule>, time: Option<TimeRule>) -> Result<Self, String> {
        if features.is_empty() {
            return Err("there are no features".into());
        }
        if features.len() > MAX_FEATURES {
            return Err(format!(
                "{} features; at most {MAX_FEATURES} are allowed",
                features.len()
            ));
        }
        let mut root = Node::default();
        for (i, f) in features.iter().enumerate() {
            validate_path(&f.path).map_err(|e| format!("feature {i}: {e}"))?;
            if let (Some(min), Some(max)) = (f.min, f.max)
                && min > max
            {
                return Err(format!("feature {:?}: its rule has min {min} above max {max}", f.path));
            }
            if f.min.is_some_and(f64::is_nan) || f.max.is_some_and(f64::is_nan) {
                return Err(format!("feature {:?}: its rule bound is NaN", f.path));
            }
            root.insert(&f.path, Target::Feature(i))
                .map_err(|e| format!("feature {:?} is declared twice ({e})", f.path))?;
        }
        if let Some(label) = &label {
            validate_path(&label.path).map_err(|e| format!("label field: {e}"))?;
            root.insert(&label.path, Target::Label)
                .map_err(|_| format!("the label field {:?} is also a feature", label.path))?;
        }
        if let Some(time) = &time {
            validate_path(&time.path).map_err(|e| format!("time field: {e}"))?;
            root.insert(&time.path, Target::Time)
                .map_err(|_| format!("the time field {:?} is also a feature or the label", time.path))?;
        }
        Ok(Self {
            root,
            features,
            label,
            time,
        })
    }

    /// The decoder for a version: its features' paths and rules, its label and time fields.
    pub fn for_manifest(manifest: &ModelManifest) -> Result<Self, String> {
        let features = manifest
            .features
            .iter()
            .map(|f| FeatureRule {
                path: f.name.clone(),
                min: f.min,
                max: f.max,
            })
            .collect();
        let schema = manifest.schema.clone().unwrap_or_default();
        Self::new(features, label_rule(&schema), time_rule(&schema))
    }

    pub fn features(&self) -> &[FeatureRule] {
        &self.features
    }

    pub fn label(&self) -> Option<&LabelRule> {
        self.label.as_ref()
    }

    pub fn time(&self) -> Option<&TimeRule> {
        self.time.as_ref()
    }

    pub fn decode(&self, payload: &[u8], format: PayloadFormat) -> Result<DecodedEvent, String> {
        let mut event = DecodedEvent::default();
        self.decode_into(payload, format, &mut event)?;
        Ok(event)
    }

    /// Reads `payload` into `event`; an error says why the payload is not an event at all.
    pub fn decode_into(&self, payload: &[u8], format: PayloadFormat, event: &mut DecodedEvent) -> Result<(), String> {
        event.values.clear();
        event.values.resize(self.features.len(), FieldValue::Missing);
        event.label = None;
        event.time_ms = None;
        event.time_invalid = false;
        match format {
            PayloadFormat::Json => walk::walk(self, payload, event).map_err(|e| e.to_string()),
            PayloadFormat::Protobuf => {
                // Read as the JSON it maps to, so both formats mean exactly the same.
                let value = protobuf::sensor_reading_to_json(payload)?;
                let json = serde_json::to_vec(&value).map_err(|e| format!("the reading cannot be read: {e}"))?;
                walk::walk(self, &json, event).map_err(|e| e.to_string())
            }
        }
    }

    /// Appends the event's feature values in column order to `row`, or says what is wrong with
    /// each feature that cannot be used (every one, not just the first).
    pub fn extend_row(&self, event: &DecodedEvent, row: &mut Vec<f32>) -> Result<(), Vec<Problem>> {
        let start = row.len();
        let mut problems = Vec::new();
        for (i, (value, rule)) in event.values.iter().zip(&self.features).enumerate() {
            let kind = match *value {
                FieldValue::Missing => ProblemKind::Missing,
                FieldValue::NotNumeric => ProblemKind::NotNumeric,
                FieldValue::Number(v) => match value_problem(v, rule) {
                    Some(kind) => kind,
                    None => {
                        row.push(v as f32);
                        continue;
                    }
                },
            };
            problems.push(Problem { feature: i, kind });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            row.truncate(start);
            Err(problems)
        }
    }

    /// Checks rows already in the version's feature order (a tensor sent as it is) by the same
    /// rules as [`EventDecoder::extend_row`]: the first row with a problem, and its problems.
    pub fn check_rows(&self, values: &[f32]) -> Result<(), (usize, Vec<Problem>)> {
        let width = self.features.len();
        for (index, row) in values.chunks(width).enumerate() {
            let problems: Vec<Problem> = row
                .iter()
                .zip(&self.features)
                .enumerate()
                .filter_map(|(feature, (v, rule))| {
                    value_problem(f64::from(*v), rule).map(|kind| Problem { feature, kind })
                })
                .collect();
            if !problems.is_empty() {
                return Err((index, problems));
            }
        }
        Ok(())
    }

    /// One sentence naming every problem, for errors returned to callers.
    pub fn describe(&self, problems: &[Problem]) -> String {
        let parts: Vec<String> = problems
            .iter()
            .map(|p| {
                let name = &self.features[p.feature].path;
                match p.kind {
                    ProblemKind::Missing => format!("feature {name:?} is missing"),
                    ProblemKind::NotNumeric => format!("feature {name:?} is not a number"),
                    ProblemKind::NotFinite => format!("feature {name:?} is not a finite number"),
                    ProblemKind::BelowMin { value, min } => {
                        format!("feature {name:?} = {value} is below its valid minimum {min}")
                    }
                    ProblemKind::AboveMax { value, max } => {
                        format!("feature {name:?} = {value} is above its valid maximum {max}")
                    }
                }
            })
            .collect();
        parts.join("; ")
    }

    /// The skip-map key of a problem: `reason:feature-path`.
    pub fn reason_key(&self, problem: &Problem) -> String {
        format!("{}:{}", problem.kind.reason(), self.features[problem.feature].path)
    }
}

/// The one check of a feature's number against its rule, wherever a row is made.
fn value_problem(v: f64, rule: &FeatureRule) -> Option<ProblemKind> {
    // Finite as f64 but too large for f32 is not finite for the network either.
    if !v.is_finite() || !(v as f32).is_finite() {
        return Some(ProblemKind::NotFinite);
    }
    match (rule.min, rule.max) {
        (Some(min), _) if v < min => Some(ProblemKind::BelowMin { value: v, min }),
        (_, Some(max)) if v > max => Some(ProblemKind::AboveMax { value: v, max }),
        _ => None,
    }
}

/// The label rule of a schema, when it names a label field.
pub fn label_rule(schema: &EventSchema) -> Option<LabelRule> {
    (!schema.label_field.is_empty()).then(|| LabelRule::new(&schema.label_field, &schema.positive_labels))
}

/// The time rule of a schema, when event time comes from a field.
pub fn time_rule(schema: &EventSchema) -> Option<TimeRule> {
    let time = schema.time.as_ref()?;
    (!time.field.is_empty()).then(|| TimeRule {
        path: time.field.clone(),
        format: TimeFormat::try_from(time.format).unwrap_or(TimeFormat::Unspecified),
    })
}

/// A value at a path, as the walk hands it over.
enum Scalar<'a> {
    Number(f64),
    Text(&'a str),
    Bool(bool),
    /// An object or an array.
    Composite,
}

impl EventDecoder {
    /// Records the value found at `target`'s path.
    fn set(&self, out: &mut DecodedEvent, target: Target, value: Scalar<'_>) {
        match target {
            Target::Feature(i) => {
                out.values[i] = match value {
                    Scalar::Number(n) => FieldValue::Number(n),
                    Scalar::Text(s) => s.trim().parse().map_or(FieldValue::NotNumeric, FieldValue::Number),
                    Scalar::Bool(_) | Scalar::Composite => FieldValue::NotNumeric,
                };
            }
            Target::Label => {
                let Some(rule) = &self.label else { return };
                out.label = match value {
                    Scalar::Number(n) => Some(rule.number(n)),
                    Scalar::Text(s) => Some(rule.text(s)),
                    Scalar::Bool(b) => Some(rule.text(if b { "true" } else { "false" })),
                    Scalar::Composite => None,
                };
            }
            Target::Time => {
                let Some(rule) = &self.time else { return };
                let ms = match value {
                    Scalar::Number(n) => rule.number(n),
                    Scalar::Text(s) => rule.text(s),
                    Scalar::Bool(_) | Scalar::Composite => None,
                };
                out.time_ms = ms;
                out.time_invalid = ms.is_none();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str) -> FeatureRule {
        FeatureRule {
            path: path.to_owned(),
            min: None,
            max: None,
        }
    }

    fn decoder(paths: &[&str]) -> EventDecoder {
        EventDecoder::new(paths.iter().map(|p| rule(p)).collect(), None, None).unwrap()
    }

    #[test]
    fn nested_paths_numeric_strings_and_array_indices() {
        let d = decoder(&["speed", "engine.coolant_temp", "tires.1", "flat.key", "deep.a.b"]);
        let e = d
            .decode(
                br#"{"speed":"24.9","engine":{"coolant_temp":39.4,"rpm":900},"tires":[30,31.5,29],
                    "flat.key":7,"deep":{"a":{"b":-1e3}},"ignored":{"x":[1,{"y":2}]}}"#,
                PayloadFormat::Json,
            )
            .unwrap();
        let mut row = Vec::new();
        d.extend_row(&e, &mut row).unwrap();
        assert_eq!(row, vec![24.9, 39.4, 31.5, 7.0, -1000.0]);
    }

    /// Keys are matched as bytes: escapes in a key still spell its name, and a key that is not
    /// UTF-8 still makes the event not JSON, named or not.
    #[test]
    fn escaped_keys_match_and_keys_that_are_not_utf8_are_refused() {
        let d = decoder(&["speed", "engine.rpm"]);
        let e = d
            .decode(br#"{"sp\u0065ed":3,"engine\u002erpm":900}"#, PayloadFormat::Json)
            .unwrap();
        let mut row = Vec::new();
        d.extend_row(&e, &mut row).unwrap();
        assert_eq!(row, vec![3.0, 900.0]);
        for bad in [
            &b"{\"speed\":1,\"engine\":{\"rpm\":2},\"x\xff\":0}"[..],
            b"{\"sp\xffeed\":1}",
        ] {
            let err = d.decode(bad, PayloadFormat::Json).unwrap_err();
            assert!(err.contains("not JSON") || err.contains("unicode"), "{err}");
        }
    }

    #[test]
    fn every_problem_is_named() {
        let mut rules = vec![rule("a"), rule("b"), rule("c"), rule("d"), rule("e"), rule("f")];
        rules[4].max = Some(10.0);
        rules[5].min = Some(0.0);
        let d = EventDecoder::new(rules, None, None).unwrap();
        let e = d
            .decode(
                br#"{"b":"hot","c":"NaN","d":{"x":1},"e":11,"f":-1,"a":null}"#,
                PayloadFormat::Json,
            )
            .unwrap();
        let problems = d.extend_row(&e, &mut Vec::new()).unwrap_err();
        let reasons: Vec<String> = problems.iter().map(|p| d.reason_key(p)).collect();
        assert_eq!(
            reasons,
            [
                "missing:a",
                "not_numeric:b",
                "not_finite:c",
                "not_numeric:d",
                "above_max:e",
                "below_min:f"
            ]
        );
        let text = d.describe(&problems);
        assert!(
            text.contains(r#"feature "e" = 11 is above its valid maximum 10"#),
            "{text}"
        );
        // A value too large for f32 is not finite for the network.
        let e = d
            .decode(br#"{"a":1e300,"b":1,"c":1,"d":1,"e":1,"f":1}"#, PayloadFormat::Json)
            .unwrap();
        assert_eq!(
            d.extend_row(&e, &mut Vec::new()).unwrap_err()[0].kind,
            ProblemKind::NotFinite
        );
        // Rows sent as a tensor meet the same rules, and the first bad row is named.
        assert_eq!(d.check_rows(&[1.0, 1.0, 1.0, 1.0, 10.0, 0.0]), Ok(()));
        let (row, problems) = d
            .check_rows(&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, f32::NAN, 1.0, 1.0, 11.0, -1.0])
            .unwrap_err();
        assert_eq!(row, 1);
        let reasons: Vec<String> = problems.iter().map(|p| d.reason_key(p)).collect();
        assert_eq!(reasons, ["not_finite:b", "above_max:e", "below_min:f"]);
    }

    #[test]
    fn labels_and_time_follow_the_schema() {
        let d = EventDecoder::new(
            vec![rule("x")],
            Some(LabelRule::new("status.state", &["failed".into(), "broken".into()])),
            Some(TimeRule {
                path: "ts".into(),
                format: TimeFormat::Unspecified,
            }),
        )
        .unwrap();
        let read = |json: &str| d.decode(json.as_bytes(), PayloadFormat::Json).unwrap();
        let e = read(r#"{"x":1,"status":{"state":"Failed"},"ts":"2019-09-04T14:09:56Z"}"#);
        assert_eq!((e.label, e.time_ms), (Some(true), Some(1_567_606_196_000)));
        let e = read(r#"{"x":1,"status":{"state":"ok"},"ts":1567606196}"#);
        assert_eq!((e.label, e.time_ms), (Some(false), Some(1_567_606_196_000)));
        let e = read(r#"{"x":1,"ts":1567606196123}"#);
        assert_eq!((e.label, e.time_ms), (None, Some(1_567_606_196_123)));
        let e = read(r#"{"x":1,"ts":"last tuesday"}"#);
        assert!(e.time_invalid);

        let default = LabelRule::new("l", &[]);
        assert!(default.text("TRUE") && default.text("1") && default.number(1.0) && default.text("1.0"));
        assert!(!default.text("false") && !default.number(0.0));
    }

    #[test]
    fn events_that_are_not_objects_are_refused() {
        let d = decoder(&["x"]);
        for bad in ["[1,2]", "3", "\"x\"", "null", "{not json", "{\"x\":1} trailing"] {
            assert!(d.decode(bad.as_bytes(), PayloadFormat::Json).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_thousand_features_decode_in_their_columns() {
        let paths: Vec<String> = (0..1024).map(|i| format!("group{}.sensor{i}", i % 7)).collect();
        let d = EventDecoder::new(paths.iter().map(|p| rule(p)).collect(), None, None).unwrap();
        let mut event = serde_json::Map::new();
        for (i, path) in paths.iter().enumerate().rev() {
            let (group, sensor) = path.split_once('.').unwrap();
            let object = event
                .entry(group.to_owned())
                .or_insert_with(|| serde_json::json!({}))
                .as_object_mut()
                .unwrap();
            object.insert(sensor.to_owned(), serde_json::json!(i));
        }
        let payload = serde_json::to_vec(&event).unwrap();
        let mut row = Vec::new();
        d.extend_row(&d.decode(&payload, PayloadFormat::Json).unwrap(), &mut row)
            .unwrap();
        assert_eq!(row, (0..1024).map(|i| i as f32).collect::<Vec<_>>());
        let too_many: Vec<FeatureRule> = (0..1025).map(|i| rule(&format!("f{i}"))).collect();
        assert!(
            EventDecoder::new(too_many, None, None)
                .unwrap_err()
                .contains("at most 1024")
        );
    }

    #[test]
    fn schemas_that_cannot_work_are_refused() {
        assert!(EventDecoder::new(vec![], None, None).is_err());
        assert!(EventDecoder::new(vec![rule("a"), rule("a")], None, None).is_err());
        let mut r = rule("a");
        (r.min, r.max) = (Some(2.0), Some(1.0));
        assert!(
            EventDecoder::new(vec![r], None, None)
                .unwrap_err()
                .contains("min 2 above max 1")
        );
        assert!(EventDecoder::new(vec![rule("a")], Some(LabelRule::new("a", &[])), None).is_err());
        assert!(EventDecoder::new(vec![rule("a..b")], None, None).is_err());
    }
}
