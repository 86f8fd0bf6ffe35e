//! A contract as the module runs it: what `meshward compile` makes of an OpenAPI document.
//!
//! Every schema the contract uses (rewritten for its view: request, closed request, answer) is a
//! [`Node`] in one flat table; subschemas, `$ref`s and recursion are indexes into it. Patterns are
//! regexes already translated from ECMA-262 by the CLI. Nothing here is parsed from OpenAPI or
//! compiled from JSON Schema at load: the module checks the table whole (every index in range,
//! every pattern compiles, the version is its own) and refuses it whole otherwise.

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// The contract format this module runs. A contract of another version is refused whole:
/// compile it with the `meshward` of the same release as the module.
pub const CONTRACT_VERSION: u32 = 1;

/// A node's index in the table.
pub type NodeId = u32;

/// JSON types as bits of [`Node::types`].
pub mod types {
    pub const NULL: u8 = 1;
    pub const BOOLEAN: u8 = 2;
    pub const OBJECT: u8 = 4;
    pub const ARRAY: u8 = 8;
    pub const NUMBER: u8 = 16;
    pub const STRING: u8 = 32;
    pub const INTEGER: u8 = 64;
}

/// The string formats the module asserts; any other `format` is an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Date,
    DateTime,
    Time,
    Duration,
    Email,
    Hostname,
    Ipv4,
    Ipv6,
    Uri,
    UriReference,
    Uuid,
    JsonPointer,
}

impl Format {
    /// The format a `format` value asserts, if the module asserts it.
    pub fn named(name: &str) -> Option<Format> {
        Some(match name {
            "date" => Format::Date,
            "date-time" => Format::DateTime,
            "time" => Format::Time,
            "duration" => Format::Duration,
            "email" => Format::Email,
            "hostname" => Format::Hostname,
            "ipv4" => Format::Ipv4,
            "ipv6" => Format::Ipv6,
            "uri" => Format::Uri,
            "uri-reference" => Format::UriReference,
            "uuid" => Format::Uuid,
            "json-pointer" => Format::JsonPointer,
            _ => return None,
        })
    }
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One JSON Schema 2020-12 schema object (or boolean schema) with its keywords resolved to
/// table indexes. Absent keywords are absent here too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Node {
    /// A boolean schema: `true` passes everything, `false` nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub always: Option<bool>,
    #[serde(rename = "$ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<NodeId>,
    /// Bits of [`types`]; 0: any type.
    #[serde(skip_serializing_if = "is_zero")]
    pub types: u8,
    #[serde(rename = "enum", skip_serializing_if = "Option::is_none")]
    pub one_of_values: Option<Vec<Value>>,
    #[serde(rename = "const", skip_serializing_if = "Option::is_none")]
    pub constant: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimum: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclusive_minimum: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclusive_maximum: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiple_of: Option<Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u64>,
    /// Index into [`Contract::patterns`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_items: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_items: Option<u64>,
    #[serde(skip_serializing_if = "is_false")]
    pub unique_items: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefix_items: Vec<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contains: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_contains: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_contains: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
    /// Sorted by name (looked up by binary search).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<(String, NodeId)>,
    /// (pattern index, schema).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pattern_properties: Vec<(u32, NodeId)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_properties: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub property_names: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_properties: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_properties: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dependent_required: Vec<(String, Vec<String>)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dependent_schemas: Vec<(String, NodeId)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub all_of: Vec<NodeId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<NodeId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not: Option<NodeId>,
    #[serde(rename = "if", skip_serializing_if = "Option::is_none")]
    pub condition: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<NodeId>,
    #[serde(rename = "else", skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unevaluated_properties: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unevaluated_items: Option<NodeId>,
}

impl Node {
    /// Every node index this node names, for the whole-table check at load.
    pub fn children(&self) -> impl Iterator<Item = NodeId> + '_ {
        let one = [
            self.reference,
            self.items,
            self.contains,
            self.additional_properties,
            self.property_names,
            self.not,
            self.condition,
            self.then,
            self.otherwise,
            self.unevaluated_properties,
            self.unevaluated_items,
        ];
        one.into_iter()
            .flatten()
            .chain(self.prefix_items.iter().copied())
            .chain(self.properties.iter().map(|(_, n)| *n))
            .chain(self.pattern_properties.iter().map(|(_, n)| *n))
            .chain(self.dependent_schemas.iter().map(|(_, n)| *n))
            .chain(self.all_of.iter().copied())
            .chain(self.any_of.iter().copied())
            .chain(self.one_of.iter().copied())
    }

    /// Pattern indexes this node names.
    pub fn patterns(&self) -> impl Iterator<Item = u32> + '_ {
        self.pattern.into_iter().chain(self.pattern_properties.iter().map(|(p, _)| *p))
    }
}

/// A schema as the response checks walk it for tagged fields: the structure an answer's fields
/// are found through, and the tags, from the document as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagNode {
    #[serde(rename = "$ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<NodeId>,
    #[serde(skip_serializing_if = "is_false")]
    pub write_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_class: Option<String>,
    /// `x-required-scope` as written (a scope, or a list of scopes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_scope: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<(String, NodeId)>,
    /// Only an object schema (a boolean `additionalProperties` carries no tags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_properties: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<NodeId>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prefix_items: Vec<NodeId>,
    /// `allOf`, `anyOf` and `oneOf` members, in that order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<NodeId>,
}

impl TagNode {
    pub fn children(&self) -> impl Iterator<Item = NodeId> + '_ {
        [self.reference, self.additional_properties, self.items]
            .into_iter()
            .flatten()
            .chain(self.properties.iter().map(|(_, n)| *n))
            .chain(self.prefix_items.iter().copied())
            .chain(self.members.iter().copied())
    }
}
