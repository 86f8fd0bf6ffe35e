//! The gRPC glue: one task per Envoy stream, driving a [`Session`] with the Envoy's requests and
//! with each new [`Snapshot`] from the policy watcher.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::proto::{DiscoveryRequest, DiscoveryResponse};
use super::session::{Event, Session, Snapshot};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/envoy.service.extension.v3.ExtensionConfigDiscoveryService.rs"));
}
use generated::extension_config_discovery_service_server::{ExtensionConfigDiscoveryService, ExtensionConfigDiscoveryServiceServer};

struct Ecds {
    snapshots: watch::Receiver<Arc<Snapshot>>,
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
async fn drive(
    mut inbound: Streaming<DiscoveryRequest>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    outbound: mpsc::Sender<Result<DiscoveryResponse, Status>>,
) {
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
        if let Some(response) = response {
            if outbound.send(Ok(response)).await.is_err() {
                break;
            }
        }
    }
    if !session.node().is_empty() {
        eprintln!("meshward serve: {} disconnected", session.node());
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExtensionConfigDiscoveryService for Ecds {
    type StreamExtensionConfigsStream = ResponseStream;

    async fn stream_extension_configs(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamExtensionConfigsStream>, Status> {
        let (outbound, responses) = mpsc::channel(4);
        tokio::spawn(drive(request.into_inner(), self.snapshots.clone(), outbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(responses))))
    }
}

/// Serves ECDS on `address` until the process ends; `ready` hears the bound address (port 0
/// picks a free one). Snapshots come from the policy watcher.
pub async fn serve(
    address: SocketAddr,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| format!("--xds {address}: {e}"))?;
    ready(listener.local_addr().map_err(|e| e.to_string())?);
    tonic::transport::Server::builder()
        .add_service(ExtensionConfigDiscoveryServiceServer::new(Ecds { snapshots }))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .map_err(|e| format!("xDS server: {e}"))
}
