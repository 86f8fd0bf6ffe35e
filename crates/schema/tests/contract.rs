//! The checks against the two real contracts in tests/specs (crAPI, Swagger Petstore).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use meshward_core::route::canonical_path;
use meshward_schema::config::BodyFormat;
use meshward_schema::validate::{check_answer, check_body, check_content_type, check_form, check_parameters, match_operation, match_response};
use meshward_schema::{SchemaConfig, SchemaError};
use serde_json::{json, Value};

fn spec(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../../tests/specs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn crapi() -> SchemaConfig {
    let doc: Value = serde_json::from_str(&spec("crapi-openapi-spec.json")).unwrap();
    SchemaConfig::parse(json!({"openapi": doc}).to_string().as_bytes()).unwrap()
}

fn petstore() -> SchemaConfig {
    SchemaConfig::parse(json!({"openapi_text": spec("petstore-openapi.yaml")}).to_string().as_bytes()).unwrap()
}

/// The whole request check: route, parameters, content type, body.
fn check(config: &SchemaConfig, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<(), SchemaError> {
    let canonical = canonical_path(path).unwrap();
    let (op, captures) = match_operation(config, method, &canonical)?;
    let header = |n: &str| headers.iter().filter(|(k, _)| *k == n).map(|(_, v)| v.to_string()).collect::<Vec<_>>();
    check_parameters(op, &captures, path, &header)?;
    let content_type = headers.iter().find(|(k, _)| *k == "content-type").map(|(_, v)| *v);
    if let Some(media) = check_content_type(op, body.is_some(), content_type)? {
        let body = body.unwrap_or_default();
        if media.format == BodyFormat::Json {
            let read = meshward_core::json::read(body, config.max_depth);
            check_body(media, read.as_ref().map_err(|e| *e))?;
        } else {
            check_form(media, content_type, body)?;
        }
    }
    Ok(())
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn violation(location: &str, keyword: &str) -> Result<(), SchemaError> {
    Err(SchemaError::SchemaViolation { location: location.into(), keyword: keyword.into() })
}

#[test]
fn crapi_contract() {
    let c = crapi();
    assert!(c.operations.len() >= 44, "{}", c.operations.len());
    let order = |body: &str| check(&c, "POST", "/workshop/api/shop/orders", &[JSON], Some(body.as_bytes()));
    assert_eq!(order(r#"{"product_id": 1, "quantity": 2}"#), Ok(()));
    assert_eq!(order(r#"{"product_id": 1, "quantity": 2, "is_admin": true}"#), violation("/body", "unevaluatedProperties"));
    assert_eq!(order(r#"{"product_id": "1", "quantity": 2}"#), violation("/body/product_id", "type"));
    assert_eq!(order(r#"{"product_id": 1}"#), violation("/body", "required"));
    assert_eq!(order("{\"product_id\": 1,"), Err(SchemaError::InvalidJson));
    // What services read differently is refused, whatever the schema says.
    let ambiguous = |what| Err(SchemaError::AmbiguousJson { what });
    use meshward_core::json::Ambiguity::*;
    assert_eq!(order(r#"{"product_id": 1, "quantity": 2, "quantity": 900}"#), ambiguous(DuplicateMember));
    assert_eq!(order(r#"{"product_id": 1, "quantity": 2, "Quantity": 900}"#), ambiguous(CaseVariantMember));
    assert_eq!(order(r#"{"product_id": 1, "quantity": 2, "QUANTITY": 900}"#), ambiguous(CaseVariantMember));
    assert_eq!(order(r#"{"product_id": 1, "Quantity": 2}"#), violation("/body", "required"), "a case variant alone is an unknown member");
    assert_eq!(order(r#"{"product_id": 1, "quantity": 2, "x": "\udead"}"#), ambiguous(LoneSurrogate));
    assert_eq!(order(r#"{"product_id": 99999999999999999999999, "quantity": 2}"#), ambiguous(IntegerOutOfRange));
    assert_eq!(order("\u{feff}{\"product_id\": 1, \"quantity\": 2}"), ambiguous(ByteOrderMark));
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    assert_eq!(order(&deep), Err(SchemaError::TooDeep { max_depth: 32 }));
    assert_eq!(check(&c, "POST", "/workshop/api/shop/orders", &[("content-type", "text/plain")], Some(b"x")), Err(SchemaError::UnsupportedMediaType));
    assert_eq!(check(&c, "POST", "/workshop/api/shop/orders", &[JSON], None), Err(SchemaError::MissingBody));
    assert_eq!(check(&c, "GET", "/workshop/api/shop/orders/all?limit=30&offset=0", &[], None), Ok(()));
    assert_eq!(
        check(&c, "GET", "/workshop/api/shop/orders/all?offset=0", &[], None),
        Err(SchemaError::MissingParameter { location: "query.limit".into() })
    );
    assert_eq!(
        check(&c, "GET", "/workshop/api/shop/orders/all?limit=many&offset=0", &[], None),
        Err(SchemaError::InvalidParameter { location: "query.limit".into(), keyword: "type".into() })
    );
    assert_eq!(check(&c, "DELETE", "/workshop/api/shop/orders/all", &[], None), Err(SchemaError::MethodNotAllowed));
    assert_eq!(check(&c, "GET", "/workshop/api/shop/admin", &[], None), Err(SchemaError::UnknownRoute));
    // Literal paths win over templates: /orders/all is not /orders/{order_id}.
    assert_eq!(check(&c, "GET", "/workshop/api/shop/orders/7", &[], None), Ok(()));
    // Found by schemathesis: an integer past 64 bits is still an integer.
    assert_eq!(check(&c, "GET", "/workshop/api/shop/orders/9223372036854775808", &[], None), Ok(()));
    assert_eq!(check(&c, "GET", "/workshop/api/shop/orders/-99999999999999999999999", &[], None), Ok(()));
    assert_eq!(
        check(&c, "GET", "/workshop/api/shop/orders/seven", &[], None),
        Err(SchemaError::InvalidParameter { location: "path.order_id".into(), keyword: "type".into() })
    );
    // An operation without a body refuses one.
    assert_eq!(check(&c, "GET", "/workshop/api/shop/orders/all?limit=1&offset=0", &[JSON], Some(b"{}")), Err(SchemaError::UnexpectedBody));
}

#[test]
fn petstore_contract_from_yaml() {
    let p = petstore();
    let pet = |body: &str| check(&p, "POST", "/pet", &[JSON], Some(body.as_bytes()));
    assert_eq!(pet(r#"{"name": "doggie", "photoUrls": ["u"], "status": "available"}"#), Ok(()));
    assert_eq!(pet(r#"{"name": "doggie", "photoUrls": ["u"], "status": "sleeping"}"#), violation("/body/status", "enum"));
    // The contract is served under its `servers` base path (`/api/v3`), and as is.
    assert_eq!(p.base_paths, vec!["/api/v3".to_string()]);
    let under_base = |body: &str| check(&p, "POST", "/api/v3/pet", &[JSON], Some(body.as_bytes()));
    assert_eq!(under_base(r#"{"name": "doggie", "photoUrls": ["u"]}"#), Ok(()));
    assert_eq!(under_base(r#"{"name": "doggie", "photoUrls": ["u"], "status": "sleeping"}"#), violation("/body/status", "enum"));
    assert_eq!(check(&p, "GET", "/api/v3/pet/x", &[], None), Err(SchemaError::InvalidParameter { location: "path.petId".into(), keyword: "type".into() }));
    assert_eq!(check(&p, "GET", "/api/v3x/pet/1", &[], None), Err(SchemaError::UnknownRoute));
    assert_eq!(check(&p, "PUT", "/api/v3/pet/1", &[], None), Err(SchemaError::MethodNotAllowed));
    assert_eq!(pet(r#"{"name": "doggie", "photoUrls": ["u"], "category": {"id": 1, "name": "d", "x": 1}}"#), violation("/body/category", "unevaluatedProperties"));
    assert_eq!(
        check(&p, "GET", "/pet/findByStatus?status=available", &[], None),
        Ok(())
    );
    assert_eq!(
        check(&p, "GET", "/pet/findByStatus?status=sleeping", &[], None),
        Err(SchemaError::InvalidParameter { location: "query.status".into(), keyword: "enum".into() })
    );
    assert_eq!(
        check(&p, "GET", "/pet/abc", &[], None),
        Err(SchemaError::InvalidParameter { location: "path.petId".into(), keyword: "type".into() })
    );
    assert_eq!(check(&p, "GET", "/pet/12", &[], None), Ok(()));
    // `format: int64` at both ends, exactly (below the range is not rounded onto its bound).
    assert_eq!(check(&p, "GET", "/pet/-9223372036854775808", &[], None), Ok(()));
    assert_eq!(check(&p, "GET", "/pet/9223372036854775807", &[], None), Ok(()));
    for outside in ["-9223372036854775809", "-9223372036854776833", "-99999999999999999999999"] {
        assert_eq!(
            check(&p, "GET", &format!("/pet/{outside}"), &[], None),
            Err(SchemaError::InvalidParameter { location: "path.petId".into(), keyword: "minimum".into() }),
            "{outside}"
        );
    }
    assert_eq!(
        check(&p, "GET", "/pet/9223372036854775808", &[], None),
        Err(SchemaError::InvalidParameter { location: "path.petId".into(), keyword: "maximum".into() })
    );
    // An optional query parameter given empty: `allowEmptyValue` is false unless declared.
    for empty in ["/pet/findByStatus?status=", "/pet/findByStatus?status"] {
        assert_eq!(
            check(&p, "GET", empty, &[], None),
            Err(SchemaError::InvalidParameter { location: "query.status".into(), keyword: "allowEmptyValue".into() }),
            "{empty}"
        );
    }
    assert_eq!(check(&p, "GET", "/pet/findByStatus", &[], None), Ok(()), "absent is not empty");
    // Petstore also accepts XML for /pet: meshward cannot check it, so it is refused unless
    // the operation opts in; form bodies are read as the schema's object and validated.
    let xml = [("content-type", "application/xml")];
    assert_eq!(check(&p, "POST", "/pet", &xml, Some(b"<pet/>")), Err(SchemaError::UncheckedMediaType));
    let lenient = SchemaConfig::parse(
        json!({"openapi_text": spec("petstore-openapi.yaml"), "operations": {"addPet": {"unchecked_media_types": ["application/xml"]}}}).to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(check(&lenient, "POST", "/pet", &xml, Some(b"<pet/>")), Ok(()));
    assert_eq!(check(&lenient, "PUT", "/pet", &xml, Some(b"<pet/>")), Err(SchemaError::UncheckedMediaType), "per operation");
    let form = |body: &str| check(&p, "POST", "/pet", &[("content-type", "application/x-www-form-urlencoded")], Some(body.as_bytes()));
    assert_eq!(form("name=doggie&photoUrls=a&photoUrls=b&id=7"), Ok(()));
    assert_eq!(form("name=doggie&photoUrls=a&category=%7B%22id%22%3A1%2C%22name%22%3A%22d%22%7D"), Ok(()), "objects as JSON text");
    assert_eq!(form("name=doggie&photoUrls=a&status=sleeping"), violation("/body/status", "enum"));
    assert_eq!(form("name=doggie&photoUrls=a&id=seven"), violation("/body/id", "type"));
    assert_eq!(form("name=doggie&photoUrls=a&id=-9223372036854775809"), violation("/body/id", "minimum"));
    assert_eq!(form("name=doggie&photoUrls=a&id=-9223372036854775808"), Ok(()));
    assert_eq!(form("name=doggie&photoUrls=a&is_admin=true"), violation("/body", "unevaluatedProperties"));
    assert_eq!(form("photoUrls=a"), violation("/body", "required"));
    assert_eq!(form("name=doggie&photoUrls=a&name=other"), Err(SchemaError::AmbiguousForm));
    assert_eq!(form("name=doggie&photoUrls=a&Name=other"), Err(SchemaError::AmbiguousForm));
    assert_eq!(form("name=%zz"), Err(SchemaError::InvalidForm));
    let bad_override = |o: Value| SchemaConfig::parse(json!({"openapi_text": spec("petstore-openapi.yaml"), "operations": {"addPet": o}}).to_string().as_bytes()).err().map(|e| e.to_string());
    assert!(bad_override(json!({"unchecked_media_types": ["text/csv"]})).unwrap().contains("operations.addPet.unchecked_media_types"));
}

#[test]
fn openapi_30_specifics_and_overrides() {
    let doc = json!({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "paths": {"/items": {"post": {"operationId": "create", "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}, "responses": {}}},
                  "/loose": {"put": {"operationId": "loose", "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}, "responses": {}}}},
        "components": {"schemas": {
            "Base": {"type": "object", "properties": {"id": {"type": "integer", "readOnly": true}}, "required": ["id"]},
            "Item": {"allOf": [{"$ref": "#/components/schemas/Base"}, {"type": "object", "properties": {
                "name": {"type": "string", "nullable": true}, "price": {"type": "number", "minimum": 0, "exclusiveMinimum": true}}, "required": ["name"]}]}
        }}
    });
    let c = SchemaConfig::parse(json!({"openapi": doc, "operations": {"loose": {"reject_unknown_properties": false}}}).to_string().as_bytes()).unwrap();
    let post = |body: &str| check(&c, "POST", "/items", &[JSON], Some(body.as_bytes()));
    // allOf composition still accepts both members' properties while unknown ones are refused.
    assert_eq!(post(r#"{"name": "a", "price": 1}"#), Ok(()));
    assert_eq!(post(r#"{"name": null}"#), Ok(()), "nullable");
    assert_eq!(post(r#"{"name": "a", "price": 0}"#), violation("/body/price", "exclusiveMinimum"));
    assert_eq!(post(r#"{"name": "a", "id": 5}"#), violation("/body/id", "falseSchema"), "readOnly is not for writes, required or not");
    assert_eq!(post(r#"{"name": "a", "role": "admin"}"#), violation("/body", "unevaluatedProperties"));
    let put = |body: &str| check(&c, "PUT", "/loose", &[JSON], Some(body.as_bytes()));
    assert_eq!(put(r#"{"name": "a", "role": "admin"}"#), Ok(()), "override lets this one through");
}

#[test]
fn bad_documents_are_refused_naming_the_location() {
    let parse = |v: Value| SchemaConfig::parse(v.to_string().as_bytes()).err().map(|e| e.to_string()).unwrap_or_default();
    let base = |paths: Value| json!({"openapi": {"openapi": "3.0.0", "info": {}, "paths": paths}});
    assert!(parse(json!({})).contains("set exactly one of `openapi`"));
    assert!(parse(json!({"openapi": {"swagger": "2.0"}})).contains("not OpenAPI 3.0.x or 3.1.x"));
    assert!(parse(json!({"openapi_text": "openapi: [unclosed"})).contains("not valid YAML"));
    let dangling = base(json!({"/a": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Nope"}}}}}}}));
    let err = parse(dangling);
    assert!(err.contains("does not resolve") && err.contains("#/paths/~1a/post/requestBody"), "{err}");
    assert!(parse(base(json!({"/a": {"get": {"parameters": [{"in": "query", "name": "x", "schema": {"$ref": "https://evil/x.json"}}]}}}))).contains("not local"));
    assert!(parse(base(json!({}))).contains("declares no operations"));
    let mut with_override = base(json!({"/a": {"get": {"operationId": "a"}}}));
    with_override["operations"] = json!({"b": {}});
    assert!(parse(with_override).contains("operations.b: is not an operationId"));
}

/// A small API whose answers carry a writeOnly password and tagged fields.
fn accounts(response: Value) -> SchemaConfig {
    let doc = json!({
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/accounts/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "get": {"operationId": "get_account", "responses": {
                "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Account"}}}},
                "204": {"description": "gone quiet"},
                "4XX": {"content": {"application/problem+json": {"schema": {"type": "object"}}}}}}}},
        "components": {"schemas": {"Account": {"type": "object", "required": ["id", "password", "email"], "properties": {
            "id": {"type": "integer"},
            "email": {"type": "string", "x-data-class": "pii"},
            "password": {"type": "string", "writeOnly": true},
            "notes": {"type": "string", "x-data-class": "internal"}}}}}
    });
    SchemaConfig::parse(json!({"openapi": doc, "response": response}).to_string().as_bytes()).unwrap()
}

/// An answer check's outcome: `Ok(None)` passes unchanged, `Ok(Some)` is what goes out instead.
type Answer = Result<Option<Value>, SchemaError>;

/// The whole answer check for GET /accounts/1: `Ok(None)` passes unchanged, `Ok(Some)` is cut.
fn answer(c: &SchemaConfig, status: u16, content_type: &str, body: &str) -> Answer {
    let (op, _) = match_operation(c, "GET", "/accounts/1")?;
    let media = match_response(op, status, Some(content_type))?;
    let checks = c.response.as_ref().unwrap();
    check_answer(checks, media, body.as_bytes(), &[]).map(|cut| cut.map(|b| serde_json::from_slice(&b).unwrap()))
}

#[test]
fn answers_are_cut_validated_or_blocked() {
    let strip_pii = accounts(json!({"validate": true, "data_classes": {"pii": "strip", "internal": "block"}}));
    let full = r#"{"id": 1, "email": "a@b", "password": "pw"}"#;
    let cases: Vec<(&str, &SchemaConfig, u16, &str, &str, Answer)> = vec![
        ("writeOnly and pii cut; still valid without them", &strip_pii, 200, "application/json", full, Ok(Some(json!({"id": 1})))),
        ("nothing to cut", &strip_pii, 200, "application/json", r#"{"id": 1}"#, Ok(None)),
        (
            "internal blocks",
            &strip_pii,
            200,
            "application/json",
            r#"{"id": 1, "notes": "vip"}"#,
            Err(SchemaError::BlockedField { location: "/body/notes".into(), tag: "internal".into() }),
        ),
        (
            "type violation",
            &strip_pii,
            200,
            "application/json",
            r#"{"id": "one"}"#,
            Err(SchemaError::ResponseViolation { location: "/body/id".into(), keyword: "type".into() }),
        ),
        (
            "not JSON",
            &strip_pii,
            200,
            "application/json",
            "<html>",
            Err(SchemaError::ResponseViolation { location: "/body".into(), keyword: "json".into() }),
        ),
        ("status class 4XX", &strip_pii, 404, "application/problem+json", "{}", Ok(None)),
        ("undeclared status", &strip_pii, 201, "application/json", full, Err(SchemaError::UndeclaredResponse)),
        ("undeclared content type", &strip_pii, 200, "text/html", full, Err(SchemaError::UndeclaredResponse)),
    ];
    for (name, c, status, content_type, body, want) in cases {
        assert_eq!(answer(c, status, content_type, body), want, "{name}");
    }
    // Without validation, required fields may be missing and non-JSON passes; writeOnly can block.
    let lenient = accounts(json!({"write_only": "block"}));
    assert_eq!(answer(&lenient, 200, "application/json", r#"{"id": "one"}"#), Ok(None));
    assert_eq!(answer(&lenient, 200, "application/json", "<html>"), Ok(None));
    assert_eq!(
        answer(&lenient, 200, "application/json", full),
        Err(SchemaError::BlockedField { location: "/body/password".into(), tag: "writeOnly".into() })
    );
}

#[test]
fn bad_response_configuration_is_refused() {
    let parse = |response: Value| {
        let doc = json!({"openapi": "3.0.0", "info": {}, "paths": {"/a": {"get": {"responses": {"2YY": {}}}}}});
        SchemaConfig::parse(json!({"openapi": doc, "response": response}).to_string().as_bytes()).err().map(|e| e.to_string()).unwrap_or_default()
    };
    assert!(parse(json!({"validate": "yes"})).contains("response.validate"));
    assert!(parse(json!({"data_classes": {"pii": "hide"}})).contains("unknown variant `hide`"));
    assert!(parse(json!({"max_body_bytes": 0})).contains("response.max_body_bytes"));
    assert!(parse(json!({})).contains("responses.2YY: not a status code"));
}

#[test]
fn integer_ranges_and_formats_are_asserted_exactly() {
    let doc = json!({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "paths": {"/things": {"post": {
            "parameters": [{"name": "day", "in": "query", "schema": {"type": "string", "format": "date"}},
                           {"name": "n", "in": "query", "schema": {"type": "integer", "format": "int32"}}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {
                "count": {"type": "integer", "format": "int32"},
                "big": {"type": "integer", "format": "int64"},
                "small": {"type": "integer", "format": "int32", "maximum": 10, "minimum": -5},
                "ratio": {"type": "number", "minimum": 0.1, "maximum": 0.3, "multipleOf": 0.1},
                "when": {"type": "string", "format": "date-time"},
                "id": {"type": "string", "format": "uuid"},
                "mail": {"type": "string", "format": "email"},
                "ip": {"type": "string", "format": "ipv4"},
                "ip6": {"type": "string", "format": "ipv6"},
                "link": {"type": "string", "format": "uri"},
                "blob": {"type": "string", "format": "binary"}}}}}},
            "responses": {"200": {"description": "ok"}}}}}
    });
    let c = SchemaConfig::parse(json!({"openapi": doc}).to_string().as_bytes()).unwrap();
    let post = |path: &str, body: &str| check(&c, "POST", path, &[JSON], Some(body.as_bytes()));
    let body = |b: &str| post("/things", b);
    let cases: Vec<(&str, Result<(), SchemaError>)> = vec![
        (r#"{"count": 2147483647, "big": 9223372036854775807, "small": 10}"#, Ok(())),
        (r#"{"count": -2147483648, "big": -9223372036854775808, "small": -5}"#, Ok(())),
        (r#"{"count": 2147483648}"#, violation("/body/count", "maximum")),
        (r#"{"count": -2147483649}"#, violation("/body/count", "minimum")),
        (r#"{"big": 9223372036854775808}"#, violation("/body/big", "maximum")),
        (r#"{"small": 11}"#, violation("/body/small", "maximum")),
        (r#"{"small": -6}"#, violation("/body/small", "minimum")),
        (r#"{"ratio": 0.3}"#, Ok(())),
        (r#"{"ratio": 0.1}"#, Ok(())),
        (r#"{"ratio": 0.30000000000000004}"#, violation("/body/ratio", "maximum")),
        (r#"{"ratio": 0.25}"#, violation("/body/ratio", "multipleOf")),
        (r#"{"when": "2024-02-29T12:00:00Z", "id": "0a9a5e2c-5b2b-4ae4-8e0e-1f0c7d1e7e11", "mail": "a@b.test", "ip": "10.0.0.1", "ip6": "::1", "link": "https://x.test/a", "blob": "\u0001"}"#, Ok(())),
        (r#"{"when": "yesterday"}"#, violation("/body/when", "format")),
        (r#"{"when": "2023-02-29T12:00:00Z"}"#, violation("/body/when", "format")),
        (r#"{"id": "not-a-uuid"}"#, violation("/body/id", "format")),
        (r#"{"mail": "nobody"}"#, violation("/body/mail", "format")),
        (r#"{"ip": "10.0.0.256"}"#, violation("/body/ip", "format")),
        (r#"{"ip6": "::g"}"#, violation("/body/ip6", "format")),
        (r#"{"link": "not a uri"}"#, violation("/body/link", "format")),
    ];
    for (b, want) in cases {
        assert_eq!(body(b), want, "{b}");
    }
    let param = |location: &str, keyword: &str| Err(SchemaError::InvalidParameter { location: location.into(), keyword: keyword.into() });
    assert_eq!(post("/things?day=2024-02-29&n=7", "{}"), Ok(()));
    assert_eq!(post("/things?day=2024-13-45", "{}"), param("query.day", "format"));
    assert_eq!(post("/things?n=2147483648", "{}"), param("query.n", "maximum"));
}

#[test]
fn empty_required_parameters_are_missing_unless_allowed() {
    let doc = json!({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "paths": {"/search": {"get": {"parameters": [
            {"name": "q", "in": "query", "required": true, "schema": {"type": "string"}},
            {"name": "tag", "in": "query", "required": true, "allowEmptyValue": true, "schema": {"type": "string"}},
            {"name": "x-tenant", "in": "header", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "ok"}}}}}
    });
    let c = SchemaConfig::parse(json!({"openapi": doc}).to_string().as_bytes()).unwrap();
    let get = |path: &str, tenant: &str| check(&c, "GET", path, &[("x-tenant", tenant)], None);
    let missing = |location: &str| Err(SchemaError::MissingParameter { location: location.into() });
    assert_eq!(get("/search?q=a&tag=b", "acme"), Ok(()));
    assert_eq!(get("/search?q=a&tag=", "acme"), Ok(()), "allowEmptyValue");
    assert_eq!(get("/search?q=&tag=b", "acme"), missing("query.q"));
    assert_eq!(get("/search?q&tag=b", "acme"), missing("query.q"));
    assert_eq!(get("/search?q=a&tag=b", ""), missing("header.x-tenant"));
}

#[test]
fn multipart_bodies_are_read_as_their_schema() {
    let doc = json!({
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/avatars": {"post": {
            "requestBody": {"required": true, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["user_id", "file"], "properties": {
                    "user_id": {"type": "integer"}, "file": {"type": "string", "format": "binary"},
                    "labels": {"type": "array", "items": {"type": "string", "maxLength": 8}}}}},
                "image/png": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": {"description": "ok"}}}}}
    });
    let c = SchemaConfig::parse(json!({"openapi": doc}).to_string().as_bytes()).unwrap();
    let ct = ("content-type", "multipart/form-data; boundary=b0");
    let upload = |parts: &[(&str, &str)]| {
        let mut body = String::new();
        for (name, content) in parts {
            let filename = if *name == "file" { "; filename=\"a.png\"\r\nContent-Type: image/png" } else { "" };
            body.push_str(&format!("--b0\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n{content}\r\n"));
        }
        body.push_str("--b0--\r\n");
        check(&c, "POST", "/avatars", &[ct], Some(body.as_bytes()))
    };
    assert_eq!(upload(&[("user_id", "7"), ("file", "\u{89}PNG"), ("labels", "a"), ("labels", "b")]), Ok(()));
    assert_eq!(upload(&[("user_id", "seven"), ("file", "x")]), violation("/body/user_id", "type"));
    assert_eq!(upload(&[("user_id", "7")]), violation("/body", "required"));
    assert_eq!(upload(&[("user_id", "7"), ("file", "x"), ("labels", "much-too-long")]), violation("/body/labels/0", "maxLength"));
    assert_eq!(upload(&[("user_id", "7"), ("file", "x"), ("role", "admin")]), violation("/body", "unevaluatedProperties"));
    assert_eq!(upload(&[("user_id", "7"), ("user_id", "8"), ("file", "x")]), Err(SchemaError::AmbiguousForm));
    let no_boundary = check(&c, "POST", "/avatars", &[("content-type", "multipart/form-data")], Some(b"--b0--"));
    assert_eq!(no_boundary, Err(SchemaError::InvalidForm));
    // A binary upload has nothing to check: it streams on.
    assert_eq!(check(&c, "POST", "/avatars", &[("content-type", "image/png")], Some(b"\x89PNG")), Ok(()));
}

/// Every schema of the contract is checked against the 2020-12 meta-schema before it is
/// compiled, also after the first one (the meta-schema validator is built once per VM and kept:
/// vendor/jsonschema/MESHWARD.md). A schema that breaks it refuses the whole configuration.
#[test]
fn schemas_that_break_the_meta_schema_are_refused_every_time() {
    let doc = |schema: Value| {
        json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {"/a": {"post": {
            "requestBody": {"content": {"application/json": {"schema": schema}}}, "responses": {"200": {"description": "ok"}}}}}})
    };
    for _ in 0..2 {
        assert!(SchemaConfig::parse(json!({"openapi": doc(json!({"type": "object"}))}).to_string().as_bytes()).is_ok());
        for bad in [json!({"type": "strng"}), json!({"minLength": -1}), json!({"required": "name"})] {
            let e = SchemaConfig::parse(json!({"openapi": doc(bad.clone())}).to_string().as_bytes()).err().map(|e| e.to_string());
            assert!(e.as_deref().is_some_and(|e| e.contains("does not compile")), "{bad}: {e:?}");
        }
    }
}

#[test]
fn scoped_fields_follow_the_caller_and_stay_valid() {
    let doc = json!({
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/accounts/{id}": {"parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "get": {"operationId": "get_account", "responses": {
                "200": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Account"}}}}}}}},
        "components": {"schemas": {"Account": {"type": "object", "required": ["id", "balance"], "properties": {
            "id": {"type": "integer"},
            "balance": {"type": "number", "x-required-scope": "accounts:balance"}}}}}
    });
    let c = SchemaConfig::parse(json!({"openapi": doc, "response": {"validate": true}}).to_string().as_bytes()).unwrap();
    let (op, _) = match_operation(&c, "GET", "/accounts/1").unwrap();
    let media = match_response(op, 200, Some("application/json")).unwrap();
    let checks = c.response.as_ref().unwrap();
    let body = br#"{"id": 1, "balance": 12.5}"#;
    let cut = |scopes: &[String]| check_answer(checks, media, body, scopes).map(|b| b.map(|b| serde_json::from_slice::<Value>(&b).unwrap()));
    // Cut for a caller without the scope, and still valid though the contract requires it.
    assert_eq!(cut(&[]), Ok(Some(json!({"id": 1}))));
    assert_eq!(cut(&["accounts:balance".to_string()]), Ok(None));
    // Without response checks the field would leave whole to every caller: refused.
    let err = SchemaConfig::parse(json!({"openapi": doc}).to_string().as_bytes()).err().unwrap().to_string();
    assert!(err.starts_with("response") && err.contains("x-required-scope"), "{err}");
}
