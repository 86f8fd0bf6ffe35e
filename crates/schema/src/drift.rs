//! Drift: which routes traffic uses that the contract does not describe, as metric labels of
//! bounded cardinality (`meshward drift` reads them from Prometheus).
//!
//! A request the contract has no operation for is labelled with its route's *shape*: the
//! method and the path with every segment that looks like a value (a number, an id, anything
//! not word-like) written `{id}` — `GET /admin/users/{id}`. Envoy extracts a tag only when its
//! value is made of letters, digits, `_`, `-` and `.` (and `.` ends a tag here), so the label
//! is the shape spelled in that alphabet ([`shape_label`], read back by [`label_shape`]):
//! `GET-admin-users-_v`. The shapes a sidecar labels are recorded once for all its workers in
//! proxy-wasm shared data, at most [`MAX_SHAPES`]; any further shape is labelled
//! [`OTHER_ROUTES`], so a client sending random paths adds one label, not one per path.
//! Operations carry their id as label ([`route_label`]).

use meshward_host::Host;

/// Distinct route shapes a sidecar labels; the rest are [`OTHER_ROUTES`].
pub const MAX_SHAPES: usize = 64;
/// The label of a route beyond [`MAX_SHAPES`].
pub const OTHER_ROUTES: &str = "other_routes";
/// Shared-data key holding the shapes labelled so far, one per line.
const SHAPES_KEY: &str = "meshward_schema.route_shapes";
/// Segments kept at most; a longer path ends in `/...`.
const MAX_SEGMENTS: usize = 8;
/// A literal segment longer than this is a value.
const MAX_LITERAL: usize = 32;

/// An operation id as a metric label: letters, digits, `_` and `-` only.
pub fn route_label(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// The shape of a route outside the contract: `METHOD /literal/{id}/...`; a method that is
/// not a plain token is `OTHER`.
pub fn route_shape(method: &str, canonical: &str) -> String {
    let method = if !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_alphabetic()) { method } else { "OTHER" };
    let mut out = format!("{} ", method.to_ascii_uppercase());
    let path = canonical.split(['?', '#']).next().unwrap_or("");
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        out.push('/');
        if i == MAX_SEGMENTS {
            out.push_str("...");
            break;
        }
        if is_literal(segment) {
            out.push_str(segment);
        } else {
            out.push_str("{id}");
        }
    }
    out
}

/// A word-like segment (`users`, `v2`, `openapi.json`), kept as it is; anything else is a value.
fn is_literal(segment: &str) -> bool {
    let word_like = segment.len() <= MAX_LITERAL && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    // Numbers, and longer tokens with digits in them (uuids, hashes, generated ids).
    let id_like = (!segment.is_empty() && digits == segment.len()) || (segment.len() >= 8 && digits > 0);
    word_like && !id_like
}

/// How a shape's pieces outside the label alphabet are spelled in a label: `_` and a letter.
/// Single characters anywhere in a literal segment; `{id}` and `...` as whole segments.
const ESCAPES: [(&str, char); 6] = [("-", 'h'), ("_", '_'), (".", 'd'), ("~", 't'), ("{id}", 'v'), ("...", 'm')];

fn escape_of(piece: &str) -> Option<char> {
    ESCAPES.iter().find(|(p, _)| *p == piece).map(|(_, e)| *e)
}

/// A shape as a label: `/` is `-`, the [`ESCAPES`] are `_` and their letter (`-` is `_h`,
/// `{id}` is `_v`); the method and the path are joined by nothing (`GET-a`).
pub fn shape_label(shape: &str) -> String {
    let (method, path) = shape.split_once(' ').unwrap_or((shape, ""));
    let mut out = method.to_string();
    for segment in path.split('/').skip(1) {
        out.push('-');
        if let Some(e) = escape_of(segment).filter(|_| segment.len() > 1) {
            out.extend(['_', e]);
            continue;
        }
        for c in segment.chars() {
            match escape_of(c.encode_utf8(&mut [0; 4])) {
                Some(e) => out.extend(['_', e]),
                None => out.push(c),
            }
        }
    }
    out
}

/// The shape a label spells ([`shape_label`]); `None` for what no shape becomes.
pub fn label_shape(label: &str) -> Option<String> {
    let start = label.find('-')?;
    let (method, path) = label.split_at(start);
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = format!("{method} ");
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '-' => out.push('/'),
            '_' => {
                let e = chars.next()?;
                out.push_str(ESCAPES.iter().find(|(_, x)| *x == e)?.0);
            }
            c if c.is_ascii_alphanumeric() => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// The label a route outside the contract is counted under: its shape, if the sidecar has
/// room for it (or labelled it before), else [`OTHER_ROUTES`].
pub fn unknown_route_label(host: &mut dyn Host, method: &str, canonical: &str) -> String {
    let shape = shape_label(&route_shape(method, canonical));
    // A few tries when workers race to add shapes; losing every race costs a label, not safety.
    for _ in 0..4 {
        let (value, cas) = host.shared_data(SHAPES_KEY);
        let known = value.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_default();
        if known.lines().any(|l| l == shape) {
            return shape;
        }
        if known.lines().count() >= MAX_SHAPES {
            break;
        }
        let updated = if known.is_empty() { shape.clone() } else { format!("{known}\n{shape}") };
        if host.set_shared_data(SHAPES_KEY, updated.as_bytes(), cas).is_ok() {
            return shape;
        }
    }
    OTHER_ROUTES.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshward_host::FakeHost;

    #[test]
    fn route_shapes() {
        for (method, path, shape) in [
            ("GET", "/admin/users/123", "GET /admin/users/{id}"),
            ("GET", "/admin/users/7f3c9a1e-2b4d-4c1a-9f1e-0a2b3c4d5e6f/keys", "GET /admin/users/{id}/keys"),
            ("DELETE", "/v2/orders/ab12cd34ef", "DELETE /v2/orders/{id}"),
            ("GET", "/openapi.json", "GET /openapi.json"),
            ("GET", "/", "GET /"),
            ("GET", "/a/", "GET /a/"),
            ("GET", "/users/jane@example.com", "GET /users/{id}"),
            ("GET", "/search?q=secret", "GET /search"),
            ("GET", "/files/a-very-long-file-name-that-says-too-much-about-itself", "GET /files/{id}"),
            ("GET", "/a/b/c/d/e/f/g/h/i/j", "GET /a/b/c/d/e/f/g/h/..."),
            ("get", "/x", "GET /x"),
            ("M-SEARCH", "/x", "OTHER /x"),
            ("", "/x", "OTHER /x"),
        ] {
            assert_eq!(route_shape(method, path), shape, "{method} {path}");
        }
    }

    #[test]
    fn shapes_become_labels_and_back() {
        for (shape, label) in [
            ("GET /admin/users/{id}", "GET-admin-users-_v"),
            ("GET /openapi.json", "GET-openapi_djson"),
            ("GET /", "GET-"),
            ("POST /user-profiles/~me/a_b", "POST-user_hprofiles-_tme-a__b"),
            ("GET /a/b/c/d/e/f/g/h/...", "GET-a-b-c-d-e-f-g-h-_m"),
            ("OTHER /{id}/x", "OTHER-_v-x"),
        ] {
            assert_eq!(shape_label(shape), label, "{shape}");
            assert!(label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{label}");
            assert_eq!(label_shape(label).as_deref(), Some(shape), "{label}");
        }
        // Operation ids, the overflow label and broken escapes are no shape.
        for label in ["getPetById", "get_pet-x", OTHER_ROUTES, "GET-a_", "GET-a_q", "GET-a.b"] {
            assert_eq!(label_shape(label), None, "{label}");
        }
    }

    #[test]
    fn operation_ids_become_labels() {
        assert_eq!(route_label("get.pet by-id_2"), "get_pet_by-id_2");
    }

    #[test]
    fn shapes_are_bounded_across_workers() {
        let mut first = FakeHost::default();
        let mut second = FakeHost::default();
        second.shared = first.shared.clone();
        assert_eq!(unknown_route_label(&mut first, "GET", "/admin/1"), "GET-admin-_v");
        // Another worker sees the same shape, and adds its own.
        assert_eq!(unknown_route_label(&mut second, "GET", "/admin/2"), "GET-admin-_v");
        // A worker that loses every race labels the route as the rest, and records nothing.
        first.cas_failures = 4;
        assert_eq!(unknown_route_label(&mut first, "GET", "/raced"), OTHER_ROUTES);
        for i in 1..MAX_SHAPES {
            assert_eq!(unknown_route_label(&mut second, "GET", &format!("/p{i}")), format!("GET-p{i}"));
        }
        // Full: new shapes are one label, known ones keep theirs.
        assert_eq!(unknown_route_label(&mut first, "GET", "/another"), OTHER_ROUTES);
        assert_eq!(unknown_route_label(&mut first, "POST", "/p1"), OTHER_ROUTES);
        assert_eq!(unknown_route_label(&mut first, "GET", "/p1"), "GET-p1");
        assert_eq!(unknown_route_label(&mut first, "GET", "/admin/99"), "GET-admin-_v");
    }
}
