//! The one JSON reader every policy reads bodies through.
//!
//! A body is only checked if the service behind the proxy reads it the same way. Common readers
//! disagree on a few inputs, and an attacker picks exactly those: a duplicated member (Python
//! and Go keep the last, others the first), a member that differs only in case (Go's
//! `encoding/json` and .NET bind names case-insensitively), a byte-order mark, bytes that are
//! not UTF-8, a lone surrogate escape, an integer no 64-bit reader can hold. [`read`] refuses
//! every one of them as [`JsonError::Ambiguous`], so what a policy checked is what any service
//! reads. It also bounds nesting before building anything.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Deepest nesting any policy may allow (objects and arrays).
pub const MAX_DEPTH: usize = 256;

/// Why a body is not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON.
    Invalid,
    /// JSON that common readers read differently.
    Ambiguous(Ambiguity),
    /// Nested deeper than allowed.
    TooDeep { max_depth: usize },
}

/// Which reading differs between services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguity {
    ByteOrderMark,
    InvalidUtf8,
    LoneSurrogate,
    /// The same member name twice in one object (compared after unescaping).
    DuplicateMember,
    /// Two member names of one object that differ only in case.
    CaseVariantMember,
    /// An integer outside the 64-bit range.
    IntegerOutOfRange,
}

impl Ambiguity {
    /// A short description for denial messages; never a value from the body.
    pub fn describe(self) -> &'static str {
        match self {
            Ambiguity::ByteOrderMark => "the body starts with a byte-order mark",
            Ambiguity::InvalidUtf8 => "the body is not valid UTF-8",
            Ambiguity::LoneSurrogate => "a string has a lone surrogate escape",
            Ambiguity::DuplicateMember => "an object has the same member twice",
            Ambiguity::CaseVariantMember => "an object has members that differ only in case",
            Ambiguity::IntegerOutOfRange => "an integer is outside the 64-bit range",
        }
    }
}

/// A body read by [`read`]: the document and how deep it nests.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub value: Value,
    pub depth: usize,
}

/// Reads a JSON body strictly (see the module doc). `max_depth` is capped at [`MAX_DEPTH`].
pub fn read(bytes: &[u8], max_depth: usize) -> Result<Document, JsonError> {
    let max_depth = max_depth.min(MAX_DEPTH);
    if bytes.starts_with(&[0xef, 0xbb, 0xbf]) {
        return Err(JsonError::Ambiguous(Ambiguity::ByteOrderMark));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| JsonError::Ambiguous(Ambiguity::InvalidUtf8))?;
    let depth = scan(text.as_bytes(), max_depth)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(|_| JsonError::Invalid)?;
    Ok(Document { value, depth })
}

/// The fold under which two member names bind to the same field in a case-insensitive reader
/// (Go folds `K` (Kelvin) to `k` and `ſ` to `s`: upper then lower case covers both).
pub fn fold(name: &str) -> String {
    if name.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
        return name.to_string();
    }
    name.chars().flat_map(char::to_uppercase).flat_map(char::to_lowercase).collect()
}

/// One pass over the bytes, outside the parser: nesting depth, integer literals that fit no
/// 64-bit integer, and `\u` escapes that leave a surrogate alone. Returns the depth.
fn scan(bytes: &[u8], max_depth: usize) -> Result<usize, JsonError> {
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = scan_string(bytes, i + 1)?,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if depth > max_depth {
                    return Err(JsonError::TooDeep { max_depth });
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => i = scan_number(bytes, i)?,
            _ => i += 1,
        }
    }
    Ok(deepest)
}

/// From just after an opening quote to just after the closing one.
fn scan_string(bytes: &[u8], mut i: usize) -> Result<usize, JsonError> {
    // A high surrogate seen last, waiting for its low half.
    let mut high_pending = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' if !high_pending => return Ok(i + 1),
            b'\\' if bytes.get(i + 1) == Some(&b'u') => {
                let unit = bytes.get(i + 2..i + 6).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u16::from_str_radix(h, 16).ok());
                let Some(unit) = unit else { return Err(JsonError::Invalid) };
                match (high_pending, unit) {
                    (false, 0xd800..=0xdbff) => high_pending = true,
                    (true, 0xdc00..=0xdfff) => high_pending = false,
                    (false, 0xdc00..=0xdfff) | (true, _) => return Err(JsonError::Ambiguous(Ambiguity::LoneSurrogate)),
                    (false, _) => {}
                }
                i += 6;
            }
            _ if high_pending => return Err(JsonError::Ambiguous(Ambiguity::LoneSurrogate)),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Err(JsonError::Invalid)
}

/// From the first byte of a number to just after it; integers must fit `i64` or `u64`.
fn scan_number(bytes: &[u8], start: usize) -> Result<usize, JsonError> {
    let mut i = start;
    let mut integer = true;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'0'..=b'9' | b'-' | b'+' => {}
            b'.' | b'e' | b'E' => integer = false,
            _ => break,
        }
        i += 1;
    }
    if integer {
        let literal = std::str::from_utf8(&bytes[start..i]).map_err(|_| JsonError::Invalid)?;
        let fits = literal.parse::<i64>().is_ok() || literal.parse::<u64>().is_ok();
        let digits = literal.strip_prefix('-').unwrap_or(literal);
        if !fits && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(JsonError::Ambiguous(Ambiguity::IntegerOutOfRange));
        }
    }
    Ok(i)
}

/// Objects up to this many members are checked for colliding names without allocating.
const SMALL_OBJECT: usize = 16;

/// Whether two member names bind to the same field in a case-insensitive reader.
fn same_fold(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        fold(a) == fold(b)
    }
}

const DUPLICATE: &str = "meshward:duplicate-member";
const CASE_VARIANT: &str = "meshward:case-variant-member";

fn classify(e: serde_json::Error) -> JsonError {
    let text = e.to_string();
    if text.starts_with(DUPLICATE) {
        JsonError::Ambiguous(Ambiguity::DuplicateMember)
    } else if text.starts_with(CASE_VARIANT) {
        JsonError::Ambiguous(Ambiguity::CaseVariantMember)
    } else {
        JsonError::Invalid
    }
}

/// Builds a [`Value`] like serde_json does, refusing objects whose member names collide.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        // Small objects (most) compare names in place; larger ones keep a set of folds.
        let mut folds: Option<HashSet<String>> = None;
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let collides = if map.len() < SMALL_OBJECT {
                map.keys().any(|k| same_fold(k, &key))
            } else {
                let set = folds.get_or_insert_with(|| map.keys().map(|k| fold(k)).collect());
                !set.insert(fold(&key))
            };
            if collides {
                return Err(de::Error::custom(CASE_VARIANT));
            }
            let value = access.next_value_seed(Strict)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ambiguity::*;

    /// An object of 40 members `name0`..`name39`, then `last`: the large-object path.
    fn wide_object(last: &str) -> Vec<u8> {
        let members: Vec<String> = (0..40).map(|i| format!("\"name{i}\": {i}")).chain([format!("\"{last}\": 0")]).collect();
        format!("{{{}}}", members.join(", ")).into_bytes()
    }

    fn outcome(body: &[u8]) -> Result<Value, JsonError> {
        read(body, 8).map(|d| d.value)
    }

    #[test]
    fn reads_what_every_reader_reads_alike() {
        let cases: &[(&[u8], Value)] = &[
            (br#"{"a": 1, "b": [true, null, "x"]}"#, serde_json::json!({"a": 1, "b": [true, null, "x"]})),
            (br#"{"caf\u00e9": "\ud83d\ude00"}"#, serde_json::json!({"caf\u{e9}": "\u{1f600}"})),
            (b" 42 ", serde_json::json!(42)),
            (b"-9223372036854775808", serde_json::json!(i64::MIN)),
            (b"18446744073709551615", serde_json::json!(u64::MAX)),
            (b"1e300", serde_json::json!(1e300)),
            (br#"{"a": {"x": 1}, "b": {"x": 2}}"#, serde_json::json!({"a": {"x": 1}, "b": {"x": 2}})),
            (br#"["\\u0041", "a\"b"]"#, serde_json::json!(["\\u0041", "a\"b"])),
            (b"[]", serde_json::json!([])),
        ];
        for (body, want) in cases {
            assert_eq!(outcome(body).as_ref(), Ok(want), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn refuses_what_readers_read_differently() {
        let cases: &[(&[u8], JsonError)] = &[
            (br#"{"role": "user", "role": "admin"}"#, JsonError::Ambiguous(DuplicateMember)),
            (br#"{"role": "user", "r\u006fle": "admin"}"#, JsonError::Ambiguous(DuplicateMember)),
            (br#"{"a": [{"x": {"k": 1, "k": 2}}]}"#, JsonError::Ambiguous(DuplicateMember)),
            (br#"{"role": "user", "Role": "admin"}"#, JsonError::Ambiguous(CaseVariantMember)),
            (br#"{"tenant_id": "a", "TENANT_ID": "b"}"#, JsonError::Ambiguous(CaseVariantMember)),
            (b"{\"key\": 1, \"\xe2\x84\xaaey\": 2}", JsonError::Ambiguous(CaseVariantMember)),
            (b"{\"scope\": 1, \"\xc5\xbfcope\": 2}", JsonError::Ambiguous(CaseVariantMember)),
            (&wide_object("NAME7"), JsonError::Ambiguous(CaseVariantMember)),
            (&wide_object("name7"), JsonError::Ambiguous(DuplicateMember)),
            (b"\xef\xbb\xbf{}", JsonError::Ambiguous(ByteOrderMark)),
            (b"{\"a\": \"\xff\"}", JsonError::Ambiguous(InvalidUtf8)),
            (br#"{"a": "\ud800"}"#, JsonError::Ambiguous(LoneSurrogate)),
            (br#"{"a": "\udc00"}"#, JsonError::Ambiguous(LoneSurrogate)),
            (br#"{"a": "\ud800\u0041"}"#, JsonError::Ambiguous(LoneSurrogate)),
            (br#"{"\ud800x": 1}"#, JsonError::Ambiguous(LoneSurrogate)),
            (b"[18446744073709551616]", JsonError::Ambiguous(IntegerOutOfRange)),
            (b"[-9223372036854775809]", JsonError::Ambiguous(IntegerOutOfRange)),
            (b"{\"id\": 123456789012345678901234567890}", JsonError::Ambiguous(IntegerOutOfRange)),
            (b"[[[[[[[[[1]]]]]]]]]", JsonError::TooDeep { max_depth: 8 }),
            (b"{\"a\": 1,}", JsonError::Invalid),
            (b"{} {}", JsonError::Invalid),
            (b"", JsonError::Invalid),
            (b"{\"a\": \"x", JsonError::Invalid),
            (b"1e400", JsonError::Invalid),
        ];
        for (body, want) in cases {
            assert_eq!(outcome(body), Err(*want), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn wide_objects_without_collisions_are_read() {
        let value = outcome(&wide_object("other")).unwrap();
        assert_eq!(value.as_object().map(|m| m.len()), Some(41));
    }

    #[test]
    fn depth_is_measured_and_capped() {
        assert_eq!(read(b"[{\"a\": [1]}]", 8).map(|d| d.depth), Ok(3));
        assert_eq!(read(b"1", 8).map(|d| d.depth), Ok(0));
        assert_eq!(read(br#"["[[[[[[[[[["]"#, 2).map(|d| d.depth), Ok(1), "brackets in strings do not count");
        let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
        assert_eq!(read(deep.as_bytes(), usize::MAX), Err(JsonError::TooDeep { max_depth: MAX_DEPTH }));
    }

    #[test]
    fn folds_like_case_insensitive_readers() {
        assert_eq!(fold("tenant_id"), "tenant_id");
        assert_eq!(fold("Tenant_ID"), "tenant_id");
        assert_eq!(fold("\u{212a}ey"), "key");
        assert_eq!(fold("\u{17f}cope"), "scope");
    }
}
