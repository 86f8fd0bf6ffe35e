//! Generates the tonic client of Envoy's Aggregated Discovery Service for the fleet simulation
//! (`meshward-xds-sim`, simulated proxies) from a service described in Rust (no protoc, no
//! vendored .proto tree): the messages are prost structs in `src/xds/proto.rs`. serve's own side
//! of the call is written by hand (`src/xds/grpc.rs`): it keeps nothing per stream between
//! messages, where tonic's codec keeps buffers the size of the largest message.

fn main() {
    let method = tonic_build::manual::Method::builder()
        .name("stream_aggregated_resources")
        .route_name("StreamAggregatedResources")
        .input_type("crate::xds::proto::DiscoveryRequest")
        .output_type("crate::xds::proto::DiscoveryResponse")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("AggregatedDiscoveryService")
        .package("envoy.service.discovery.v3")
        .method(method)
        .build();
    tonic_build::manual::Builder::new().build_server(false).build_transport(false).compile(&[service]);
}
