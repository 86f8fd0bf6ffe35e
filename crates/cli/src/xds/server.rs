//! The gRPC glue: one task per Envoy stream (ADS or ECDS, the same protocol for one resource
//! type), driving a [`Session`] with the Envoy's requests and with each new [`Snapshot`] from the
//! policy watcher.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use meshward_core::workload::SpiffeIds;
use tokio::sync::{mpsc, watch};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::Status;
use tower_service::Service;

use super::grpc::{Outgoing, Replies, Requests};
use super::listener::Incoming;
use super::proto::response_message;
use super::session::{Event, Session, Snapshot};

/// HTTP/2 pings on every connection: a proxy that stopped answering is disconnected and its
/// session freed, even where TCP keepalive cannot tell (a peer behind a proxy or NAT).
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The policy channel over mTLS: the server's certificate and key, the CA a proxy's client
/// certificate must chain to, and the SPIFFE IDs it may carry (exact, or a prefix ending in `/`:
/// `spiffe://cluster.local/ns/orders/`). Anything else gets no configuration.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
    pub allowed: SpiffeIds,
}

#[derive(Clone)]
struct Discovery {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// With mTLS: the SPIFFE IDs a proxy may present.
    allowed: Option<SpiffeIds>,
}

/// The SPIFFE IDs (URI SANs `spiffe://…`) of a DER certificate.
fn spiffe_ids(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

fn log(event: &Event) {
    match event {
        Event::Applied { node, version, names } => eprintln!("meshward serve: {node} applied {version} ({})", names.join(", ")),
        Event::Rejected { node, version, names, message } => {
            eprintln!("meshward serve: {node} rejected {version} ({}): {message}; it keeps its last applied version", names.join(", "))
        }
        Event::Unknown { node, names } => eprintln!(
            "meshward serve: {node} asks for {}, which this policy does not render: re-render its Envoy configuration",
            names.join(", ")
        ),
    }
}

/// Runs one Envoy's stream until either side ends it.
async fn drive(mut inbound: Requests<Body>, mut snapshots: watch::Receiver<Arc<Snapshot>>, outbound: mpsc::Sender<Outgoing>) {
    let mut session = Session::default();
    loop {
        let response = tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(request)) => {
                    let current = snapshots.borrow_and_update().clone();
                    match session.on_request(request, Some(&current)) {
                        Ok(step) => {
                            step.events.iter().for_each(log);
                            step.response
                        }
                        Err(refusal) => {
                            eprintln!("meshward serve: {}: {}", session.node(), refusal.0);
                            let _ = outbound.send(Err(Status::invalid_argument(refusal.0))).await;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    eprintln!("meshward serve: {}: stream ended: {}", session.node(), status.message());
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = snapshots.borrow_and_update().clone();
                session.on_snapshot(&current)
            }
        };
        if let Some(reply) = response {
            if outbound.send(Ok(response_message(&reply.version_info, &reply.nonce, &reply.resources))).await.is_err() {
                break;
            }
        }
    }
    if !session.node().is_empty() {
        eprintln!("meshward serve: {} disconnected", session.node());
    }
}

impl Discovery {
    /// A proxy's call: refused when its certificate does not name a proxy this policy is for,
    /// else driven by its own task.
    fn open(&self, request: http::Request<Body>) -> http::Response<Body> {
        let (parts, body) = request.into_parts();
        if let Some(allowed) = &self.allowed {
            // The TLS handshake proved the certificate chains to the client CA; its SPIFFE ID
            // says which proxy it is.
            let call = tonic::Request::from_http(http::Request::from_parts(parts, ()));
            let peer = call.remote_addr().map_or("-".to_string(), |a| a.to_string());
            let ids = call.peer_certs().and_then(|certs| certs.first().map(|c| spiffe_ids(c))).unwrap_or_default();
            if !ids.iter().any(|id| allowed.permit(id)) {
                eprintln!("meshward serve: refused {peer}: its certificate names {ids:?}, none of the SPIFFE IDs --allow-client lets in");
                return Status::permission_denied("this proxy's SPIFFE ID may not receive this policy").into_http();
            }
        }
        let (outbound, replies) = mpsc::channel(4);
        tokio::spawn(drive(Requests::new(body), self.snapshots.clone(), outbound));
        let mut response = http::Response::new(Body::new(Replies::new(replies)));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
        response
    }
}

/// One of the two discovery services, each a single streaming method: ADS
/// (`envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`) when
/// `ADS`, else ECDS (`envoy.service.extension.v3.ExtensionConfigDiscoveryService/StreamExtensionConfigs`).
#[derive(Clone)]
struct Rpc<const ADS: bool>(Discovery);

impl<const ADS: bool> NamedService for Rpc<ADS> {
    const NAME: &'static str =
        if ADS { "envoy.service.discovery.v3.AggregatedDiscoveryService" } else { "envoy.service.extension.v3.ExtensionConfigDiscoveryService" };
}

impl<const ADS: bool> Rpc<ADS> {
    const METHOD: &'static str = if ADS { "StreamAggregatedResources" } else { "StreamExtensionConfigs" };
}

impl<const ADS: bool> Service<http::Request<Body>> for Rpc<ADS> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let method = request.uri().path().strip_prefix(&format!("/{}/", Self::NAME));
        std::future::ready(Ok(if request.method() == http::Method::POST && method == Some(Self::METHOD) {
            self.0.open(request)
        } else {
            Status::unimplemented(format!("{} serves {} only", Self::NAME, Self::METHOD)).into_http()
        }))
    }
}

/// The server's TLS configuration from the files, refused whole when any is unreadable or not a
/// usable certificate, key or CA.
fn tls_config(tls: &Tls) -> Result<ServerTlsConfig, String> {
    let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
        .client_ca_root(Certificate::from_pem(read(&tls.client_ca)?)))
}

/// A server builder, over mTLS when `tls` is given.
fn server(tls: Option<&Tls>) -> Result<tonic::transport::Server, String> {
    let builder = tonic::transport::Server::builder().http2_keepalive_interval(Some(PING_EVERY)).http2_keepalive_timeout(Some(PING_TIMEOUT));
    match tls {
        Some(tls) => builder.tls_config(tls_config(tls)?).map_err(|e| format!("xDS TLS: {e}")),
        None => Ok(builder),
    }
}

/// Whether the files make a TLS configuration the server can run with (read and parsed as
/// [`serve`] does), so a rotation that is half-written or broken keeps the running server.
pub fn check_tls(tls: &Tls) -> Result<(), String> {
    server(Some(tls)).map(drop)
}

/// Serves ADS and ECDS on `address` until the process ends, over mTLS when `tls` is given, to
/// at most `capacity` connections at once; `ready` hears the bound address (port 0 picks a free
/// one). Snapshots come from the policy watcher.
pub async fn serve(
    address: SocketAddr,
    tls: Option<&Tls>,
    capacity: usize,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let mut builder = server(tls)?;
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("--xds {address}: {e}"))?;
    ready(listener.local_addr().map_err(|e| e.to_string())?);
    let discovery = Discovery { snapshots, allowed: tls.map(|t| t.allowed.clone()) };
    builder
        .add_service(Rpc::<true>(discovery.clone()))
        .add_service(Rpc::<false>(discovery))
        .serve_with_incoming(Incoming::new(listener, capacity))
        .await
        .map_err(|e| format!("xDS server: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_a_non_certificate() {
        assert!(spiffe_ids(b"not a certificate").is_empty());
    }
}
