//! Fuzzed gRPC request bodies (framing, compression flag, protobuf) against the demo orders
//! service's descriptors: every method decides without panicking, whatever the bytes.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshward_grpc::decide::check_request;
use meshward_grpc::GrpcConfig;

const DESCRIPTORS: &[u8] = include_bytes!("../../crates/grpc/tests/orders.pb");
const ENCODINGS: [Option<&str>; 3] = [None, Some("gzip"), Some("deflate")];

fn config() -> &'static GrpcConfig {
    static CONFIG: OnceLock<GrpcConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        use ct_codecs::{Base64, Encoder};
        let config = serde_json::json!({"descriptor_set": Base64::encode_to_string(DESCRIPTORS).expect("base64"), "services": {"demo.orders.Orders": {"methods": {
            "GetOrder": {"owner": [{"field": "tenant_id", "claim": "tenant"}]}, "CreateOrder": {}, "WatchOrders": {}}}}});
        GrpcConfig::parse(config.to_string().as_bytes()).expect("config")
    })
}

fuzz_target!(|data: &[u8]| {
    let config = config();
    let Some((&selector, body)) = data.split_first() else { return };
    let method = &config.methods[usize::from(selector) % config.methods.len()];
    let encoding = ENCODINGS[usize::from(selector / 8) % ENCODINGS.len()];
    let _ = check_request(config, method, body, encoding, None);
});
