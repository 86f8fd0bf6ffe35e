//! `meshward test POLICY --init`: a starting case file made from the policy — for each named
//! ownership rule and rate-limit rule one request it should allow and one it should refuse, a
//! request without a token, an unsigned delivery per webhook endpoint, a body outside the
//! contract per operation taking JSON. The requests are made here; their expectations are what
//! the modules decide for them (`meshward test` fills them in), to be reviewed by a person.

use serde_json::{json, Map, Value};

use crate::policy::Policy;

/// The value that satisfies an owner check, and the one that does not.
const OWNER: &str = "owner-1";
const SOMEONE_ELSE: &str = "someone-else";

/// A case without its expectation: name, request, optional upstream answer, repeat count, and
/// the answers of the calls it makes (`fleet`, `jwks`).
pub struct Draft {
    pub name: String,
    pub request: Value,
    pub upstream: Option<Value>,
    pub repeat: u32,
    pub fleet: Option<Value>,
    pub jwks: Option<Value>,
}

fn draft(name: String, request: Value) -> Draft {
    Draft { name, request, upstream: None, repeat: 1, fleet: None, jwks: None }
}

/// The case file's `keys` (one per jwt provider that verifies tokens itself), `env` (a
/// placeholder per secret the stages read) and the drafts.
pub fn drafts(policy: &Policy) -> (Map<String, Value>, Map<String, Value>, Vec<Draft>) {
    let mut keys = Map::new();
    let mut provider = None;
    if let Some(Value::Object(providers)) = policy.stage("jwt").and_then(|s| s.config.get("providers")) {
        for (name, p) in providers {
            if p.get("from_native_jwt_authn").is_none() {
                keys.insert(name.clone(), json!({}));
                provider.get_or_insert_with(|| name.clone());
            }
        }
    }
    let mut env = Map::new();
    for stage in &policy.stages {
        for name in Policy::secret_variables(&stage.config) {
            env.insert(name, json!("meshward-test-secret-0123456789"));
        }
    }
    let token = |claims: Value| provider.as_ref().map(|p| json!({"key": p, "claims": claims}));
    let contract = policy.contract.as_ref().map(|c| &c.document);
    let mut out = Vec::new();

    if let (Some(stage), Some(doc)) = (policy.stage("jwt"), contract) {
        // The first contract operation, not public, whose first matching jwt rule wants a token.
        let jwt_rules: Vec<&Value> = rules(&stage.config, "rules").collect();
        let protected = operations(doc).into_iter().map(|(method, template, id)| (method, fill(&template, &Map::new()), id)).find(|(method, path, id)| {
            !policy.public.iter().any(|p| Some(p) == id.as_ref())
                && jwt_rules.iter().find(|r| covers(r.get("match").unwrap_or(&Value::Null), method, path)).is_some_and(|r| r.get("requires").is_some())
        });
        if let (Some((method, path, _)), Some(name)) = (protected, &provider) {
            out.push(draft(format!("jwt: {method} {path} without a token"), json!({"method": method, "path": path})));
            let remote = stage.config.pointer(&format!("/providers/{name}/remote_jwks")).is_some();
            if remote {
                let request = json!({"method": method, "path": path, "token": token(json!({"sub": "user-1"}))});
                out.push(Draft { jwks: Some(json!("unavailable")), ..draft(format!("jwt: {method} {path} while the IdP's keys cannot be fetched"), request) });
            }
        }
    }
    // What the ownership rules allow: the requests the other stages' drafts start from, so that
    // a rate limit or a contract is what decides them.
    let owned: Vec<Draft> = policy
        .stage("ownership")
        .map(|s| rules(&s.config, "rules").flat_map(|r| ownership_drafts(r, contract, &token)).collect())
        .unwrap_or_default();
    let allowed_like = |m: &Value| -> Option<Value> {
        owned.iter().find(|d| d.name.ends_with("as the rule allows") && covers(m, request_method(&d.request), request_path(&d.request))).map(|d| d.request.clone())
    };
    for stage in &policy.stages {
        match stage.kind.as_str() {
            "ownership" => {}
            "ratelimit" => {
                for rule in rules(&stage.config, "rules") {
                    out.extend(ratelimit_drafts(rule, contract, &token, &allowed_like));
                }
            }
            "webhook" => {
                for endpoint in rules(&stage.config, "endpoints") {
                    let name = endpoint.get("name").and_then(Value::as_str).unwrap_or("endpoint");
                    let (_, path) = request_line(endpoint.get("match").unwrap_or(&Value::Null), contract);
                    let request = json!({"method": "POST", "path": path, "json": {"event": "test"}});
                    out.push(draft(format!("webhook {name}: an unsigned delivery"), request));
                }
            }
            "schema" => {
                if let Some(doc) = contract {
                    out.extend(schema_drafts(doc, &token, &allowed_like));
                }
            }
            "idempotency" => {
                for operation in rules(&stage.config, "operations") {
                    out.extend(idempotency_drafts(operation, contract, &token, &allowed_like));
                }
            }
            _ => {}
        }
    }
    out.extend(owned);
    (keys, env, out)
}

fn request_method(request: &Value) -> &str {
    request.get("method").and_then(Value::as_str).unwrap_or("GET")
}

fn request_path(request: &Value) -> &str {
    request.get("path").and_then(Value::as_str).unwrap_or("/")
}

/// Whether a rule's `match` covers a request (its methods, and its path, prefix or template).
fn covers(m: &Value, method: &str, path: &str) -> bool {
    let methods = m.get("methods").and_then(Value::as_array);
    if methods.is_some_and(|ms| !ms.iter().any(|x| x.as_str().is_some_and(|x| x.eq_ignore_ascii_case(method)))) {
        return false;
    }
    let path = path.split('?').next().unwrap_or(path);
    let text = |k: &str| m.get(k).and_then(Value::as_str);
    match (text("path"), text("prefix"), text("template")) {
        (Some(p), _, _) => p == path,
        (_, Some(prefix), _) => path.starts_with(prefix),
        (_, _, Some(t)) => template_matches(t, path),
        _ => true,
    }
}

/// The contract's operations in document order: (method, path template, operationId).
pub fn operations(doc: &Value) -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    for (template, item) in doc.get("paths").and_then(Value::as_object).into_iter().flatten() {
        for method in meshward_schema::config::METHODS {
            if let Some(op) = item.get(method) {
                let id = op.get("operationId").and_then(Value::as_str).map(str::to_string);
                out.push((method.to_ascii_uppercase(), template.clone(), id));
            }
        }
    }
    out
}

fn rules<'a>(config: &'a Value, list: &str) -> impl Iterator<Item = &'a Value> {
    config.get(list).and_then(Value::as_array).into_iter().flatten()
}

/// A method and a concrete path a `match` covers: its path, its template with each parameter
/// filled, or for a prefix the first contract path under it (the prefix itself without one).
fn request_line(m: &Value, contract: Option<&Value>) -> (String, String) {
    let method = m.pointer("/methods/0").and_then(Value::as_str).unwrap_or("GET").to_ascii_uppercase();
    let text = |k: &str| m.get(k).and_then(Value::as_str);
    let path = if let Some(p) = text("path") {
        p.to_string()
    } else if let Some(t) = text("template") {
        fill(t, &Map::new())
    } else {
        let prefix = text("prefix").unwrap_or("/");
        contract_path(contract, prefix, &method).map_or_else(|| prefix.to_string(), |t| fill(&t, &Map::new()))
    };
    (method, path)
}

/// The first contract path under `prefix` with an operation for `method`.
fn contract_path(contract: Option<&Value>, prefix: &str, method: &str) -> Option<String> {
    let paths = contract?.get("paths")?.as_object()?;
    paths.iter().find(|(p, item)| p.starts_with(prefix) && item.get(method.to_ascii_lowercase()).is_some()).map(|(p, _)| p.clone())
}

/// A template with its parameters filled: the given value, else `1`.
fn fill(template: &str, values: &Map<String, Value>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { break };
        out.push_str(&rest[..open]);
        let name = &rest[open + 1..open + close];
        out.push_str(values.get(name).and_then(Value::as_str).unwrap_or("1"));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

fn ownership_drafts(rule: &Value, contract: Option<&Value>, token: &dyn Fn(Value) -> Option<Value>) -> Vec<Draft> {
    let name = rule.get("name").and_then(Value::as_str).unwrap_or("rule");
    let m = rule.get("match").cloned().unwrap_or(Value::Null);
    let (method, _) = request_line(&m, contract);
    let scopes: Vec<&str> = rule.get("scopes").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    let mut claims = Map::from_iter([("sub".to_string(), json!("user-1"))]);
    if !scopes.is_empty() {
        claims.insert("scope".into(), json!(scopes.join(" ")));
    }
    for c in rule.get("claims").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(claim), Some(first)) = (c.get("claim").and_then(Value::as_str), c.pointer("/one_of/0")) {
            claims.insert(claim.to_string(), first.clone());
        }
    }
    // Where the owner comes from: the path, the query, a header, the body or the answer.
    let mut params = Map::new();
    let (mut query, mut headers, mut body, mut answer) = (Vec::new(), Map::new(), Map::new(), None::<Value>);
    let owners: Vec<&Value> = rule.get("owner").and_then(Value::as_array).into_iter().flatten().collect();
    for o in &owners {
        let Some(claim) = o.get("claim").and_then(Value::as_str) else { continue };
        claims.insert(claim.to_string(), json!(OWNER));
        let at = |k: &str| o.get(k).and_then(Value::as_str);
        if let Some(p) = at("path_param") {
            params.insert(p.to_string(), json!(OWNER));
        } else if let Some(q) = at("query_param") {
            query.push(format!("{q}={OWNER}"));
        } else if let Some(h) = at("header") {
            headers.insert(h.to_string(), json!(OWNER));
        } else if let Some(pointer) = at("body_field") {
            set_pointer(&mut body, pointer, json!(OWNER));
        } else if let Some(pointer) = at("response_field") {
            let mut a = answer.take().unwrap_or_else(|| json!({}));
            if let Value::Object(map) = &mut a {
                set_pointer(map, pointer, json!(OWNER));
            }
            answer = Some(a);
        }
    }
    let mut path = match m.get("template").and_then(Value::as_str) {
        Some(t) => fill(t, &params),
        None => request_line(&m, contract).1,
    };
    if !query.is_empty() {
        path.push_str(&format!("?{}", query.join("&")));
    }
    let public = rule.get("public").and_then(Value::as_bool).unwrap_or(false);
    let mut request = json!({"method": method, "path": path});
    if !headers.is_empty() {
        request["headers"] = Value::Object(headers);
    }
    if !body.is_empty() || matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
        let mut instance = contract.and_then(|doc| request_body(doc, &path, &method)).unwrap_or_else(|| json!({}));
        if let Value::Object(map) = &mut instance {
            for (k, v) in body.iter() {
                map.insert(k.clone(), v.clone());
            }
        }
        request["json"] = instance;
    }
    let allowed_token = if public { None } else { token(Value::Object(claims.clone())) };
    let mut allowed = request.clone();
    if let Some(t) = &allowed_token {
        allowed["token"] = t.clone();
    }
    let mut out = vec![Draft { upstream: answer.clone().map(|a| json!({"json": a})), ..draft(format!("ownership {name}: {method} {path} as the rule allows"), allowed) }];
    if public {
        return out;
    }
    // The refusal: without the scopes, else as someone else, else without a token.
    let mut refused = request;
    let (why, claims) = if !scopes.is_empty() {
        let mut c = claims.clone();
        c.remove("scope");
        ("without its scopes", Some(c))
    } else if !owners.is_empty() {
        let mut c = claims.clone();
        for o in &owners {
            if let Some(claim) = o.get("claim").and_then(Value::as_str) {
                c.insert(claim.to_string(), json!(SOMEONE_ELSE));
            }
        }
        ("as someone else", Some(c))
    } else {
        ("without a token", None)
    };
    if let Some(t) = claims.and_then(|c| token(Value::Object(c))) {
        refused["token"] = t;
    }
    out.push(Draft { upstream: answer.map(|a| json!({"json": a})), ..draft(format!("ownership {name}: {method} {path} {why}"), refused) });
    out
}

fn ratelimit_drafts(rule: &Value, contract: Option<&Value>, token: &dyn Fn(Value) -> Option<Value>, allowed_like: &dyn Fn(&Value) -> Option<Value>) -> Vec<Draft> {
    let name = rule.get("name").and_then(Value::as_str).unwrap_or("rule");
    let m = rule.get("match").unwrap_or(&Value::Null);
    let unauthenticated = rule.get("applies_to").and_then(Value::as_str) == Some("unauthenticated");
    let mut request = match allowed_like(m) {
        Some(mut r) => {
            if unauthenticated {
                r.as_object_mut().map(|o| o.remove("token"));
            }
            r
        }
        None => {
            let (method, path) = request_line(m, contract);
            let mut r = json!({"method": method, "path": path});
            if matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
                r["json"] = contract.and_then(|doc| request_body(doc, &path, &method)).unwrap_or_else(|| json!({}));
            }
            r
        }
    };
    if !unauthenticated && request.get("token").is_none() {
        if let Some(t) = token(json!({"sub": "user-1"})) {
            request["token"] = t;
        }
    }
    let mut out = vec![draft(format!("ratelimit {name}: one request"), request.clone())];
    if rule.get("scope").and_then(Value::as_str) == Some("global") {
        // The count lives in the fleet engine: its answers are the case's.
        out.push(Draft { fleet: Some(json!({"ratelimit": "over_limit"})), ..draft(format!("ratelimit {name}: over the fleet's limit"), request.clone()) });
        out.push(Draft { fleet: Some(json!({"ratelimit": "unavailable"})), ..draft(format!("ratelimit {name}: the rate-limit service down"), request) });
        return out;
    }
    let limit = rule.pointer("/limit/requests").and_then(Value::as_u64).unwrap_or(0) + rule.pointer("/limit/burst").and_then(Value::as_u64).unwrap_or(0);
    if (1..=1000).contains(&limit) {
        let repeat = u32::try_from(limit + 1).unwrap_or(u32::MAX);
        out.push(Draft { repeat, ..draft(format!("ratelimit {name}: {repeat} requests in a row"), request) });
    }
    out
}

/// For an idempotency operation: a request without a key, a retry (the fleet engine finding
/// the first one seen: the stored answer is given back), a key reused for another request, and
/// the engine down.
fn idempotency_drafts(operation: &Value, contract: Option<&Value>, token: &dyn Fn(Value) -> Option<Value>, allowed_like: &dyn Fn(&Value) -> Option<Value>) -> Vec<Draft> {
    let name = operation.get("name").and_then(Value::as_str).unwrap_or("operation");
    let m = operation.get("match").unwrap_or(&Value::Null);
    let mut request = allowed_like(m).unwrap_or_else(|| {
        let (method, path) = request_line(m, contract);
        let body = contract.and_then(|doc| request_body(doc, &path, &method)).unwrap_or_else(|| json!({}));
        json!({"method": method, "path": path, "json": body})
    });
    if request.get("token").is_none() {
        if let Some(t) = token(json!({"sub": "user-1"})) {
            request["token"] = t;
        }
    }
    let mut keyed = request.clone();
    keyed["headers"]["idempotency-key"] = json!("meshward-test-key-1");
    vec![
        draft(format!("idempotency {name}: without an Idempotency-Key"), request),
        Draft { repeat: 2, fleet: Some(json!({"claim": ["claimed", "seen"]})), ..draft(format!("idempotency {name}: a retry gets the first answer"), keyed.clone()) },
        Draft { fleet: Some(json!({"claim": "reused"})), ..draft(format!("idempotency {name}: the key used before for another request"), keyed.clone()) },
        Draft { fleet: Some(json!({"claim": "unavailable"})), ..draft(format!("idempotency {name}: the fleet engine down"), keyed) },
    ]
}

/// For each contract operation taking JSON: a body the contract refuses (a property it does not
/// declare where it allows none, else one it requires left out).
fn schema_drafts(doc: &Value, token: &dyn Fn(Value) -> Option<Value>, allowed_like: &dyn Fn(&Value) -> Option<Value>) -> Vec<Draft> {
    let mut out = Vec::new();
    for (template, item) in doc.get("paths").and_then(Value::as_object).into_iter().flatten() {
        for method in ["post", "put", "patch"] {
            let Some(op) = item.get(method) else { continue };
            let Some(schema) = op.pointer("/requestBody/content/application~1json/schema").map(|s| resolve(doc, s)) else { continue };
            let path = fill(template, &Map::new());
            let mut body = instance(doc, schema, 0);
            let Value::Object(map) = &mut body else { continue };
            let why = if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.insert("meshward_undeclared".into(), json!(true));
                "a property the contract does not declare"
            } else if let Some(required) = schema.pointer("/required/0").and_then(Value::as_str) {
                map.remove(required);
                "a required property left out"
            } else {
                continue;
            };
            let id = op.get("operationId").and_then(Value::as_str).unwrap_or(template);
            // As the ownership rule for it allows (its caller and path), else a bare token.
            let owned = allowed_like(&json!({"template": template, "methods": [method]}));
            let mut request = json!({"method": method.to_ascii_uppercase(), "path": path, "json": body});
            match owned {
                Some(o) => {
                    request["path"] = o["path"].clone();
                    if let Some(t) = o.get("token") {
                        request["token"] = t.clone();
                    }
                }
                None => {
                    if let Some(t) = token(json!({"sub": "user-1"})) {
                        request["token"] = t;
                    }
                }
            }
            out.push(draft(format!("schema {id}: {why}"), request));
        }
    }
    out
}

/// The JSON request body the contract declares for an operation, made minimal.
fn request_body(doc: &Value, path: &str, method: &str) -> Option<Value> {
    let paths = doc.get("paths")?.as_object()?;
    let (_, item) = paths.iter().find(|(t, _)| template_matches(t, path))?;
    let schema = item.get(method.to_ascii_lowercase())?.pointer("/requestBody/content/application~1json/schema")?;
    Some(instance(doc, resolve(doc, schema), 0))
}

fn template_matches(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(a, b)| a.starts_with('{') || a == b)
}

/// A local `$ref` followed (a few levels).
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..8 {
        match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => schema = doc.pointer(pointer).unwrap_or(&Value::Null),
            None => break,
        }
    }
    schema
}

/// The smallest value a schema accepts that this can make: required properties only, enum's
/// first, bounds respected.
fn instance(doc: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if depth > 8 {
        return Value::Null;
    }
    if let Some(first) = schema.pointer("/enum/0") {
        return first.clone();
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        let mut merged = Map::new();
        for s in all {
            if let Value::Object(m) = instance(doc, s, depth + 1) {
                merged.extend(m);
            }
        }
        return Value::Object(merged);
    }
    if let Some(first) = schema.pointer("/oneOf/0").or_else(|| schema.pointer("/anyOf/0")) {
        return instance(doc, first, depth + 1);
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") | Some("number") => json!(schema.get("minimum").and_then(Value::as_i64).unwrap_or(1).max(1)),
        Some("boolean") => json!(true),
        Some("array") => json!([]),
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("email") => json!("user-1@example.com"),
            Some("date-time") => json!("2026-01-01T00:00:00Z"),
            Some("date") => json!("2026-01-01"),
            Some("uuid") => json!("00000000-0000-4000-8000-000000000001"),
            _ => json!("x".repeat(usize::try_from(schema.get("minLength").and_then(Value::as_u64).unwrap_or(1).max(1)).unwrap_or(1))),
        },
        _ => {
            let mut out = Map::new();
            let properties = schema.get("properties");
            for name in schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
                let s = properties.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                out.insert(name.to_string(), instance(doc, s, depth + 1));
            }
            Value::Object(out)
        }
    }
}

/// Sets `value` at a JSON pointer (`/order/user/email`), making the objects on the way.
fn set_pointer(map: &mut Map<String, Value>, pointer: &str, value: Value) {
    let mut parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let Some(last) = parts.pop() else { return };
    let mut at = map;
    for p in parts {
        let next = at.entry(p.to_string()).or_insert_with(|| json!({}));
        if !next.is_object() {
            *next = json!({});
        }
        let Value::Object(m) = next else { return };
        at = m;
    }
    at.insert(last.to_string(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_match() {
        assert_eq!(fill("/t/{tenant_id}/o/{id}", &Map::from_iter([("tenant_id".to_string(), json!("a"))])), "/t/a/o/1");
        assert!(template_matches("/t/{x}/o", "/t/a/o?q=1"));
        assert!(!template_matches("/t/{x}/o", "/t/a/b"));
    }

    #[test]
    fn a_minimal_instance_has_what_is_required() {
        let doc = json!({"components": {"schemas": {"Q": {"type": "integer", "minimum": 5}}}});
        let schema = json!({"type": "object", "required": ["q", "e", "m"], "properties": {
            "q": {"$ref": "#/components/schemas/Q"}, "e": {"type": "string", "format": "email"}, "m": {"enum": ["a", "b"]}, "x": {"type": "string"}}});
        assert_eq!(instance(&doc, &schema, 0), json!({"q": 5, "e": "user-1@example.com", "m": "a"}));
    }

    #[test]
    fn a_pointer_makes_its_way() {
        let mut m = Map::new();
        set_pointer(&mut m, "/order/user/email", json!("x"));
        assert_eq!(Value::Object(m), json!({"order": {"user": {"email": "x"}}}));
    }
}
