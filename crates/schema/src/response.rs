//! Response checks (opt-in): which fields of an answer may leave the sidecar, and does the
//! answer match the contract.
//!
//! A field is tagged by the schema that declares it: `writeOnly: true` (a password the client
//! may set but never read back), `x-data-class: <class>` (`internal`, `pii`, ...), or
//! `x-required-scope: <scope>` (or a list: every scope in it), a tag only for a caller whose
//! verified token lacks the scope (no token: every such field). The configuration says per tag
//! whether the field is stripped from the answer or the whole answer is blocked. Tags are found
//! by walking the answer alongside its schema ([`TagNode`]s `meshward compile` made of the
//! document as written), through `$ref`, `allOf` / `anyOf` / `oneOf`, `items` and
//! `additionalProperties`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::program::{NodeId, TagNode};
use crate::validator::escape;
use crate::SchemaError;

/// How deep the walk follows nested values and schema compositions.
const MAX_WALK_DEPTH: usize = 64;
/// How many `$ref` hops are followed before giving up on a chain.
const MAX_REF_HOPS: usize = 16;

/// What happens to a tagged field in an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldAction {
    /// The field is removed; the rest of the answer goes on.
    Strip,
    /// The answer is not passed on.
    Block,
}

/// The tags the response checks act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRules {
    pub write_only: FieldAction,
    /// `x-data-class` value → action; classes not listed pass.
    pub classes: BTreeMap<String, FieldAction>,
    /// For a field whose `x-required-scope` the caller lacks.
    pub required_scope: FieldAction,
}

/// Key of the scope tag on a property schema.
pub const REQUIRED_SCOPE: &str = "x-required-scope";

/// The answers' schemas as written, checked whole at load.
#[derive(Debug, Default)]
pub struct TagTable {
    nodes: Vec<TagNode>,
}

impl TagTable {
    pub fn new(nodes: Vec<TagNode>) -> Result<TagTable, String> {
        for (i, node) in nodes.iter().enumerate() {
            if let Some(bad) = node.children().find(|c| *c as usize >= nodes.len()) {
                return Err(format!("[{i}] names {bad}, past the table's {}", nodes.len()));
            }
        }
        Ok(TagTable { nodes })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn get(&self, id: NodeId) -> Option<&TagNode> {
        self.nodes.get(id as usize)
    }

    /// The schema and every schema its `$ref` chain leads to, at most [`MAX_REF_HOPS`].
    fn ref_chain(&self, id: NodeId) -> impl Iterator<Item = &TagNode> + '_ {
        let mut next = self.get(id);
        let mut hops = 0;
        std::iter::from_fn(move || {
            let current = next.take()?;
            hops += 1;
            if hops <= MAX_REF_HOPS {
                next = current.reference.and_then(|r| self.get(r));
            }
            Some(current)
        })
    }

    /// The id a (chain of) `$ref` finally names; the id itself when it is no reference.
    fn resolve(&self, id: NodeId) -> NodeId {
        let mut at = id;
        for _ in 0..MAX_REF_HOPS {
            match self.get(at).and_then(|n| n.reference) {
                Some(r) => at = r,
                None => break,
            }
        }
        at
    }
}

/// Whether `scopes` hold what a `x-required-scope` value asks for (a scope, or all of a list).
/// A value of another shape is never held: the field is treated as tagged.
fn holds(required: &Value, scopes: &[String]) -> bool {
    let has = |s: &Value| s.as_str().is_some_and(|s| scopes.iter().any(|g| g == s));
    match required {
        Value::Array(all) => !all.is_empty() && all.iter().all(has),
        one => has(one),
    }
}

impl FieldRules {
    /// The action for a property schema, for a caller granted `scopes`, and the tag that
    /// caused it; `Block` wins over `Strip`.
    pub fn action(&self, table: &TagTable, property: NodeId, scopes: &[String]) -> Option<(FieldAction, String)> {
        let mut found: Option<(FieldAction, String)> = None;
        for s in table.ref_chain(property) {
            let mut tags = Vec::new();
            if s.write_only {
                tags.push((self.write_only, "writeOnly".to_string()));
            }
            if let Some(class) = &s.data_class {
                if let Some(action) = self.classes.get(class) {
                    tags.push((*action, class.clone()));
                }
            }
            if let Some(required) = &s.required_scope {
                if !holds(required, scopes) {
                    tags.push((self.required_scope, REQUIRED_SCOPE.to_string()));
                }
            }
            for (action, tag) in tags {
                if action == FieldAction::Block {
                    return Some((action, tag));
                }
                found.get_or_insert((action, tag));
            }
        }
        found
    }

    /// Classes whose fields are stripped, so the response view can hide them.
    pub fn stripped_classes(&self) -> Vec<String> {
        self.classes.iter().filter(|(_, a)| **a == FieldAction::Strip).map(|(c, _)| c.clone()).collect()
    }

    /// Can an answer of this schema carry a tagged field at all (for some caller)? Decided once
    /// per operation, so answers that cannot are not buffered.
    pub fn may_tag(&self, table: &TagTable, schema: NodeId) -> bool {
        let mut seen = Vec::new();
        self.walk_schema(table, schema, &mut seen, 0)
    }

    fn walk_schema(&self, table: &TagTable, schema: NodeId, seen: &mut Vec<NodeId>, depth: usize) -> bool {
        if depth > MAX_WALK_DEPTH {
            return false;
        }
        if let Some(target) = table.get(schema).and_then(|n| n.reference) {
            if seen.contains(&target) {
                return false;
            }
            seen.push(target);
        }
        let Some(node) = table.get(table.resolve(schema)) else { return false };
        for &(_, p) in &node.properties {
            if self.action(table, p, &[]).is_some() || self.walk_schema(table, p, seen, depth + 1) {
                return true;
            }
        }
        for sub in [node.items, node.additional_properties].into_iter().flatten() {
            if self.action(table, sub, &[]).is_some() || self.walk_schema(table, sub, seen, depth + 1) {
                return true;
            }
        }
        node.members.iter().chain(&node.prefix_items).any(|&sub| self.walk_schema(table, sub, seen, depth + 1))
    }
}

/// The schema and its composition members (`allOf` / `anyOf` / `oneOf`), references resolved.
fn flatten(table: &TagTable, schema: NodeId, out: &mut Vec<NodeId>, depth: usize) {
    if depth > MAX_WALK_DEPTH {
        return;
    }
    let schema = table.resolve(schema);
    out.push(schema);
    if let Some(node) = table.get(schema) {
        for &m in &node.members {
            flatten(table, m, out, depth + 1);
        }
    }
}

/// Removes the stripped fields from `answer` for a caller granted `scopes`; `Ok(true)` when
/// something was removed. A field whose action is `Block` refuses the whole answer, naming where
/// it is and its tag.
pub fn cut_fields(table: &TagTable, schema: NodeId, answer: &mut Value, rules: &FieldRules, scopes: &[String]) -> Result<bool, SchemaError> {
    cut(table, &[schema], answer, &Cut { rules, scopes }, "/body", 0)
}

/// What decides a cut: the rules, and the scopes of the caller the answer goes to.
struct Cut<'a> {
    rules: &'a FieldRules,
    scopes: &'a [String],
}

fn cut(table: &TagTable, schemas: &[NodeId], value: &mut Value, how: &Cut<'_>, at: &str, depth: usize) -> Result<bool, SchemaError> {
    if depth > MAX_WALK_DEPTH || schemas.is_empty() {
        return Ok(false);
    }
    let mut flat = Vec::new();
    for &s in schemas {
        flatten(table, s, &mut flat, depth);
    }
    let nodes: Vec<&TagNode> = flat.iter().filter_map(|&s| table.get(s)).collect();
    let mut changed = false;
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let mut subs: Vec<NodeId> = nodes
                    .iter()
                    .filter_map(|n| n.properties.binary_search_by(|(name, _)| name.as_str().cmp(&key)).ok().map(|i| n.properties[i].1))
                    .collect();
                if subs.is_empty() {
                    subs = nodes.iter().filter_map(|n| n.additional_properties).collect();
                }
                let here = format!("{at}/{}", escape(&key));
                let mut strip = false;
                for &sub in &subs {
                    match how.rules.action(table, sub, how.scopes) {
                        Some((FieldAction::Block, tag)) => return Err(SchemaError::BlockedField { location: here, tag }),
                        Some((FieldAction::Strip, _)) => strip = true,
                        None => {}
                    }
                }
                if strip {
                    map.remove(&key);
                    changed = true;
                } else if let Some(inner) = map.get_mut(&key) {
                    changed |= cut(table, &subs, inner, how, &here, depth + 1)?;
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let subs: Vec<NodeId> = nodes.iter().filter_map(|n| n.prefix_items.get(i).copied().or(n.items)).collect();
                changed |= cut(table, &subs, item, how, &format!("{at}/{i}"), depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(changed)
}

#[cfg(all(test, feature = "compile"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The schema lowered as `meshward compile` lowers it, with the document it refers into.
    fn lowered(doc: &Value, schema: &Value) -> (TagTable, NodeId) {
        let mut d = doc.clone();
        d["x-under-test"] = schema.clone();
        let mut lowering = crate::lower::TagLowering::new(&d);
        let id = lowering.lower("/x-under-test").unwrap();
        (TagTable::new(lowering.finish()).unwrap(), id)
    }

    fn may_tag(rules: &FieldRules, doc: &Value, schema: &Value) -> bool {
        let (table, id) = lowered(doc, schema);
        rules.may_tag(&table, id)
    }

    fn doc() -> Value {
        json!({"components": {"schemas": {
            "Email": {"type": "string", "x-data-class": "pii"},
            "User": {"type": "object", "properties": {
                "id": {"type": "integer"},
                "email": {"$ref": "#/components/schemas/Email"},
                "password": {"type": "string", "writeOnly": true},
                "notes": {"type": "string", "x-data-class": "internal"},
                "friends": {"type": "array", "items": {"$ref": "#/components/schemas/User"}}
            }},
            "Admin": {"allOf": [{"$ref": "#/components/schemas/User"}, {"properties": {"ssn": {"type": "string", "x-data-class": "secret"}}}]},
            "Bag": {"type": "object", "additionalProperties": {"type": "string", "x-data-class": "internal"}}
        }}})
    }

    /// (case, schema, answer, rules, the answer after cutting or the error).
    type Case<'a> = (&'a str, &'a Value, Value, &'a FieldRules, Result<Value, SchemaError>);

    fn rules(classes: &[(&str, FieldAction)]) -> FieldRules {
        FieldRules { write_only: FieldAction::Strip, classes: classes.iter().map(|(c, a)| (c.to_string(), *a)).collect(), required_scope: FieldAction::Strip }
    }

    #[test]
    fn cuts_tagged_fields_through_refs_compositions_and_arrays() {
        let strip_all = rules(&[("pii", FieldAction::Strip), ("internal", FieldAction::Strip), ("secret", FieldAction::Strip)]);
        let block_secret = rules(&[("internal", FieldAction::Strip), ("secret", FieldAction::Block)]);
        let none = rules(&[]);
        let bag = json!({"$ref": "#/components/schemas/Bag"});
        let user = json!({"$ref": "#/components/schemas/User"});
        let admin = json!({"$ref": "#/components/schemas/Admin"});
        let users = json!({"type": "array", "items": {"$ref": "#/components/schemas/User"}});
        let block_pii = rules(&[("pii", FieldAction::Block)]);
        let blocked = |location: &str, tag: &str| Err(SchemaError::BlockedField { location: location.into(), tag: tag.into() });
        let cases: Vec<Case> = vec![
            (
                "ref'd pii, inline internal, writeOnly",
                &user,
                json!({"id": 1, "email": "a@b", "password": "x", "notes": "n", "extra": 1}),
                &strip_all,
                Ok(json!({"id": 1, "extra": 1})),
            ),
            ("nested array of refs", &user, json!({"friends": [{"id": 2, "email": "c@d"}, {"id": 3}]}), &strip_all, Ok(json!({"friends": [{"id": 2}, {"id": 3}]}))),
            ("allOf members", &admin, json!({"id": 1, "ssn": "123", "notes": "n"}), &strip_all, Ok(json!({"id": 1}))),
            ("block wins", &admin, json!({"id": 1, "ssn": "123"}), &block_secret, blocked("/body/ssn", "secret")),
            ("no tagged field present", &user, json!({"friends": [{"id": 2}]}), &block_pii, Ok(json!({"friends": [{"id": 2}]}))),
            ("block location in an array", &users, json!([{"id": 2}, {"email": "e@f"}]), &block_pii, blocked("/body/1/email", "pii")),
            ("additionalProperties", &bag, json!({"a": "1", "b": "2"}), &strip_all, Ok(json!({}))),
            ("unlisted classes pass; writeOnly still stripped", &user, json!({"email": "a@b", "password": "p"}), &none, Ok(json!({"email": "a@b"}))),
            ("not an object", &user, json!("text"), &strip_all, Ok(json!("text"))),
        ];
        for (name, schema, mut answer, rules, want) in cases {
            let (table, id) = lowered(&doc(), schema);
            let got = cut_fields(&table, id, &mut answer, rules, &[]).map(|_| answer);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn may_tag_follows_refs_and_stops_on_cycles() {
        let d = doc();
        let r = rules(&[("secret", FieldAction::Strip)]);
        assert!(may_tag(&r, &d, &json!({"$ref": "#/components/schemas/Admin"})));
        let no_write_only = FieldRules { write_only: FieldAction::Strip, classes: BTreeMap::new(), required_scope: FieldAction::Strip };
        assert!(may_tag(&no_write_only, &d, &json!({"$ref": "#/components/schemas/User"})));
        assert!(!may_tag(&r, &d, &json!({"$ref": "#/components/schemas/Bag"})));
        assert!(!may_tag(&r, &d, &json!({"type": "object", "properties": {"a": {"type": "string"}}})));
    }

    #[test]
    fn fields_by_the_callers_scopes() {
        let d = json!({"components": {"schemas": {
            "Invoice": {"type": "object", "properties": {
                "id": {"type": "integer"},
                "total": {"type": "number", "x-required-scope": "billing:read"},
                "iban": {"$ref": "#/components/schemas/Iban"},
                "lines": {"type": "array", "items": {"type": "object", "properties": {
                    "sku": {"type": "string"}, "cost": {"type": "number", "x-required-scope": "billing:read"}}}},
                "odd": {"type": "string", "x-required-scope": 7}
            }},
            "Iban": {"type": "string", "x-required-scope": ["billing:read", "billing:pii"]}
        }}});
        let invoice = json!({"$ref": "#/components/schemas/Invoice"});
        let answer = || json!({"id": 1, "total": 9.5, "iban": "DE00", "lines": [{"sku": "a", "cost": 2}], "odd": "x"});
        let strip = rules(&[]);
        let block = FieldRules { required_scope: FieldAction::Block, ..rules(&[]) };
        let scopes = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        // (caller's scopes, rules, the answer that leaves)
        let cases: Vec<(Vec<String>, &FieldRules, Result<Value, SchemaError>)> = vec![
            (scopes(&[]), &strip, Ok(json!({"id": 1, "lines": [{"sku": "a"}]}))),
            (scopes(&["billing:read"]), &strip, Ok(json!({"id": 1, "total": 9.5, "lines": [{"sku": "a", "cost": 2}]}))),
            (scopes(&["billing:read", "billing:pii"]), &strip, Ok(json!({"id": 1, "total": 9.5, "iban": "DE00", "lines": [{"sku": "a", "cost": 2}]}))),
            (scopes(&["billing:pii"]), &strip, Ok(json!({"id": 1, "lines": [{"sku": "a"}]}))),
            (scopes(&[]), &block, Err(SchemaError::BlockedField { location: "/body/iban".into(), tag: "x-required-scope".into() })),
        ];
        for (granted, rules, want) in cases {
            let mut got = answer();
            let (table, id) = lowered(&d, &invoice);
            let result = cut_fields(&table, id, &mut got, rules, &granted).map(|_| got);
            assert_eq!(result, want, "{granted:?}");
        }
        assert!(may_tag(&strip, &d, &invoice), "a scoped field is a tag for some caller");
    }
}
