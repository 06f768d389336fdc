//! The event schema: how a model reads the user's events. Features are field paths into the
//! event (nested objects and array indices allowed), each with an optional validity rule; the
//! label and the event time are paths too. Nothing here knows a sensor name: a version's schema
//! travels in its manifest, and the trainer and the predictor decode with it.

mod decode;
mod profile;
mod protobuf;
mod time;

pub use decode::{
    DecodedEvent, EventDecoder, FeatureRule, FieldValue, LabelRule, Problem, ProblemKind, TimeRule, label_rule,
    time_rule,
};
pub use profile::{FieldProfile, Inferred, Profile, Sample, infer_features};
pub use time::parse_rfc3339_ms;

/// Longest path accepted; far beyond any real field name.
pub const MAX_PATH_LEN: usize = 512;
/// Most features a model may take.
pub const MAX_FEATURES: usize = 1024;

/// How a payload is encoded, from the record's `content-type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    Json,
    /// A protobuf `kappa.fleet.v1.SensorReading`, read by its proto field names.
    Protobuf,
}

impl PayloadFormat {
    /// `application/x-protobuf` (parameters allowed) means protobuf; anything else is JSON.
    pub fn from_content_type(value: Option<&[u8]>) -> Self {
        let Some(value) = value else { return Self::Json };
        let essence = value.split(|b| *b == b';').next().unwrap_or_default();
        if essence.trim_ascii().eq_ignore_ascii_case(b"application/x-protobuf") {
            Self::Protobuf
        } else {
            Self::Json
        }
    }
}

/// Checks a field path: dot-separated, non-empty segments, printable, bounded.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("the path is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("the path {path:?} contains a control character"));
    }
    if path.split('.').any(str::is_empty) {
        return Err(format!(
            "the path {path:?} has an empty segment (a leading, trailing or doubled '.')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_selects_protobuf_only_when_it_says_so() {
        assert_eq!(
            PayloadFormat::from_content_type(Some(b"application/x-protobuf")),
            PayloadFormat::Protobuf
        );
        assert_eq!(
            PayloadFormat::from_content_type(Some(b"Application/X-Protobuf; proto=kappa.fleet.v1.SensorReading")),
            PayloadFormat::Protobuf
        );
        assert_eq!(
            PayloadFormat::from_content_type(Some(b"application/json")),
            PayloadFormat::Json
        );
        assert_eq!(PayloadFormat::from_content_type(None), PayloadFormat::Json);
    }

    #[test]
    fn paths_are_checked() {
        assert!(validate_path("engine.coolant_temp").is_ok());
        assert!(validate_path("tires.0").is_ok());
        for bad in ["", ".a", "a.", "a..b", "a\nb"] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
    }
}
