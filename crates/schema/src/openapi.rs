//! Turns an OpenAPI 3.0 / 3.1 document into JSON Schema 2020-12 that says exactly what a
//! request may contain.
//!
//! Every schema object of the document is rewritten once, in place:
//! - 3.0 `nullable: true` → `null` added to `type` (and to `enum`);
//! - 3.0 boolean `exclusiveMinimum` / `exclusiveMaximum` → the 2020-12 number form;
//! - write view: `readOnly` properties may not be sent (their schema becomes `false`, and they
//!   leave `required`), and object schemas get `unevaluatedProperties: false` unless they say
//!   otherwise, so unknown properties (mass assignment) are refused even when the spec forgot
//!   `additionalProperties: false`. Schemas used as `allOf` / `anyOf` / `oneOf` members refer to
//!   an *open* copy of the components, so composition keeps working: the closing happens once,
//!   on the composed schema.

use serde_json::{Map, Value};

/// Keywords whose value is one schema.
const SCHEMA_KEYWORDS: [&str; 8] = ["items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"];
/// Keywords whose value is a list of schemas.
const LIST_KEYWORDS: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is a map of schemas.
const MAP_KEYWORDS: [&str; 3] = ["properties", "patternProperties", "$defs"];

/// Where closed and open component copies live in the rewritten document.
pub const CLOSED: &str = "#/components/schemas/";
pub const OPEN: &str = "#/components/x-meshward-open-schemas/";

/// Rewrites a document's schemas for validating requests (`close`: refuse unknown properties).
pub fn request_view(document: &Value, close: bool) -> Value {
    let mut doc = document.clone();
    let components = doc.pointer("/components/schemas").cloned();
    if let Some(Value::Object(schemas)) = components {
        let mut open = Map::new();
        for (name, schema) in &schemas {
            let mut s = schema.clone();
            rewrite(&mut s, close, false);
            open.insert(name.clone(), s);
        }
        let mut closed = Map::new();
        for (name, schema) in schemas {
            let mut s = schema;
            rewrite(&mut s, close, true);
            closed.insert(name, s);
        }
        if let Some(Value::Object(c)) = doc.pointer_mut("/components") {
            c.insert("schemas".into(), Value::Object(closed));
            c.insert("x-meshward-open-schemas".into(), Value::Object(open));
        }
    }
    if let Some(paths) = doc.get_mut("paths") {
        rewrite_operations(paths, close);
    }
    doc
}

fn rewrite_operations(paths: &mut Value, close: bool) {
    let Value::Object(paths) = paths else { return };
    for item in paths.values_mut() {
        let Value::Object(item) = item else { continue };
        for (key, op) in item.iter_mut() {
            if key == "parameters" {
                rewrite_parameters(op, close);
                continue;
            }
            let Value::Object(op) = op else { continue };
            if let Some(params) = op.get_mut("parameters") {
                rewrite_parameters(params, close);
            }
            if let Some(Value::Object(content)) = op.get_mut("requestBody").and_then(|b| b.get_mut("content")) {
                for media in content.values_mut() {
                    if let Some(schema) = media.get_mut("schema") {
                        rewrite(schema, close, true);
                    }
                }
            }
        }
    }
}

fn rewrite_parameters(params: &mut Value, close: bool) {
    let Value::Array(params) = params else { return };
    for p in params {
        if let Some(schema) = p.get_mut("schema") {
            rewrite(schema, close, true);
        }
    }
}

/// Rewrites one schema object and everything below it. `closed_here`: this schema is not a
/// composition member, so it may be closed.
fn rewrite(schema: &mut Value, close: bool, closed_here: bool) {
    let Value::Object(map) = schema else { return };
    // $ref: point at the closed or the open copy of the component.
    if let Some(Value::String(target)) = map.get_mut("$ref") {
        if let Some(name) = target.strip_prefix(CLOSED) {
            if !closed_here {
                *target = format!("{OPEN}{name}");
            }
        }
        return;
    }
    nullable(map);
    exclusive_bounds(map, "exclusiveMinimum", "minimum");
    exclusive_bounds(map, "exclusiveMaximum", "maximum");
    // The write view: readOnly properties must not be sent.
    let read_only: Vec<String> = match map.get("properties") {
        Some(Value::Object(props)) => props
            .iter()
            .filter(|(_, p)| p.get("readOnly") == Some(&Value::Bool(true)))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    };
    if !read_only.is_empty() {
        if let Some(Value::Object(props)) = map.get_mut("properties") {
            for name in &read_only {
                props.insert(name.clone(), Value::Bool(false));
            }
        }
        if let Some(Value::Array(required)) = map.get_mut("required") {
            required.retain(|r| !r.as_str().is_some_and(|r| read_only.iter().any(|n| n == r)));
        }
    }
    for key in SCHEMA_KEYWORDS {
        if let Some(sub) = map.get_mut(key) {
            rewrite(sub, close, true);
        }
    }
    for key in MAP_KEYWORDS {
        if let Some(Value::Object(subs)) = map.get_mut(key) {
            for sub in subs.values_mut() {
                rewrite(sub, close, true);
            }
        }
    }
    for key in LIST_KEYWORDS {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            let member = key != "prefixItems";
            for sub in subs {
                rewrite(sub, close, !member);
            }
        }
    }
    let is_object = map.get("type") == Some(&Value::String("object".into()))
        || map.get("type").and_then(Value::as_array).is_some_and(|t| t.contains(&Value::String("object".into())))
        || map.contains_key("properties")
        || LIST_KEYWORDS[..3].iter().any(|k| map.contains_key(*k));
    if close && closed_here && is_object && !map.contains_key("additionalProperties") && !map.contains_key("unevaluatedProperties") {
        map.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
}

fn nullable(map: &mut Map<String, Value>) {
    if map.remove("nullable") != Some(Value::Bool(true)) {
        return;
    }
    match map.get_mut("type") {
        Some(Value::String(t)) => {
            let t = t.clone();
            map.insert("type".into(), Value::Array(vec![Value::String(t), Value::String("null".into())]));
        }
        Some(Value::Array(types)) if !types.contains(&Value::String("null".into())) => types.push(Value::String("null".into())),
        _ => {}
    }
    if let Some(Value::Array(values)) = map.get_mut("enum") {
        if !values.contains(&Value::Null) {
            values.push(Value::Null);
        }
    }
}

fn exclusive_bounds(map: &mut Map<String, Value>, exclusive: &str, inclusive: &str) {
    match map.get(exclusive) {
        Some(Value::Bool(true)) => {
            if let Some(bound) = map.remove(inclusive) {
                map.insert(exclusive.into(), bound);
            } else {
                map.remove(exclusive);
            }
        }
        Some(Value::Bool(false)) => {
            map.remove(exclusive);
        }
        _ => {}
    }
}

/// Checks that every local `$ref` in the document resolves; the error names the first that
/// does not. Remote references are refused: the filter cannot fetch them.
pub fn check_refs(document: &Value) -> Result<(), String> {
    fn walk(doc: &Value, value: &Value, at: &str) -> Result<(), String> {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    let Some(pointer) = target.strip_prefix('#') else {
                        return Err(format!("{at}: $ref {target:?} is not local to the document"));
                    };
                    if doc.pointer(pointer).is_none() {
                        return Err(format!("{at}: $ref {target:?} does not resolve"));
                    }
                }
                for (k, v) in map {
                    walk(doc, v, &format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")))?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(doc, v, &format!("{at}/{i}"))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    walk(document, document, "#")
}
