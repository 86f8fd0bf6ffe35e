//! `meshward serve --xds`: Envoy's Extension Config Discovery Service over gRPC. Envoys rendered
//! with `render envoy --xds HOST:PORT` subscribe to their meshward filters' configurations by
//! name; every accepted policy version is pushed to every subscribed Envoy, which applies it to
//! new requests without a restart and acknowledges or rejects it (both are logged).

pub mod proto;
mod server;
mod session;

pub use server::{check_tls, serve, Tls};
pub use session::Snapshot;

use crate::render::WasmPlugin;

/// A policy version's filter configurations as ECDS resources.
pub fn snapshot(version: &str, plugins: &[WasmPlugin]) -> Snapshot {
    Snapshot {
        version: version.to_string(),
        resources: plugins.iter().map(|p| (p.filter_name.clone(), proto::extension_config(p))).collect(),
    }
}
