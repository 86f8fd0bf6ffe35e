//! The module's schema interpreter against the jsonschema crate (the reference `meshward
//! compile` checks every schema with): the same verdict on every instance, over every schema of
//! the two real contracts (as the request and answer views rewrite them) and over generated
//! schemas. Seeded, so a failure names the seed and the case, and reruns the same way.
//!
//! `MESHWARD_DIFFERENTIAL=N` runs N generated schemas instead of the default.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use meshward_schema::compile::reference_validator;
use meshward_schema::lower::Lowering;
use meshward_schema::openapi::{rewrite_document, View};
use meshward_schema::validator::SchemaTable;
use serde_json::{json, Map, Value};

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings that sit on the edges of the formats and patterns contracts use.
const STRINGS: &[&str] = &[
    "", "a", "abc", "ABC", "a b", "0", "12", "-1", "1.5", "true", "null", "x@y.z", "a@b", "nobody", "a@[IPv6:::1]", "\"\"@b.c",
    "2023-02-28", "2024-02-29", "2023-02-29", "2023-13-01", "2023-02-28T12:00:00Z", "2023-02-28t12:00:00+01:00", "1998-12-31T23:59:60Z",
    "1998-12-31T23:59:60+01:00", "12:00:00Z", "12:00:00.5-05:30", "25:00:00Z", "P1D", "PT1H30M", "P1Y2D", "PT", "P1W", "10.0.0.1",
    "10.0.0.256", "::1", "::g", "fe80::1%eth0", "https://example.com/a?b#c", "http://[::1]:80/", "not a uri", "/relative", "a:b",
    "mailto:a@b.c", "http://a b", "123e4567-e89b-12d3-a456-426614174000", "123e4567e89b12d3a456426614174000", "/a~1b", "/a~2", "example.com",
    "-bad.example", "xn--nxasmq6b.example", "a..b", "ünïcödé", "٠١٢", "日本語", "a\nb", "a\u{2028}b", "a\u{a0}b", "\t", "aaaaaaaaaaaaaaaaaaaaaaaaa",
    "DOG", "dog", "available", "sold", "pending", "ACTIVE", "x-1", "A_1", "#fff", "+49 30 1234567",
];

const NUMBERS: &[&str] = &[
    "0", "-0", "1", "-1", "2", "3", "7", "10", "0.1", "0.2", "0.3", "0.25", "0.30000000000000004", "1.0", "1.5", "-2.5", "100", "1e2", "1E-2",
    "2147483647", "2147483648", "-2147483648", "-2147483649", "9007199254740993", "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "-9223372036854775809", "18446744073709551615", "18446744073709551616", "1e300", "19.99", "1070468.14",
];

fn number(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// An instance for `schema` (resolved in `doc`): often valid, often just not.
fn instance(rng: &mut Rng, doc: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if depth > 5 || rng.chance(8) {
        return random_scalar(rng);
    }
    let Value::Object(map) = schema else { return random_scalar(rng) };
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(members)) = map.get(key) {
            if !members.is_empty() && rng.chance(60) {
                let member = rng_member(rng, members);
                let mut merged = instance(rng, doc, member, depth + 1);
                if key == "allOf" {
                    for m in members {
                        if let (Value::Object(into), Value::Object(more)) = (&mut merged, instance(rng, doc, m, depth + 1)) {
                            into.extend(more);
                        }
                    }
                }
                return merged;
            }
        }
    }
    if let Some(Value::Array(values)) = map.get("enum") {
        if !values.is_empty() && rng.chance(70) {
            return rng.pick(values).clone();
        }
    }
    if let Some(c) = map.get("const") {
        if rng.chance(70) {
            return c.clone();
        }
    }
    let kind = match map.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) if !ts.is_empty() => rng.pick(ts).as_str().unwrap_or("string").to_string(),
        _ if map.contains_key("properties") => "object".into(),
        _ if map.contains_key("items") => "array".into(),
        _ => ["string", "integer", "number", "object", "array", "boolean", "null"][rng.below(7)].into(),
    };
    match kind.as_str() {
        "object" => {
            let mut out = Map::new();
            let props = map.get("properties").and_then(Value::as_object);
            let required: Vec<&str> = map.get("required").and_then(Value::as_array).map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            if let Some(props) = props {
                for (name, sub) in props {
                    let wanted = required.contains(&name.as_str());
                    if (wanted && rng.chance(95)) || (!wanted && rng.chance(50)) {
                        out.insert(name.clone(), instance(rng, doc, sub, depth + 1));
                    }
                }
            }
            if rng.chance(20) {
                out.insert(["extra", "Quantity", "is_admin", "a", "1"][rng.below(5)].into(), random_scalar(rng));
            }
            Value::Object(out)
        }
        "array" => {
            let n = rng.below(4);
            let items = map.get("items").cloned().unwrap_or(json!({}));
            let mut out: Vec<Value> = (0..n).map(|_| instance(rng, doc, &items, depth + 1)).collect();
            if n > 0 && rng.chance(15) {
                out.push(out[0].clone());
            }
            Value::Array(out)
        }
        "integer" | "number" => {
            let mut candidates: Vec<Value> = NUMBERS.iter().map(|n| number(n)).collect();
            for bound in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"] {
                if let Some(Value::Number(b)) = map.get(bound) {
                    let b = b.as_f64().unwrap_or(0.0);
                    for delta in [-1.0, 0.0, 1.0, 0.5] {
                        if let Some(n) = serde_json::Number::from_f64(b + delta) {
                            candidates.push(Value::Number(n));
                        }
                    }
                    candidates.push(map[bound].clone());
                }
            }
            rng.pick(&candidates).clone()
        }
        "boolean" => Value::Bool(rng.chance(50)),
        "null" => Value::Null,
        _ => {
            if let Some(Value::Number(max)) = map.get("maxLength") {
                if rng.chance(30) {
                    return Value::String("x".repeat(max.as_u64().unwrap_or(1) as usize + rng.below(2)));
                }
            }
            Value::String(rng.pick(STRINGS).to_string())
        }
    }
}

fn rng_member<'a>(rng: &mut Rng, members: &'a [Value]) -> &'a Value {
    &members[rng.below(members.len())]
}

fn random_scalar(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(50)),
        2 | 3 => number(NUMBERS[rng.below(NUMBERS.len())]),
        4 => json!([]),
        _ => Value::String(rng.pick(STRINGS).to_string()),
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let mut at = schema;
    for _ in 0..16 {
        match at.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')).and_then(|p| doc.pointer(p)) {
            Some(next) => at = next,
            None => break,
        }
    }
    at
}

/// Every schema of `view` at `pointer` and the instances generated for it: both engines agree.
fn agree(view: &Value, pointer: &str, rng: &mut Rng, instances: usize, case: &str) -> usize {
    let reference = reference_validator(view, pointer).unwrap_or_else(|e| panic!("{case}: the reference refuses {pointer}: {e}"));
    let mut lowering = Lowering::new(vec![view]);
    let root = lowering.lower(0, pointer).unwrap_or_else(|e| panic!("{case}: lowering {pointer}: {e}"));
    let (nodes, patterns) = lowering.finish();
    let table = SchemaTable::new(nodes, &patterns).unwrap();
    let schema = view.pointer(pointer).unwrap();
    let mut checked = 0;
    for _ in 0..instances {
        let value = instance(rng, view, schema, 0);
        let want = reference.is_valid(&value);
        let got = table.validate(root, &value);
        assert_eq!(got.is_ok(), want, "{case}: schema {pointer} = {schema} instance {value}: interpreter {got:?}, reference valid={want}");
        if let Err(violation) = got {
            // The keyword reported is the reference's first error's, where it has exactly one.
            let errors: Vec<_> = reference.iter_errors(&value).collect();
            if errors.len() == 1 && violation.keyword != "falseSchema" {
                assert_eq!(violation.keyword, errors[0].kind().keyword(), "{case}: {pointer} = {schema} {value}: {}", errors[0]);
            }
        }
        checked += 1;
    }
    checked
}

/// Every schema object in a view: components, and what operations declare inline.
fn schema_pointers(view: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Value::Object(schemas)) = view.pointer("/components/schemas") {
        out.extend(schemas.keys().map(|k| format!("/components/schemas/{}", k.replace('~', "~0").replace('/', "~1"))));
    }
    fn walk(value: &Value, at: String, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    if k == "schema" && v.is_object() {
                        out.push(here.clone());
                    }
                    walk(v, here, out);
                }
            }
            Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| walk(v, format!("{at}/{i}"), out)),
            _ => {}
        }
    }
    if let Some(paths) = view.get("paths") {
        walk(paths, "/paths".into(), &mut out);
    }
    out
}

fn spec(name: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/../../tests/specs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    if name.ends_with(".json") {
        serde_json::from_str(&text).unwrap()
    } else {
        serde_yaml::from_str(&text).unwrap()
    }
}

#[test]
fn the_real_contracts_get_the_reference_verdicts() {
    let mut rng = Rng(0x5eed_0001);
    let mut total = 0;
    for name in ["crapi-openapi-spec.json", "petstore-openapi.yaml"] {
        let doc = spec(name);
        let answers = View { hide_write_only: true, optional_scoped: true, ..View::default() };
        for (label, view) in [("open", View::request(false)), ("closed", View::request(true)), ("answers", answers)] {
            let rewritten = rewrite_document(&doc, &view);
            for pointer in schema_pointers(&rewritten) {
                total += agree(&rewritten, &pointer, &mut rng, 60, &format!("{name} {label}"));
            }
        }
    }
    eprintln!("the real contracts: {total} instances, the same verdicts");
    assert!(total > 10_000, "only {total} instances checked");
}

/// A schema built from the keywords the interpreter runs, nested.
fn random_schema(rng: &mut Rng, depth: usize) -> Value {
    if depth > 3 || rng.chance(10) {
        return if rng.chance(70) { json!({}) } else { Value::Bool(rng.chance(60)) };
    }
    let mut s = Map::new();
    let types = ["string", "integer", "number", "object", "array", "boolean", "null"];
    match rng.below(4) {
        0 => {}
        1 | 2 => {
            s.insert("type".into(), json!(types[rng.below(types.len())]));
        }
        _ => {
            s.insert("type".into(), json!([types[rng.below(types.len())], types[rng.below(types.len())]]));
        }
    }
    let ints = [0u64, 1, 2, 3, 5];
    let nums = ["0", "1", "-1", "2.5", "0.1", "0.01", "3", "100", "2147483647", "9223372036854775807", "1e300"];
    let add = |s: &mut Map<String, Value>, rng: &mut Rng, k: &str, v: Value| {
        if rng.chance(25) {
            s.insert(k.into(), v);
        }
    };
    for k in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
        let v = number(nums[rng.below(nums.len())]);
        add(&mut s, rng, k, v);
    }
    let multiple = number(["0.1", "0.01", "2", "3", "0.5", "2.675"][rng.below(6)]);
    add(&mut s, rng, "multipleOf", multiple);
    for k in ["minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties"] {
        let v = json!(ints[rng.below(ints.len())]);
        add(&mut s, rng, k, v);
    }
    let patterns = ["^[a-z]+$", "\\d", "^\\w+$", "\\s", "^.$", "^[^@]+@[^@]+$", "^(DOG|CAT)$", "x{2,}", "^\\S+$", "^[A-Z_0-9-]{1,3}$"];
    let p = json!(patterns[rng.below(patterns.len())]);
    add(&mut s, rng, "pattern", p);
    let formats = ["date", "date-time", "time", "duration", "email", "hostname", "ipv4", "ipv6", "uri", "uri-reference", "uuid", "json-pointer", "int32", "binary"];
    let f = json!(formats[rng.below(formats.len())]);
    add(&mut s, rng, "format", f);
    let values = json!(["dog", 1, 1.0, null, [1], {"a": 1}, true]);
    if rng.chance(15) {
        let n = 1 + rng.below(4);
        s.insert("enum".into(), Value::Array(values.as_array().unwrap().iter().take(n).cloned().collect()));
    }
    if rng.chance(8) {
        s.insert("const".into(), values[rng.below(7)].clone());
    }
    add(&mut s, rng, "uniqueItems", json!(true));
    if rng.chance(40) {
        let mut props = Map::new();
        for name in ["a", "b", "Quantity", "x/y"] {
            if rng.chance(50) {
                props.insert(name.into(), random_schema(rng, depth + 1));
            }
        }
        s.insert("properties".into(), Value::Object(props));
        if rng.chance(40) {
            s.insert("required".into(), json!(["a"]));
        }
    }
    for k in ["items", "additionalProperties", "not", "contains", "propertyNames", "unevaluatedProperties", "unevaluatedItems"] {
        if rng.chance(12) {
            s.insert(k.into(), random_schema(rng, depth + 1));
        }
    }
    if rng.chance(10) {
        s.insert("patternProperties".into(), json!({"^x": random_schema(rng, depth + 1)}));
    }
    if rng.chance(10) {
        s.insert("prefixItems".into(), json!([random_schema(rng, depth + 1), random_schema(rng, depth + 1)]));
    }
    for k in ["allOf", "anyOf", "oneOf"] {
        if rng.chance(12) {
            s.insert(k.into(), json!([random_schema(rng, depth + 1), random_schema(rng, depth + 1)]));
        }
    }
    if rng.chance(8) {
        s.insert("if".into(), random_schema(rng, depth + 1));
        s.insert("then".into(), random_schema(rng, depth + 1));
        s.insert("else".into(), random_schema(rng, depth + 1));
    }
    if rng.chance(6) {
        s.insert("dependentRequired".into(), json!({"a": ["b"]}));
    }
    if rng.chance(6) {
        s.insert("dependentSchemas".into(), json!({"a": random_schema(rng, depth + 1)}));
    }
    if rng.chance(6) {
        s.insert("minContains".into(), json!(ints[rng.below(3)]));
        s.insert("maxContains".into(), json!(ints[rng.below(5)]));
    }
    if rng.chance(8) {
        s.insert("$ref".into(), json!("#/$defs/shared"));
    }
    Value::Object(s)
}

#[test]
fn generated_schemas_get_the_reference_verdicts() {
    let schemas: u64 = std::env::var("MESHWARD_DIFFERENTIAL").ok().and_then(|n| n.parse().ok()).unwrap_or(1500);
    let mut checked = 0;
    for seed in 1..=schemas {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let shared = random_schema(&mut rng, 1);
        let root = random_schema(&mut rng, 0);
        let doc = json!({"$defs": {"shared": shared}, "root": root});
        // A schema the reference or the lowering refuses is one `compile` refuses.
        if reference_validator(&doc, "/root").is_err() || Lowering::new(vec![&doc]).lower(0, "/root").is_err() {
            continue;
        }
        checked += agree(&doc, "/root", &mut rng, 40, &format!("seed {seed}"));
    }
    eprintln!("{schemas} generated schemas: {checked} instances, the same verdicts");
    assert!(checked > schemas as usize * 20, "only {checked} instances checked");
}
