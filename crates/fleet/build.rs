//! Generates the tonic servers from services described in Rust (no protoc): Envoy's rate-limit
//! service (messages in meshward-ratelimit's `rls`) and meshward's seen-set (messages in
//! meshward-core's `fleet`, the same structs the filters encode).

use tonic_build::manual::{Builder, Method, Service};

fn unary(name: &str, route: &str, input: &str, output: &str) -> Method {
    Method::builder()
        .name(name)
        .route_name(route)
        .input_type(input)
        .output_type(output)
        .codec_path("tonic_prost::ProstCodec")
        .build()
}

fn main() {
    let rls = Service::builder()
        .name("RateLimitService")
        .package("envoy.service.ratelimit.v3")
        .method(unary(
            "should_rate_limit",
            "ShouldRateLimit",
            "meshward_ratelimit::rls::RateLimitRequest",
            "meshward_ratelimit::rls::RateLimitResponse",
        ))
        .build();
    let seen = Service::builder()
        .name("SeenSet")
        .package("meshward.fleet.v1")
        .method(unary("claim", "Claim", "meshward_core::fleet::ClaimRequest", "meshward_core::fleet::ClaimResponse"))
        .method(unary("settle", "Settle", "meshward_core::fleet::SettleRequest", "meshward_core::fleet::SettleResponse"))
        .build();
    Builder::new().build_client(false).build_transport(false).compile(&[rls, seen]);
}
