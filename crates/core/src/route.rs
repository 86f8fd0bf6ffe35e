//! Request paths as policies see them, and the `match` clause of policy rules.
//!
//! Rules are matched against the *canonical* path, so `/public/../admin`, `//admin`,
//! `/%61dmin` and `/admin/` cannot slip past a rule written for `/admin`; literal segments match
//! regardless of ASCII case (`/ADMIN`), as case-insensitive routers (ASP.NET, Spring with
//! case-insensitive matching) read them. Paths whose meaning depends on the upstream's decoder
//! (an encoded `/` or `\`, a raw `\`, `;` path parameters that Tomcat and Spring strip,
//! control bytes, broken `%` escapes) are refused outright.

use serde::Deserialize;

/// Why a path cannot be canonicalised; such requests are refused with 400 `invalid_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    BadPercentEncoding,
    EncodedSeparator,
    ForbiddenCharacter,
    /// `;` in the path: Java servlet containers drop `;...` from each segment before routing.
    PathParameter,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotOriginForm => "path must start with '/'",
            PathError::BadPercentEncoding => "path has a malformed percent-encoding",
            PathError::EncodedSeparator => "path has an encoded '/' or '\\'",
            PathError::ForbiddenCharacter => "path has a control character or backslash",
            PathError::PathParameter => "path has a ';' parameter",
        })
    }
}

/// The canonical form of a request's `:path`: query and fragment dropped, unreserved
/// percent-escapes decoded, other escapes upper-cased, repeated slashes merged, `.` / `..`
/// segments resolved (never above the root) and a trailing slash dropped (`/` stays `/`):
/// most routers serve `/a/` as `/a`.
pub fn canonical_path(raw: &str) -> Result<String, PathError> {
    let path = raw.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    let decoded = decode_unreserved(path)?;
    // Most paths are canonical already: no copy beyond the decoding one.
    if decoded == "/" || (!decoded.ends_with('/') && decoded[1..].split('/').all(|s| !matches!(s, "" | "." | ".."))) {
        return Ok(decoded);
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x20 || b == 0x7f || b == b'\\' {
            return Err(PathError::ForbiddenCharacter);
        }
        if b == b';' {
            return Err(PathError::PathParameter);
        }
        if b != b'%' {
            // A run of plain bytes is copied at once (non-ASCII ones as the UTF-8 they already
            // are: every byte that ends a run is ASCII, so runs end on character boundaries).
            let run = bytes[i..].iter().position(|&c| c < 0x20 || c == 0x7f || c == b'\\' || c == b';' || c == b'%').map_or(bytes.len(), |n| i + n);
            out.push_str(path.get(i..run).ok_or(PathError::ForbiddenCharacter)?);
            i = run;
            continue;
        }
        let hex = path.get(i + 1..i + 3).ok_or(PathError::BadPercentEncoding)?;
        let value = u8::from_str_radix(hex, 16).map_err(|_| PathError::BadPercentEncoding)?;
        if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
            return Err(PathError::BadPercentEncoding);
        }
        match value {
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            0x00..=0x1f | 0x7f => return Err(PathError::ForbiddenCharacter),
            v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                out.push(char::from(v));
            }
            _ => {
                out.push('%');
                out.push_str(&hex.to_ascii_uppercase());
            }
        }
        i += 3;
    }
    Ok(out)
}

/// The `match` clause of a rule, with Envoy's `RouteMatch` names. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum PathMatch {
    /// Canonical path starts with this string (Envoy semantics: `/api` also matches `/apix`).
    Prefix(String),
    /// Canonical path equals this string.
    Path(String),
}

impl PathMatch {
    /// Whether a canonical path (see [`canonical_path`]) is matched.
    pub fn matches(&self, canonical: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => prefix_matches(p, canonical),
            PathMatch::Path(p) => path_matches(p, canonical),
        }
    }
}

/// A configured path without its trailing slash, as canonical paths come (`/` stays `/`).
fn untrailed(p: &str) -> &str {
    if p.len() > 1 {
        p.strip_suffix('/').unwrap_or(p)
    } else {
        p
    }
}

/// Prefix match on a canonical path, ignoring ASCII case; `/admin/` also covers `/admin` (the
/// canonical form of `/admin/`).
fn prefix_matches(prefix: &str, canonical: &str) -> bool {
    let starts = |p: &str| canonical.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p));
    starts(prefix) || (prefix.ends_with('/') && untrailed(prefix).eq_ignore_ascii_case(canonical))
}

/// Exact match on a canonical path, ignoring ASCII case and a trailing slash.
fn path_matches(path: &str, canonical: &str) -> bool {
    untrailed(path).eq_ignore_ascii_case(canonical)
}

/// A path template such as `/tenants/{tenant_id}/orders/{order_id}`: literal segments match
/// exactly, `{name}` matches one non-empty segment and captures it (percent-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<TemplateSegment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateSegment {
    Literal(String),
    Param(String),
}

impl std::fmt::Display for PathTemplate {
    /// The template as written: `/tenants/{tenant_id}/orders`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for segment in &self.segments {
            match segment {
                TemplateSegment::Literal(l) => write!(f, "/{l}")?,
                TemplateSegment::Param(name) => write!(f, "/{{{name}}}")?,
            }
        }
        Ok(())
    }
}

impl PathTemplate {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(template: &str) -> Result<PathTemplate, String> {
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| format!("template {template:?} must start with '/'"))?;
        let mut segments = Vec::new();
        // Canonical paths carry no trailing slash: neither does a template.
        let rest = if rest.is_empty() { rest } else { rest.strip_suffix('/').unwrap_or(rest) };
        for part in rest.split('/') {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                    return Err(format!("template {template:?} has a bad parameter {part:?}"));
                }
                if segments.iter().any(|s| matches!(s, TemplateSegment::Param(n) if n == name)) {
                    return Err(format!("template {template:?} names {{{name}}} twice"));
                }
                segments.push(TemplateSegment::Param(name.to_string()));
            } else if part.contains(['{', '}']) {
                return Err(format!("template {template:?}: a parameter must be a whole segment ({part:?})"));
            } else {
                segments.push(TemplateSegment::Literal(part.to_string()));
            }
        }
        Ok(PathTemplate { segments })
    }

    /// The captured parameters when the canonical path matches, `None` otherwise.
    pub fn captures(&self, canonical: &str) -> Option<Vec<(String, String)>> {
        let parts: Vec<&str> = canonical.strip_prefix('/')?.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut captured = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                TemplateSegment::Literal(l) if l.eq_ignore_ascii_case(part) => {}
                TemplateSegment::Literal(_) => return None,
                TemplateSegment::Param(name) => {
                    if part.is_empty() {
                        return None;
                    }
                    captured.push((name.clone(), percent_decode(part)?));
                }
            }
        }
        Some(captured)
    }

    /// Parameter names in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            TemplateSegment::Param(n) => Some(n.as_str()),
            TemplateSegment::Literal(_) => None,
        })
    }
}

/// The `match` of a rule in meshward's own policies: one of `prefix`, `path`, `template`, and
/// optionally the methods it covers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteMatch {
    pub prefix: Option<String>,
    pub path: Option<String>,
    pub template: Option<String>,
    pub methods: Option<Vec<String>>,
}

/// Where a compiled [`RouteMatch`] applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    Prefix(String),
    Path(String),
    Template(PathTemplate),
}

/// A compiled `match`: method and canonical path, with template captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: PathKind,
    /// Upper-case methods; `None` = any.
    pub methods: Option<Vec<String>>,
}

impl RouteMatch {
    /// Validates a raw match; the error text is for the `match` field of the rule.
    pub fn compile(raw: RawRouteMatch) -> Result<RouteMatch, String> {
        let path = match (raw.prefix, raw.path, raw.template) {
            (Some(p), None, None) => PathKind::Prefix(p),
            (None, Some(p), None) => PathKind::Path(p),
            (None, None, Some(t)) => PathKind::Template(PathTemplate::parse(&t)?),
            _ => return Err("set exactly one of `prefix`, `path` or `template`".into()),
        };
        if let PathKind::Prefix(p) | PathKind::Path(p) = &path {
            if !p.starts_with('/') {
                return Err(format!("{p:?} must start with '/'"));
            }
        }
        let methods = match raw.methods {
            None => None,
            Some(m) if m.is_empty() => return Err("`methods` must not be empty".into()),
            Some(m) => Some(
                m.into_iter()
                    .map(|x| {
                        let up = x.to_ascii_uppercase();
                        if up.is_empty() || !up.bytes().all(|b| b.is_ascii_uppercase()) {
                            Err(format!("{x:?} is not an HTTP method"))
                        } else {
                            Ok(up)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(RouteMatch { path, methods })
    }

    /// The template captures (empty for prefix/path) when method and canonical path match.
    /// `method` is the method rules see ([`crate::RequestState::route_method`]: `HEAD` as `GET`).
    pub fn captures(&self, method: &str, canonical: &str) -> Option<Vec<(String, String)>> {
        if self.methods.as_ref().is_some_and(|m| !m.iter().any(|x| x == method)) {
            return None;
        }
        match &self.path {
            PathKind::Prefix(p) => prefix_matches(p, canonical).then(Vec::new),
            PathKind::Path(p) => path_matches(p, canonical).then(Vec::new),
            PathKind::Template(t) => t.captures(canonical),
        }
    }

    /// Whether a template parameter of this name exists.
    pub fn has_param(&self, name: &str) -> bool {
        matches!(&self.path, PathKind::Template(t) if t.params().any(|n| n == name))
    }
}

/// Fully percent-decodes a path segment or query value; `None` if the result is not UTF-8
/// or an escape is broken.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A query that cannot be read unambiguously: a checked parameter appears twice, or an escape
/// is broken. Callers refuse such requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmbiguousQuery;

/// The `name=value` pairs of a query string or an urlencoded form, as written, in order:
/// empty pairs skipped, a pair without `=` has an empty value.
pub fn url_pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split('&').filter(|p| !p.is_empty()).map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// A name or value of a query string or urlencoded form: `+` as space, percent-decoded;
/// `None` for a broken escape or a result that is not UTF-8.
pub fn decode_component(text: &str) -> Option<String> {
    percent_decode(&text.replace('+', " "))
}

/// The query of a raw `:path`, fragment dropped; empty when there is none.
pub fn query_of(raw_path: &str) -> &str {
    raw_path.split_once('?').map_or("", |(_, q)| q.split('#').next().unwrap_or(""))
}

/// The value of a query parameter (`+` as space, percent-decoded).
pub fn query_param(raw_path: &str, name: &str) -> Result<Option<String>, AmbiguousQuery> {
    let mut found = None;
    for (k, v) in url_pairs(query_of(raw_path)) {
        let key = decode_component(k).ok_or(AmbiguousQuery)?;
        if key == name {
            if found.is_some() {
                return Err(AmbiguousQuery);
            }
            found = Some(decode_component(v).ok_or(AmbiguousQuery)?);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let t = PathTemplate::parse("/tenants/{tenant_id}/orders/{order_id}").unwrap();
        assert_eq!(
            t.captures("/tenants/acme/orders/42"),
            Some(vec![("tenant_id".into(), "acme".into()), ("order_id".into(), "42".into())])
        );
        assert_eq!(t.captures("/tenants/acme%20corp/orders/42").unwrap()[0].1, "acme corp");
        assert_eq!(t.captures("/tenants/acme/orders"), None);
        assert_eq!(t.captures("/tenants/acme/orders/42/items"), None);
        assert_eq!(t.captures("/tenants//orders/42"), None);
        assert_eq!(t.captures("/tenant/acme/orders/42"), None);
        assert_eq!(t.captures("/tenants/%ff/orders/1"), None, "not UTF-8");
        assert_eq!(t.params().collect::<Vec<_>>(), vec!["tenant_id", "order_id"]);
        assert_eq!(t.to_string(), "/tenants/{tenant_id}/orders/{order_id}");
        assert_eq!(PathTemplate::parse("/").unwrap().to_string(), "/");
        for bad in ["tenants/{id}", "/a/{}", "/a/x{id}", "/a/{id}/{id}", "/a/{i d}"] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(PathTemplate::parse("/").unwrap().captures("/"), Some(vec![]));
        assert_eq!(t.captures("/TENANTS/Acme/Orders/42").unwrap()[0].1, "Acme", "literals ignore case, captures keep it");
        let slash = PathTemplate::parse("/users/{id}/").unwrap();
        assert_eq!(slash.captures("/users/7"), Some(vec![("id".into(), "7".into())]));
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("/a?user=bob&x=1", "user"), Ok(Some("bob".into())));
        assert_eq!(query_param("/a?user=b%C3%B6b+x", "user"), Ok(Some("b\u{f6}b x".into())));
        assert_eq!(query_param("/a?x=1", "user"), Ok(None));
        assert_eq!(query_param("/a", "user"), Ok(None));
        assert_eq!(query_param("/a?user=a&user=b", "user"), Err(AmbiguousQuery), "ambiguous");
        assert_eq!(query_param("/a?us%65r=a&user=b", "user"), Err(AmbiguousQuery), "ambiguous after decoding");
    }

    #[test]
    fn canonical_paths() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b"),
            ("/a/b//", "/a/b"),
            ("/a/b?x=1", "/a/b"),
            ("/a#frag", "/a"),
            ("//admin", "/admin"),
            ("/public/../admin", "/admin"),
            ("/public/./x", "/public/x"),
            ("/../../etc", "/etc"),
            ("/a/..", "/"),
            ("/a/b/..", "/a"),
            ("/a/.", "/a"),
            ("/%61dmin", "/admin"),
            ("/p%2e%2e/x", "/p../x"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/a%20b", "/a%20b"),
            ("/a%3ab", "/a%3Ab"),
            ("/caf\u{e9}", "/caf\u{e9}"),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("admin", PathError::NotOriginForm),
            ("", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a\\b", PathError::ForbiddenCharacter),
            ("/a%00", PathError::ForbiddenCharacter),
            ("/a\u{0}", PathError::ForbiddenCharacter),
            ("/a;x=1/b", PathError::PathParameter),
            ("/admin;/users", PathError::PathParameter),
            ("/a%", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%+1", PathError::BadPercentEncoding),
        ];
        for (raw, want) in cases {
            assert_eq!(canonical_path(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn path_match() {
        let prefix = PathMatch::Prefix("/api".into());
        assert!(prefix.matches("/api/x"));
        assert!(prefix.matches("/api"));
        assert!(!prefix.matches("/ap"));
        assert!(prefix.matches("/API/x"), "ASCII case does not matter");
        let dir = PathMatch::Prefix("/admin/".into());
        assert!(dir.matches("/admin/users") && dir.matches("/admin") && dir.matches("/ADMIN"));
        assert!(!dir.matches("/administrator"));
        let exact = PathMatch::Path("/health".into());
        assert!(exact.matches("/health"));
        assert!(exact.matches("/Health"));
        assert!(!exact.matches("/health/x"));
        assert!(PathMatch::Path("/health/".into()).matches("/health"));
        assert!(PathMatch::Path("/".into()).matches("/"));
        let parsed: PathMatch = serde_json::from_str(r#"{"prefix": "/x"}"#).unwrap();
        assert_eq!(parsed, PathMatch::Prefix("/x".into()));
        assert!(serde_json::from_str::<PathMatch>(r#"{"regex": "/x"}"#).is_err());
        assert!(serde_json::from_str::<PathMatch>(r#"{"prefix": "/x", "path": "/y"}"#).is_err());
    }
}
