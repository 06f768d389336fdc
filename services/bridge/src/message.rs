//! What the bridge makes of one MQTT message: its Kafka key, its headers, and whether its
//! payload is readable (JSON, or protobuf its publisher declared with a content type).

use rumqttc::v5::mqttbytes::v5::Publish;

/// The level of `topic` that the filter's `+` matches (the car's id); empty when the filter has
/// no `+` or the topic does not line up with it.
pub fn key_of<'a>(filter: &str, topic: &'a str) -> &'a str {
    let Some(index) = filter.split('/').position(|l| l == "+") else {
        return "";
    };
    topic.split('/').nth(index).unwrap_or("")
}

/// Where a message goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Sensor,
    DeadLetter(String),
}

pub const PROTOBUF: &str = "application/x-protobuf";

/// JSON (any value, objects most of all), or a payload its publisher declared as protobuf.
pub fn route(payload: &[u8], content_type: Option<&str>) -> Route {
    if content_type.is_some_and(|t| t.eq_ignore_ascii_case(PROTOBUF)) {
        return if payload.is_empty() {
            Route::DeadLetter("empty protobuf payload".into())
        } else {
            Route::Sensor
        };
    }
    match serde_json::from_slice::<serde::de::IgnoredAny>(payload) {
        Ok(_) => Route::Sensor,
        Err(e) => Route::DeadLetter(format!("not JSON: {e}")),
    }
}

/// The message's MQTT 5 user property `name`, when it carries one.
pub fn user_property<'a>(publish: &'a Publish, name: &str) -> Option<&'a str> {
    publish
        .properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn content_type(publish: &Publish) -> Option<&str> {
    publish.properties.as_ref()?.content_type.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plus_level_is_the_key() {
        assert_eq!(key_of("cars/+/telemetry", "cars/car-7/telemetry"), "car-7");
        assert_eq!(key_of("fleet/eu/+/#", "fleet/eu/truck9/engine/temp"), "truck9");
        assert_eq!(key_of("cars/#", "cars/a/b"), "");
    }

    #[test]
    fn json_and_declared_protobuf_flow_the_rest_is_dead_lettered() {
        assert_eq!(route(br#"{"speed": 3}"#, None), Route::Sensor);
        assert_eq!(route(b"\x08\x01", Some("application/x-protobuf")), Route::Sensor);
        assert!(matches!(route(b"{not json", None), Route::DeadLetter(r) if r.starts_with("not JSON")));
        assert!(matches!(route(b"", None), Route::DeadLetter(_)));
        assert!(matches!(route(b"", Some(PROTOBUF)), Route::DeadLetter(_)));
    }
}
