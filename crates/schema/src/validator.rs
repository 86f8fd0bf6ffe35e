//! Runs a compiled contract's schemas (JSON Schema 2020-12 semantics, as the jsonschema crate
//! decides them: the differential test in `tests/differential.rs` holds the two to the same
//! verdicts).
//!
//! The first violation is the answer: its instance location and keyword. Keywords run in a
//! fixed order: `type`, `enum`/`const`, the checks of the instance's type, `$ref` and the other
//! in-place applicators, then `unevaluated*`, which see what the others evaluated.

use std::cmp::Ordering;
use std::sync::Arc;

use regex_lite::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};

use crate::format::is_valid;
use crate::program::{types, Node, NodeId};

/// How many schemas one check may enter in place (`$ref`, `allOf`, ...) without reading deeper
/// into the instance: a contract whose references loop on one value stops here, refused.
const MAX_IN_PLACE: u32 = 256;

/// A compiled contract's schemas, with their patterns compiled.
#[derive(Debug, Default)]
pub struct SchemaTable {
    nodes: Vec<Node>,
    patterns: Vec<Regex>,
}

/// Where and why an instance breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the instance (`""` for the instance itself).
    pub path: String,
    pub keyword: &'static str,
}

impl SchemaTable {
    /// The table, checked whole: every index in range, every pattern compiles.
    pub fn new(nodes: Vec<Node>, patterns: &[String]) -> Result<SchemaTable, String> {
        let regexes = patterns
            .iter()
            .enumerate()
            .map(|(i, p)| Regex::new(p).map_err(|e| format!("patterns[{i}] does not compile: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, node) in nodes.iter().enumerate() {
            if let Some(bad) = node.children().find(|c| *c as usize >= nodes.len()) {
                return Err(format!("schemas[{i}] names schema {bad}, past the table's {}", nodes.len()));
            }
            if let Some(bad) = node.patterns().find(|p| *p as usize >= regexes.len()) {
                return Err(format!("schemas[{i}] names pattern {bad}, past the table's {}", regexes.len()));
            }
        }
        Ok(SchemaTable { nodes, patterns: regexes })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The instance against the schema at `root`: the first violation.
    pub fn validate(&self, root: NodeId, instance: &Value) -> Result<(), Violation> {
        match self.eval(root, instance, false, 0) {
            Ok(_) => Ok(()),
            Err(fail) => {
                let mut path = String::new();
                for seg in fail.path.iter().rev() {
                    path.push('/');
                    match seg {
                        Seg::Key(k) => path.push_str(&escape(k)),
                        Seg::Index(i) => path.push_str(&i.to_string()),
                    }
                }
                Err(Violation { path, keyword: fail.keyword })
            }
        }
    }

    /// Whether the instance passes (annotations collected when `collect`).
    fn eval(&self, id: NodeId, v: &Value, collect: bool, depth: u32) -> Result<Seen, Fail> {
        let Some(node) = self.nodes.get(id as usize) else { return Err(Fail::at("$ref")) };
        if depth > MAX_IN_PLACE {
            return Err(Fail::at("$ref"));
        }
        match node.always {
            Some(true) => return Ok(Seen::default()),
            Some(false) => return Err(Fail::at("falseSchema")),
            None => {}
        }
        // unevaluated* need what every in-place applicator below evaluated.
        let collect = collect || node.unevaluated_properties.is_some() || node.unevaluated_items.is_some();
        let mut seen = Seen::new(v, collect);
        if node.types != 0 && !type_matches(node.types, v) {
            return Err(Fail::at("type"));
        }
        if let Some(values) = &node.one_of_values {
            if !values.iter().any(|e| equal(e, v)) {
                return Err(Fail::at("enum"));
            }
        }
        if let Some(c) = &node.constant {
            if !equal(c, v) {
                return Err(Fail::at("const"));
            }
        }
        match v {
            Value::Number(n) => number(node, n)?,
            Value::String(s) => self.string(node, s)?,
            Value::Array(items) => self.array(node, items, &mut seen, depth)?,
            Value::Object(map) => self.object(node, v, map, &mut seen, depth)?,
            Value::Null | Value::Bool(_) => {}
        }
        if let Some(r) = node.reference {
            seen.merge(self.eval(r, v, collect, depth + 1)?);
        }
        for &m in &node.all_of {
            seen.merge(self.eval(m, v, collect, depth + 1)?);
        }
        if !node.any_of.is_empty() {
            let mut any = false;
            for &m in &node.any_of {
                if let Ok(s) = self.eval(m, v, collect, depth + 1) {
                    any = true;
                    seen.merge(s);
                    if !collect {
                        break;
                    }
                }
            }
            if !any {
                return Err(Fail::at("anyOf"));
            }
        }
        if !node.one_of.is_empty() {
            let mut passed: Option<Seen> = None;
            for &m in &node.one_of {
                if let Ok(s) = self.eval(m, v, collect, depth + 1) {
                    if passed.is_some() {
                        return Err(Fail::at("oneOf"));
                    }
                    passed = Some(s);
                }
            }
            match passed {
                Some(s) => seen.merge(s),
                None => return Err(Fail::at("oneOf")),
            }
        }
        if let Some(n) = node.not {
            if self.eval(n, v, false, depth + 1).is_ok() {
                return Err(Fail::at("not"));
            }
        }
        if let Some(c) = node.condition {
            match self.eval(c, v, collect, depth + 1) {
                Ok(s) => {
                    seen.merge(s);
                    if let Some(t) = node.then {
                        seen.merge(self.eval(t, v, collect, depth + 1)?);
                    }
                }
                Err(_) => {
                    if let Some(e) = node.otherwise {
                        seen.merge(self.eval(e, v, collect, depth + 1)?);
                    }
                }
            }
        }
        match v {
            Value::Object(map) => {
                if let Some(u) = node.unevaluated_properties {
                    for (i, (key, value)) in map.iter().enumerate() {
                        if seen.props.get(i).copied().unwrap_or(false) {
                            continue;
                        }
                        if self.eval(u, value, false, 0).is_err() {
                            return Err(Self::unevaluated("unevaluatedProperties").inside(Seg::Key(key.clone())));
                        }
                        seen.mark_prop(i);
                    }
                }
            }
            Value::Array(items) => {
                if let Some(u) = node.unevaluated_items {
                    for (i, item) in items.iter().enumerate() {
                        if seen.items.get(i).copied().unwrap_or(false) {
                            continue;
                        }
                        if self.eval(u, item, false, 0).is_err() {
                            return Err(Self::unevaluated("unevaluatedItems").inside(Seg::Index(i)));
                        }
                        seen.mark_item(i);
                    }
                }
            }
            _ => {}
        }
        Ok(seen)
    }

    /// An unevaluated member its schema refuses: reported as the keyword, at the object or
    /// array holding it (as jsonschema does).
    fn unevaluated(keyword: &'static str) -> Fail {
        Fail { keyword, path: Vec::new(), outer: true }
    }

    fn string(&self, node: &Node, s: &str) -> Result<(), Fail> {
        if node.min_length.is_some() || node.max_length.is_some() {
            let length = s.chars().count() as u64;
            if node.min_length.is_some_and(|m| length < m) {
                return Err(Fail::at("minLength"));
            }
            if node.max_length.is_some_and(|m| length > m) {
                return Err(Fail::at("maxLength"));
            }
        }
        if let Some(p) = node.pattern {
            if !self.patterns.get(p as usize).is_some_and(|r| r.is_match(s)) {
                return Err(Fail::at("pattern"));
            }
        }
        if let Some(f) = node.format {
            if !is_valid(f, s) {
                return Err(Fail::at("format"));
            }
        }
        Ok(())
    }

    fn array(&self, node: &Node, items: &[Value], seen: &mut Seen, depth: u32) -> Result<(), Fail> {
        let n = items.len() as u64;
        if node.min_items.is_some_and(|m| n < m) {
            return Err(Fail::at("minItems"));
        }
        if node.max_items.is_some_and(|m| n > m) {
            return Err(Fail::at("maxItems"));
        }
        if node.unique_items && !all_different(items) {
            return Err(Fail::at("uniqueItems"));
        }
        for (i, (&schema, item)) in node.prefix_items.iter().zip(items).enumerate() {
            self.eval(schema, item, false, 0).map_err(|f| f.inside(Seg::Index(i)))?;
            seen.mark_item(i);
        }
        if let Some(schema) = node.items {
            for (i, item) in items.iter().enumerate().skip(node.prefix_items.len()) {
                self.eval(schema, item, false, 0).map_err(|f| f.inside(Seg::Index(i)))?;
                seen.mark_item(i);
            }
        }
        if let Some(schema) = node.contains {
            let mut count = 0u64;
            for (i, item) in items.iter().enumerate() {
                if self.eval(schema, item, false, depth + 1).is_ok() {
                    count += 1;
                    seen.mark_item(i);
                }
            }
            if node.max_contains.is_some_and(|m| count > m) {
                return Err(Fail::at("contains"));
            }
            if count < node.min_contains.unwrap_or(1) {
                return Err(Fail::at("contains"));
            }
        }
        Ok(())
    }

    /// `whole` is the object `map` is the members of (dependent schemas apply to it).
    fn object(&self, node: &Node, whole: &Value, map: &Map<String, Value>, seen: &mut Seen, depth: u32) -> Result<(), Fail> {
        if node.required.iter().any(|r| !map.contains_key(r)) {
            return Err(Fail::at("required"));
        }
        let n = map.len() as u64;
        if node.min_properties.is_some_and(|m| n < m) {
            return Err(Fail::at("minProperties"));
        }
        if node.max_properties.is_some_and(|m| n > m) {
            return Err(Fail::at("maxProperties"));
        }
        for (name, needs) in &node.dependent_required {
            if map.contains_key(name) && needs.iter().any(|r| !map.contains_key(r)) {
                return Err(Fail::at("required"));
            }
        }
        if let Some(names) = node.property_names {
            for key in map.keys() {
                let name = Value::String(key.clone());
                // Reported at the object; `propertyNames: false` as the false schema it is (as
                // jsonschema does).
                if let Err(fail) = self.eval(names, &name, false, 0) {
                    return Err(Fail::at(if fail.keyword == "falseSchema" && fail.path.is_empty() { fail.keyword } else { "propertyNames" }));
                }
            }
        }
        let checks_members = !node.properties.is_empty() || !node.pattern_properties.is_empty() || node.additional_properties.is_some();
        if checks_members {
            for (i, (key, value)) in map.iter().enumerate() {
                let mut matched = false;
                if let Ok(at) = node.properties.binary_search_by(|(name, _)| name.as_str().cmp(key)) {
                    matched = true;
                    self.eval(node.properties[at].1, value, false, 0).map_err(|f| f.inside(Seg::Key(key.clone())))?;
                }
                for &(pattern, schema) in &node.pattern_properties {
                    if self.patterns.get(pattern as usize).is_some_and(|r| r.is_match(key)) {
                        matched = true;
                        self.eval(schema, value, false, 0).map_err(|f| f.inside(Seg::Key(key.clone())))?;
                    }
                }
                if !matched {
                    if let Some(extra) = node.additional_properties {
                        // `false` beside declared members is reported at the object, alone as the
                        // member's false schema (as jsonschema does).
                        let declares = !node.properties.is_empty() || !node.pattern_properties.is_empty();
                        if declares && self.nodes.get(extra as usize).and_then(|n| n.always) == Some(false) {
                            return Err(Fail::at("additionalProperties"));
                        }
                        self.eval(extra, value, false, 0).map_err(|f| f.inside(Seg::Key(key.clone())))?;
                        matched = true;
                    }
                }
                if matched {
                    seen.mark_prop(i);
                }
            }
        }
        for (name, schema) in &node.dependent_schemas {
            if map.contains_key(name) {
                seen.merge(self.eval(*schema, whole, seen.collecting(), depth + 1)?);
            }
        }
        Ok(())
    }
}

/// What in-place evaluation saw of an instance, for `unevaluated*`: which members (by position)
/// and which items were evaluated. Empty unless an enclosing schema asks.
#[derive(Debug, Default)]
struct Seen {
    props: Vec<bool>,
    items: Vec<bool>,
    collect: bool,
}

impl Seen {
    fn new(v: &Value, collect: bool) -> Seen {
        if !collect {
            return Seen::default();
        }
        match v {
            Value::Object(map) => Seen { props: vec![false; map.len()], items: Vec::new(), collect },
            Value::Array(items) => Seen { props: Vec::new(), items: vec![false; items.len()], collect },
            _ => Seen { collect, ..Seen::default() },
        }
    }

    fn collecting(&self) -> bool {
        self.collect
    }

    fn mark_prop(&mut self, i: usize) {
        if let Some(p) = self.props.get_mut(i) {
            *p = true;
        }
    }

    fn mark_item(&mut self, i: usize) {
        if let Some(p) = self.items.get_mut(i) {
            *p = true;
        }
    }

    fn merge(&mut self, other: Seen) {
        for (a, b) in self.props.iter_mut().zip(other.props) {
            *a |= b;
        }
        for (a, b) in self.items.iter_mut().zip(other.items) {
            *a |= b;
        }
    }
}

#[derive(Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A violation on its way out: the path is built in reverse as the recursion unwinds.
#[derive(Debug)]
struct Fail {
    keyword: &'static str,
    path: Vec<Seg>,
    /// Reported at the object holding the member, not at the member.
    outer: bool,
}

impl Fail {
    fn at(keyword: &'static str) -> Fail {
        Fail { keyword, path: Vec::new(), outer: false }
    }

    fn inside(mut self, seg: Seg) -> Fail {
        if self.outer {
            self.outer = false;
        } else {
            self.path.push(seg);
        }
        self
    }
}

fn type_matches(bits: u8, v: &Value) -> bool {
    let bit = match v {
        Value::Null => types::NULL,
        Value::Bool(_) => types::BOOLEAN,
        Value::Object(_) => types::OBJECT,
        Value::Array(_) => types::ARRAY,
        Value::String(_) => types::STRING,
        Value::Number(n) => {
            if bits & types::NUMBER != 0 {
                return true;
            }
            return bits & types::INTEGER != 0 && is_integer(n);
        }
    };
    bits & bit != 0
}

/// An integer in JSON Schema's sense: a number with no fraction (`1.0` is one).
fn is_integer(n: &Number) -> bool {
    n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn number(node: &Node, n: &Number) -> Result<(), Fail> {
    if node.minimum.as_ref().is_some_and(|m| compare(n, m) == Ordering::Less) {
        return Err(Fail::at("minimum"));
    }
    if node.maximum.as_ref().is_some_and(|m| compare(n, m) == Ordering::Greater) {
        return Err(Fail::at("maximum"));
    }
    if node.exclusive_minimum.as_ref().is_some_and(|m| compare(n, m) != Ordering::Greater) {
        return Err(Fail::at("exclusiveMinimum"));
    }
    if node.exclusive_maximum.as_ref().is_some_and(|m| compare(n, m) != Ordering::Less) {
        return Err(Fail::at("exclusiveMaximum"));
    }
    if let Some(m) = &node.multiple_of {
        if !is_multiple_of(n, m) {
            return Err(Fail::at("multipleOf"));
        }
    }
    Ok(())
}

/// Two JSON numbers compared exactly, whatever each is stored as.
pub fn compare(a: &Number, b: &Number) -> Ordering {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x.cmp(&y),
        (_, _, Some(x), Some(y)) => x.cmp(&y),
        // One is a u64 past i64, the other a negative i64.
        (Some(_), None, None, Some(_)) => Ordering::Less,
        (None, Some(_), Some(_), None) => Ordering::Greater,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if !a.is_f64() && b.is_f64() => int_vs_float(a, y).unwrap_or_else(|| x.total_cmp(&y)),
            (Some(x), Some(y)) if a.is_f64() && !b.is_f64() => int_vs_float(b, x).map(Ordering::reverse).unwrap_or_else(|| x.total_cmp(&y)),
            (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
            _ => Ordering::Equal,
        },
    }
}

/// An integer against a float, exactly (an i64 or u64 does not fit an f64 in general).
fn int_vs_float(int: &Number, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    let floor = f.floor();
    let frac_above = f > floor;
    let cmp_whole = |whole: Ordering| match whole {
        // int == floor(f): f is larger when it has a fraction.
        Ordering::Equal if frac_above => Ordering::Less,
        other => other,
    };
    if let Some(i) = int.as_i64() {
        if floor < -9.223_372_036_854_776e18 {
            return Some(Ordering::Greater);
        }
        if floor >= 9.223_372_036_854_776e18 {
            return Some(Ordering::Less);
        }
        return Some(cmp_whole(i.cmp(&(floor as i64))));
    }
    let u = int.as_u64()?;
    if floor < 0.0 {
        return Some(Ordering::Greater);
    }
    if floor >= 1.844_674_407_370_955_2e19 {
        return Some(Ordering::Less);
    }
    Some(cmp_whole(u.cmp(&(floor as u64))))
}

/// No two items equal (by [`equal`]). Long arrays are compared by a canonical text of each item
/// (a body of a megabyte can hold 300,000 items: pairwise, a VM busy for minutes).
fn all_different(items: &[Value]) -> bool {
    if items.len() <= 16 {
        return items.iter().enumerate().all(|(i, a)| !items[..i].iter().any(|b| equal(a, b)));
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.iter().all(|item| {
        let mut text = String::new();
        canonical(item, &mut text);
        seen.insert(text)
    })
}

/// A text equal for exactly the values [`equal`] holds equal: object members sorted, a number
/// with no fraction written as the integer it is.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => out.push_str(&u.to_string()),
            (None, Some(i), _) => out.push_str(&i.to_string()),
            (None, None, Some(f)) if f.fract() == 0.0 && f.abs() < 1.8e19 => out.push_str(&(f as i128).to_string()),
            (None, None, Some(f)) => out.push_str(&format!("{f:e}")),
            (None, None, None) => out.push_str(&n.to_string()),
        },
        Value::Array(items) => {
            out.push('[');
            for item in items {
                canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (k, v) in members {
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
                out.push(',');
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// JSON equality, numbers by value (`1` equals `1.0`).
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare(x, y) == Ordering::Equal,
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w))),
        _ => a == b,
    }
}

/// Whether `value / multiple` is an integer, as the jsonschema crate decides it: integers by
/// remainder, fractions on the shortest decimal text of each float (`0.3` is a multiple of
/// `0.1`).
fn is_multiple_of(value: &Number, multiple: &Number) -> bool {
    let Some(m) = multiple.as_f64() else { return false };
    if m.fract() == 0.0 {
        if m > 0.0 && m <= (1u64 << 53) as f64 {
            if let Some(v) = value.as_u64() {
                return v % (m as u64) == 0;
            }
            if let Some(v) = value.as_i64() {
                return v % (m as i64) == 0;
            }
        }
        return value.as_f64().is_some_and(|v| v.fract() == 0.0 && v % m == 0.0);
    }
    let Some(v) = value.as_f64() else { return false };
    if v == 0.0 {
        return true;
    }
    if v.abs() < m {
        return false;
    }
    divides_exactly(v, m).unwrap_or(false)
}

/// A float's shortest decimal text as `mantissa * 10^-decimals`.
fn decimal_parts(value: f64) -> Option<(i128, i32)> {
    if !value.is_finite() {
        return None;
    }
    let text = format!("{value:e}");
    let (digits, exponent) = text.split_once('e')?;
    let exponent: i32 = exponent.parse().ok()?;
    let negative = digits.starts_with('-');
    let digits = digits.trim_start_matches('-');
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let mut mantissa: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa.checked_mul(10)?.checked_add(i128::from(b.checked_sub(b'0')?))?;
    }
    let decimals = i32::try_from(fraction.len()).ok()? - exponent;
    Some((if negative { -mantissa } else { mantissa }, decimals))
}

/// `value / multiple` on the floats' shortest decimal texts, exactly at any exponent.
fn divides_exactly(value: f64, multiple: f64) -> Option<bool> {
    let (vm, vd) = decimal_parts(value)?;
    let (mm, md) = decimal_parts(multiple)?;
    let (vm, mm) = (vm.unsigned_abs(), mm.unsigned_abs());
    if mm == 0 {
        return None;
    }
    if vd <= md {
        // vm * 10^(md - vd) divisible by mm: the remainder, carried digit by digit.
        let mut r = vm % mm;
        for _ in 0..(md - vd) {
            if r == 0 {
                break;
            }
            r = (r * 10) % mm;
        }
        Some(r == 0)
    } else {
        // vm divisible by mm * 10^(vd - md); past u128 that divisor exceeds vm.
        let divisor = u32::try_from(vd - md).ok().and_then(|k| 10u128.checked_pow(k)).and_then(|p| p.checked_mul(mm));
        Some(divisor.is_some_and(|d| vm % d == 0))
    }
}

/// A key as one JSON-pointer segment (RFC 6901: `~` → `~0`, `/` → `~1`).
pub fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// A schema of a compiled contract: its table and where in it. Serialized as the index alone;
/// a contract being loaded gets its table attached once the table is checked.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    pub root: NodeId,
    table: Arc<SchemaTable>,
}

impl Schema {
    pub fn new(root: NodeId, table: Arc<SchemaTable>) -> Schema {
        Schema { root, table }
    }

    /// The instance against this schema: the first violation.
    pub fn validate(&self, instance: &Value) -> Result<(), Violation> {
        self.table.validate(self.root, instance)
    }

    /// Attaches the contract's table; `Err` when the index is not in it.
    pub fn attach(&mut self, table: &Arc<SchemaTable>) -> Result<(), String> {
        if self.root as usize >= table.len() {
            return Err(format!("schema {} is past the table's {}", self.root, table.len()));
        }
        self.table = Arc::clone(table);
        Ok(())
    }
}

impl Serialize for Schema {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.root.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Schema {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Schema, D::Error> {
        Ok(Schema { root: NodeId::deserialize(d)?, table: Arc::default() })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unique_items_holds_on_long_arrays_with_numbers_by_value() {
        let unique = |items: Vec<Value>| all_different(&items);
        let long: Vec<Value> = (0..200_000).map(Value::from).collect();
        assert!(unique(long.clone()));
        let mut with_float = long;
        with_float.push(json!(7.0));
        assert!(!unique(with_float), "7.0 equals 7");
        let objects = |a: Value, b: Value| unique((0..20).map(|i| json!({"n": i})).chain([a, b]).collect());
        assert!(!objects(json!({"a": 1, "b": [1.0]}), json!({"b": [1], "a": 1})), "member order and 1.0 do not matter");
        assert!(objects(json!({"a": 1}), json!({"a": 1.5})));
        assert!(objects(json!(9007199254740993u64), json!(9007199254740992.0)), "exactly, past 2^53");
        assert!(!objects(json!(9223372036854775808u64), json!(9223372036854775808.0)));
    }
}
