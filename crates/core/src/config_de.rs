//! A configuration, parsed into a [`serde_json::Value`], deserialized into its typed form with
//! the path of the first error (`endpoints[0].secrets`).
//!
//! `serde_path_to_error` gave the same paths by wrapping every visitor of every configuration
//! type: about a fifth of each module's code. Here one deserializer over `&Value` records where
//! it is as an error unwinds, and every configuration type is instantiated once, against it.

use std::fmt::Display;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess, Unexpected, VariantAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Number, Value};

/// One step into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A deserialization error and where it happened.
#[derive(Debug)]
pub struct PathError {
    /// Innermost first (segments are added as the error unwinds).
    reversed: Vec<Segment>,
    message: String,
}

impl PathError {
    fn at(mut self, segment: Segment) -> PathError {
        self.reversed.push(segment);
        self
    }

    /// `providers.auth0.issuer`, `rules[0].limit`; `.` for the document itself (as
    /// `serde_path_to_error` writes them).
    pub fn path(&self) -> String {
        let mut out = String::new();
        for segment in self.reversed.iter().rev() {
            match segment {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        if out.is_empty() {
            out.push('.');
        }
        out
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path(), self.message)
    }
}

impl std::error::Error for PathError {}

impl de::Error for PathError {
    fn custom<T: Display>(message: T) -> PathError {
        PathError { reversed: Vec::new(), message: message.to_string() }
    }
}

/// Deserializes `T` from `value`, naming the place of the first error.
pub fn from_value<'a, T: de::Deserialize<'a>>(value: &'a Value) -> Result<T, PathError> {
    T::deserialize(ValueDe(value))
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (None, Some(i), _) => Unexpected::Signed(i),
            (None, None, f) => Unexpected::Float(f.unwrap_or(f64::NAN)),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

fn visit_number<'de, V: Visitor<'de>>(n: &Number, visitor: V) -> Result<V::Value, PathError> {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => visitor.visit_u64(u),
        (None, Some(i), _) => visitor.visit_i64(i),
        (None, None, Some(f)) => visitor.visit_f64(f),
        (None, None, None) => Err(de::Error::custom("a number out of range")),
    }
}

struct ValueDe<'a>(&'a Value);

impl<'de, 'a: 'de> Deserializer<'de> for ValueDe<'a> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => visit_number(n, visitor),
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visit_array(items, visitor),
            Value::Object(map) => visitor.visit_map(Members::new(map)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _name: &'static str, _variants: &'static [&'static str], visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::String(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Value::Object(map) if map.len() == 1 => match map.iter().next() {
                Some((variant, value)) => visitor.visit_enum(Variant { name: variant, value }),
                None => Err(de::Error::invalid_value(Unexpected::Map, &"a map with a single key")),
            },
            Value::Object(_) => Err(de::Error::invalid_value(Unexpected::Map, &"a map with a single key")),
            other => Err(de::Error::invalid_type(unexpected(other), &"a string or a map with a single key")),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_unit()
    }

    // Each type is asked for what it reads, so only that arm is built for its visitor (a struct
    // visitor never gets the sequence or scalar arms of `deserialize_any`): the code per
    // configuration type stays small.
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Bool(b) => visitor.visit_bool(*b),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::String(s) => visitor.visit_borrowed_str(s),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Array(items) => visit_array(items, visitor),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        match self.0 {
            Value::Object(map) => visitor.visit_map(Members::new(map)),
            other => Err(de::Error::invalid_type(unexpected(other), &visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _name: &'static str, _fields: &'static [&'static str], visitor: V) -> Result<V::Value, PathError> {
        self.deserialize_map(visitor)
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char
        bytes byte_buf unit unit_struct tuple tuple_struct
    }
}

/// An array, every item read (a visitor that stops early is an error, as serde_json has it).
fn visit_array<'de, 'a: 'de, V: Visitor<'de>>(items: &'a [Value], visitor: V) -> Result<V::Value, PathError> {
    let mut seq = Items { iter: items.iter(), index: 0 };
    let out = visitor.visit_seq(&mut seq)?;
    match seq.iter.len() {
        0 => Ok(out),
        _ => Err(de::Error::invalid_length(items.len(), &"fewer elements in the array")),
    }
}

struct Items<'a> {
    iter: std::slice::Iter<'a, Value>,
    index: usize,
}

impl<'de, 'a: 'de> SeqAccess<'de> for Items<'a> {
    type Error = PathError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, PathError> {
        let Some(value) = self.iter.next() else { return Ok(None) };
        let index = self.index;
        self.index += 1;
        seed.deserialize(ValueDe(value)).map(Some).map_err(|e| e.at(Segment::Index(index)))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Members<'a> {
    iter: serde_json::map::Iter<'a>,
    next: Option<(&'a String, &'a Value)>,
}

impl<'a> Members<'a> {
    fn new(map: &'a Map<String, Value>) -> Members<'a> {
        Members { iter: map.iter(), next: None }
    }
}

impl<'de, 'a: 'de> MapAccess<'de> for Members<'a> {
    type Error = PathError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, PathError> {
        let Some((key, value)) = self.iter.next() else { return Ok(None) };
        self.next = Some((key, value));
        // An unknown field is reported where it is, as its own segment.
        seed.deserialize(KeyDe(key)).map(Some).map_err(|e| e.at(Segment::Key(key.clone())))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, PathError> {
        let Some((key, value)) = self.next.take() else { return Err(de::Error::custom("a value without its key")) };
        seed.deserialize(ValueDe(value)).map_err(|e| e.at(Segment::Key(key.clone())))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// A member name: a string, or a number or `true`/`false` written as one (JSON keys are text).
struct KeyDe<'a>(&'a String);

macro_rules! parse_key {
    ($($method:ident => $visit:ident),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
                match self.0.parse() {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(de::Error::invalid_type(Unexpected::Str(self.0), &visitor)),
                }
            }
        )*
    };
}

impl<'de, 'a: 'de> Deserializer<'de> for KeyDe<'a> {
    type Error = PathError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_borrowed_str(self.0)
    }

    parse_key! {
        deserialize_u8 => visit_u8, deserialize_u16 => visit_u16, deserialize_u32 => visit_u32, deserialize_u64 => visit_u64,
        deserialize_i8 => visit_i8, deserialize_i16 => visit_i16, deserialize_i32 => visit_i32, deserialize_i64 => visit_i64,
        deserialize_bool => visit_bool,
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _name: &'static str, _variants: &'static [&'static str], visitor: V) -> Result<V::Value, PathError> {
        visitor.visit_enum(self.0.as_str().into_deserializer())
    }

    forward_to_deserialize_any! {
        i128 u128 f32 f64 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// `{"variant": value}`.
struct Variant<'a> {
    name: &'a String,
    value: &'a Value,
}

impl<'de, 'a: 'de> EnumAccess<'de> for Variant<'a> {
    type Error = PathError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), PathError> {
        let variant = seed.deserialize(KeyDe(self.name))?;
        Ok((variant, self))
    }
}

impl<'de, 'a: 'de> VariantAccess<'de> for Variant<'a> {
    type Error = PathError;

    fn unit_variant(self) -> Result<(), PathError> {
        match self.value {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(other), &"unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, PathError> {
        seed.deserialize(ValueDe(self.value)).map_err(|e| e.at(Segment::Key(self.name.clone())))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, PathError> {
        ValueDe(self.value).deserialize_seq(visitor).map_err(|e| e.at(Segment::Key(self.name.clone())))
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value, PathError> {
        ValueDe(self.value).deserialize_map(visitor).map_err(|e| e.at(Segment::Key(self.name.clone())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        providers: BTreeMap<String, Provider>,
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        statuses: BTreeMap<u16, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Provider {
        issuer: String,
        max: Option<u32>,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Debug, Deserialize, PartialEq, Default)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        #[default]
        Enforce,
        Shadow,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, rename_all = "snake_case")]
    enum Limit {
        Fixed { requests: u32 },
        Named(String),
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        name: String,
        limit: Option<Limit>,
        #[serde(default)]
        scopes: Vec<String>,
    }

    /// The path and message of every row as serde_path_to_error over serde_json's own reader
    /// gives them (the message without its line and column).
    #[test]
    fn errors_name_the_same_place_as_serde_path_to_error() {
        let rows = [
            r#"{"providers": {"a": {"isuer": "x"}}}"#,
            r#"{"providers": {"a": {"issuer": 7}}}"#,
            r#"{"providers": {"a": {"issuer": "x", "max": -1}}}"#,
            r#"{"providers": {"a": {"issuer": "x", "max": 1.5}}}"#,
            r#"{"providers": {"a": {"issuer": "x", "mode": "loud"}}}"#,
            r#"{"providers": {}, "rules": [{"name": "a"}, {"name": "b", "scopes": "x"}]}"#,
            r#"{"providers": {}, "rules": [{"name": "a", "limit": {"fixed": {"requests": "5"}}}]}"#,
            r#"{"providers": {}, "rules": [{"name": "a", "limit": {"other": 1}}]}"#,
            r#"{"providers": {}, "rules": [{"name": "a", "limit": {"fixed": {"request": 5}}}]}"#,
            r#"{"providers": {}, "extra": 1}"#,
            r#"{"rules": []}"#,
        ];
        for text in rows {
            let value: Value = serde_json::from_str(text).unwrap();
            let ours = from_value::<Config>(&value).unwrap_err();
            let reference = serde_path_to_error::deserialize::<_, Config>(&mut serde_json::Deserializer::from_str(text)).unwrap_err();
            let message = reference.inner().to_string();
            let message = message.split(" at line ").next().unwrap();
            assert_eq!((ours.path(), ours.message()), (reference.path().to_string(), message), "{text}");
        }
    }

    /// Where this says more than the reference: a member name that should be a number
    /// (serde_path_to_error: `statuses.?: invalid value: expected key to be a number`), and a
    /// struct given as an array.
    #[test]
    fn a_key_that_is_not_a_number_is_named() {
        let value: Value = serde_json::from_str(r#"{"providers": {}, "statuses": {"twohundred": "ok"}}"#).unwrap();
        let e = from_value::<Config>(&value).unwrap_err();
        assert_eq!((e.path(), e.message()), ("statuses.twohundred".to_string(), "invalid type: string \"twohundred\", expected u16"));
        // And a struct is an object: serde_json would read an array as its fields in order.
        let e = from_value::<Config>(&serde_json::json!([])).unwrap_err();
        assert_eq!((e.path(), e.message()), (".".to_string(), "invalid type: sequence, expected struct Config"));
    }

    #[test]
    fn a_valid_configuration_reads_as_serde_json_reads_it() {
        let text = r#"{"providers": {"a": {"issuer": "x", "max": 3, "mode": "shadow"}},
            "rules": [{"name": "r", "limit": {"fixed": {"requests": 5}}}, {"name": "s", "limit": {"named": "n"}, "scopes": ["a"]}],
            "statuses": {"200": "ok"}}"#;
        let value: Value = serde_json::from_str(text).unwrap();
        assert_eq!(from_value::<Config>(&value).unwrap(), serde_json::from_str::<Config>(text).unwrap());
    }
}
