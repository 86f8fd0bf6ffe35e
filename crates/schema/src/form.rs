//! Form bodies read as their schema's object, so they are validated like JSON bodies
//! (OpenAPI's encoding rules: each field's text is read as its property's type, objects as JSON
//! text, array properties collect repeated fields). The body itself is read by the one form
//! reader every policy shares (`meshward_core::form`).

use meshward_core::form::{read_pairs, strict_object, FormError, FormKind};
use serde_json::Value;

use crate::config::Scalar;

/// How one field of a form is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormField {
    pub name: String,
    pub scalar: Scalar,
    /// The property is an array: repeated fields collect.
    pub array: bool,
}

/// Reads a field's text as its declared type; text that does not read as it stays text, so the
/// validator reports `type`.
pub fn coerce(scalar: Scalar, text: &str) -> Value {
    let parsed = match scalar {
        Scalar::String => None,
        // Integers beyond 64 bits are still integers: read as a whole-valued float.
        Scalar::Integer => text.parse::<i64>().map(Value::from).or_else(|_| text.parse::<u64>().map(Value::from)).ok().or_else(|| {
            let digits = text.strip_prefix('-').unwrap_or(text);
            let whole = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit());
            whole.then(|| text.parse::<f64>().ok()).flatten().and_then(serde_json::Number::from_f64).map(Value::Number)
        }),
        Scalar::Number => text.parse::<f64>().ok().filter(|f| f.is_finite()).and_then(|f| serde_json::Number::from_f64(f).map(Value::Number)),
        Scalar::Boolean => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        // Read strictly too: a field's JSON is read the way a body's is.
        Scalar::Json => meshward_core::json::read(text.as_bytes(), meshward_core::json::MAX_DEPTH).ok().map(|d| d.value),
    };
    parsed.unwrap_or_else(|| Value::String(text.to_string()))
}

/// A form body as its schema's object.
pub fn read_form(kind: &FormKind, body: &[u8], fields: &[FormField]) -> Result<Value, FormError> {
    let field = |name: &str| fields.iter().find(|f| f.name == name);
    strict_object(
        read_pairs(kind, body)?,
        &|name| field(name).is_some_and(|f| f.array),
        &|name, text| coerce(field(name).map_or(Scalar::String, |f| f.scalar), text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_read_as_their_types() {
        let fields = vec![
            FormField { name: "qty".into(), scalar: Scalar::Integer, array: false },
            FormField { name: "tags".into(), scalar: Scalar::String, array: true },
            FormField { name: "gift".into(), scalar: Scalar::Boolean, array: false },
            FormField { name: "meta".into(), scalar: Scalar::Json, array: false },
        ];
        let read = |b: &str| read_form(&FormKind::UrlEncoded, b.as_bytes(), &fields);
        assert_eq!(read("qty=2&tags=x&tags=y&gift=true&meta=%7B%22a%22%3A1%7D"), Ok(json!({"qty": 2, "tags": ["x", "y"], "gift": true, "meta": {"a": 1}})));
        assert_eq!(read("qty=two&meta=%7B%22a%22%3A1%2C%22a%22%3A2%7D"), Ok(json!({"qty": "two", "meta": "{\"a\":1,\"a\":2}"})), "unreadable text stays text");
        assert_eq!(read("qty=1&qty=2"), Err(FormError::Ambiguous));
    }
}
