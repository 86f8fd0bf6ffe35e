//! JSON Schema 2020-12 (already accepted by the jsonschema crate) lowered to the table of
//! [`Node`]s the module runs, and the documents' schemas as written to [`TagNode`]s.
//!
//! Each schema is lowered once per view and pointer; `$ref`s become indexes, so recursion is a
//! loop in the table. What the module cannot run the way the reference does is refused here,
//! naming the schema: `$dynamicRef` and its anchors, `$id` inside a document, and patterns the
//! module's regex engine (regex-lite: no Unicode classes, no look-around, no back-references)
//! does not take after translation from ECMA-262.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::compile::pointer_of_fragment;
use crate::validator::escape;
use crate::program::{types, Format, Node, NodeId, TagNode};

/// Keywords that change what `$ref` means or where it points: not run by the module.
const REFUSED: [&str; 5] = ["$dynamicRef", "$dynamicAnchor", "$recursiveRef", "$recursiveAnchor", "$anchor"];

/// Schemas of several views lowered into one table.
pub struct Lowering<'a> {
    documents: Vec<&'a Value>,
    memo: HashMap<(usize, String), NodeId>,
    nodes: Vec<Node>,
    patterns: Vec<String>,
    pattern_ids: HashMap<String, u32>,
    /// How many nodes (the first ones) are checked for in-place cycles.
    checked: usize,
}

impl<'a> Lowering<'a> {
    pub fn new(documents: Vec<&'a Value>) -> Lowering<'a> {
        Lowering { documents, memo: HashMap::new(), nodes: Vec::new(), patterns: Vec::new(), pattern_ids: HashMap::new(), checked: 0 }
    }

    pub fn document(&self, view: usize) -> &'a Value {
        self.documents.get(view).copied().unwrap_or(&Value::Null)
    }

    /// The table and its patterns.
    pub fn finish(self) -> (Vec<Node>, Vec<String>) {
        (self.nodes, self.patterns)
    }

    /// The schema at `pointer` in view `view`, lowered (once). A schema that can enter itself
    /// without reading deeper into the value (`$ref` to itself, directly or through `allOf`,
    /// ...) is refused: it has no verdict to give.
    pub fn lower(&mut self, view: usize, pointer: &str) -> Result<NodeId, String> {
        let root = self.lower_at(view, pointer)?;
        if let Some(looped) = self.in_place_cycle() {
            let at = self.memo.iter().find(|(_, id)| **id == looped).map_or(pointer, |((_, p), _)| p.as_str());
            return Err(format!("schema at #{at} refers back to itself without reading deeper into the value"));
        }
        Ok(root)
    }

    /// A node on a cycle of in-place applicators among the nodes lowered since the last check.
    /// Lowering appends, and a node already checked only names nodes lowered before it, so a
    /// new cycle lies among the new nodes alone.
    fn in_place_cycle(&mut self) -> Option<NodeId> {
        // 0: unvisited, 1: on the path, 2: done (the nodes checked before count as done).
        let mut state = vec![2u8; self.checked];
        state.resize(self.nodes.len(), 0);
        self.checked = self.nodes.len();
        for start in 0..state.len() {
            if state[start] != 0 {
                continue;
            }
            state[start] = 1;
            let mut stack: Vec<(usize, Vec<NodeId>)> = vec![(start, self.in_place(start))];
            while let Some((node, mut next)) = stack.pop() {
                let Some(child) = next.pop() else {
                    state[node] = 2;
                    continue;
                };
                stack.push((node, next));
                let child = child as usize;
                match state.get(child) {
                    Some(1) => return NodeId::try_from(child).ok(),
                    Some(0) => {
                        state[child] = 1;
                        stack.push((child, self.in_place(child)));
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// The schemas a node applies to the same value.
    fn in_place(&self, id: usize) -> Vec<NodeId> {
        let Some(n) = self.nodes.get(id) else { return Vec::new() };
        [n.reference, n.not, n.condition, n.then, n.otherwise]
            .into_iter()
            .flatten()
            .chain(n.all_of.iter().copied())
            .chain(n.any_of.iter().copied())
            .chain(n.one_of.iter().copied())
            .chain(n.dependent_schemas.iter().map(|(_, s)| *s))
            .collect()
    }

    fn lower_at(&mut self, view: usize, pointer: &str) -> Result<NodeId, String> {
        let key = (view, pointer.to_string());
        if let Some(id) = self.memo.get(&key) {
            return Ok(*id);
        }
        let document = self.document(view);
        let schema = document.pointer(pointer).ok_or_else(|| format!("schema at #{pointer} does not resolve"))?;
        let id = NodeId::try_from(self.nodes.len()).map_err(|_| "the contract has too many schemas".to_string())?;
        self.nodes.push(Node::default());
        self.memo.insert(key, id);
        let node = self.node(view, pointer, schema)?;
        self.nodes[id as usize] = node;
        Ok(id)
    }

    fn sub(&mut self, view: usize, pointer: &str, key: &str) -> Result<NodeId, String> {
        self.lower_at(view, &format!("{pointer}/{}", escape(key)))
    }

    fn list(&mut self, view: usize, pointer: &str, key: &str, len: usize) -> Result<Vec<NodeId>, String> {
        (0..len).map(|i| self.lower_at(view, &format!("{pointer}/{key}/{i}"))).collect()
    }

    fn pattern(&mut self, pointer: &str, ecma: &str) -> Result<u32, String> {
        if let Some(id) = self.pattern_ids.get(ecma) {
            return Ok(*id);
        }
        let translated = translate_pattern(ecma).map_err(|e| format!("schema at #{pointer}: pattern {ecma:?} {e}"))?;
        let id = u32::try_from(self.patterns.len()).map_err(|_| "the contract has too many patterns".to_string())?;
        self.patterns.push(translated);
        self.pattern_ids.insert(ecma.to_string(), id);
        Ok(id)
    }

    fn node(&mut self, view: usize, pointer: &str, schema: &Value) -> Result<Node, String> {
        let map = match schema {
            Value::Bool(b) => return Ok(Node { always: Some(*b), ..Node::default() }),
            Value::Object(map) => map,
            _ => return Err(format!("schema at #{pointer} is not a schema")),
        };
        if let Some(k) = REFUSED.iter().find(|k| map.contains_key(**k)) {
            return Err(format!("schema at #{pointer}: `{k}` is not supported (the module resolves `$ref` to local JSON pointers only)"));
        }
        if map.contains_key("$id") {
            return Err(format!("schema at #{pointer}: `$id` is not supported inside an OpenAPI document (refer with `$ref: '#/...'`)"));
        }
        let mut node = Node::default();
        let count = |k: &str| map.get(k).and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64)));
        let number = |k: &str| map.get(k).and_then(Value::as_number).cloned();
        let strings = |k: &str| -> Vec<String> { map.get(k).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default() };
        if let Some(Value::String(r)) = map.get("$ref") {
            let target = r.strip_prefix('#').ok_or_else(|| format!("schema at #{pointer}: $ref {r:?} is not local to the document"))?;
            node.reference = Some(self.lower_at(view, &pointer_of_fragment(target))?);
        }
        node.types = match map.get("type") {
            Some(Value::String(t)) => type_bit(t),
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).map(type_bit).fold(0, |a, b| a | b),
            _ => 0,
        };
        node.one_of_values = map.get("enum").and_then(Value::as_array).cloned();
        node.constant = map.get("const").cloned();
        node.minimum = number("minimum");
        node.maximum = number("maximum");
        node.exclusive_minimum = number("exclusiveMinimum");
        node.exclusive_maximum = number("exclusiveMaximum");
        node.multiple_of = number("multipleOf");
        node.min_length = count("minLength");
        node.max_length = count("maxLength");
        if let Some(Value::String(p)) = map.get("pattern") {
            node.pattern = Some(self.pattern(pointer, p)?);
        }
        node.format = map.get("format").and_then(Value::as_str).and_then(Format::named);
        node.min_items = count("minItems");
        node.max_items = count("maxItems");
        node.unique_items = map.get("uniqueItems") == Some(&Value::Bool(true));
        if let Some(Value::Array(items)) = map.get("prefixItems") {
            node.prefix_items = self.list(view, pointer, "prefixItems", items.len())?;
        }
        node.items = self.optional(view, pointer, map, "items")?;
        node.contains = self.optional(view, pointer, map, "contains")?;
        node.min_contains = count("minContains");
        node.max_contains = count("maxContains");
        node.required = strings("required");
        if let Some(Value::Object(props)) = map.get("properties") {
            let mut lowered = Vec::with_capacity(props.len());
            for name in props.keys() {
                lowered.push((name.clone(), self.lower_at(view, &format!("{pointer}/properties/{}", escape(name)))?));
            }
            lowered.sort_by(|a, b| a.0.cmp(&b.0));
            node.properties = lowered;
        }
        if let Some(Value::Object(props)) = map.get("patternProperties") {
            for name in props.keys() {
                let regex = self.pattern(pointer, name)?;
                node.pattern_properties.push((regex, self.lower_at(view, &format!("{pointer}/patternProperties/{}", escape(name)))?));
            }
        }
        node.additional_properties = self.optional(view, pointer, map, "additionalProperties")?;
        node.property_names = self.optional(view, pointer, map, "propertyNames")?;
        node.min_properties = count("minProperties");
        node.max_properties = count("maxProperties");
        if let Some(Value::Object(deps)) = map.get("dependentRequired") {
            node.dependent_required = deps
                .iter()
                .map(|(k, v)| (k.clone(), v.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()))
                .collect();
        }
        if let Some(Value::Object(deps)) = map.get("dependentSchemas") {
            for name in deps.keys() {
                node.dependent_schemas.push((name.clone(), self.lower_at(view, &format!("{pointer}/dependentSchemas/{}", escape(name)))?));
            }
        }
        for (key, out) in [("allOf", &mut node.all_of), ("anyOf", &mut node.any_of), ("oneOf", &mut node.one_of)] {
            if let Some(Value::Array(members)) = map.get(key) {
                *out = self.list(view, pointer, key, members.len())?;
            }
        }
        node.not = self.optional(view, pointer, map, "not")?;
        node.condition = self.optional(view, pointer, map, "if")?;
        if node.condition.is_some() {
            node.then = self.optional(view, pointer, map, "then")?;
            node.otherwise = self.optional(view, pointer, map, "else")?;
        }
        node.unevaluated_properties = self.optional(view, pointer, map, "unevaluatedProperties")?;
        node.unevaluated_items = self.optional(view, pointer, map, "unevaluatedItems")?;
        Ok(node)
    }

    fn optional(&mut self, view: usize, pointer: &str, map: &Map<String, Value>, key: &str) -> Result<Option<NodeId>, String> {
        match map.get(key) {
            Some(Value::Object(_) | Value::Bool(_)) => self.sub(view, pointer, key).map(Some),
            _ => Ok(None),
        }
    }
}

fn type_bit(name: &str) -> u8 {
    match name {
        "null" => types::NULL,
        "boolean" => types::BOOLEAN,
        "object" => types::OBJECT,
        "array" => types::ARRAY,
        "number" => types::NUMBER,
        "string" => types::STRING,
        "integer" => types::INTEGER,
        _ => 0,
    }
}

/// An ECMA-262 pattern as the module's regex engine runs it: translated as the jsonschema
/// crate translates it (`\d` → `[0-9]`, `\w`, `\s` and `.` to ECMA's sets), then compiled by
/// regex-lite, which has no Unicode classes (`\p{..}`), look-around or back-references.
pub fn translate_pattern(ecma: &str) -> Result<String, String> {
    let translated = jsonschema_regex::to_rust_regex(ecma).map_err(|()| "is not an ECMA-262 regular expression".to_string())?;
    // The full engine takes it: look-around and back-references fail here as in the reference.
    regex::Regex::new(&translated).map_err(|_| "uses look-around or back-references, which the module's regex engine does not run".to_string())?;
    regex_lite::Regex::new(&translated).map_err(|e| format!("uses syntax the module's regex engine does not run (Unicode classes such as \\p{{L}}): {e}"))?;
    Ok(translated.into_owned())
}

/// The document's schemas as written, lowered for the response checks' tag walk.
pub struct TagLowering<'a> {
    document: &'a Value,
    memo: HashMap<String, NodeId>,
    nodes: Vec<TagNode>,
}

impl<'a> TagLowering<'a> {
    pub fn new(document: &'a Value) -> TagLowering<'a> {
        TagLowering { document, memo: HashMap::new(), nodes: Vec::new() }
    }

    pub fn finish(self) -> Vec<TagNode> {
        self.nodes
    }

    /// The schema at `pointer`, lowered (once). A `$ref` that does not resolve is an empty node.
    pub fn lower(&mut self, pointer: &str) -> Result<NodeId, String> {
        if let Some(id) = self.memo.get(pointer) {
            return Ok(*id);
        }
        let id = NodeId::try_from(self.nodes.len()).map_err(|_| "the contract has too many schemas".to_string())?;
        self.nodes.push(TagNode::default());
        self.memo.insert(pointer.to_string(), id);
        let Some(Value::Object(map)) = self.document.pointer(pointer) else { return Ok(id) };
        let mut node = TagNode {
            write_only: map.get("writeOnly") == Some(&Value::Bool(true)),
            data_class: map.get("x-data-class").and_then(Value::as_str).map(str::to_string),
            required_scope: map.get(crate::response::REQUIRED_SCOPE).cloned(),
            ..TagNode::default()
        };
        if let Some(target) = map.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
            node.reference = Some(self.lower(&pointer_of_fragment(target))?);
        }
        if let Some(Value::Object(props)) = map.get("properties") {
            let mut lowered = Vec::new();
            for name in props.keys() {
                lowered.push((name.clone(), self.lower(&format!("{pointer}/properties/{}", escape(name)))?));
            }
            lowered.sort_by(|a, b| a.0.cmp(&b.0));
            node.properties = lowered;
        }
        if let Some(Value::Object(_)) = map.get("additionalProperties") {
            node.additional_properties = Some(self.lower(&format!("{pointer}/additionalProperties"))?);
        }
        if let Some(Value::Object(_)) = map.get("items") {
            node.items = Some(self.lower(&format!("{pointer}/items"))?);
        }
        if let Some(Value::Array(items)) = map.get("prefixItems") {
            for i in 0..items.len() {
                node.prefix_items.push(self.lower(&format!("{pointer}/prefixItems/{i}"))?);
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(Value::Array(members)) = map.get(key) {
                for i in 0..members.len() {
                    node.members.push(self.lower(&format!("{pointer}/{key}/{i}"))?);
                }
            }
        }
        self.nodes[id as usize] = node;
        Ok(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patterns_are_translated_from_ecma_or_refused_with_the_reason() {
        // (pattern, Ok(what the module runs) or a word of the refusal)
        let rows: &[(&str, Result<&str, &str>)] = &[
            ("^[a-z0-9-]{1,32}$", Ok("^[a-z0-9-]{1,32}$")),
            ("^\\d+$", Ok("^[0-9]+$")),
            ("\\w", Ok("[A-Za-z0-9_]")),
            ("^.$", Ok("^[^\\n\\r\\x{2028}\\x{2029}]$")),
            ("\\p{L}", Err("Unicode classes")),
            ("a(?=b)", Err("look-around")),
            ("(a)\\1", Err("look-around or back-references")),
            ("[", Err("not an ECMA-262")),
        ];
        for (ecma, want) in rows {
            match (translate_pattern(ecma), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{ecma}"),
                (Err(got), Err(word)) => assert!(got.contains(word), "{ecma}: {got}"),
                (got, want) => panic!("{ecma}: got {got:?}, want {want:?}"),
            }
        }
    }

    /// ECMA-262 reads `\s` as Unicode white space and `\d`, `\w`, `\b` as ASCII; the module runs
    /// them so. (`\b` is the one place the jsonschema crate answers otherwise: it reads it with
    /// Unicode word characters, so `\bé` matches "é" there and not here, nor in ECMA-262.)
    #[test]
    fn the_module_reads_patterns_as_ecma_262_does() {
        let run = |ecma: &str, text: &str| regex_lite::Regex::new(&translate_pattern(ecma).unwrap()).unwrap().is_match(text);
        assert!(run("^\\s$", "\u{a0}") && run("^\\s$", "\u{feff}") && !run("^\\s$", "\u{85}"));
        assert!(!run("^\\d$", "٠") && !run("^\\w$", "é") && !run(".", "\u{2028}"));
        assert!(!run("\\bé", "é"), "ASCII word boundaries, as ECMA-262");
    }

    #[test]
    fn what_the_module_cannot_resolve_is_refused_naming_the_schema() {
        let doc = json!({"a": {"$dynamicRef": "#x"}, "b": {"$id": "https://x/y"}, "c": {"allOf": [{"$ref": "#/c"}]}, "d": {"items": {"$ref": "#/d"}}});
        let refused = |pointer: &str| Lowering::new(vec![&doc]).lower(0, pointer).err().unwrap_or_default();
        assert!(refused("/a").contains("#/a: `$dynamicRef` is not supported"));
        assert!(refused("/b").contains("`$id` is not supported"));
        assert!(refused("/c").contains("refers back to itself without reading deeper"));
        assert!(Lowering::new(vec![&doc]).lower(0, "/d").is_ok(), "recursion through items reads deeper: allowed");
    }
}
