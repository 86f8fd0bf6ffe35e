//! Form bodies (`application/x-www-form-urlencoded`, `multipart/form-data`) read into the JSON
//! object their schema describes, so they are validated like JSON bodies (OpenAPI's encoding
//! rules: each field's text is read as its property's type, array properties collect repeated
//! fields).
//!
//! Read strictly, like JSON: a field given twice where the property is not an array, two field
//! names that differ only in case (model binders in ASP.NET and Spring bind them alike), a
//! broken escape, a part without a name or with a transfer encoding are refused: services read
//! those differently.

use meshward_core::json::fold;
use serde_json::{Map, Value};

use crate::config::Scalar;

/// How one field of a form is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormField {
    pub name: String,
    pub scalar: Scalar,
    /// The property is an array: repeated fields collect.
    pub array: bool,
}

/// Why a form body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// Not a form of its declared type (broken escape, broken multipart framing).
    Invalid,
    /// Read differently by different services: a repeated single-valued field, or names that
    /// differ only in case.
    Ambiguous,
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

/// Builds the object from (name, text) pairs in order.
fn object(fields: &[FormField], pairs: Vec<(String, String)>) -> Result<Value, FormError> {
    let mut out = Map::new();
    let mut folded: Vec<(String, String)> = Vec::new();
    for (name, text) in pairs {
        let key = fold(&name);
        if let Some((_, seen)) = folded.iter().find(|(k, _)| *k == key) {
            if *seen != name {
                return Err(FormError::Ambiguous);
            }
        } else {
            folded.push((key, name.clone()));
        }
        let field = fields.iter().find(|f| f.name == name);
        let value = coerce(field.map_or(Scalar::String, |f| f.scalar), &text);
        match (field.is_some_and(|f| f.array), out.get_mut(&name)) {
            (true, Some(Value::Array(items))) => items.push(value),
            (true, _) => {
                out.insert(name, Value::Array(vec![value]));
            }
            (false, Some(_)) => return Err(FormError::Ambiguous),
            (false, None) => {
                out.insert(name, value);
            }
        }
    }
    Ok(Value::Object(out))
}

fn decode_component(text: &str) -> Result<String, FormError> {
    meshward_core::route::percent_decode(&text.replace('+', " ")).ok_or(FormError::Invalid)
}

/// An `application/x-www-form-urlencoded` body as its schema's object.
pub fn read_urlencoded(body: &[u8], fields: &[FormField]) -> Result<Value, FormError> {
    let text = std::str::from_utf8(body).map_err(|_| FormError::Invalid)?;
    let mut pairs = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        pairs.push((decode_component(k)?, decode_component(v)?));
    }
    object(fields, pairs)
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        (!v.is_empty() && v.len() <= 70).then(|| v.to_string())
    })
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

/// The `name` of a part from its headers; `None` when it has none or is not a plain form field.
fn part_name(headers: &str) -> Result<String, FormError> {
    let mut name = None;
    for line in headers.split("\r\n") {
        let (key, value) = line.split_once(':').ok_or(FormError::Invalid)?;
        match key.trim().to_ascii_lowercase().as_str() {
            "content-disposition" => {
                let mut params = value.split(';');
                if !params.next().is_some_and(|d| d.trim().eq_ignore_ascii_case("form-data")) {
                    return Err(FormError::Invalid);
                }
                for param in params {
                    let (k, v) = param.split_once('=').ok_or(FormError::Invalid)?;
                    match k.trim().to_ascii_lowercase().as_str() {
                        // An extended (RFC 5987) name is read differently by different parsers.
                        "name*" | "filename*" => return Err(FormError::Ambiguous),
                        "name" if name.is_some() => return Err(FormError::Ambiguous),
                        "name" => {
                            let v = v.trim();
                            let unquoted = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                            if unquoted.contains(['"', '\\']) {
                                return Err(FormError::Ambiguous);
                            }
                            name = Some(unquoted.to_string());
                        }
                        _ => {}
                    }
                }
            }
            // Encoded parts are decoded by some services and not by others.
            "content-transfer-encoding" => return Err(FormError::Ambiguous),
            _ => {}
        }
    }
    name.filter(|n| !n.is_empty()).ok_or(FormError::Invalid)
}

/// A `multipart/form-data` body as its schema's object. File parts are read as text (their
/// schema is a `string`, `format: binary`).
pub fn read_multipart(body: &[u8], boundary: &str, fields: &[FormField]) -> Result<Value, FormError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut at = if body.starts_with(delimiter) {
        0
    } else {
        // A preamble is skipped by some parsers and refused by others.
        return Err(FormError::Ambiguous);
    };
    let mut pairs = Vec::new();
    loop {
        let after = at + delimiter.len();
        match body.get(after..after + 2) {
            Some(b"--") => {
                return match body.get(after + 2..) {
                    Some(b"" | b"\r\n") => object(fields, pairs),
                    // An epilogue is ignored by some parsers and read on by others.
                    _ => Err(FormError::Ambiguous),
                };
            }
            Some(b"\r\n") => {}
            _ => return Err(FormError::Invalid),
        }
        let head_start = after + 2;
        let head_end = find(body, b"\r\n\r\n", head_start).ok_or(FormError::Invalid)?;
        let headers = std::str::from_utf8(&body[head_start..head_end]).map_err(|_| FormError::Invalid)?;
        let name = part_name(headers)?;
        let content_start = head_end + 4;
        let mut next_delimiter = b"\r\n".to_vec();
        next_delimiter.extend_from_slice(delimiter);
        let content_end = find(body, &next_delimiter, content_start).ok_or(FormError::Invalid)?;
        let content = String::from_utf8_lossy(&body[content_start..content_end]).into_owned();
        pairs.push((name, content));
        at = content_end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Vec<FormField> {
        vec![
            FormField { name: "qty".into(), scalar: Scalar::Integer, array: false },
            FormField { name: "tags".into(), scalar: Scalar::String, array: true },
            FormField { name: "gift".into(), scalar: Scalar::Boolean, array: false },
        ]
    }

    #[test]
    fn urlencoded() {
        let read = |b: &str| read_urlencoded(b.as_bytes(), &fields());
        assert_eq!(read("qty=2&name=a+b%21&tags=x&tags=y&gift=true"), Ok(json!({"qty": 2, "name": "a b!", "tags": ["x", "y"], "gift": true})));
        assert_eq!(read("qty=two"), Ok(json!({"qty": "two"})), "stays text: the validator says type");
        assert_eq!(read(""), Ok(json!({})));
        assert_eq!(read("qty=1&qty=900"), Err(FormError::Ambiguous));
        assert_eq!(read("qty=1&QTY=900"), Err(FormError::Ambiguous));
        assert_eq!(read("qty=%zz"), Err(FormError::Invalid));
    }

    fn multipart(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut out = String::new();
        for (headers, content) in parts {
            out.push_str(&format!("--XyZ\r\n{headers}\r\n\r\n{content}\r\n"));
        }
        out.push_str("--XyZ--\r\n");
        out.into_bytes()
    }

    #[test]
    fn multipart_form_data() {
        let read = |b: Vec<u8>| read_multipart(&b, "XyZ", &fields());
        let form = multipart(&[
            ("Content-Disposition: form-data; name=\"qty\"", "3"),
            ("Content-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png", "\u{1}PNG"),
            ("content-disposition: form-data; name=tags", "a"),
        ]);
        assert_eq!(read(form), Ok(json!({"qty": 3, "file": "\u{1}PNG", "tags": ["a"]})));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name=\"qty\"", "1"), ("Content-Disposition: form-data; name=\"qty\"", "9")])), Err(FormError::Ambiguous));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name*=UTF-8''qty", "1")])), Err(FormError::Ambiguous));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name=\"qty\"\r\nContent-Transfer-Encoding: base64", "MQ==")])), Err(FormError::Ambiguous));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data", "1")])), Err(FormError::Invalid));
        assert_eq!(read(b"preamble\r\n--XyZ--".to_vec()), Err(FormError::Ambiguous));
        assert_eq!(read(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx".to_vec()), Err(FormError::Invalid), "no closing delimiter");
        let mut trailing = multipart(&[("Content-Disposition: form-data; name=\"a\"", "x")]);
        trailing.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"qty\"\r\n\r\n900\r\n--XyZ--");
        assert_eq!(read(trailing), Err(FormError::Ambiguous), "a part after the close delimiter");
        assert_eq!(boundary("multipart/form-data; boundary=XyZ"), Some("XyZ".into()));
        assert_eq!(boundary("multipart/form-data; charset=utf-8; Boundary=\"a b\""), Some("a b".into()));
        assert_eq!(boundary("multipart/form-data"), None);
    }
}
