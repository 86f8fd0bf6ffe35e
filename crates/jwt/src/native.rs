//! The payload Envoy's own `jwt_authn` verified, read from its dynamic metadata
//! (`payload_in_metadata`): where the sidecar already runs it (Istio's RequestAuthentication
//! configures it), meshward applies its checks on top without any signature work in wasm.
//!
//! The request's dynamic metadata is read whole: Envoy hands the message over serialized
//! (`envoy.config.core.v3.Metadata`), where the payload is a typed `google.protobuf.Struct`.
//! (A path into the Struct would come back in proxy-wasm's pairs encoding, where a number and an
//! 8-byte string look alike.) Numbers are doubles there; whole ones read back as integers. The
//! payload becomes the same JSON object a token's payload is.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{Map, Number, Value};

use crate::JwtError;

/// The filter whose metadata holds the payload.
pub const JWT_AUTHN_FILTER: &str = "envoy.filters.http.jwt_authn";

/// The property holding the request's dynamic metadata.
pub const METADATA_PROPERTY: [&str; 1] = ["metadata"];

/// `envoy.config.core.v3.Metadata`, as far as it is read here.
#[derive(Clone, PartialEq, Message)]
struct PbMetadata {
    #[prost(btree_map = "string, message", tag = "1")]
    filter_metadata: BTreeMap<String, PbStruct>,
}

#[derive(Clone, PartialEq, Message)]
struct PbStruct {
    #[prost(btree_map = "string, message", tag = "1")]
    fields: BTreeMap<String, PbValue>,
}

#[derive(Clone, PartialEq, Message)]
struct PbValue {
    #[prost(oneof = "PbKind", tags = "1, 2, 3, 4, 5, 6")]
    kind: Option<PbKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbKind {
    #[prost(int32, tag = "1")]
    Null(i32),
    #[prost(double, tag = "2")]
    Number(f64),
    #[prost(string, tag = "3")]
    String(String),
    #[prost(bool, tag = "4")]
    Bool(bool),
    #[prost(message, tag = "5")]
    Struct(PbStruct),
    #[prost(message, tag = "6")]
    List(PbList),
}

#[derive(Clone, PartialEq, Message)]
struct PbList {
    #[prost(message, repeated, tag = "1")]
    values: Vec<PbValue>,
}

/// Largest integer a double holds exactly: whole numbers up to it read back as integers
/// (`exp`, `iat`, `nbf` are whole seconds).
const EXACT_INTEGER: f64 = 9_007_199_254_740_992.0;

fn json(value: PbValue) -> Result<Value, JwtError> {
    Ok(match value.kind {
        None | Some(PbKind::Null(_)) => Value::Null,
        Some(PbKind::Number(n)) if n.fract() == 0.0 && (0.0..=EXACT_INTEGER).contains(&n) => Value::from(n as u64),
        Some(PbKind::Number(n)) if n.fract() == 0.0 && (-EXACT_INTEGER..0.0).contains(&n) => Value::from(n as i64),
        Some(PbKind::Number(n)) => Value::Number(Number::from_f64(n).ok_or(JwtError::MalformedToken)?),
        Some(PbKind::String(s)) => Value::String(s),
        Some(PbKind::Bool(b)) => Value::Bool(b),
        Some(PbKind::Struct(s)) => Value::Object(object(s)?),
        Some(PbKind::List(l)) => Value::Array(l.values.into_iter().map(json).collect::<Result<_, _>>()?),
    })
}

fn object(s: PbStruct) -> Result<Map<String, Value>, JwtError> {
    s.fields.into_iter().map(|(k, v)| Ok((k, json(v)?))).collect()
}

/// The payload jwt_authn stored under `key` in the request's metadata (`None`: it stored
/// none); a payload that is not an object, or metadata that does not decode, is unreadable.
pub fn payload_from_metadata(metadata: &[u8], key: &str) -> Option<Result<Map<String, Value>, JwtError>> {
    let Ok(mut metadata) = PbMetadata::decode(metadata) else { return Some(Err(JwtError::MalformedToken)) };
    let payload = metadata.filter_metadata.remove(JWT_AUTHN_FILTER)?.fields.remove(key)?;
    Some(match payload.kind {
        Some(PbKind::Struct(s)) => object(s),
        _ => Err(JwtError::MalformedToken),
    })
}

/// Dynamic metadata holding `payload` under `key`, as Envoy hands it over (for tests).
#[cfg(any(test, feature = "testkit"))]
pub fn encode_metadata(key: &str, payload: &Map<String, Value>) -> Vec<u8> {
    fn value(v: &Value) -> PbValue {
        let kind = match v {
            Value::Null => PbKind::Null(0),
            Value::Bool(b) => PbKind::Bool(*b),
            Value::Number(n) => PbKind::Number(n.as_f64().unwrap_or_default()),
            Value::String(s) => PbKind::String(s.clone()),
            Value::Array(a) => PbKind::List(PbList { values: a.iter().map(value).collect() }),
            Value::Object(o) => PbKind::Struct(structure(o)),
        };
        PbValue { kind: Some(kind) }
    }
    fn structure(o: &Map<String, Value>) -> PbStruct {
        PbStruct { fields: o.iter().map(|(k, v)| (k.clone(), value(v))).collect() }
    }
    let jwt_authn = PbStruct { fields: BTreeMap::from([(key.to_string(), value(&Value::Object(payload.clone())))]) };
    PbMetadata { filter_metadata: BTreeMap::from([(JWT_AUTHN_FILTER.to_string(), jwt_authn)]) }.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_read_back_as_the_token_carried_them() {
        let payload = json!({"iss": "https://issuer.test", "aud": ["a", "b"], "exp": 1_700_000_300u64, "nbf": -5,
                             "ratio": 0.5, "admin": false, "nested": {"roles": ["x"]}, "gone": null});
        let Value::Object(payload) = payload else { unreachable!() };
        let metadata = encode_metadata("main", &payload);
        assert_eq!(payload_from_metadata(&metadata, "main"), Some(Ok(payload)));
        assert_eq!(payload_from_metadata(&metadata, "other"), None, "stored under another key");
        assert_eq!(payload_from_metadata(b"", "main"), None, "no metadata at all");
        assert_eq!(payload_from_metadata(b"\xff\xff\xff", "main"), Some(Err(JwtError::MalformedToken)));
    }
}
