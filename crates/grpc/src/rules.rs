//! The service's own field rules: buf protovalidate's `(buf.validate.field)` and
//! `(buf.validate.oneof)` annotations, read from the descriptor set once (it carries them when
//! built with `--include_imports`), compiled per message type and checked on every decoded
//! message — nested messages, list items and map entries included.
//!
//! Presence as protovalidate reads it: a field that tracks presence (a message, `optional`, a
//! oneof member) is checked only when set, unless `required`; any other field is checked always
//! (its zero value included) unless `ignore: IGNORE_IF_ZERO_VALUE`. A rule meshward does not
//! implement (CEL, well-known string formats but `uuid`, bytes, durations, timestamps) refuses
//! the configuration, unless `field_rules: enforce_known` leaves it to the service.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use prost_reflect::{DescriptorPool, DynamicMessage, EnumDescriptor, ExtensionDescriptor, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value};
use regex_lite::Regex;
use serde::Deserialize;

/// What the stage does with the descriptor set's field rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldRulesMode {
    /// Every rule, and a rule meshward does not implement refuses the configuration.
    #[default]
    Enforce,
    /// The rules meshward implements; the others are left to the service.
    EnforceKnown,
    Off,
}

/// A message breaks a rule: the field's path inside it (`.item.sku`, `.tags[2]`) and the rule
/// (`string.min_len`, `required`), as protovalidate names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub rule: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ignore {
    Unspecified,
    IfZeroValue,
    Always,
}

/// A number of a rule or a value: integers exactly, floats as floats.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(value: &Value) -> Option<Num> {
        Some(match value {
            Value::I32(n) => Num::Int(i128::from(*n)),
            Value::I64(n) => Num::Int(i128::from(*n)),
            Value::U32(n) => Num::Int(i128::from(*n)),
            Value::U64(n) => Num::Int(i128::from(*n)),
            Value::F32(n) => Num::Float(f64::from(*n)),
            Value::F64(n) => Num::Float(*n),
            _ => return None,
        })
    }

    /// `None` for NaN (which meets no bound) or numbers of two kinds.
    fn cmp(self, other: Num) -> Option<Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (Num::Float(a), Num::Float(b)) => a.partial_cmp(&b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct NumberRules {
    kind: &'static str,
    constant: Option<Num>,
    /// (bound, inclusive)
    lower: Option<(Num, bool)>,
    upper: Option<(Num, bool)>,
    within: Vec<Num>,
    not_within: Vec<Num>,
    finite: bool,
}

#[derive(Debug, Clone, Default)]
struct StringRules {
    constant: Option<String>,
    len: Option<u64>,
    min_len: Option<u64>,
    max_len: Option<u64>,
    len_bytes: Option<u64>,
    min_bytes: Option<u64>,
    max_bytes: Option<u64>,
    pattern: Option<Regex>,
    prefix: Option<String>,
    suffix: Option<String>,
    contains: Option<String>,
    not_contains: Option<String>,
    within: Vec<String>,
    not_within: Vec<String>,
    uuid: bool,
}

#[derive(Debug, Clone)]
struct EnumRules {
    descriptor: EnumDescriptor,
    constant: Option<i32>,
    defined_only: bool,
    within: Vec<i32>,
    not_within: Vec<i32>,
}

/// The rules of one value (a scalar, a list, a map).
#[derive(Debug, Clone)]
enum Check {
    None,
    Number(NumberRules),
    String(Box<StringRules>),
    Bool(bool),
    Enum(EnumRules),
    Repeated { min: Option<u64>, max: Option<u64>, unique: bool, items: Box<ItemRules> },
    Map { min: Option<u64>, max: Option<u64>, keys: Box<ItemRules>, values: Box<ItemRules> },
}

/// The rules of a list item or a map key or value (always present: `required` says nothing).
#[derive(Debug, Clone)]
struct ItemRules {
    ignore: Ignore,
    check: Check,
}

#[derive(Debug, Clone)]
struct FieldCheck {
    field: FieldDescriptor,
    required: bool,
    ignore: Ignore,
    check: Check,
}

/// Every message type's rules, for the messages a method takes.
#[derive(Debug, Clone, Default)]
pub struct FieldRules {
    by_message: HashMap<String, MessageChecks>,
}

#[derive(Debug, Clone, Default)]
struct MessageChecks {
    fields: Vec<FieldCheck>,
    /// Oneofs one of whose fields must be set (`(buf.validate.oneof).required`).
    required_oneofs: Vec<(String, Vec<FieldDescriptor>)>,
    /// Fields holding messages with rules of their own (the walk descends only there).
    nested: Vec<FieldDescriptor>,
}

/// The annotations protovalidate defines, when the descriptor set holds them.
struct Extensions {
    field: ExtensionDescriptor,
    oneof: Option<ExtensionDescriptor>,
    message: Option<ExtensionDescriptor>,
}

fn rules_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Enum(_) => "enum",
        Kind::Message(_) => "message",
    }
}

/// Reads the rules of one annotated thing, refusing or skipping what is not implemented.
struct Reader {
    mode: FieldRulesMode,
}

fn u64_of(value: &Value) -> Option<u64> {
    match value {
        Value::U64(n) => Some(*n),
        _ => None,
    }
}

fn strings_of(value: &Value) -> Vec<String> {
    match value {
        Value::List(items) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

impl Reader {
    /// A rule this module does not implement: refused, or left to the service.
    fn unsupported(&self, at: &str, rule: &str) -> Result<(), String> {
        match self.mode {
            FieldRulesMode::Enforce => Err(format!(
                "{at}: the rule `{rule}` is not implemented by meshward; remove it, or set `field_rules: enforce_known` to leave it to the service"
            )),
            _ => Ok(()),
        }
    }

    /// A `FieldRules` message: `required`, `ignore` and the value's rules.
    fn field(&self, field: &FieldDescriptor, rules: &DynamicMessage, at: &str) -> Result<FieldCheck, String> {
        let mut check = FieldCheck { field: field.clone(), required: false, ignore: Ignore::Unspecified, check: Check::None };
        for (rule, value) in rules.fields() {
            match rule.name() {
                "required" => check.required = value.as_bool().unwrap_or(false),
                "ignore" => check.ignore = ignore_of(value),
                "repeated" if field.is_list() => check.check = self.repeated(field, value, at)?,
                "map" if field.is_map() => check.check = self.map(field, value, at)?,
                name if !field.is_list() && !field.is_map() && name == rules_name(&field.kind()) => {
                    check.check = self.value(&field.kind(), value, &format!("{at}.{name}"))?;
                }
                "repeated" | "map" => return Err(format!("{at}: `{}` rules on a field that is not one", rule.name())),
                name @ ("any" | "duration" | "timestamp" | "field_mask") => self.unsupported(at, name)?,
                // Scalar rules on a wrapper message (google.protobuf.StringValue and kin).
                name if is_type_rule(name) && matches!(field.kind(), Kind::Message(_)) => self.unsupported(at, &format!("{name} (on a wrapper type)"))?,
                name if is_type_rule(name) => return Err(format!("{at}: `{name}` rules on a {} field", rules_name(&field.kind()))),
                name => self.unsupported(at, name)?,
            }
        }
        self.no_extensions(rules, at)?;
        Ok(check)
    }

    fn no_extensions(&self, rules: &DynamicMessage, at: &str) -> Result<(), String> {
        match rules.extensions().next() {
            Some((ext, _)) => self.unsupported(at, ext.full_name()),
            None => Ok(()),
        }
    }

    /// A list item or a map key or value: the same `FieldRules`, of one element's kind.
    fn item(&self, kind: &Kind, rules: &Value, at: &str) -> Result<ItemRules, String> {
        let mut item = ItemRules { ignore: Ignore::Unspecified, check: Check::None };
        let Value::Message(rules) = rules else { return Ok(item) };
        for (rule, value) in rules.fields() {
            match rule.name() {
                "required" => {}
                "ignore" => item.ignore = ignore_of(value),
                name if name == rules_name(kind) => item.check = self.value(kind, value, &format!("{at}.{name}"))?,
                name @ ("any" | "duration" | "timestamp" | "field_mask") => self.unsupported(at, name)?,
                name if is_type_rule(name) => return Err(format!("{at}: `{name}` rules on {} items", rules_name(kind))),
                name => self.unsupported(at, name)?,
            }
        }
        self.no_extensions(rules, at)?;
        Ok(item)
    }

    fn repeated(&self, field: &FieldDescriptor, rules: &Value, at: &str) -> Result<Check, String> {
        let (mut min, mut max, mut unique, mut items) = (None, None, false, ItemRules { ignore: Ignore::Unspecified, check: Check::None });
        let Value::Message(rules) = rules else { return Ok(Check::None) };
        for (rule, value) in rules.fields() {
            match rule.name() {
                "min_items" => min = u64_of(value),
                "max_items" => max = u64_of(value),
                "unique" => unique = value.as_bool().unwrap_or(false) && !matches!(field.kind(), Kind::Message(_)),
                "items" => items = self.item(&field.kind(), value, &format!("{at}.repeated.items"))?,
                name => self.unsupported(&format!("{at}.repeated"), name)?,
            }
        }
        self.no_extensions(rules, at)?;
        Ok(Check::Repeated { min, max, unique, items: Box::new(items) })
    }

    fn map(&self, field: &FieldDescriptor, rules: &Value, at: &str) -> Result<Check, String> {
        let Kind::Message(entry) = field.kind() else { return Ok(Check::None) };
        let none = || ItemRules { ignore: Ignore::Unspecified, check: Check::None };
        let (mut min, mut max, mut keys, mut values) = (None, None, none(), none());
        let Value::Message(rules) = rules else { return Ok(Check::None) };
        for (rule, value) in rules.fields() {
            match rule.name() {
                "min_pairs" => min = u64_of(value),
                "max_pairs" => max = u64_of(value),
                "keys" => keys = self.item(&entry.map_entry_key_field().kind(), value, &format!("{at}.map.keys"))?,
                "values" => values = self.item(&entry.map_entry_value_field().kind(), value, &format!("{at}.map.values"))?,
                name => self.unsupported(&format!("{at}.map"), name)?,
            }
        }
        self.no_extensions(rules, at)?;
        Ok(Check::Map { min, max, keys: Box::new(keys), values: Box::new(values) })
    }

    /// The rules of one scalar kind (`at` ends in the rules' name: `….string`).
    fn value(&self, kind: &Kind, rules: &Value, at: &str) -> Result<Check, String> {
        let Value::Message(rules) = rules else { return Ok(Check::None) };
        self.no_extensions(rules, at)?;
        match kind {
            Kind::String => self.string(rules, at).map(|s| Check::String(Box::new(s))),
            Kind::Bool => {
                let mut constant = None;
                for (rule, value) in rules.fields() {
                    match rule.name() {
                        "const" => constant = value.as_bool(),
                        "example" => {}
                        name => self.unsupported(at, name)?,
                    }
                }
                Ok(constant.map_or(Check::None, Check::Bool))
            }
            Kind::Enum(descriptor) => {
                let mut e = EnumRules { descriptor: descriptor.clone(), constant: None, defined_only: false, within: Vec::new(), not_within: Vec::new() };
                let ints = |v: &Value| match v {
                    Value::List(items) => items.iter().filter_map(Value::as_i32).collect(),
                    _ => Vec::new(),
                };
                for (rule, value) in rules.fields() {
                    match rule.name() {
                        "const" => e.constant = value.as_i32(),
                        "defined_only" => e.defined_only = value.as_bool().unwrap_or(false),
                        "in" => e.within = ints(value),
                        "not_in" => e.not_within = ints(value),
                        "example" => {}
                        name => self.unsupported(at, name)?,
                    }
                }
                Ok(Check::Enum(e))
            }
            Kind::Bytes | Kind::Message(_) => self.unsupported(at, rules_name(kind)).map(|()| Check::None),
            _ => self.number(kind, rules, at).map(Check::Number),
        }
    }

    fn number(&self, kind: &Kind, rules: &DynamicMessage, at: &str) -> Result<NumberRules, String> {
        let mut n = NumberRules { kind: rules_name(kind), ..NumberRules::default() };
        let list = |v: &Value| match v {
            Value::List(items) => items.iter().filter_map(Num::of).collect(),
            _ => Vec::new(),
        };
        for (rule, value) in rules.fields() {
            match rule.name() {
                "const" => n.constant = Num::of(value),
                "lt" => n.upper = Num::of(value).map(|v| (v, false)),
                "lte" => n.upper = Num::of(value).map(|v| (v, true)),
                "gt" => n.lower = Num::of(value).map(|v| (v, false)),
                "gte" => n.lower = Num::of(value).map(|v| (v, true)),
                "in" => n.within = list(value),
                "not_in" => n.not_within = list(value),
                "finite" => n.finite = value.as_bool().unwrap_or(false),
                "example" => {}
                name => self.unsupported(at, name)?,
            }
        }
        Ok(n)
    }

    fn string(&self, rules: &DynamicMessage, at: &str) -> Result<StringRules, String> {
        let mut s = StringRules::default();
        for (rule, value) in rules.fields() {
            let text = || value.as_str().map(str::to_string);
            match rule.name() {
                "const" => s.constant = text(),
                "len" => s.len = u64_of(value),
                "min_len" => s.min_len = u64_of(value),
                "max_len" => s.max_len = u64_of(value),
                "len_bytes" => s.len_bytes = u64_of(value),
                "min_bytes" => s.min_bytes = u64_of(value),
                "max_bytes" => s.max_bytes = u64_of(value),
                "pattern" => {
                    let pattern = value.as_str().unwrap_or_default();
                    s.pattern = Some(Regex::new(pattern).map_err(|e| format!("{at}.pattern: {e}"))?);
                }
                "prefix" => s.prefix = text(),
                "suffix" => s.suffix = text(),
                "contains" => s.contains = text(),
                "not_contains" => s.not_contains = text(),
                "in" => s.within = strings_of(value),
                "not_in" => s.not_within = strings_of(value),
                "uuid" => s.uuid = value.as_bool().unwrap_or(false),
                "example" => {}
                name => self.unsupported(at, name)?,
            }
        }
        Ok(s)
    }
}

fn is_type_rule(name: &str) -> bool {
    const TYPES: [&str; 22] = [
        "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string",
        "bytes", "enum", "repeated", "map", "any", "duration", "timestamp", "field_mask",
    ];
    TYPES.contains(&name)
}

fn ignore_of(value: &Value) -> Ignore {
    match value.as_enum_number() {
        Some(1) => Ignore::IfZeroValue,
        Some(3) => Ignore::Always,
        _ => Ignore::Unspecified,
    }
}

impl FieldRules {
    /// The rules of `inputs` and every message type they reach.
    pub fn compile(pool: &DescriptorPool, inputs: &[MessageDescriptor], mode: FieldRulesMode) -> Result<FieldRules, String> {
        let mut rules = FieldRules::default();
        let Some(field) = pool.get_extension_by_name("buf.validate.field") else { return Ok(rules) };
        if mode == FieldRulesMode::Off {
            return Ok(rules);
        }
        let extensions = Extensions { field, oneof: pool.get_extension_by_name("buf.validate.oneof"), message: pool.get_extension_by_name("buf.validate.message") };
        let reader = Reader { mode };
        let mut seen = HashSet::new();
        let mut queue: Vec<MessageDescriptor> = inputs.to_vec();
        let mut reached = Vec::new();
        while let Some(message) = queue.pop() {
            if !seen.insert(message.full_name().to_string()) {
                continue;
            }
            for field in message.fields() {
                if let Kind::Message(inner) = field.kind() {
                    queue.push(inner);
                }
            }
            let checks = rules.message_checks(&message, &extensions, &reader)?;
            if !checks.fields.is_empty() || !checks.required_oneofs.is_empty() {
                rules.by_message.insert(message.full_name().to_string(), checks);
            }
            reached.push(message);
        }
        // Which fields lead to messages with rules (to a fixed point: messages nest).
        let mut grown = true;
        while grown {
            grown = false;
            for message in &reached {
                for field in message.fields() {
                    let Kind::Message(inner) = field.kind() else { continue };
                    // A map's messages are its values (asked of map entries only: prost-reflect asserts).
                    let inner = if !field.is_map() {
                        inner
                    } else if let Kind::Message(value) = inner.map_entry_value_field().kind() {
                        value
                    } else {
                        continue;
                    };
                    let ignored = rules.by_message.get(message.full_name()).is_some_and(|c| c.fields.iter().any(|f| f.field == field && f.ignore == Ignore::Always));
                    if ignored || !rules.by_message.contains_key(inner.full_name()) {
                        continue;
                    }
                    let entry = rules.by_message.entry(message.full_name().to_string()).or_default();
                    if !entry.nested.contains(&field) {
                        entry.nested.push(field);
                        grown = true;
                    }
                }
            }
        }
        Ok(rules)
    }

    fn message_checks(&self, message: &MessageDescriptor, extensions: &Extensions, reader: &Reader) -> Result<MessageChecks, String> {
        let mut checks = MessageChecks::default();
        if let Some(ext) = &extensions.message {
            let options = message.options();
            if let Value::Message(rules) = options.get_extension(ext).as_ref() {
                if let Some((rule, _)) = rules.fields().next() {
                    reader.unsupported(message.full_name(), &format!("(buf.validate.message).{}", rule.name()))?;
                }
            }
        }
        for oneof in message.oneofs().filter(|o| !o.is_synthetic()) {
            let Some(ext) = &extensions.oneof else { break };
            let options = oneof.options();
            if let Value::Message(rules) = options.get_extension(ext).as_ref() {
                if rules.get_field_by_name("required").is_some_and(|v| v.as_bool() == Some(true)) {
                    checks.required_oneofs.push((oneof.name().to_string(), oneof.fields().collect()));
                }
            }
        }
        for field in message.fields() {
            let options = field.options();
            if !options.has_extension(&extensions.field) {
                continue;
            }
            let at = format!("{}.{}", message.full_name(), field.name());
            if let Value::Message(rules) = options.get_extension(&extensions.field).as_ref() {
                checks.fields.push(reader.field(&field, rules, &at)?);
            }
        }
        Ok(checks)
    }

    pub fn is_empty(&self) -> bool {
        self.by_message.is_empty()
    }

    /// The first rule `message` (or a message inside it) breaks.
    pub fn check(&self, message: &DynamicMessage) -> Result<(), Violation> {
        if self.is_empty() {
            return Ok(());
        }
        self.walk(message).map_err(|(mut suffixes, rule)| {
            suffixes.reverse();
            Violation { path: suffixes.concat(), rule }
        })
    }

    /// Path suffixes from the inside out, and the rule.
    fn walk(&self, message: &DynamicMessage) -> Result<(), (Vec<String>, String)> {
        let Some(checks) = self.by_message.get(message.descriptor().full_name()) else { return Ok(()) };
        for check in &checks.fields {
            check.run(message).map_err(|(mut suffixes, rule)| {
                suffixes.push(format!(".{}", check.field.name()));
                (suffixes, rule)
            })?;
        }
        for (name, fields) in &checks.required_oneofs {
            if !fields.iter().any(|f| message.has_field(f)) {
                return Err((vec![format!(".{name}")], "required".into()));
            }
        }
        for field in &checks.nested {
            if !message.has_field(field) {
                continue;
            }
            let within = |suffix: String| {
                move |(mut suffixes, rule): (Vec<String>, String)| {
                    suffixes.push(suffix);
                    (suffixes, rule)
                }
            };
            match message.get_field(field).as_ref() {
                Value::Message(inner) => self.walk(inner).map_err(within(format!(".{}", field.name())))?,
                Value::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::Message(inner) = item {
                            self.walk(inner).map_err(within(format!(".{}[{i}]", field.name())))?;
                        }
                    }
                }
                Value::Map(map) => {
                    for (key, value) in map {
                        if let Value::Message(inner) = value {
                            self.walk(inner).map_err(within(format!(".{}[{}]", field.name(), key_text(key))))?;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn key_text(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

fn key_value(key: &MapKey) -> Value {
    match key {
        MapKey::String(s) => Value::String(s.clone()),
        MapKey::Bool(b) => Value::Bool(*b),
        MapKey::I32(n) => Value::I32(*n),
        MapKey::I64(n) => Value::I64(*n),
        MapKey::U32(n) => Value::U32(*n),
        MapKey::U64(n) => Value::U64(*n),
    }
}

/// A scalar's zero value (what `IGNORE_IF_ZERO_VALUE` skips).
fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::EnumNumber(n) => *n == 0,
        Value::List(items) => items.is_empty(),
        Value::Map(map) => map.is_empty(),
        other => Num::of(other).is_some_and(|n| n == Num::Int(0) || n == Num::Float(0.0)),
    }
}

type Broken = (Vec<String>, String);

fn broken(rule: String) -> Broken {
    (Vec::new(), rule)
}

impl FieldCheck {
    fn run(&self, message: &DynamicMessage) -> Result<(), Broken> {
        if self.ignore == Ignore::Always {
            return Ok(());
        }
        let set = message.has_field(&self.field);
        if !set && self.required {
            return Err(broken("required".into()));
        }
        if !set && (self.field.supports_presence() || self.ignore == Ignore::IfZeroValue) {
            return Ok(());
        }
        self.check.value(&message.get_field(&self.field))
    }
}

impl ItemRules {
    fn run(&self, value: &Value) -> Result<(), Broken> {
        if self.ignore == Ignore::Always || (self.ignore == Ignore::IfZeroValue && is_zero(value)) {
            return Ok(());
        }
        self.check.value(value)
    }
}

/// A hashable form of a scalar (for `repeated.unique`).
#[derive(PartialEq, Eq, Hash)]
enum Scalar<'a> {
    Text(&'a str),
    Int(i128),
    Float(u64),
    Other(String),
}

fn scalar(value: &Value) -> Scalar<'_> {
    match (value, Num::of(value)) {
        (Value::String(s), _) => Scalar::Text(s),
        (_, Some(Num::Int(n))) => Scalar::Int(n),
        (_, Some(Num::Float(f))) => Scalar::Float(f.to_bits()),
        (other, None) => Scalar::Other(format!("{other:?}")),
    }
}

impl Check {
    fn value(&self, value: &Value) -> Result<(), Broken> {
        match (self, value) {
            (Check::None, _) => Ok(()),
            (Check::Repeated { min, max, unique, items }, Value::List(list)) => {
                let n = list.len() as u64;
                if min.is_some_and(|m| n < m) {
                    return Err(broken("repeated.min_items".into()));
                }
                if max.is_some_and(|m| n > m) {
                    return Err(broken("repeated.max_items".into()));
                }
                if *unique {
                    let mut seen = HashSet::with_capacity(list.len());
                    if !list.iter().all(|v| seen.insert(scalar(v))) {
                        return Err(broken("repeated.unique".into()));
                    }
                }
                for (i, item) in list.iter().enumerate() {
                    items.run(item).map_err(|(mut s, rule)| {
                        s.push(format!("[{i}]"));
                        (s, rule)
                    })?;
                }
                Ok(())
            }
            (Check::Map { min, max, keys, values }, Value::Map(map)) => {
                let n = map.len() as u64;
                if min.is_some_and(|m| n < m) {
                    return Err(broken("map.min_pairs".into()));
                }
                if max.is_some_and(|m| n > m) {
                    return Err(broken("map.max_pairs".into()));
                }
                for (key, value) in map {
                    let within = |(mut s, rule): Broken| {
                        s.push(format!("[{}]", key_text(key)));
                        (s, rule)
                    };
                    keys.run(&key_value(key)).map_err(within)?;
                    values.run(value).map_err(within)?;
                }
                Ok(())
            }
            (Check::String(rules), Value::String(s)) => rules.check(s).map_err(|rule| broken(format!("string.{rule}"))),
            (Check::Bool(want), Value::Bool(b)) if want == b => Ok(()),
            (Check::Bool(_), _) => Err(broken("bool.const".into())),
            (Check::Enum(rules), Value::EnumNumber(n)) => rules.check(*n).map_err(|rule| broken(format!("enum.{rule}"))),
            (Check::Number(rules), v) => match Num::of(v) {
                Some(n) => rules.check(n).map_err(|rule| broken(format!("{}.{rule}", rules.kind))),
                None => Err(broken(format!("{}.type", rules.kind))),
            },
            // A value of another shape than its rules: refused, not passed.
            _ => Err(broken("type".into())),
        }
    }
}

impl NumberRules {
    fn check(&self, n: Num) -> Result<(), &'static str> {
        if let Some(c) = self.constant {
            if n.cmp(c) != Some(Ordering::Equal) {
                return Err("const");
            }
        }
        if self.finite && matches!(n, Num::Float(f) if !f.is_finite()) {
            return Err("finite");
        }
        let above = |(bound, inclusive): (Num, bool)| matches!(n.cmp(bound), Some(Ordering::Greater)) || (inclusive && n.cmp(bound) == Some(Ordering::Equal));
        let below = |(bound, inclusive): (Num, bool)| matches!(n.cmp(bound), Some(Ordering::Less)) || (inclusive && n.cmp(bound) == Some(Ordering::Equal));
        match (self.lower, self.upper) {
            (Some(lower), Some(upper)) => {
                // gt > lt: an exclusive range (outside [lt, gt]), as protovalidate reads it.
                let exclusive = lower.0.cmp(upper.0) == Some(Ordering::Greater);
                let ok = if exclusive { above(lower) || below(upper) } else { above(lower) && below(upper) };
                if !ok {
                    return Err("range");
                }
            }
            (Some(lower), None) if !above(lower) => return Err(if lower.1 { "gte" } else { "gt" }),
            (None, Some(upper)) if !below(upper) => return Err(if upper.1 { "lte" } else { "lt" }),
            _ => {}
        }
        if !self.within.is_empty() && !self.within.iter().any(|w| n.cmp(*w) == Some(Ordering::Equal)) {
            return Err("in");
        }
        if self.not_within.iter().any(|w| n.cmp(*w) == Some(Ordering::Equal)) {
            return Err("not_in");
        }
        Ok(())
    }
}

/// `8-4-4-4-12` hex digits, as RFC 4122 writes a UUID.
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

impl StringRules {
    fn check(&self, s: &str) -> Result<(), &'static str> {
        let chars = || s.chars().count() as u64;
        let bytes = s.len() as u64;
        let failed = [
            (self.constant.as_ref().is_some_and(|c| c != s), "const"),
            (self.len.is_some_and(|n| chars() != n), "len"),
            (self.min_len.is_some_and(|n| chars() < n), "min_len"),
            (self.max_len.is_some_and(|n| chars() > n), "max_len"),
            (self.len_bytes.is_some_and(|n| bytes != n), "len_bytes"),
            (self.min_bytes.is_some_and(|n| bytes < n), "min_bytes"),
            (self.max_bytes.is_some_and(|n| bytes > n), "max_bytes"),
            (self.pattern.as_ref().is_some_and(|p| !p.is_match(s)), "pattern"),
            (self.prefix.as_ref().is_some_and(|p| !s.starts_with(p.as_str())), "prefix"),
            (self.suffix.as_ref().is_some_and(|p| !s.ends_with(p.as_str())), "suffix"),
            (self.contains.as_ref().is_some_and(|p| !s.contains(p.as_str())), "contains"),
            (self.not_contains.as_ref().is_some_and(|p| s.contains(p.as_str())), "not_contains"),
            (!self.within.is_empty() && !self.within.iter().any(|w| w == s), "in"),
            (self.not_within.iter().any(|w| w == s), "not_in"),
            (self.uuid && !is_uuid(s), "uuid"),
        ];
        match failed.iter().find(|(failed, _)| *failed) {
            Some((_, rule)) => Err(rule),
            None => Ok(()),
        }
    }
}

impl EnumRules {
    fn check(&self, n: i32) -> Result<(), &'static str> {
        if self.constant.is_some_and(|c| c != n) {
            return Err("const");
        }
        if self.defined_only && self.descriptor.get_value(n).is_none() {
            return Err("defined_only");
        }
        if !self.within.is_empty() && !self.within.contains(&n) {
            return Err("in");
        }
        if self.not_within.contains(&n) {
            return Err("not_in");
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
