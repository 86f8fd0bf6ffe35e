//! Generates the tonic servers (and, for the fleet simulation `meshward-xds-sim`, the clients)
//! of the two xDS services `meshward serve` speaks, from services described in Rust (no protoc,
//! no vendored .proto tree): the messages are prost structs in `src/xds/proto.rs`.
//!
//! - `envoy.service.discovery.v3.AggregatedDiscoveryService`: ADS, one stream per proxy carrying
//!   every filter's configuration (what `render envoy --xds` sets up).
//! - `envoy.service.extension.v3.ExtensionConfigDiscoveryService`: one stream per filter, for
//!   Envoys rendered before ADS.

fn service(package: &str, name: &str, method: &str, route: &str) -> tonic_build::manual::Service {
    let method = tonic_build::manual::Method::builder()
        .name(method)
        .route_name(route)
        .input_type("crate::xds::proto::DiscoveryRequest")
        .output_type("crate::xds::proto::DiscoveryResponse")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    tonic_build::manual::Service::builder().name(name).package(package).method(method).build()
}

fn main() {
    tonic_build::manual::Builder::new().build_client(true).build_transport(false).compile(&[
        service("envoy.service.discovery.v3", "AggregatedDiscoveryService", "stream_aggregated_resources", "StreamAggregatedResources"),
        service("envoy.service.extension.v3", "ExtensionConfigDiscoveryService", "stream_extension_configs", "StreamExtensionConfigs"),
    ]);
}
