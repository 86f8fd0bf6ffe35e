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
        Scalar::Integer => text.parse::<i64>().map(Value::from).or_else(|_| text.parse::<u64>().map(Value::from)).ok().or_else(|| beyond_64_bits(text)),
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

/// An integer beyond 64 bits is still an integer: read as a whole-valued float, rounded away
/// from zero when it cannot be held exactly, so that it never lands inside a bound it is outside
/// of (`-9223372036854775809` would round to `-2^63`, the lower `int64` bound itself).
fn beyond_64_bits(text: &str) -> Option<Value> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut float = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    // Every whole float is printed exactly with no fraction digits: compare magnitudes as text.
    let exact = format!("{:.0}", float.abs());
    let digits = digits.trim_start_matches('0');
    if (exact.len(), exact.as_str()) < (digits.len(), digits) {
        float = if negative { float.next_down() } else { float.next_up() };
    }
    serde_json::Number::from_f64(float).map(Value::Number)
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
    fn integers_beyond_64_bits_never_round_into_a_bound() {
        let below = coerce(Scalar::Integer, "-9223372036854775809");
        assert!(below.as_f64().is_some_and(|f| f < i64::MIN as f64), "{below}");
        let above = coerce(Scalar::Integer, "18446744073709551617");
        assert!(above.as_f64().is_some_and(|f| f > u64::MAX as f64), "{above}");
        assert_eq!(coerce(Scalar::Integer, "-9223372036854775808"), Value::from(i64::MIN));
        assert_eq!(coerce(Scalar::Integer, "18446744073709551615"), Value::from(u64::MAX));
        // Held exactly (a power of two): not moved.
        assert_eq!(coerce(Scalar::Integer, "-18446744073709551616").as_f64(), Some(-18446744073709551616.0));
        assert_eq!(coerce(Scalar::Integer, "-00"), Value::from(0));
        assert_eq!(coerce(Scalar::Integer, "1e3"), Value::String("1e3".into()));
    }

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
