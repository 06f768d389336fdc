//! Reads a JSON event along the decoder's path tree in one pass over its bytes. Everything is
//! checked as JSON (RFC 8259: grammar, escapes, UTF-8, nesting), but only the values a path
//! names are converted: a skipped number is scanned, never parsed, and no string is copied
//! unless it holds an escape. serde_json did the same walk through a visitor, at twice the cost
//! per event: its number parsing and key hand-over were most of a training read's decode.

use std::borrow::Cow;

use super::{DecodedEvent, EventDecoder, Node, Scalar};

/// Objects and arrays nested deeper than this are refused (serde_json's limit too): the walk
/// recurses, and an event must not be able to exhaust the stack.
const MAX_DEPTH: u32 = 128;

/// Why a payload is not an event.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum WalkError {
    /// Not JSON at all: what was wrong, and at which byte.
    Syntax { what: &'static str, at: usize },
    /// JSON, but not an object.
    NotObject(&'static str),
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax { what, at } => write!(f, "the event is not JSON: {what} at byte {at}"),
            Self::NotObject(found) => write!(f, "the event is not a JSON object: found {found}"),
        }
    }
}

type Result<T> = std::result::Result<T, WalkError>;

/// Reads `bytes` into `out`, which the caller has reset.
pub(super) fn walk(decoder: &EventDecoder, bytes: &[u8], out: &mut DecodedEvent) -> Result<()> {
    let mut walk = Walk {
        decoder,
        out,
        bytes,
        at: 0,
        depth: 0,
    };
    walk.space();
    match walk.peek() {
        Some(b'{') => walk.object(Some(&decoder.root))?,
        Some(b'[') => {
            walk.value(None)?;
            walk.end()?;
            return Err(WalkError::NotObject("an array"));
        }
        _ => {
            walk.value(None)?;
            walk.end()?;
            return Err(WalkError::NotObject("a single value"));
        }
    }
    walk.end()
}

struct Walk<'d, 'o, 'b> {
    decoder: &'d EventDecoder,
    out: &'o mut DecodedEvent,
    bytes: &'b [u8],
    at: usize,
    depth: u32,
}

impl<'d, 'b> Walk<'d, '_, 'b> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn fail<T>(&self, what: &'static str) -> Result<T> {
        Err(WalkError::Syntax { what, at: self.at })
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    fn end(&mut self) -> Result<()> {
        self.space();
        match self.peek() {
            None => Ok(()),
            Some(_) => self.fail("trailing characters after the event"),
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<()> {
        self.space();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else if self.peek().is_none() {
            self.fail("the event ends early")
        } else {
            self.fail(what)
        }
    }

    fn set(&mut self, node: Option<&Node>, value: Scalar<'_>) {
        if let Some(target) = node.and_then(|n| n.target) {
            self.decoder.set(self.out, target, value);
        }
    }

    /// Any value; `node` is where it sits in the path tree, `None` off the tree.
    fn value(&mut self, node: Option<&'d Node>) -> Result<()> {
        self.space();
        match self.peek() {
            Some(b'{') => self.object(node),
            Some(b'[') => self.array(node),
            Some(b'"') => {
                let text = self.string()?;
                if node.is_some_and(|n| n.target.is_some()) {
                    // UTF-8 checked by `string`.
                    let text = std::str::from_utf8(&text).unwrap_or_default();
                    self.set(node, Scalar::Text(text));
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true", node, Some(Scalar::Bool(true))),
            Some(b'f') => self.literal(b"false", node, Some(Scalar::Bool(false))),
            // null is absent: the value stays as it was.
            Some(b'n') => self.literal(b"null", node, None),
            Some(b'-' | b'0'..=b'9') => {
                let n = self.number()?;
                self.set(node, Scalar::Number(n));
                Ok(())
            }
            Some(_) => self.fail("expected a value"),
            None => self.fail("the event ends early"),
        }
    }

    fn literal(&mut self, word: &'static [u8], node: Option<&Node>, value: Option<Scalar<'_>>) -> Result<()> {
        if !self.bytes[self.at..].starts_with(word) {
            return self.fail("expected a value");
        }
        self.at += word.len();
        if let Some(value) = value {
            self.set(node, value);
        }
        Ok(())
    }

    /// Steps into an object or array (at its opening bracket); false when it is empty, and
    /// then already stepped out of.
    fn open(&mut self, node: Option<&Node>, close: u8) -> Result<bool> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail("nested more than 128 levels deep");
        }
        self.at += 1;
        self.set(node, Scalar::Composite);
        self.space();
        if self.peek() == Some(close) {
            self.close();
            return Ok(false);
        }
        Ok(true)
    }

    fn close(&mut self) {
        self.at += 1;
        self.depth -= 1;
    }

    /// After a member or element: true when another follows, false at the closing bracket.
    fn more(&mut self, close: u8, what: &'static str) -> Result<bool> {
        self.space();
        match self.peek() {
            Some(b',') => {
                self.at += 1;
                Ok(true)
            }
            Some(b) if b == close => {
                self.close();
                Ok(false)
            }
            Some(_) => self.fail(what),
            None => self.fail("the event ends early"),
        }
    }

    fn object(&mut self, node: Option<&'d Node>) -> Result<()> {
        let mut more = self.open(node, b'}')?;
        while more {
            self.space();
            if self.peek() != Some(b'"') {
                return self.fail("expected a key in quotes");
            }
            let key = self.string()?;
            let child = node.and_then(|n| n.key(&key));
            self.expect(b':', "expected ':' after a key")?;
            self.value(child)?;
            more = self.more(b'}', "expected ',' or '}' in an object")?;
        }
        Ok(())
    }

    fn array(&mut self, node: Option<&'d Node>) -> Result<()> {
        let mut more = self.open(node, b']')?;
        let mut i = 0;
        while more {
            self.value(node.and_then(|n| n.index(i)))?;
            i += 1;
            more = self.more(b']', "expected ',' or ']' in an array")?;
        }
        Ok(())
    }

    /// A number, its grammar checked: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    /// The digits are gathered as they are checked; see [`to_f64`] for the conversion.
    fn number(&mut self) -> Result<f64> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let mut digits = Digits::default();
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(&mut digits, 0),
            _ => return self.fail("expected a digit"),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail("expected a digit after the decimal point");
            }
            self.digits(&mut digits, -1);
        }
        let mut exponent = 0_i64;
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            let sign = match self.peek() {
                Some(b'-') => {
                    self.at += 1;
                    -1
                }
                Some(b'+') => {
                    self.at += 1;
                    1
                }
                _ => 1,
            };
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail("expected a digit in the exponent");
            }
            while let Some(d @ b'0'..=b'9') = self.peek() {
                // Saturates: an exponent that large is infinity or zero whatever its digits.
                exponent = (exponent * 10 + i64::from(d - b'0')).min(1 << 32);
                self.at += 1;
            }
            exponent *= sign;
        }
        Ok(to_f64(negative, digits, exponent, &self.bytes[start..self.at]))
    }

    /// Digits of the integer part (`shift` 0) or of the fraction (`shift` -1 per digit).
    fn digits(&mut self, digits: &mut Digits, shift: i64) {
        while let Some(d @ b'0'..=b'9') = self.peek() {
            self.at += 1;
            if digits.significand < MAX_GATHERED {
                digits.significand = digits.significand * 10 + u64::from(d - b'0');
                digits.exponent += shift;
            } else {
                // Past nineteen digits: the text goes to the exact parser instead.
                digits.inexact = true;
                digits.exponent += shift + 1;
            }
        }
    }

    /// A string (at its opening quote), checked and unescaped: borrowed from the event unless
    /// it holds an escape.
    fn string(&mut self) -> Result<Cow<'b, [u8]>> {
        self.at += 1;
        let start = self.at;
        let (run, wide) = self.plain_run();
        if self.peek() == Some(b'"') {
            self.at += 1;
            let text = &self.bytes[start..start + run];
            if wide {
                self.utf8(text, start)?;
            }
            return Ok(Cow::Borrowed(text));
        }
        let mut owned = Vec::with_capacity(run + 16);
        owned.extend_from_slice(&self.bytes[start..start + run]);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    self.utf8(&owned, start)?;
                    return Ok(Cow::Owned(owned));
                }
                Some(b'\\') => {
                    self.at += 1;
                    self.escape(&mut owned)?;
                }
                Some(_) => return self.fail("a control character in a string"),
                None => return self.fail("the event ends inside a string"),
            }
            let from = self.at;
            let (run, _) = self.plain_run();
            owned.extend_from_slice(&self.bytes[from..from + run]);
        }
    }

    /// Steps over bytes that stand for themselves in a string; returns how many, and whether
    /// any was not ASCII (only then need the string's UTF-8 be checked). Eight bytes at a time:
    /// strings are most of an event's bytes.
    fn plain_run(&mut self) -> (usize, bool) {
        const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
        const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
        let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let rest = &self.bytes[self.at..];
        let (mut run, mut high) = (0, 0_u64);
        while let Some(chunk) = rest.get(run..run + 8) {
            let v = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            // A byte that is '"', '\\' or below 0x20 (the flags are exact up to the first).
            let stop = zero_byte(v ^ (ONES * u64::from(b'"')))
                | zero_byte(v ^ (ONES * u64::from(b'\\')))
                | (v.wrapping_sub(ONES * 0x20) & !v & HIGH);
            if stop != 0 {
                let n = (stop.trailing_zeros() / 8) as usize;
                high |= v & HIGH & ((1_u64 << (n * 8)) - 1);
                run += n;
                self.at += run;
                return (run, high != 0);
            }
            high |= v & HIGH;
            run += 8;
        }
        for &b in &rest[run..] {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            high |= u64::from(b & 0x80);
            run += 1;
        }
        self.at += run;
        (run, high != 0)
    }

    fn utf8(&self, text: &[u8], start: usize) -> Result<()> {
        match std::str::from_utf8(text) {
            Ok(_) => Ok(()),
            Err(_) => Err(WalkError::Syntax {
                what: "a string that is not UTF-8",
                at: start,
            }),
        }
    }

    /// One escape, after its backslash, appended to `out` as UTF-8.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<()> {
        let simple = match self.peek() {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                self.at += 1;
                let unit = self.hex4()?;
                let code = match unit {
                    0xd800..=0xdbff => {
                        if !self.bytes[self.at..].starts_with(b"\\u") {
                            return self.fail("a lone surrogate in a \\u escape");
                        }
                        self.at += 2;
                        let low = self.hex4()?;
                        if !(0xdc00..=0xdfff).contains(&low) {
                            return self.fail("a lone surrogate in a \\u escape");
                        }
                        0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00)
                    }
                    0xdc00..=0xdfff => return self.fail("a lone surrogate in a \\u escape"),
                    unit => u32::from(unit),
                };
                let c = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                return Ok(());
            }
            Some(_) => return self.fail("an invalid escape in a string"),
            None => return self.fail("the event ends inside a string"),
        };
        self.at += 1;
        out.push(simple);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u16> {
        let Some(digits) = self.bytes.get(self.at..self.at + 4) else {
            return self.fail("the event ends inside a \\u escape");
        };
        let mut unit = 0_u16;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.fail("a \\u escape that is not four hex digits"),
            };
            unit = unit << 4 | u16::from(v);
        }
        self.at += 4;
        Ok(unit)
    }
}

/// Below this, `significand * 10 + digit` still fits in u64 (nineteen digits).
const MAX_GATHERED: u64 = 10_u64.pow(18);

/// A number's decimal digits as `significand * 10^exponent`.
#[derive(Debug, Default)]
struct Digits {
    significand: u64,
    exponent: i64,
    /// Digits past what the significand holds were dropped.
    inexact: bool,
}

/// Powers of ten that f64 holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// The number as f64. Up to nineteen digits and a power of ten f64 holds exactly, one
/// multiplication or division: exactly rounded when the significand is below 2^53 (Clinger's
/// fast path), within an f64 unit in the last place otherwise (serde_json's default does the
/// same), far below the f32 the network takes. Any other number goes to `str::parse` on its
/// text, which the grammar check makes valid; past f64's range that gives infinity, which the
/// feature rules refuse as not finite.
fn to_f64(negative: bool, digits: Digits, exponent: i64, text: &[u8]) -> f64 {
    let exponent = digits.exponent + exponent;
    let magnitude = if !digits.inexact && exponent.unsigned_abs() < POW10.len() as u64 {
        let significand = digits.significand as f64;
        if exponent < 0 {
            significand / POW10[exponent.unsigned_abs() as usize]
        } else {
            significand * POW10[exponent as usize]
        }
    } else {
        // ASCII by the grammar check.
        return std::str::from_utf8(text)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(f64::NAN);
    };
    if negative { -magnitude } else { magnitude }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use serde_json::{Value, json};

    use super::super::{DecodedEvent, EventDecoder, FeatureRule, FieldValue, LabelRule};
    use crate::schema::PayloadFormat;

    fn decoder(paths: &[String]) -> EventDecoder {
        let rules = paths
            .iter()
            .map(|p| FeatureRule {
                path: p.clone(),
                min: None,
                max: None,
            })
            .collect();
        EventDecoder::new(rules, Some(LabelRule::new("label", &[])), None).unwrap()
    }

    /// What a feature path holds in a parsed event, by the decoder's rules, written out
    /// independently of the walk: the reference it is checked against.
    fn reference(event: &Value, path: &str) -> FieldValue {
        let mut at = event;
        for segment in path.split('.') {
            let next = match at {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(v) => at = v,
                None => return FieldValue::Missing,
            }
        }
        match at {
            Value::Null => FieldValue::Missing,
            Value::Number(n) => FieldValue::Number(n.as_f64().unwrap()),
            Value::String(s) => s.trim().parse().map_or(FieldValue::NotNumeric, FieldValue::Number),
            _ => FieldValue::NotNumeric,
        }
    }

    fn number_text(rng: &mut StdRng) -> String {
        match rng.random_range(0..7) {
            0 => rng.random_range(-1e6..1e6_f64).to_string(),
            1 => rng.random::<f64>().to_string(),
            2 => rng.random_range(-1_000_000_i64..1_000_000).to_string(),
            3 => format!("{:e}", rng.random_range(-1e300..1e300_f64)),
            4 => format!("{}e{}", rng.random_range(1..99_999), rng.random_range(-330..330)),
            5 => format!(
                "{}.{:017}",
                rng.random_range(0..1000),
                rng.random::<u64>() % 10_u64.pow(17)
            ),
            _ => format!("{}", rng.random::<u64>()) + &"7".repeat(rng.random_range(0..12)),
        }
    }

    fn leaf(rng: &mut StdRng) -> String {
        match rng.random_range(0..10) {
            0 => "null".into(),
            1 => "true".into(),
            2 => format!("\"{}\"", number_text(rng)),
            3 => r#""h\u00e9t \"x\" \ud83d\ude97""#.into(),
            4 => "[1, {\"deep\": [null, \"ü\"]}, -0.5e-3]".into(),
            _ => number_text(rng),
        }
    }

    /// An event with `paths` at random depths, values of every kind, and fields no path names.
    fn event(rng: &mut StdRng, paths: &[String]) -> String {
        let mut fields = Vec::new();
        for path in paths {
            if rng.random_bool(0.9) {
                let mut value = leaf(rng);
                let mut segments: Vec<&str> = path.split('.').collect();
                while segments.len() > 1 {
                    let last = segments.pop().unwrap();
                    value = format!("{{\"other\": 1, \"{last}\": {value}}}");
                }
                fields.push(format!("\"{}\" :{value}", segments[0]));
            }
            if rng.random_bool(0.3) {
                fields.push(format!("\"noise{}\": {}", rng.random_range(0..5), leaf(rng)));
            }
        }
        fields.push(format!(
            "\"label\": {}",
            ["true", "\"false\"", "1", "null"][rng.random_range(0..4)]
        ));
        format!("{{ {} }}\n", fields.join(",\n "))
    }

    /// Equal, or as near as `ulps` units in the last place.
    fn near(walked: FieldValue, expected: FieldValue, ulps: f64) -> bool {
        match (walked, expected) {
            (FieldValue::Number(a), FieldValue::Number(b)) => a == b || (a - b).abs() <= b.abs() * f64::EPSILON * ulps,
            (a, b) => a == b,
        }
    }

    #[test]
    fn every_path_reads_what_a_full_parse_finds() {
        let paths: Vec<String> = ["speed", "engine.rpm", "cabin.air.temp", "wheels", "x.y.z.w"]
            .map(String::from)
            .to_vec();
        let d = decoder(&paths);
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = DecodedEvent::default();
        for _ in 0..5_000 {
            let text = event(&mut rng, &paths);
            let parsed: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                // serde_json refuses numbers past f64's range; the walk reads them as infinite.
                Err(e) if e.to_string().contains("out of range") => continue,
                Err(e) => panic!("{e}: {text}"),
            };
            d.decode_into(text.as_bytes(), PayloadFormat::Json, &mut out)
                .unwrap_or_else(|e| panic!("{e}: {text}"));
            for (i, path) in paths.iter().enumerate() {
                let expected = reference(&parsed, path);
                // serde_json's own conversion is off by a few units past 1e22.
                assert!(
                    near(out.values[i], expected, 8.0),
                    "{path}: {:?} against {expected:?} in {text}",
                    out.values[i]
                );
            }
            let label = match &parsed["label"] {
                Value::Null => None,
                v => Some(*v == json!(true) || *v == json!(1)),
            };
            assert_eq!(out.label, label, "{text}");
        }
    }

    #[test]
    fn numbers_convert_as_rust_parses_them() {
        let d = decoder(&["n".into()]);
        for text in [
            "0",
            "-0",
            "0.1",
            "1e22",
            "1e23",
            "9007199254740993",
            "123456789012345678901234567890",
            "2.2250738585072014e-308",
            "4.9e-324",
            "1e-400",
            "1.7976931348623157e308",
            "0.880272598481225",
            "13.533887105399467",
            "7540.165983225312",
            "-3.25E+2",
            "1e0000000000000000000001",
        ] {
            let event = d
                .decode(format!("{{\"n\":{text}}}").as_bytes(), PayloadFormat::Json)
                .unwrap();
            let exact: f64 = text.parse().unwrap();
            assert!(
                near(event.values[0], FieldValue::Number(exact), 1.0),
                "{text}: {:?}",
                event.values[0]
            );
        }
        let event = d.decode(br#"{"n":1e400}"#, PayloadFormat::Json).unwrap();
        assert_eq!(event.values[0], FieldValue::Number(f64::INFINITY));
    }

    /// The walk accepts exactly what a full JSON parser accepts as an object: every cut of a
    /// valid event and thousands of corruptions of it are checked against serde_json.
    #[test]
    fn what_is_not_json_is_refused_as_serde_json_refuses_it() {
        let paths: Vec<String> = ["speed", "engine.rpm"].map(String::from).to_vec();
        let d = decoder(&paths);
        let mut rng = StdRng::seed_from_u64(11);
        let text = event(&mut rng, &paths).into_bytes();
        for cut in 0..text.len() {
            let whole = text[..cut].iter().all(u8::is_ascii_whitespace) || cut + 1 < text.len();
            if whole {
                assert!(d.decode(&text[..cut], PayloadFormat::Json).is_err(), "{cut}");
            }
        }
        let specials = [
            b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b'e', b'.', b'-', 0x01, 0xff, 0xc3, b'u',
        ];
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut bad = text.clone();
            for _ in 0..rng.random_range(1..3) {
                let at = rng.random_range(0..bad.len());
                bad[at] = specials[rng.random_range(0..specials.len())];
            }
            let oracle = serde_json::from_slice::<Value>(&bad);
            if let Err(e) = &oracle
                && e.to_string().contains("out of range")
            {
                continue;
            }
            let expected = matches!(oracle, Ok(Value::Object(_)));
            let walked = d.decode(&bad, PayloadFormat::Json);
            assert_eq!(
                walked.is_ok(),
                expected,
                "{walked:?} for {}",
                String::from_utf8_lossy(&bad)
            );
            checked += 1;
        }
        assert!(checked > 19_000, "{checked}");
    }

    #[test]
    fn nesting_is_bounded_and_errors_say_where() {
        let d = decoder(&["a".into()]);
        let deep = format!("{{\"a\":1,\"b\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let err = d.decode(deep.as_bytes(), PayloadFormat::Json).unwrap_err();
        assert!(err.contains("128 levels"), "{err}");
        let ok = format!("{{\"a\":1,\"b\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(d.decode(ok.as_bytes(), PayloadFormat::Json).is_ok());
        let err = d.decode(br#"{"a":1,"b":tru}"#, PayloadFormat::Json).unwrap_err();
        assert_eq!(err, "the event is not JSON: expected a value at byte 11");
        let err = d.decode(br#"[{"a":1}]"#, PayloadFormat::Json).unwrap_err();
        assert_eq!(err, "the event is not a JSON object: found an array");
    }
}
