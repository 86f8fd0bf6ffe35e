//! One row per decision, against the descriptor set of `tests/protos/orders.proto`.

use ct_codecs::{Base64, Encoder};
use meshward_core::workload::Workload;
use prost::Message;
use prost_reflect::{DynamicMessage, MapKey, ReflectMessage, Value};
use serde_json::{json, Value as Json};

use super::*;
use meshward_core::caller::Caller;

const DESCRIPTORS: &[u8] = include_bytes!("../tests/orders.pb");

fn config_with(services: Json, extra: Json) -> Result<GrpcConfig, String> {
    let mut config = json!({"descriptor_set": Base64::encode_to_string(DESCRIPTORS).unwrap(), "services": services});
    if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    GrpcConfig::parse(config.to_string().as_bytes()).map_err(|e| e.to_string())
}

fn config() -> GrpcConfig {
    config_with(
        json!({"demo.orders.Orders": {"methods": {
            "GetOrder": {"scopes": ["orders:read"], "owner": [{"field": "tenant_id", "claim": "tenant"}]},
            "CreateOrder": {"scopes": ["orders:write"]},
            "DeleteOrder": {"workloads": ["spiffe://mesh.test/ns/billing/sa/billing"], "require_user": false},
            "WatchOrders": {"public": true}
        }}}),
        json!({"max_message_bytes": 256}),
    )
    .unwrap()
}

fn principal(scope: &str, tenant: &str) -> Principal {
    Principal {
        provider: "p".into(),
        issuer: "i".into(),
        subject: Some("alice".into()),
        audiences: vec![],
        scopes: scope.split(' ').map(str::to_string).collect(),
        tenant: Some(tenant.into()),
        claims: serde_json::Map::new(),
    }
}

fn method<'a>(c: &'a GrpcConfig, name: &str) -> &'a Method {
    find_method(c, "POST", &format!("/demo.orders.Orders/{name}")).unwrap()
}

/// A message of the method's input type with these fields set, encoded.
fn encode(m: &Method, fields: &[(&str, Value)]) -> Vec<u8> {
    let mut message = DynamicMessage::new(m.input.clone());
    for (name, value) in fields {
        message.set_field_by_name(name, value.clone());
    }
    message.encode_to_vec()
}

fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn item(c: &GrpcConfig, fields: &[(&str, Value)]) -> Value {
    let create = method(c, "CreateOrder");
    let Some(prost_reflect::Kind::Message(desc)) = create.input.get_field_by_name("item").map(|f| f.kind()) else { panic!("no item") };
    let mut m = DynamicMessage::new(desc);
    for (name, value) in fields {
        m.set_field_by_name(name, value.clone());
    }
    Value::Message(m)
}

#[test]
fn methods_offered_and_who_may_call_them() {
    let c = config();
    let refused = |http_method: &str, path: &str| find_method(&c, http_method, path).err();
    assert_eq!(refused("POST", "/demo.orders.Orders/Upload"), Some(GrpcError::MethodNotAllowed), "not offered");
    assert_eq!(refused("POST", "/demo.orders.Orders/getorder"), Some(GrpcError::MethodNotAllowed), "names are exact");
    assert_eq!(refused("POST", "/demo.orders.Orders/GetOrder?x=1"), Some(GrpcError::MethodNotAllowed));
    for other in ["GET", "PUT", "HEAD", "OPTIONS"] {
        assert_eq!(refused(other, "/demo.orders.Orders/GetOrder"), Some(GrpcError::NotPost), "{other}: gRPC is POST only");
    }
    let reader = principal("orders:read", "acme");
    let billing = Workload::parse("spiffe://mesh.test/ns/billing/sa/billing").unwrap();
    let other = Workload::parse("spiffe://mesh.test/ns/orders/sa/orders").unwrap();
    // (method, user, workload, decision)
    type Row<'a> = (&'a str, Option<&'a Principal>, Option<&'a Workload>, Result<(), GrpcError>);
    let rows: Vec<Row> = vec![
        ("GetOrder", Some(&reader), None, Ok(())),
        ("GetOrder", None, None, Err(GrpcError::MissingPrincipal)),
        ("CreateOrder", Some(&reader), None, Err(GrpcError::MissingScope)),
        ("DeleteOrder", None, Some(&billing), Ok(())),
        ("DeleteOrder", Some(&reader), Some(&other), Err(GrpcError::WorkloadNotAllowed)),
        ("DeleteOrder", Some(&reader), None, Err(GrpcError::MissingWorkload)),
        ("WatchOrders", None, None, Ok(())),
    ];
    for (name, user, workload, want) in rows {
        assert_eq!(authorize(method(&c, name), Caller { user, workload }), want, "{name}");
    }
}

#[test]
fn messages_are_checked_against_the_descriptors() {
    let c = config();
    let get = method(&c, "GetOrder");
    let create = method(&c, "CreateOrder");
    let acme = principal("orders:read orders:write", "acme");
    let own = encode(get, &[("tenant_id", Value::String("acme".into())), ("order_id", Value::String("7".into()))]);
    let mut unknown = own.clone();
    unknown.extend_from_slice(&[0x48, 0x01]); // field 9, varint 1: not in GetOrderRequest
    let nested_unknown = {
        let mut inner = DynamicMessage::new(match item(&c, &[]) {
            Value::Message(m) => m.descriptor(),
            _ => unreachable!(),
        });
        inner.set_field_by_name("sku", Value::String("a".into()));
        let mut bytes = inner.encode_to_vec();
        bytes.extend_from_slice(&[0x50, 0x01]); // field 10 inside Item
        let mut outer = vec![0x12, bytes.len() as u8];
        outer.extend_from_slice(&bytes);
        outer
    };
    let mut gzipped = Vec::new();
    {
        use std::io::Write;
        let mut e = flate2_gzip(&mut gzipped);
        e.write_all(&own).unwrap();
    }
    let flags_bad = {
        let mut map = std::collections::HashMap::new();
        map.insert(MapKey::String("vip".into()), Value::EnumNumber(9));
        encode(create, &[("flags", Value::Map(map))])
    };
    type Row<'a> = (&'a str, &'a Method, Vec<u8>, Option<&'a str>, Result<(), GrpcError>);
    let rows: Vec<Row> = vec![
        ("own tenant", get, frame(0, &own), None, Ok(())),
        ("other tenant", get, frame(0, &encode(get, &[("tenant_id", Value::String("globex".into()))])), None, Err(GrpcError::TenantBoundary)),
        ("tenant not set", get, frame(0, &encode(get, &[("order_id", Value::String("7".into()))])), None, Err(GrpcError::TenantBoundary)),
        ("undeclared field", get, frame(0, &unknown), None, Err(GrpcError::UnknownField { path: "GetOrderRequest.#9".into() })),
        ("undeclared nested field", create, frame(0, &nested_unknown), None, Err(GrpcError::UnknownField { path: "CreateOrderRequest.item.#10".into() })),
        ("undeclared enum", create, frame(0, &encode(create, &[("status", Value::EnumNumber(7))])), None, Err(GrpcError::InvalidEnum { path: "CreateOrderRequest.status".into() })),
        ("declared enum", create, frame(0, &encode(create, &[("status", Value::EnumNumber(2)), ("item", item(&c, &[("quantity", Value::I32(3))]))])), None, Ok(())),
        ("undeclared enum in a map", create, frame(0, &flags_bad), None, Err(GrpcError::InvalidEnum { path: "CreateOrderRequest.flags[vip]".into() })),
        ("not protobuf", get, frame(0, &[0xff, 0xff, 0xff]), None, Err(GrpcError::InvalidMessage)),
        ("two messages in a unary call", get, [frame(0, &own), frame(0, &own)].concat(), None, Err(GrpcError::MalformedFrame)),
        ("no message", get, Vec::new(), None, Err(GrpcError::MalformedFrame)),
        ("cut short", get, frame(0, &own)[..6].to_vec(), None, Err(GrpcError::MalformedFrame)),
        ("too large", create, frame(0, &encode(create, &[("tenant_id", Value::String("x".repeat(300)))])), None, Err(GrpcError::MessageTooLarge { max_bytes: 256 })),
        ("gzip", get, frame(1, &gzipped), Some("gzip"), Ok(())),
        ("compressed without grpc-encoding", get, frame(1, &gzipped), None, Err(GrpcError::UnsupportedCompression)),
        ("another compression", get, frame(1, &gzipped), Some("snappy"), Err(GrpcError::UnsupportedCompression)),
        ("gzip that is not", get, frame(1, &own), Some("gzip"), Err(GrpcError::InvalidMessage)),
    ];
    for (name, m, body, encoding, want) in rows {
        assert_eq!(check_request(&c, m, &body, encoding, Some(&acme)), want, "{name}");
    }
    let open = config_with(json!({"demo.orders.Orders": {"methods": {"GetOrder": {}}}}), json!({"unknown_fields": "allow"})).unwrap();
    assert_eq!(check_request(&open, method(&open, "GetOrder"), &frame(0, &unknown), None, Some(&acme)), Ok(()));
    assert_eq!(GrpcError::MethodNotAllowed.denial().grpc_status(), meshward_core::GrpcCode::Unimplemented);
    assert_eq!(GrpcError::InvalidEnum { path: String::new() }.denial().grpc_status(), meshward_core::GrpcCode::InvalidArgument);
}

fn flate2_gzip(out: &mut Vec<u8>) -> impl std::io::Write + '_ {
    flate2::write::GzEncoder::new(out, flate2::Compression::default())
}

#[test]
fn bad_configurations_are_refused() {
    let methods = |m: Json| json!({"demo.orders.Orders": {"methods": m}});
    let rows = [
        (json!({"demo.orders.Nope": {"methods": {"GetOrder": {}}}}), json!({}), "services.demo.orders.Nope: is not a service"),
        (methods(json!({"Missing": {}})), json!({}), "services.demo.orders.Orders.methods.Missing: is not a method"),
        (methods(json!({"GetOrder": {"owner": [{"field": "tenant", "claim": "tenant"}]}})), json!({}), "has no field \"tenant\""),
        (methods(json!({"CreateOrder": {"owner": [{"field": "extras", "claim": "sub"}]}})), json!({}), "is repeated"),
        (methods(json!({"CreateOrder": {"owner": [{"field": "item", "claim": "sub"}]}})), json!({}), "not a string or integer"),
        (methods(json!({"GetOrder": {"require_user": false}})), json!({}), "needs `workloads`"),
        (methods(json!({"GetOrder": {"public": true, "scopes": ["x"]}})), json!({}), "a public method cannot"),
        (methods(json!({})), json!({}), "name at least one method"),
        (methods(json!({"GetOrder": {}})), json!({"unknown_fields": "ignore"}), "unknown variant"),
    ];
    for (services, extra, want) in rows {
        let err = config_with(services.clone(), extra).err().unwrap_or_else(|| panic!("accepted: {services}"));
        assert!(err.contains(want), "{services}: {err}");
    }
    let err = GrpcConfig::parse(br#"{"descriptor_set": "not base64!", "services": {}}"#).err().unwrap().to_string();
    assert!(err.contains("descriptor_set") && err.contains("base64"), "{err}");
    let err = GrpcConfig::parse(br#"{"descriptor_set": "AAAA", "services": {}}"#).err().unwrap().to_string();
    assert!(err.contains("descriptor_set"), "{err}");
}

#[test]
fn a_stream_is_checked_message_by_message_as_it_arrives() {
    let c = config_with(json!({"demo.orders.Orders": {"methods": {"Upload": {"owner": [{"field": "sku", "claim": "tenant"}]}}}}), json!({"max_message_bytes": 64})).unwrap();
    let upload = method(&c, "Upload");
    assert!(upload.client_streaming);
    let acme = principal("orders:write", "acme");
    let item = |sku: &str| frame(0, &encode(upload, &[("sku", Value::String(sku.into())), ("quantity", Value::I32(1))]));
    let unknown = frame(0, &[0x10, 0x01, 0xf8, 0x01, 0x01]); // quantity: 1, and field #31
    let whole: Vec<u8> = [item("acme"), item("acme"), item("acme")].concat();
    // (case, the body's pieces as they arrive, the piece refused (None: all pass), reason)
    type Row<'a> = (&'a str, Vec<Vec<u8>>, Option<(usize, GrpcError)>);
    let rows: Vec<Row> = vec![
        ("three messages at once", vec![whole.clone()], None),
        ("a byte at a time", whole.iter().map(|b| vec![*b]).collect(), None),
        ("no message at all", vec![vec![]], None),
        ("the third message breaks, refused when it is whole", vec![item("acme"), item("acme")[..3].to_vec(), [&item("acme")[3..], &unknown[..]].concat()], Some((2, GrpcError::UnknownField { path: "Item.#31".into() }))),
        ("another tenant's message", vec![item("acme"), item("globex")], Some((1, GrpcError::TenantBoundary))),
        ("a message announced too large, refused before it arrives", vec![item("acme"), vec![0, 0, 0, 1, 0]], Some((1, GrpcError::MessageTooLarge { max_bytes: 64 }))),
        ("cut short at the end", vec![item("acme"), item("acme")[..4].to_vec(), vec![]], Some((2, GrpcError::MalformedFrame))),
    ];
    for (case, pieces, want) in rows {
        let mut stream = Stream::default();
        let last = pieces.len() - 1;
        let got = pieces.iter().enumerate().find_map(|(i, piece)| stream.take(&c, upload, piece, i == last, None, Some(&acme)).err().map(|e| (i, e)));
        assert_eq!(got, want, "{case}");
    }
}
