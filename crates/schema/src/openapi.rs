//! Turns an OpenAPI 3.0 / 3.1 document into JSON Schema 2020-12 that says exactly what a
//! request (or, for response checks, an answer) may contain.
//!
//! Every schema object of the document is rewritten once, per [`View`]:
//! - 3.0 `nullable: true` → `null` added to `type` (and to `enum`);
//! - 3.0 boolean `exclusiveMinimum` / `exclusiveMaximum` → the 2020-12 number form;
//! - `format: int32` / `int64` → `minimum` / `maximum` of that type (unless the schema's own
//!   bounds are tighter): a value the service's integer cannot hold is not allowed;
//! - hidden properties (`readOnly` on writes; `writeOnly` and stripped `x-data-class` fields in
//!   answers) may not appear: their schema becomes `false` and they leave `required`;
//! - closed views: object schemas get `unevaluatedProperties: false` unless they say
//!   otherwise, so unknown properties (mass assignment) are refused even when the spec forgot
//!   `additionalProperties: false`. Schemas used as `allOf` / `anyOf` / `oneOf` members refer to
//!   an *open* copy of the components, so composition keeps working: the closing happens once,
//!   on the composed schema.

use serde_json::{Map, Value};

use crate::validator::escape;

/// Keywords whose value is one schema.
const SCHEMA_KEYWORDS: [&str; 8] = ["items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"];
/// Keywords whose value is a list of schemas.
const LIST_KEYWORDS: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is a map of schemas.
const MAP_KEYWORDS: [&str; 3] = ["properties", "patternProperties", "$defs"];
/// How many `$ref` hops are followed before giving up on a chain.
const MAX_REF_HOPS: usize = 16;

/// Where closed and open component copies live in the rewritten document.
pub const CLOSED: &str = "#/components/schemas/";
pub const OPEN: &str = "#/components/x-meshward-open-schemas/";

/// What a rewritten document is for.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Refuse properties the schema does not declare.
    pub close: bool,
    /// `readOnly` properties may not appear (request bodies).
    pub hide_read_only: bool,
    /// `writeOnly` properties may not appear (answers).
    pub hide_write_only: bool,
    /// Properties whose `x-data-class` is one of these may not appear.
    pub hide_classes: Vec<String>,
    /// Properties with an `x-required-scope` are optional (answers: cut for some callers).
    pub optional_scoped: bool,
}

impl View {
    /// What a request may carry; `close`: refuse unknown properties.
    pub fn request(close: bool) -> View {
        View { close, hide_read_only: true, ..View::default() }
    }

    /// Does the property schema (or a schema its `$ref` chain reaches) carry a hidden marker?
    fn hides(&self, doc: &Value, property: &Value) -> bool {
        ref_chain(doc, property).any(|s| {
            (self.hide_read_only && s.get("readOnly") == Some(&Value::Bool(true)))
                || (self.hide_write_only && s.get("writeOnly") == Some(&Value::Bool(true)))
                || s.get("x-data-class").and_then(Value::as_str).is_some_and(|c| self.hide_classes.iter().any(|h| h == c))
        })
    }
}

/// The schema and every schema its local `$ref` chain leads to, at most [`MAX_REF_HOPS`].
pub fn ref_chain<'a>(doc: &'a Value, schema: &'a Value) -> impl Iterator<Item = &'a Value> + 'a {
    let mut next = Some(schema);
    let mut hops = 0;
    std::iter::from_fn(move || {
        let current = next.take()?;
        hops += 1;
        if hops <= MAX_REF_HOPS {
            next = current.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')).and_then(|p| doc.pointer(p));
        }
        Some(current)
    })
}

/// The schema a (chain of) `$ref` finally names; the schema itself when it is no reference.
pub fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    ref_chain(doc, schema).last().unwrap_or(schema)
}

/// Rewrites a document's schemas for `view`.
pub fn rewrite_document(document: &Value, view: &View) -> Value {
    let mut doc = document.clone();
    let components = doc.pointer("/components/schemas").cloned();
    if let Some(Value::Object(schemas)) = components {
        let mut open = Map::new();
        for (name, schema) in &schemas {
            let mut s = schema.clone();
            rewrite(document, &mut s, view, false);
            open.insert(name.clone(), s);
        }
        let mut closed = Map::new();
        for (name, schema) in schemas {
            let mut s = schema;
            rewrite(document, &mut s, view, true);
            closed.insert(name, s);
        }
        if let Some(Value::Object(c)) = doc.pointer_mut("/components") {
            c.insert("schemas".into(), Value::Object(closed));
            c.insert("x-meshward-open-schemas".into(), Value::Object(open));
        }
    }
    if let Some(Value::Object(components)) = doc.get_mut("components") {
        for key in ["requestBodies", "responses"] {
            if let Some(Value::Object(items)) = components.get_mut(key) {
                for item in items.values_mut() {
                    rewrite_content(document, item, view);
                }
            }
        }
        if let Some(Value::Object(params)) = components.get_mut("parameters") {
            for p in params.values_mut() {
                if let Some(schema) = p.get_mut("schema") {
                    rewrite(document, schema, view, true);
                }
            }
        }
    }
    if let Some(paths) = doc.get_mut("paths") {
        rewrite_operations(document, paths, view);
    }
    doc
}

/// Rewrites the schemas of a request body or response object (`content.<media>.schema`).
fn rewrite_content(document: &Value, holder: &mut Value, view: &View) {
    if let Some(Value::Object(content)) = holder.get_mut("content") {
        for media in content.values_mut() {
            if let Some(schema) = media.get_mut("schema") {
                rewrite(document, schema, view, true);
            }
        }
    }
}

fn rewrite_operations(document: &Value, paths: &mut Value, view: &View) {
    let Value::Object(paths) = paths else { return };
    for item in paths.values_mut() {
        let Value::Object(item) = item else { continue };
        for (key, op) in item.iter_mut() {
            if key == "parameters" {
                rewrite_parameters(document, op, view);
                continue;
            }
            let Value::Object(op) = op else { continue };
            if let Some(params) = op.get_mut("parameters") {
                rewrite_parameters(document, params, view);
            }
            if let Some(body) = op.get_mut("requestBody") {
                rewrite_content(document, body, view);
            }
            if let Some(Value::Object(responses)) = op.get_mut("responses") {
                for response in responses.values_mut() {
                    rewrite_content(document, response, view);
                }
            }
        }
    }
}

fn rewrite_parameters(document: &Value, params: &mut Value, view: &View) {
    let Value::Array(params) = params else { return };
    for p in params {
        if let Some(schema) = p.get_mut("schema") {
            rewrite(document, schema, view, true);
        }
    }
}

/// Rewrites one schema object and everything below it. `closed_here`: this schema is not a
/// composition member, so it may be closed.
fn rewrite(document: &Value, schema: &mut Value, view: &View, closed_here: bool) {
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
    integer_range(map);
    exclusive_bounds(map, "exclusiveMinimum", "minimum");
    exclusive_bounds(map, "exclusiveMaximum", "maximum");
    let hidden: Vec<String> = match map.get("properties") {
        Some(Value::Object(props)) => props.iter().filter(|(_, p)| view.hides(document, p)).map(|(k, _)| k.clone()).collect(),
        _ => Vec::new(),
    };
    let scoped: Vec<String> = match map.get("properties") {
        Some(Value::Object(props)) if view.optional_scoped => props
            .iter()
            .filter(|(_, p)| ref_chain(document, p).any(|s| s.get(crate::response::REQUIRED_SCOPE).is_some()))
            .map(|(k, _)| k.clone())
            .collect(),
        _ => Vec::new(),
    };
    if !scoped.is_empty() {
        if let Some(Value::Array(required)) = map.get_mut("required") {
            required.retain(|r| !r.as_str().is_some_and(|r| scoped.iter().any(|n| n == r)));
        }
    }
    if !hidden.is_empty() {
        if let Some(Value::Object(props)) = map.get_mut("properties") {
            for name in &hidden {
                props.insert(name.clone(), Value::Bool(false));
            }
        }
        if let Some(Value::Array(required)) = map.get_mut("required") {
            required.retain(|r| !r.as_str().is_some_and(|r| hidden.iter().any(|n| n == r)));
        }
    }
    for key in SCHEMA_KEYWORDS {
        if let Some(sub) = map.get_mut(key) {
            rewrite(document, sub, view, true);
        }
    }
    for key in MAP_KEYWORDS {
        if let Some(Value::Object(subs)) = map.get_mut(key) {
            for sub in subs.values_mut() {
                rewrite(document, sub, view, true);
            }
        }
    }
    for key in LIST_KEYWORDS {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            let member = key != "prefixItems";
            for sub in subs {
                rewrite(document, sub, view, !member);
            }
        }
    }
    let is_object = map.get("type") == Some(&Value::String("object".into()))
        || map.get("type").and_then(Value::as_array).is_some_and(|t| t.contains(&Value::String("object".into())))
        || map.contains_key("properties")
        || LIST_KEYWORDS[..3].iter().any(|k| map.contains_key(*k));
    if view.close && closed_here && is_object && !map.contains_key("additionalProperties") && !map.contains_key("unevaluatedProperties") {
        map.insert("unevaluatedProperties".into(), Value::Bool(false));
    }
}

/// The bounds a `format: int32` / `int64` integer can hold, kept where the schema is stricter.
fn integer_range(map: &mut Map<String, Value>) {
    let (min, max): (i64, i64) = match map.get("format").and_then(Value::as_str) {
        Some("int32") => (i32::MIN.into(), i32::MAX.into()),
        Some("int64") => (i64::MIN, i64::MAX),
        _ => return,
    };
    let looser = |bound: Option<&Value>, limit: i64, lower: bool| match bound.and_then(Value::as_number) {
        None => true,
        Some(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(v), _, _) => if lower { v < limit } else { v > limit },
            (None, Some(_), _) => !lower,
            (None, None, Some(v)) => if lower { v < limit as f64 } else { v > limit as f64 },
            (None, None, None) => true,
        },
    };
    if looser(map.get("minimum"), min, true) {
        map.insert("minimum".into(), Value::from(min));
    }
    if looser(map.get("maximum"), max, false) {
        map.insert("maximum".into(), Value::from(max));
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
                    walk(doc, v, &format!("{at}/{}", escape(k)))?;
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
