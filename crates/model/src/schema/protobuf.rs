//! Protobuf events, read by their descriptor rather than by generated code, so that a protobuf
//! event is addressed with the same paths as its JSON twin (proto field names, nested messages
//! as objects, repeated fields as arrays) and no code names its fields.

use std::{collections::HashMap, sync::OnceLock};

use prost::{
    Message as _,
    bytes::Buf as _,
    encoding::{WireType, decode_key, decode_varint},
};
use prost_types::{
    DescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};
use serde_json::{Map, Value};

/// The message a protobuf payload on a sensor topic holds.
const SENSOR_READING: &str = ".kappa.fleet.v1.SensorReading";
/// Nested messages deeper than this are refused: a forged payload must not recurse without end.
const MAX_DEPTH: usize = 32;

fn messages() -> &'static HashMap<String, DescriptorProto> {
    static MESSAGES: OnceLock<HashMap<String, DescriptorProto>> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        let set =
            FileDescriptorSet::decode(kappa_api::FILE_DESCRIPTOR_SET).expect("the built-in descriptor set decodes");
        let mut all = HashMap::new();
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for message in file.message_type {
                collect(&format!(".{package}"), message, &mut all);
            }
        }
        all
    })
}

fn collect(scope: &str, message: DescriptorProto, all: &mut HashMap<String, DescriptorProto>) {
    let name = format!("{scope}.{}", message.name());
    for nested in &message.nested_type {
        collect(&name, nested.clone(), all);
    }
    all.insert(name, message);
}

/// A `SensorReading` payload as a JSON object keyed by proto field names. Scalars without
/// presence read as their default (proto3 cannot tell 0 from unset); `optional` ones only when set.
pub fn sensor_reading_to_json(payload: &[u8]) -> Result<Value, String> {
    let message = messages()
        .get(SENSOR_READING)
        .ok_or("the SensorReading descriptor is missing")?;
    decode(message, payload, 0).map_err(|e| format!("not a SensorReading: {e}"))
}

fn decode(message: &DescriptorProto, mut buf: &[u8], depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("messages nested too deeply".into());
    }
    let mut object = Map::new();
    for field in &message.field {
        let repeated = field.label() == Label::Repeated;
        if repeated {
            object.insert(field.name().to_owned(), Value::Array(Vec::new()));
        } else if !field.proto3_optional() && field.r#type() != Type::Message {
            object.insert(field.name().to_owned(), default_value(field.r#type()));
        }
    }
    while !buf.is_empty() {
        let (number, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        let Some(field) = message.field.iter().find(|f| f.number() == number as i32) else {
            skip(wire, &mut buf)?;
            continue;
        };
        let repeated = field.label() == Label::Repeated;
        let kind = field.r#type();
        let mut values = Vec::new();
        if repeated && wire == WireType::LengthDelimited && is_packable(kind) {
            let len = length(&mut buf)?;
            let (mut packed, rest) = buf.split_at(len);
            while !packed.is_empty() {
                values.push(scalar(kind, scalar_wire(kind), &mut packed)?);
            }
            buf = rest;
        } else if kind == Type::Message {
            if wire != WireType::LengthDelimited {
                return Err(format!("field {} has the wrong wire type", field.name()));
            }
            let len = length(&mut buf)?;
            let nested = messages()
                .get(field.type_name())
                .ok_or_else(|| format!("unknown message type {}", field.type_name()))?;
            values.push(decode(nested, &buf[..len], depth + 1)?);
            buf = &buf[len..];
        } else {
            values.push(scalar(kind, wire, &mut buf)?);
        }
        if repeated {
            if let Some(Value::Array(items)) = object.get_mut(field.name()) {
                items.extend(values);
            }
        } else if let Some(value) = values.pop() {
            object.insert(field.name().to_owned(), value);
        }
    }
    Ok(Value::Object(object))
}

fn length(buf: &mut &[u8]) -> Result<usize, String> {
    let len = decode_varint(buf).map_err(|e| e.to_string())? as usize;
    if len > buf.len() {
        return Err("a length runs past the end of the message".into());
    }
    Ok(len)
}

fn skip(wire: WireType, buf: &mut &[u8]) -> Result<(), String> {
    let n = match wire {
        WireType::Varint => {
            decode_varint(buf).map_err(|e| e.to_string())?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => length(buf)?,
        WireType::StartGroup | WireType::EndGroup => return Err("groups are not supported".into()),
    };
    if n > buf.len() {
        return Err("a field runs past the end of the message".into());
    }
    buf.advance(n);
    Ok(())
}

fn is_packable(kind: Type) -> bool {
    !matches!(kind, Type::String | Type::Bytes | Type::Message | Type::Group)
}

fn scalar_wire(kind: Type) -> WireType {
    match kind {
        Type::Double | Type::Fixed64 | Type::Sfixed64 => WireType::SixtyFourBit,
        Type::Float | Type::Fixed32 | Type::Sfixed32 => WireType::ThirtyTwoBit,
        Type::String | Type::Bytes | Type::Message | Type::Group => WireType::LengthDelimited,
        _ => WireType::Varint,
    }
}

fn default_value(kind: Type) -> Value {
    match kind {
        Type::String | Type::Bytes => Value::String(String::new()),
        Type::Bool => Value::Bool(false),
        _ => Value::from(0),
    }
}

fn scalar(kind: Type, wire: WireType, buf: &mut &[u8]) -> Result<Value, String> {
    if wire != scalar_wire(kind) {
        return Err(format!("a {kind:?} field has wire type {wire:?}"));
    }
    let need = |n: usize, buf: &&[u8]| {
        if buf.len() < n {
            Err("a field runs past the end of the message".to_owned())
        } else {
            Ok(())
        }
    };
    Ok(match kind {
        Type::Double => {
            need(8, buf)?;
            serde_json::Number::from_f64(buf.get_f64_le()).map_or(Value::Null, Value::Number)
        }
        Type::Float => {
            need(4, buf)?;
            serde_json::Number::from_f64(f64::from(buf.get_f32_le())).map_or(Value::Null, Value::Number)
        }
        Type::Fixed64 => {
            need(8, buf)?;
            Value::from(buf.get_u64_le())
        }
        Type::Sfixed64 => {
            need(8, buf)?;
            Value::from(buf.get_i64_le())
        }
        Type::Fixed32 => {
            need(4, buf)?;
            Value::from(buf.get_u32_le())
        }
        Type::Sfixed32 => {
            need(4, buf)?;
            Value::from(buf.get_i32_le())
        }
        Type::String | Type::Bytes => {
            let len = length(buf)?;
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            buf.advance(len);
            if kind == Type::Bytes {
                Value::Null
            } else {
                Value::String(text)
            }
        }
        Type::Message | Type::Group => return Err("nested message where a scalar was expected".into()),
        varint => {
            let v = decode_varint(buf).map_err(|e| e.to_string())?;
            match varint {
                Type::Bool => Value::Bool(v != 0),
                Type::Uint64 => Value::from(v),
                Type::Uint32 => Value::from(v as u32),
                Type::Sint32 | Type::Sint64 => Value::from(((v >> 1) as i64) ^ -((v & 1) as i64)),
                Type::Int32 | Type::Enum => Value::from(v as i32),
                _ => Value::from(v as i64),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_api::fleet::SensorReading;

    #[test]
    fn readings_decode_by_field_name_with_proto3_defaults() {
        let reading = SensorReading {
            car: "car1".into(),
            time_ms: 1_567_606_196_000,
            speed: 3.5,
            tire_pressure_1_1: 31.0,
            failure_occurred: Some(true),
            ..Default::default()
        };
        let json = sensor_reading_to_json(&reading.encode_to_vec()).unwrap();
        assert_eq!(json["car"], "car1");
        assert_eq!(json["time_ms"], 1_567_606_196_000_i64);
        assert_eq!(json["speed"], 3.5);
        assert_eq!(json["tire_pressure_1_1"], 31.0);
        // Unset proto3 scalars are their defaults; an unset `optional` is absent.
        assert_eq!(json["coolant_temp"], 0);
        assert_eq!(json["failure_occurred"], true);
        let unlabelled = sensor_reading_to_json(&SensorReading::default().encode_to_vec()).unwrap();
        assert!(unlabelled.get("failure_occurred").is_none());
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bad in [&[0xff_u8, 0xff, 0xff][..], &[0x0a, 0x50, 0x01], &[0x19, 0x01]] {
            assert!(sensor_reading_to_json(bad).is_err(), "{bad:?}");
        }
    }
}
