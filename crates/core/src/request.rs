//! The one request model every stage reads.
//!
//! The runtime builds a [`RequestState`] once per request from its headers, and fills in the
//! body once it is buffered. Every policy reads the request through it, so they all see the
//! same method, canonical path, query, headers and body, read by the same rules:
//!
//! - **Path**: canonicalised once ([`canonical_path`]); a path with no unambiguous reading is
//!   refused before any stage decides anything.
//! - **Method**: the method as sent; overrides (`X-HTTP-Method-Override`, `X-HTTP-Method`,
//!   `X-Method-Override`, a `_method` query parameter) that common frameworks honour are
//!   refused, so no stage decides on a method the service does not run. `HEAD` is matched as
//!   `GET` ([`RequestState::route_method`]): servers answer it with the `GET` handler.
//! - **Framing**: whether a body follows is what the stream says (`end_of_stream`), not
//!   `content-length`; chunked HTTP/1.1 and HTTP/2 bodies are read like any other.
//! - **Framing headers** (`content-type`, `content-encoding`, `content-length`,
//!   `transfer-encoding`) given twice are refused: services keep different copies.
//! - **Encoding**: a body with `Content-Encoding: gzip` or `deflate` is decoded (bounded by the
//!   body limit and [`MAX_COMPRESSION_RATIO`]) and the stages check what the service will read;
//!   any other coding is refused with 415, never passed unchecked.
//! - **JSON**: read once by the strict reader ([`crate::json`]) and shared by every stage.

use std::io::Read;
use std::rc::Rc;

use meshward_host::Host;

use crate::form::{form_kind, read_pairs, strict_object, FormError};
use crate::json::{self, Document, JsonError};
use crate::route::{canonical_path, decode_component, url_pairs, PathError};
use crate::workload::Workload;
use crate::{Denial, DenialKind, Principal};

/// Headers that carry a method the service may run instead of `:method`.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Headers whose second copy services read differently (first wins, last wins, joined).
const SINGLE_HEADERS: [&str; 4] = ["content-type", "content-encoding", "content-length", "transfer-encoding"];
/// Of those, the ones that hold one value, never a list.
const SINGLE_VALUED: [&str; 2] = ["content-type", "content-length"];

/// A single-valued header that holds a list: a comma outside quoted strings. Proxies join
/// repeated headers with commas (Envoy does, for `content-type`), so two copies arrive as one.
/// `content-encoding` is a list by definition and is read by [`coding`].
fn is_list(value: &str) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for c in value.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, ',') => return true,
            _ => {}
        }
    }
    false
}

/// A compressed body may grow at most this many times when decoded (a gzip bomb is refused
/// before it is expanded to the body limit).
pub const MAX_COMPRESSION_RATIO: usize = 200;

/// Why a request cannot be read unambiguously. Each maps to one deny reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// 400 `invalid_path`.
    InvalidPath(PathError),
    /// 400 `method_override`.
    MethodOverride,
    /// 400 `ambiguous_header`: a framing header given twice.
    AmbiguousHeader(&'static str),
}

impl RequestError {
    pub fn denial(&self) -> Denial {
        match self {
            RequestError::InvalidPath(e) => Denial::new(DenialKind::BadRequest, "invalid_path", e.to_string()),
            RequestError::MethodOverride => {
                Denial::new(DenialKind::BadRequest, "method_override", "method override headers and parameters are not accepted")
            }
            RequestError::AmbiguousHeader(name) => {
                Denial::new(DenialKind::BadRequest, "ambiguous_header", format!("the {name} header is given more than once"))
            }
        }
    }
}

/// Why a buffered body cannot be read. Each maps to one deny reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// 415 `unsupported_encoding`: a content coding other than gzip or deflate, or several.
    UnsupportedEncoding,
    /// 400 `invalid_encoding`: the body does not decode with its coding.
    InvalidEncoding,
    /// 413 `body_too_large`: decoded, it is larger than the limit.
    TooLarge { max_bytes: usize },
    /// 413 `compression_ratio`: it decodes to more than [`MAX_COMPRESSION_RATIO`] times its size.
    CompressionRatio,
    /// 400 `method_override`: a form body with a `_method` field (Rails, Laravel, Symfony run
    /// the method it names).
    MethodOverride,
}

impl BodyError {
    pub fn denial(&self) -> Denial {
        match self {
            BodyError::UnsupportedEncoding => Denial::new(
                DenialKind::UnsupportedMediaType,
                "unsupported_encoding",
                "the body's content-encoding is not supported (gzip, deflate or identity)",
            ),
            BodyError::InvalidEncoding => Denial::new(DenialKind::BadRequest, "invalid_encoding", "the body does not decode with its content-encoding"),
            BodyError::TooLarge { max_bytes } => {
                Denial::new(DenialKind::PayloadTooLarge, "body_too_large", format!("the request body is larger than {max_bytes} bytes"))
            }
            BodyError::MethodOverride => RequestError::MethodOverride.denial(),
            BodyError::CompressionRatio => Denial::new(
                DenialKind::PayloadTooLarge,
                "compression_ratio",
                format!("the body decodes to more than {MAX_COMPRESSION_RATIO} times its size"),
            ),
        }
    }
}

/// A media type without its parameters, lower-case: `Application/JSON; charset=utf-8` →
/// `application/json`.
pub fn essence(media_type: &str) -> String {
    media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Whether a content type is gRPC's (`application/grpc`, `application/grpc+proto`, ...; not
/// gRPC-Web, whose answers carry their trailers in the body).
pub fn is_grpc(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/grpc" || essence.starts_with("application/grpc+")
}

/// Whether a body the stages read carries a method override: a `_method` field of an
/// `application/x-www-form-urlencoded` body.
pub fn body_overrides_method(content_type: Option<&str>, body: &[u8]) -> bool {
    if essence(content_type.unwrap_or("")) != "application/x-www-form-urlencoded" {
        return false;
    }
    names_method(&String::from_utf8_lossy(body))
}

/// Whether a query string or urlencoded form has a `_method` field.
fn names_method(text: &str) -> bool {
    url_pairs(text).any(|(k, _)| decode_component(k).is_some_and(|k| k.trim().eq_ignore_ascii_case("_method")))
}

/// Whether the request carries a body, as far as its headers tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: the headers ended the stream, or `content-length: 0`.
    None,
    /// A body of known, non-zero length.
    Some,
    /// A body of unknown length follows (HTTP/1.1 chunked, HTTP/2 without `content-length`);
    /// it may still be empty.
    Unknown,
}

/// Why a body could not be read as a document (JSON, or a form as the object binders build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Not JSON / not a form of its content type, or nested too deep.
    Invalid,
    /// JSON that services read differently ([`json::Ambiguity`]).
    AmbiguousJson,
    /// A form that services read differently (repeated or case-variant fields, ...).
    AmbiguousForm,
}

/// A `Content-Encoding` meshward decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP `deflate`: the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
}

/// The coding a `content-encoding` value names: `Ok(None)` for none or `identity`.
pub fn coding(value: Option<&str>) -> Result<Option<Coding>, BodyError> {
    let codings: Vec<String> = value
        .unwrap_or("")
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    match codings.as_slice() {
        [] => Ok(None),
        [one] if one == "gzip" || one == "x-gzip" => Ok(Some(Coding::Gzip)),
        [one] if one == "deflate" => Ok(Some(Coding::Deflate)),
        _ => Err(BodyError::UnsupportedEncoding),
    }
}

/// Decodes a body, refusing output over `max_bytes` or over the ratio limit.
pub fn decode(coding: Coding, raw: &[u8], max_bytes: usize) -> Result<Vec<u8>, BodyError> {
    let by_ratio = raw.len().saturating_mul(MAX_COMPRESSION_RATIO).max(1024);
    let cap = max_bytes.min(by_ratio);
    let mut out = Vec::new();
    let reader: Box<dyn Read + '_> = match coding {
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(raw)),
    };
    reader.take(cap as u64 + 1).read_to_end(&mut out).map_err(|_| BodyError::InvalidEncoding)?;
    if out.len() > cap {
        return Err(if cap == max_bytes { BodyError::TooLarge { max_bytes } } else { BodyError::CompressionRatio });
    }
    Ok(out)
}

/// What the stages of one request share: the request as read once, and what stages learned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestState {
    /// Envoy's `x-request-id`, echoed in denial bodies and logs.
    pub request_id: Option<String>,
    /// `:method`, upper-cased: a rule for `DELETE` also decides `delete` (method names are
    /// case-sensitive, but some servers upper-case them).
    pub method: String,
    /// The raw `:path`, query included.
    pub path: String,
    /// The canonical path rules match against (see [`canonical_path`]); empty when refused.
    pub canonical: String,
    /// The request headers as they reach the stages (pseudo-headers included); writes through
    /// [`RequestState::set_header`] keep them in step with the proxy.
    headers: Vec<(String, String)>,
    /// The headers did not end the stream: a body follows, possibly of unknown length.
    pub body_follows: bool,
    /// Why the request cannot be read unambiguously: every stage refuses it.
    pub refusal: Option<RequestError>,
    /// Set by the JWT stage once a token is verified; read by the stages after it.
    pub principal: Option<Rc<Principal>>,
    /// The peer workload, read from the connection on first use (`Some(None)`: none).
    pub workload: Option<Option<Rc<Workload>>>,
    /// The object ids the rules read (an ownership rule's path parameters), for the audit
    /// record.
    pub objects: Vec<(String, String)>,
    /// Name of the policy rule that matched, for per-route metrics and logs.
    pub route: Option<String>,
    /// The body read as JSON, once, for every stage that asks.
    json: Option<Result<Document, JsonError>>,
    /// A form body read as the object of its fields (text values), once.
    form: Option<Result<serde_json::Value, FormError>>,
}

impl RequestState {
    /// A gRPC call: denials answer it in gRPC's own form.
    pub fn is_grpc(&self) -> bool {
        self.header("content-type").is_some_and(is_grpc)
    }

    /// The request as its headers describe it; `end_of_stream`: the headers ended the stream.
    pub fn from_headers(headers: Vec<(String, String)>, end_of_stream: bool) -> RequestState {
        // One pass over the headers: the pseudo-headers and every header the model refuses on.
        let (mut method, mut path, mut request_id) = (None, None, None);
        let mut overridden = false;
        let mut copies = [0usize; SINGLE_HEADERS.len()];
        for (name, value) in &headers {
            match name.as_str() {
                ":method" => method = method.or(Some(value)),
                ":path" => path = path.or(Some(value)),
                "x-request-id" => request_id = request_id.or(Some(value)),
                n if METHOD_OVERRIDE_HEADERS.contains(&n) => overridden = true,
                n => {
                    if let Some(i) = SINGLE_HEADERS.iter().position(|h| *h == n) {
                        copies[i] += 1;
                    }
                }
            }
        }
        let mut state = RequestState {
            request_id: request_id.cloned(),
            method: method.map(|m| m.to_ascii_uppercase()).unwrap_or_default(),
            path: path.cloned().unwrap_or_default(),
            body_follows: !end_of_stream,
            ..RequestState::default()
        };
        match canonical_path(&state.path) {
            Ok(canonical) => state.canonical = canonical,
            Err(e) => state.refusal = Some(RequestError::InvalidPath(e)),
        }
        state.headers = headers;
        if state.refusal.is_none() {
            state.refusal = state.ambiguity(overridden, &copies);
        }
        state
    }

    /// A method override, or a framing header given twice (`copies`: per [`SINGLE_HEADERS`]).
    fn ambiguity(&self, overridden: bool, copies: &[usize; SINGLE_HEADERS.len()]) -> Option<RequestError> {
        if overridden || self.has_method_parameter() {
            return Some(RequestError::MethodOverride);
        }
        let doubled = |(h, n): (&&'static str, &usize)| *n > 1 || (SINGLE_VALUED.contains(h) && *n == 1 && self.header(h).is_some_and(is_list));
        SINGLE_HEADERS.iter().zip(copies).find(|pair| doubled(*pair)).map(|(h, _)| RequestError::AmbiguousHeader(h))
    }

    /// A `_method` query parameter (Laravel, Rails, Symfony, Express method-override).
    fn has_method_parameter(&self) -> bool {
        // The whole rest of the path: a `_method` after a `#` is refused too.
        self.path.split_once('?').is_some_and(|(_, query)| names_method(query))
    }

    /// Whether a body follows, as the stream and `content-length` tell.
    pub fn framing(&self) -> Framing {
        if !self.body_follows {
            return Framing::None;
        }
        match self.header("content-length").map(|v| v.trim().parse::<u64>()) {
            Some(Ok(0)) => Framing::None,
            Some(Ok(_)) => Framing::Some,
            _ => Framing::Unknown,
        }
    }

    /// The method rules match: `HEAD` is served by the `GET` handler, so it is decided as `GET`.
    pub fn route_method(&self) -> &str {
        if self.method == "HEAD" {
            "GET"
        } else {
            &self.method
        }
    }

    /// First value of a request header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of a request header, in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Removes every request header whose (lower-case) name `matches`, from the proxy too.
    pub fn remove_headers(&mut self, host: &mut dyn Host, matches: fn(&str) -> bool) {
        let mut names: Vec<String> = self.headers.iter().filter(|(n, _)| matches(n)).map(|(n, _)| n.clone()).collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            self.set_header(host, &name, None);
        }
    }

    /// Replaces (`Some`) or removes (`None`) a request header, in the proxy and here.
    pub fn set_header(&mut self, host: &mut dyn Host, name: &str, value: Option<&str>) {
        host.set_request_header(name, value);
        self.headers.retain(|(n, _)| n != name);
        if let Some(v) = value {
            self.headers.push((name.to_string(), v.to_string()));
        }
    }

    /// Asks the upstream for an answer without content coding, so a stage that checks the
    /// answer can read it (a compressed answer it cannot read is refused, not passed).
    pub fn want_identity_response(&mut self, host: &mut dyn Host) {
        if self.header("accept-encoding") != Some("identity") {
            self.set_header(host, "accept-encoding", Some("identity"));
        }
    }

    /// The body (as the service reads it, decoded) read as JSON by the strict reader: once per
    /// request, whichever stage asks first. `max_depth` is the asking stage's limit.
    pub fn json(&mut self, body: &[u8], max_depth: usize) -> Result<&Document, JsonError> {
        let parsed = self.json.get_or_insert_with(|| json::read(body, json::MAX_DEPTH));
        match parsed {
            Ok(doc) if doc.depth > max_depth => Err(JsonError::TooDeep { max_depth }),
            Ok(doc) => Ok(doc),
            Err(JsonError::TooDeep { .. }) => Err(JsonError::TooDeep { max_depth: max_depth.min(json::MAX_DEPTH) }),
            Err(e) => Err(*e),
        }
    }
}

impl RequestState {
    /// The body as a service's binder reads it: a form (`application/x-www-form-urlencoded`,
    /// `multipart/form-data`) as the object of its fields, with text values; anything else as
    /// JSON (the strict reader). Read once per request.
    pub fn document(&mut self, body: &[u8], max_depth: usize) -> Result<&serde_json::Value, Unreadable> {
        match form_kind(self.header("content-type")) {
            Some(kind) => {
                let text = |_: &str, t: &str| serde_json::Value::String(t.to_string());
                let read = self.form.get_or_insert_with(|| read_pairs(&kind, body).and_then(|pairs| strict_object(pairs, &|_| false, &text)));
                read.as_ref().map_err(|e| match e {
                    FormError::Invalid => Unreadable::Invalid,
                    FormError::Ambiguous => Unreadable::AmbiguousForm,
                })
            }
            None => self.json(body, max_depth).map(|d| &d.value).map_err(|e| match e {
                JsonError::Invalid | JsonError::TooDeep { .. } => Unreadable::Invalid,
                JsonError::Ambiguous(_) => Unreadable::AmbiguousJson,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, extra: &[(&str, &str)], end_of_stream: bool) -> RequestState {
        let mut headers = vec![(":method".to_string(), "post".to_string()), (":path".to_string(), path.to_string())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        RequestState::from_headers(headers, end_of_stream)
    }

    #[test]
    fn reads_the_request_once() {
        let r = request("/a//b/../c?x=1", &[("x-request-id", "r1"), ("content-type", "application/json")], false);
        assert_eq!((r.method.as_str(), r.canonical.as_str(), r.path.as_str()), ("POST", "/a/c", "/a//b/../c?x=1"));
        assert_eq!((r.request_id.as_deref(), r.header("content-type"), r.body_follows), (Some("r1"), Some("application/json"), true));
        assert_eq!(r.refusal, None);
        assert!(!request("/a", &[], true).body_follows);
        let framing = |headers: &[(&str, &str)], end_of_stream| request("/a", headers, end_of_stream).framing();
        assert_eq!(framing(&[], true), Framing::None);
        assert_eq!(framing(&[("content-length", "0")], false), Framing::None);
        assert_eq!(framing(&[("content-length", "12")], false), Framing::Some);
        assert_eq!(framing(&[("transfer-encoding", "chunked")], false), Framing::Unknown);
        assert_eq!(framing(&[], false), Framing::Unknown, "HTTP/2 without a length");
        let mut head = request("/a", &[], true);
        head.method = "HEAD".into();
        assert_eq!(head.route_method(), "GET");
    }

    #[test]
    fn refuses_what_services_read_differently() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], RequestError);
        let cases: &[Case] = &[
            ("/a%2fb", &[], RequestError::InvalidPath(PathError::EncodedSeparator)),
            ("/a", &[("x-http-method-override", "DELETE")], RequestError::MethodOverride),
            ("/a", &[("x-http-method", "PUT")], RequestError::MethodOverride),
            ("/a", &[("x-method-override", "PATCH")], RequestError::MethodOverride),
            ("/a?_method=DELETE", &[], RequestError::MethodOverride),
            ("/a?x=1&_METHOD=put", &[], RequestError::MethodOverride),
            ("/a?%5Fmethod=put", &[], RequestError::MethodOverride),
            ("/a", &[("content-type", "text/plain"), ("content-type", "application/json")], RequestError::AmbiguousHeader("content-type")),
            ("/a", &[("content-encoding", "gzip"), ("content-encoding", "identity")], RequestError::AmbiguousHeader("content-encoding")),
            ("/a", &[("content-type", "text/plain,application/json")], RequestError::AmbiguousHeader("content-type")),
            ("/a", &[("content-length", "4, 4")], RequestError::AmbiguousHeader("content-length")),
        ];
        for (path, headers, want) in cases {
            assert_eq!(request(path, headers, true).refusal.as_ref(), Some(want), "{path} {headers:?}");
        }
        assert_eq!(request("/a?method=x&_methods=y", &[], true).refusal, None);
        let quoted = [("content-type", "multipart/form-data; boundary=\"a,b\"")];
        assert_eq!(request("/a", &quoted, true).refusal, None, "a comma inside a quoted parameter");
        assert_eq!(request("/a", &[("content-encoding", "gzip, identity")], true).refusal, None, "a list by definition");
    }

    #[test]
    fn method_override_in_form_bodies() {
        let form = Some("application/x-www-form-urlencoded; charset=utf-8");
        assert!(body_overrides_method(form, b"a=1&_method=DELETE"));
        assert!(body_overrides_method(form, b"%5Fmethod=put"));
        assert!(body_overrides_method(form, b"_METHOD=put"));
        assert!(!body_overrides_method(form, b"method=put&x__method=1"));
        assert!(!body_overrides_method(Some("application/json"), br#"{"_method": "DELETE"}"#));
    }

    #[test]
    fn codings() {
        assert_eq!(coding(None), Ok(None));
        assert_eq!(coding(Some("identity")), Ok(None));
        assert_eq!(coding(Some("GZip")), Ok(Some(Coding::Gzip)));
        assert_eq!(coding(Some("x-gzip")), Ok(Some(Coding::Gzip)));
        assert_eq!(coding(Some("deflate")), Ok(Some(Coding::Deflate)));
        for bad in ["br", "zstd", "compress", "gzip, gzip", "gzip, br", "x"] {
            assert_eq!(coding(Some(bad)), Err(BodyError::UnsupportedEncoding), "{bad}");
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn decodes_within_limits() {
        let body = br#"{"role": "admin"}"#;
        assert_eq!(decode(Coding::Gzip, &gzip(body), 1024), Ok(body.to_vec()));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, body).unwrap();
        assert_eq!(decode(Coding::Deflate, &z.finish().unwrap(), 1024), Ok(body.to_vec()));
        assert_eq!(decode(Coding::Gzip, body, 1024), Err(BodyError::InvalidEncoding));
        let bomb = gzip(&vec![b'a'; 4 << 20]);
        assert_eq!(decode(Coding::Gzip, &bomb, 16 << 20), Err(BodyError::CompressionRatio));
        let big = gzip(&(0..60_000u32).flat_map(|i| i.to_le_bytes()).collect::<Vec<u8>>());
        assert_eq!(decode(Coding::Gzip, &big, 1000), Err(BodyError::TooLarge { max_bytes: 1000 }));
    }

    #[test]
    fn documents_from_json_and_forms() {
        let with_type = |ct: &str| request("/a", &[("content-type", ct)], false);
        let mut form = with_type("application/x-www-form-urlencoded");
        assert_eq!(form.document(b"tenant=acme&n=1", 8).cloned(), Ok(serde_json::json!({"tenant": "acme", "n": "1"})));
        assert_eq!(with_type("application/x-www-form-urlencoded").document(b"tenant=a&Tenant=b", 8), Err(Unreadable::AmbiguousForm));
        assert_eq!(with_type("application/x-www-form-urlencoded").document(b"tenant=%zz", 8), Err(Unreadable::Invalid));
        let multipart = "--b\r\nContent-Disposition: form-data; name=\"tenant\"\r\n\r\nacme\r\n--b--";
        assert_eq!(with_type("multipart/form-data; boundary=b").document(multipart.as_bytes(), 8).cloned(), Ok(serde_json::json!({"tenant": "acme"})));
        assert_eq!(with_type("application/json").document(br#"{"a": 1, "a": 2}"#, 8), Err(Unreadable::AmbiguousJson));
        assert_eq!(with_type("application/json").document(b"nope", 8), Err(Unreadable::Invalid));
    }

    #[test]
    fn json_is_read_once_and_depth_is_per_stage() {
        let mut r = request("/a", &[], false);
        assert!(r.json(b"[[1]]", 8).is_ok());
        assert_eq!(r.json(b"ignored: read once", 1).err(), Some(JsonError::TooDeep { max_depth: 1 }));
        assert_eq!(r.json(b"", 2).map(|d| d.value.clone()), Ok(serde_json::json!([[1]])));
    }
}
