//! The calling workload (east-west): who the peer is, as its verified mTLS certificate says.
//!
//! In a mesh a service calls another through both sidecars; the callee's sidecar terminates
//! mTLS and has verified the caller's certificate, whose URI SAN is a SPIFFE ID (Istio issues
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`). The identity is read from
//! Envoy's connection properties, never from a header a caller could write
//! (`x-forwarded-client-cert` included: only the element Envoy adds to it for the peer is
//! read, and only to refuse a certificate with several URI SANs), once per request
//! ([`current_workload`]).
//!
//! Envoy reports the SAN of whatever certificate the peer presented; that it was *verified* is
//! the listener's job (a `validation_context` with the mesh CA, as Istio's STRICT mode
//! configures). The README says so where it shows the listener.

use std::rc::Rc;

use meshward_host::Host;

use crate::request::RequestState;
use serde::Serialize;

/// Envoy's property for the first URI SAN of the peer's certificate.
pub const PEER_URI_SAN: [&str; 2] = ["connection", "uri_san_peer_certificate"];

/// Whether a request header could be mistaken for an identity meshward establishes: meshward's
/// own prefix (`x-meshward-*`) and `x-spiffe-id`. meshward reads identities from the connection
/// and verified tokens only; these are removed from every request so that a service (or a
/// log) never takes a caller's copy for meshward's word.
pub fn is_identity_header(name: &str) -> bool {
    name.starts_with("x-meshward-") || name == "x-spiffe-id"
}

/// A workload named by a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// The whole ID, `spiffe://cluster.local/ns/billing/sa/billing`.
    pub spiffe_id: String,
    pub trust_domain: String,
    /// From an Istio-form path (`/ns/<ns>/sa/<sa>`); `None` for other paths.
    pub namespace: Option<String>,
    pub service_account: Option<String>,
}

impl Workload {
    /// A SPIFFE ID read strictly (the SPIFFE ID standard: a lower-case trust domain of
    /// `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]`, none empty, `.` or `..`, no query,
    /// fragment, port or user). Anything else names no workload.
    pub fn parse(id: &str) -> Option<Workload> {
        let rest = id.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let domain_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
        if trust_domain.is_empty() || !trust_domain.bytes().all(domain_ok) {
            return None;
        }
        let segment_ok = |s: &str| {
            !s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        let segments: Vec<&str> = path.split('/').collect();
        if !segments.iter().all(|s| segment_ok(s)) {
            return None;
        }
        let (namespace, service_account) = match segments.as_slice() {
            ["ns", ns, "sa", sa] => (Some(ns.to_string()), Some(sa.to_string())),
            _ => (None, None),
        };
        Some(Workload { spiffe_id: id.to_string(), trust_domain: trust_domain.to_string(), namespace, service_account })
    }
}

/// SPIFFE IDs a rule accepts: each exact, or a prefix ending in `/` that matches every ID
/// under it (`spiffe://cluster.local/ns/billing/` is any service account of that namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpiffeIds(Vec<String>);

impl SpiffeIds {
    /// Refuses an entry that is neither a SPIFFE ID nor such a prefix.
    pub fn new(entries: Vec<String>) -> Result<SpiffeIds, String> {
        for entry in &entries {
            // A prefix is valid when an ID can continue it.
            let id = if entry.ends_with('/') { format!("{entry}x") } else { entry.clone() };
            if Workload::parse(&id).is_none() {
                return Err(format!("{entry:?} is not a SPIFFE ID (spiffe://<trust-domain>/<path>) or a prefix of one ending in `/`"));
            }
        }
        Ok(SpiffeIds(entries))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn entries(&self) -> &[String] {
        &self.0
    }

    /// Whether `id` is one of the entries, or under an entry ending in `/`.
    pub fn permit(&self, id: &str) -> bool {
        self.0.iter().any(|a| if a.ends_with('/') { id.len() > a.len() && id.starts_with(a.as_str()) } else { id == a })
    }
}

/// The workload of this request's peer, read from the connection once per request
/// (kept in the request's `workload`): `None` without a client certificate, with a URI SAN
/// that is not a SPIFFE ID, or with more than one URI SAN.
///
/// Envoy's property holds the certificate's first URI SAN only; an X.509-SVID carries exactly
/// one, and a certificate with more must not pass as any of them. Envoy lists them all in the
/// `x-forwarded-client-cert` element it adds for the peer (Istio's sidecars: `APPEND_FORWARD`
/// with `uri`), which the caller cannot write: that element, the last, is read when its first
/// URI is the property's.
pub fn current_workload(host: &dyn Host, request: &mut RequestState) -> Option<Rc<Workload>> {
    if request.workload.is_none() {
        let read = || {
            let san = host.property(&PEER_URI_SAN)?;
            let id = std::str::from_utf8(&san).ok()?;
            let uris = request.header_values(XFCC).last().map(peer_uris).unwrap_or_default();
            if uris.first().is_some_and(|first| first == id) && uris.len() > 1 {
                return None;
            }
            Workload::parse(id).map(Rc::new)
        };
        request.workload = Some(read());
    }
    request.workload.clone().flatten()
}

/// The header in which Envoy forwards the peer certificate's details.
const XFCC: &str = "x-forwarded-client-cert";

/// The `URI` values of the last element of an `x-forwarded-client-cert` value (elements are
/// separated by `,`, pairs by `;`, either may sit inside a quoted value).
fn peer_uris(xfcc: &str) -> Vec<String> {
    let split = |text: &str, separator: char| -> Vec<String> {
        let (mut parts, mut current, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
        for c in text.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    parts.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        parts.push(current);
        parts
    };
    let Some(element) = split(xfcc, ',').pop() else { return Vec::new() };
    split(&element, ';')
        .into_iter()
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = value.trim();
            key.trim().eq_ignore_ascii_case("uri").then(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value).to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_read_strictly() {
        let w = Workload::parse("spiffe://cluster.local/ns/billing/sa/billing-api").unwrap();
        assert_eq!(
            (w.trust_domain.as_str(), w.namespace.as_deref(), w.service_account.as_deref()),
            ("cluster.local", Some("billing"), Some("billing-api"))
        );
        let other = Workload::parse("spiffe://example.org/payments/worker").unwrap();
        assert_eq!((other.namespace, other.service_account), (None, None));
        for bad in [
            "",
            "https://cluster.local/ns/a/sa/b",
            "spiffe://",
            "spiffe://cluster.local",
            "spiffe://cluster.local/",
            "spiffe:///ns/a/sa/b",
            "spiffe://Cluster.local/ns/a/sa/b",
            "spiffe://cluster.local:8443/ns/a/sa/b",
            "spiffe://user@cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/a/sa/b/",
            "spiffe://cluster.local/ns/../sa/b",
            "spiffe://cluster.local/ns/a/sa/b?x=1",
            "spiffe://cluster.local/ns/a/sa/b#f",
            "spiffe://cluster.local/ns/a/sa/%62",
        ] {
            assert_eq!(Workload::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn identity_headers_are_meshwards_names() {
        for name in ["x-spiffe-id", "x-meshward-workload", "x-meshward-principal"] {
            assert!(is_identity_header(name), "{name}");
        }
        for name in ["x-forwarded-client-cert", "x-meshward", "x-spiffe-ids", "authorization", "x-jwt-sub"] {
            assert!(!is_identity_header(name), "{name}");
        }
    }

    #[test]
    fn allowed_ids_exact_or_under_a_prefix() {
        let allowed = SpiffeIds::new(vec!["spiffe://mesh.test/ns/orders/".into(), "spiffe://mesh.test/ns/billing/sa/billing".into()]).unwrap();
        for (id, ok) in [
            ("spiffe://mesh.test/ns/orders/sa/orders", true),
            ("spiffe://mesh.test/ns/orders/", false),
            ("spiffe://mesh.test/ns/ordersx/sa/a", false),
            ("spiffe://mesh.test/ns/billing/sa/billing", true),
            ("spiffe://mesh.test/ns/billing/sa/billing2", false),
            ("spiffe://other.test/ns/orders/sa/orders", false),
        ] {
            assert_eq!(allowed.permit(id), ok, "{id}");
        }
        assert!(SpiffeIds::new(vec!["spiffe://mesh.test/".into()]).is_ok(), "a whole trust domain");
        for bad in ["billing", "spiffe://mesh.test", "spiffe://Mesh/ns/a", "spiffe://Mesh/", "spiffe://mesh.test/ns//"] {
            assert!(SpiffeIds::new(vec![bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn read_once_from_the_connection_never_from_headers() {
        let mut host = meshward_host::FakeHost::default();
        let fresh = || RequestState::from_headers(vec![("x-forwarded-client-cert".into(), "URI=spiffe://mesh.test/ns/a/sa/admin".into())], true);
        assert_eq!(current_workload(&host, &mut fresh()), None, "no certificate: no workload, whatever the headers say");
        host.properties.insert(PEER_URI_SAN.iter().map(|s| s.to_string()).collect(), b"spiffe://mesh.test/ns/a/sa/b".to_vec());
        let mut request = fresh();
        let first = current_workload(&host, &mut request).unwrap();
        assert_eq!(first.service_account.as_deref(), Some("b"));
        host.properties.clear();
        assert!(Rc::ptr_eq(&current_workload(&host, &mut request).unwrap(), &first), "read once per request");
        host.properties.insert(PEER_URI_SAN.iter().map(|s| s.to_string()).collect(), b"https://not-spiffe/".to_vec());
        assert_eq!(current_workload(&host, &mut fresh()), None);
    }

    #[test]
    fn a_certificate_with_several_uri_sans_names_no_workload() {
        let first = "spiffe://mesh.test/ns/a/sa/b";
        let with = |xfcc: Option<&str>| {
            let mut host = meshward_host::FakeHost::default();
            host.properties.insert(PEER_URI_SAN.iter().map(|s| s.to_string()).collect(), first.as_bytes().to_vec());
            let mut request = RequestState::from_headers(xfcc.map(|v| (XFCC.to_string(), v.to_string())).into_iter().collect(), true);
            current_workload(&host, &mut request).map(|w| w.spiffe_id.clone())
        };
        let by = "By=spiffe://mesh.test/ns/c/sa/callee;Hash=ab12";
        let rows: [(&str, Option<String>, Option<&str>); 7] = [
            ("no XFCC: the property alone", None, Some(first)),
            ("this hop's element, one URI", Some(format!("{by};Subject=\"\";URI={first}")), Some(first)),
            ("this hop's element, two URIs", Some(format!("{by};URI={first};URI=spiffe://mesh.test/ns/x/sa/admin")), None),
            ("two, the subject quoting a ; and a ,", Some(format!("{by};Subject=\"CN=a,O=b;c\";URI={first};URI=spiffe://x/y")), None),
            ("a caller's element before this hop's", Some(format!("By=x;URI={first};URI=spiffe://x/y,{by};URI={first}")), Some(first)),
            ("an element that is not this hop's (another first URI)", Some(format!("{by};URI=spiffe://x/y;URI=spiffe://x/z")), Some(first)),
            ("quoted URIs", Some(format!("{by};URI=\"{first}\";URI=\"spiffe://x/y\"")), None),
        ];
        for (name, xfcc, want) in rows {
            assert_eq!(with(xfcc.as_deref()).as_deref(), want, "{name}");
        }
    }
}
