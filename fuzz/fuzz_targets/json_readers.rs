//! The strict reader against the readers services use: a first-wins reader (Jackson with
//! `FAIL_ON_READING_DUP_TREE_KEY` off keeps one, some keep the first), a last-wins reader
//! (serde_json, Python's json, Go's encoding/json) and a case-insensitive reader (Go, .NET).
//! Any document they would read differently must be refused; a document it accepts reads the
//! same in all of them.
#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use meshward_core::json::{fold, read, MAX_DEPTH};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// How a reader settles two members that bind to the same field.
#[derive(Clone, Copy)]
enum Keep {
    First,
    Last,
    /// Names compared ignoring case; the last wins (Go's encoding/json).
    LastFolded,
}

struct Reader(Keep);

impl<'de> DeserializeSeed<'de> for Reader {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Reader {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Reader(self.0))? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let value = access.next_value_seed(Reader(self.0))?;
            match self.0 {
                Keep::First => {
                    out.entry(key).or_insert(value);
                }
                Keep::Last => {
                    out.insert(key, value);
                }
                Keep::LastFolded => {
                    out.insert(fold(&key), value);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

fn read_with(data: &[u8], keep: Keep) -> Option<Value> {
    let mut de = serde_json::Deserializer::from_slice(data);
    let v = Reader(keep).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

/// The document with every member name folded, as a case-insensitive reader sees it.
fn folded(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (fold(k), folded(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(folded).collect()),
        other => other.clone(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = read(data, MAX_DEPTH) else { return };
    let first = read_with(data, Keep::First);
    let last = read_with(data, Keep::Last);
    let go = read_with(data, Keep::LastFolded);
    assert_eq!(first.as_ref(), Some(&doc.value), "a first-wins reader reads it differently");
    assert_eq!(last.as_ref(), Some(&doc.value), "a last-wins reader reads it differently");
    assert_eq!(go, Some(folded(&doc.value)), "a case-insensitive reader reads it differently");
});
