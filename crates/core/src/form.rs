//! Form bodies (`application/x-www-form-urlencoded`, `multipart/form-data`) read once, for every
//! policy, into the JSON object a service's binder builds from them.
//!
//! Read strictly, like JSON (`crate::json`): a field given twice where it is not a list, two
//! field names that differ only in case (model binders in ASP.NET and Spring bind them alike),
//! a broken escape, a part without a name or with a transfer encoding, a preamble or an epilogue
//! are refused: services read those differently.

use serde_json::{Map, Value};

use crate::json::fold;
use crate::request::essence;
use crate::route::{decode_component, url_pairs};

/// Why a form body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// Not a form of its declared type (broken escape, broken multipart framing).
    Invalid,
    /// Read differently by different services.
    Ambiguous,
}

/// The kind of form a content type names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormKind {
    UrlEncoded,
    /// With its boundary.
    Multipart(Option<String>),
}

/// The form kind of a `content-type`, `None` for anything else.
pub fn form_kind(content_type: Option<&str>) -> Option<FormKind> {
    let content_type = content_type?;
    match essence(content_type).as_str() {
        "application/x-www-form-urlencoded" => Some(FormKind::UrlEncoded),
        "multipart/form-data" => Some(FormKind::Multipart(boundary(content_type))),
        _ => None,
    }
}

/// A form body's (name, text) pairs in order.
pub fn read_pairs(kind: &FormKind, body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    match kind {
        FormKind::UrlEncoded => urlencoded_pairs(body),
        FormKind::Multipart(Some(b)) => multipart_pairs(body, b),
        FormKind::Multipart(None) => Err(FormError::Invalid),
    }
}

/// Builds the object a binder builds from (name, text) pairs: `list(name)` says which fields
/// collect repeated values into an array, `value(name, text)` reads a field's text.
pub fn strict_object(pairs: Vec<(String, String)>, list: &dyn Fn(&str) -> bool, value: &dyn Fn(&str, &str) -> Value) -> Result<Value, FormError> {
    let mut out = Map::new();
    let mut folded: Vec<(String, String)> = Vec::new();
    for (name, text) in pairs {
        let key = fold(&name);
        match folded.iter().find(|(k, _)| *k == key) {
            Some((_, seen)) if *seen != name => return Err(FormError::Ambiguous),
            Some(_) => {}
            None => folded.push((key, name.clone())),
        }
        let v = value(&name, &text);
        match (list(&name), out.get_mut(&name)) {
            (true, Some(Value::Array(items))) => items.push(v),
            (true, _) => {
                out.insert(name, Value::Array(vec![v]));
            }
            (false, Some(_)) => return Err(FormError::Ambiguous),
            (false, None) => {
                out.insert(name, v);
            }
        }
    }
    Ok(Value::Object(out))
}

fn urlencoded_pairs(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let text = std::str::from_utf8(body).map_err(|_| FormError::Invalid)?;
    let decode = |t: &str| decode_component(t).ok_or(FormError::Invalid);
    url_pairs(text).map(|(k, v)| Ok((decode(k)?, decode(v)?))).collect()
}

/// The `boundary` parameter of a `multipart/form-data` content type.
fn boundary(content_type: &str) -> Option<String> {
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
                let (disposition, mut rest) = value.split_once(';').unwrap_or((value, ""));
                if !disposition.trim().eq_ignore_ascii_case("form-data") {
                    return Err(FormError::Invalid);
                }
                while !rest.trim().is_empty() {
                    let (k, v, after) = disposition_param(rest)?;
                    rest = after;
                    match k.to_ascii_lowercase().as_str() {
                        // An extended (RFC 5987) name is read differently by different parsers.
                        "name*" | "filename*" => return Err(FormError::Ambiguous),
                        "name" if name.is_some() => return Err(FormError::Ambiguous),
                        "name" => name = Some(v.to_string()),
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

/// The first `key=value` parameter of `params` (a `Content-Disposition` after its type), with
/// what follows it. A quoted value ends at its closing quote: it may hold `;` and any UTF-8
/// (RFC 7578 §5.1, as browsers, curl and httpx send names and filenames). A quote or
/// backslash inside is read differently by different parsers (escapes or not).
fn disposition_param(params: &str) -> Result<(&str, &str, &str), FormError> {
    let (key, rest) = params.split_once('=').ok_or(FormError::Invalid)?;
    let rest = rest.trim_start();
    let (value, after) = match rest.strip_prefix('"') {
        Some(quoted) => {
            let end = quoted.find('"').ok_or(FormError::Invalid)?;
            let after = quoted[end + 1..].trim_start();
            if !(after.is_empty() || after.starts_with(';')) {
                return Err(FormError::Ambiguous);
            }
            (&quoted[..end], after)
        }
        None => {
            let end = rest.find(';').unwrap_or(rest.len());
            (rest[..end].trim_end(), &rest[end..])
        }
    };
    if value.contains(['"', '\\']) {
        return Err(FormError::Ambiguous);
    }
    Ok((key.trim(), value, after.strip_prefix(';').unwrap_or(after)))
}

/// A `multipart/form-data` body's (name, content) pairs; file parts as (lossy) text.
fn multipart_pairs(body: &[u8], boundary: &str) -> Result<Vec<(String, String)>, FormError> {
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
                    Some(b"" | b"\r\n") => Ok(pairs),
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

    fn object(pairs: Vec<(String, String)>) -> Result<Value, FormError> {
        strict_object(pairs, &|n| n == "tags", &|n, t| if n == "qty" { t.parse::<i64>().map_or(json!(t), |i| json!(i)) } else { json!(t) })
    }

    #[test]
    fn urlencoded() {
        let read = |b: &str| read_pairs(&FormKind::UrlEncoded, b.as_bytes()).and_then(object);
        assert_eq!(read("qty=2&name=a+b%21&tags=x&tags=y&gift=true"), Ok(json!({"qty": 2, "name": "a b!", "tags": ["x", "y"], "gift": "true"})));
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
        let read = |b: Vec<u8>| read_pairs(&FormKind::Multipart(Some("XyZ".into())), &b).and_then(object);
        let form = multipart(&[
            ("Content-Disposition: form-data; name=\"qty\"", "3"),
            ("Content-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\nContent-Type: image/png", "\u{1}PNG"),
            ("content-disposition: form-data; name=tags", "a"),
        ]);
        assert_eq!(read(form), Ok(json!({"qty": 3, "file": "\u{1}PNG", "tags": ["a"]})));
        // RFC 7578 §5.1: names in UTF-8, as browsers, curl, httpx and urllib3 send them.
        let utf8 = multipart(&[("Content-Disposition: form-data; name=\"größe\"", "3"), ("Content-Disposition: form-data; name=\"f\"; filename=\"ä;b.txt\"", "x")]);
        assert_eq!(read(utf8), Ok(json!({"größe": "3", "f": "x"})));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name=\"a\"b\"", "1")])), Err(FormError::Ambiguous), "a quote inside");
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name=\"a\\\"; x=\"", "1")])), Err(FormError::Ambiguous), "an escape");
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name=\"a", "1")])), Err(FormError::Invalid), "a quote left open");
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name=\"qty\"", "1"), ("Content-Disposition: form-data; name=\"qty\"", "9")])), Err(FormError::Ambiguous));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name*=UTF-8''qty", "1")])), Err(FormError::Ambiguous));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data; name=\"qty\"\r\nContent-Transfer-Encoding: base64", "MQ==")])), Err(FormError::Ambiguous));
        assert_eq!(read(multipart(&[("Content-Disposition: form-data", "1")])), Err(FormError::Invalid));
        assert_eq!(read(b"preamble\r\n--XyZ--".to_vec()), Err(FormError::Ambiguous));
        assert_eq!(read(b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx".to_vec()), Err(FormError::Invalid), "no closing delimiter");
        let mut trailing = multipart(&[("Content-Disposition: form-data; name=\"a\"", "x")]);
        trailing.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"qty\"\r\n\r\n900\r\n--XyZ--");
        assert_eq!(read(trailing), Err(FormError::Ambiguous), "a part after the close delimiter");
        assert_eq!(form_kind(Some("multipart/form-data; boundary=XyZ")), Some(FormKind::Multipart(Some("XyZ".into()))));
        assert_eq!(form_kind(Some("Application/X-WWW-Form-Urlencoded; charset=utf-8")), Some(FormKind::UrlEncoded));
        assert_eq!(form_kind(Some("application/json")), None);
        assert_eq!(boundary("multipart/form-data; charset=utf-8; Boundary=\"a b\""), Some("a b".into()));
        assert_eq!(boundary("multipart/form-data"), None);
    }
}
