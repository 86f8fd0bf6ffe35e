//! Generates the tonic server for Envoy's Extension Config Discovery Service from a service
//! described in Rust (no protoc, no vendored .proto tree): the messages are prost structs in
//! `src/xds/proto.rs`.

fn main() {
    let method = tonic_build::manual::Method::builder()
        .name("stream_extension_configs")
        .route_name("StreamExtensionConfigs")
        .input_type("crate::xds::proto::DiscoveryRequest")
        .output_type("crate::xds::proto::DiscoveryResponse")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("ExtensionConfigDiscoveryService")
        .package("envoy.service.extension.v3")
        .method(method)
        .build();
    tonic_build::manual::Builder::new().build_client(false).build_transport(false).compile(&[service]);
}
