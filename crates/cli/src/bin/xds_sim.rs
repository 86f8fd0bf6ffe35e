//! `meshward-xds-sim`: N simulated proxies subscribed to `meshward serve --xds`, in one process,
//! speaking what a rendered Envoy 1.40 speaks (checked against a real one by
//! `tests/test_xds_fleet.py`): one connection and one ADS stream per proxy; the first request
//! carries the node (an Envoy's is ~60 KB, its list of extensions) and the filters' names, every
//! later one only the version and nonce it acknowledges; a stream that breaks is opened again
//! after a jittered backoff, to the next `--xds` address, with the last version applied.
//!
//! It prints JSON lines on stdout: `{"event":"version",…}` once every proxy has a version (with
//! when, in seconds of CLOCK_MONOTONIC, the first, median, 99th percentile and last proxy got
//! it) and `{"event":"streams",…}` every second the count of open streams changes. It runs until
//! stdin closes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

#[path = "../xds/file_limit.rs"]
mod file_limit;
#[path = "../xds/proto.rs"]
#[allow(dead_code)]
mod serve_proto;

mod xds {
    /// serve's messages, but for the request: its node as Envoy fills it (serve's own `Node`
    /// leaves the extensions unread).
    pub mod proto {
        pub use crate::serve_proto::{DiscoveryResponse, Status, TYPED_EXTENSION_CONFIG};
        use prost::Message;

        /// `envoy.service.discovery.v3.DiscoveryRequest`.
        #[derive(Clone, PartialEq, Message)]
        pub struct DiscoveryRequest {
            #[prost(string, tag = "1")]
            pub version_info: String,
            #[prost(message, optional, tag = "2")]
            pub node: Option<Node>,
            #[prost(string, repeated, tag = "3")]
            pub resource_names: Vec<String>,
            #[prost(string, tag = "4")]
            pub type_url: String,
            #[prost(string, tag = "5")]
            pub response_nonce: String,
            #[prost(message, optional, tag = "6")]
            pub error_detail: Option<Status>,
        }

        /// `envoy.config.core.v3.Node` with its `extensions`.
        #[derive(Clone, PartialEq, Message)]
        pub struct Node {
            #[prost(string, tag = "1")]
            pub id: String,
            #[prost(string, tag = "2")]
            pub cluster: String,
            #[prost(message, repeated, tag = "9")]
            pub extensions: Vec<Extension>,
        }

        /// `envoy.config.core.v3.Extension`.
        #[derive(Clone, PartialEq, Message)]
        pub struct Extension {
            #[prost(string, tag = "1")]
            pub name: String,
            #[prost(string, tag = "2")]
            pub category: String,
        }
    }

    #[allow(dead_code, clippy::all)]
    pub mod generated {
        include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.AggregatedDiscoveryService.rs"));
    }
}

use xds::generated::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use xds::proto::{DiscoveryRequest, Extension, Node, TYPED_EXTENSION_CONFIG};

#[derive(Parser)]
#[command(about = "Simulated proxies subscribed to `meshward serve --xds` (ADS), for measuring serve at fleet size")]
struct Args {
    /// A serve instance; repeat it for several (a proxy moves to the next when its stream breaks).
    #[arg(long, value_name = "HOST:PORT", required = true)]
    xds: Vec<String>,
    /// How many proxies.
    #[arg(long, default_value_t = 100)]
    proxies: usize,
    /// The filters each proxy subscribes to (the rendered Envoy's ECDS names).
    #[arg(long, value_delimiter = ',', default_value = "meshward.bundle")]
    resources: Vec<String>,
    /// Size of the node each stream's first request carries (Envoy 1.40's: ~61 KB).
    #[arg(long, default_value_t = 61_000)]
    node_bytes: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    connecting: usize,
}

/// What one proxy reports to the collector.
enum Report {
    Version { proxy: usize, version: String, at: f64 },
    Open,
    Closed,
}

/// Seconds of CLOCK_MONOTONIC: the clock the harness compares serve's log lines with.
fn monotonic() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the one struct passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The node as Envoy sends it: id, cluster, and extension names filling it to `bytes`.
fn node_message(id: String, bytes: usize) -> Node {
    let mut extensions = Vec::new();
    let mut size = 0;
    while size < bytes {
        let extension = Extension { name: format!("envoy.filters.simulated.extension_{}", extensions.len()), category: "envoy.filters.http".into() };
        size += prost::encoding::message::encoded_len(9, &extension);
        extensions.push(extension);
    }
    Node { id, cluster: "simulated".into(), extensions }
}

/// One proxy for as long as the process runs: connect, subscribe, acknowledge, reconnect.
async fn proxy(index: usize, args: Arc<Args>, connecting: Arc<tokio::sync::Semaphore>, reports: mpsc::UnboundedSender<Report>) {
    let mut version = String::new();
    let mut attempt = 0usize;
    loop {
        let address = &args.xds[(index + attempt) % args.xds.len()];
        attempt += 1;
        let permit = connecting.acquire().await;
        // As the rendered cluster: its own connection, HTTP/2 pings every 30 s.
        let channel = match tonic::transport::Endpoint::from_shared(format!("http://{address}")) {
            Ok(endpoint) => endpoint.tcp_nodelay(true).http2_keep_alive_interval(Duration::from_secs(30)).connect().await,
            Err(e) => {
                eprintln!("meshward-xds-sim: --xds {address}: {e}");
                std::process::exit(2);
            }
        };
        drop(permit);
        if let Ok(channel) = channel {
            let mut client = AggregatedDiscoveryServiceClient::new(channel);
            let (requests, outbound) = mpsc::channel::<DiscoveryRequest>(4);
            let first = DiscoveryRequest {
                version_info: version.clone(),
                node: Some(node_message(format!("proxy-{index}"), args.node_bytes)),
                resource_names: args.resources.clone(),
                type_url: TYPED_EXTENSION_CONFIG.into(),
                ..Default::default()
            };
            let _ = requests.send(first).await;
            if let Ok(response) = client.stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(outbound)).await {
                let _ = reports.send(Report::Open);
                let mut inbound = response.into_inner();
                while let Some(Ok(response)) = inbound.next().await {
                    if response.version_info != version {
                        version = response.version_info.clone();
                        let _ = reports.send(Report::Version { proxy: index, version: version.clone(), at: monotonic() });
                    }
                    attempt = 0;
                    let ack = DiscoveryRequest {
                        version_info: response.version_info,
                        resource_names: args.resources.clone(),
                        type_url: TYPED_EXTENSION_CONFIG.into(),
                        response_nonce: response.nonce,
                        ..Default::default()
                    };
                    if requests.send(ack).await.is_err() {
                        break;
                    }
                }
                let _ = reports.send(Report::Closed);
            }
        }
        // Envoy's xDS backoff: 500 ms doubling to 30 s, jittered.
        let base = 500u64.saturating_mul(1 << attempt.min(6)).min(30_000);
        let jitter = (index as u64 * 7919 + attempt as u64 * 104_729) % base.max(1);
        tokio::time::sleep(Duration::from_millis(base / 2 + jitter / 2)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    if let Ok(files) = file_limit::raise_file_limit() {
        if (files as usize) < args.proxies + 64 {
            eprintln!("meshward-xds-sim: open-file limit {files} is short of {} proxies", args.proxies);
        }
    }
    let (reports, mut collected) = mpsc::unbounded_channel();
    let connecting = Arc::new(tokio::sync::Semaphore::new(args.connecting));
    for index in 0..args.proxies {
        tokio::spawn(proxy(index, Arc::clone(&args), Arc::clone(&connecting), reports.clone()));
    }
    // Ends the process when stdin closes (the harness went away).
    tokio::task::spawn_blocking(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let mut open = 0usize;
    let mut reported_open = usize::MAX;
    // Per version, when each proxy got it.
    let mut arrivals: HashMap<String, HashMap<usize, f64>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            report = collected.recv() => match report {
                Some(Report::Open) => open += 1,
                Some(Report::Closed) => open -= 1,
                Some(Report::Version { proxy, version, at }) => {
                    let got = arrivals.entry(version.clone()).or_default();
                    if got.insert(proxy, at).is_none() && got.len() == args.proxies {
                        let mut times: Vec<f64> = got.values().copied().collect();
                        times.sort_by(f64::total_cmp);
                        println!(
                            "{{\"event\":\"version\",\"version\":\"{version}\",\"proxies\":{},\"first\":{:.4},\"p50\":{:.4},\"p99\":{:.4},\"last\":{:.4}}}",
                            times.len(), times[0], percentile(&times, 0.5), percentile(&times, 0.99), times[times.len() - 1]
                        );
                    }
                }
                None => return,
            },
            _ = tick.tick() => {
                if open != reported_open {
                    println!("{{\"event\":\"streams\",\"open\":{open},\"at\":{:.4}}}", monotonic());
                    reported_open = open;
                }
            }
        }
    }
}
