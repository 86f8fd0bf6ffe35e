//! Fuzzed gRPC request bodies (framing, compression flag, protobuf) against the demo orders
//! service's descriptors and the accounts service's protovalidate rules: every method decides
//! without panicking, whatever the bytes, whole or as a stream arriving in pieces.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meshward_grpc::decide::{check_request, Stream};
use meshward_grpc::GrpcConfig;

const DESCRIPTORS: &[u8] = include_bytes!("../../crates/grpc/tests/orders.pb");
const RULES: &[u8] = include_bytes!("../../crates/grpc/tests/accounts.pb");
const ENCODINGS: [Option<&str>; 3] = [None, Some("gzip"), Some("deflate")];

fn configs() -> &'static [GrpcConfig; 2] {
    static CONFIGS: OnceLock<[GrpcConfig; 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        use ct_codecs::{Base64, Encoder};
        let orders = serde_json::json!({"descriptor_set": Base64::encode_to_string(DESCRIPTORS).expect("base64"), "services": {"demo.orders.Orders": {"methods": {
            "GetOrder": {"owner": [{"field": "tenant_id", "claim": "tenant"}]}, "CreateOrder": {}, "WatchOrders": {}, "Upload": {}}}}});
        let accounts = serde_json::json!({"descriptor_set": Base64::encode_to_string(RULES).expect("base64"), "services": {"demo.accounts.Accounts": {"methods": {
            "CreateAccount": {"public": true}}}}});
        [orders, accounts].map(|c| GrpcConfig::parse(c.to_string().as_bytes()).expect("config"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let config = &configs()[usize::from(selector) % 2];
    let method = &config.methods[usize::from(selector) % config.methods.len()];
    let encoding = ENCODINGS[usize::from(selector / 8) % ENCODINGS.len()];
    let _ = check_request(config, method, body, encoding, None);
    // The same bytes as a stream arriving in pieces (client-streaming methods).
    let step = usize::from(selector / 2).max(1);
    let mut stream = Stream::default();
    let pieces: Vec<&[u8]> = body.chunks(step).collect();
    for (i, piece) in pieces.iter().enumerate() {
        if stream.take(config, method, piece, i + 1 == pieces.len(), encoding, None).is_err() {
            break;
        }
    }
});
