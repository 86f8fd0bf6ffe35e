//! One row per rule, against `tests/protos/accounts.proto` (its protovalidate annotations).

use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MessageDescriptor, Value};

use super::*;

const DESCRIPTORS: &[u8] = include_bytes!("../tests/accounts.pb");

fn pool() -> DescriptorPool {
    DescriptorPool::decode(DESCRIPTORS).unwrap()
}

fn input(pool: &DescriptorPool, name: &str) -> MessageDescriptor {
    pool.get_message_by_name(name).unwrap()
}

fn message(pool: &DescriptorPool, name: &str, fields: &[(&str, Value)]) -> DynamicMessage {
    let mut m = DynamicMessage::new(input(pool, name));
    for (field, value) in fields {
        m.set_field_by_name(field, value.clone());
    }
    m
}

fn text(s: &str) -> Value {
    Value::String(s.into())
}

/// A request every rule lets through.
fn valid(pool: &DescriptorPool) -> Vec<(&'static str, Value)> {
    let address = message(pool, "demo.accounts.Address", &[("country", text("DE")), ("city", text("Berlin"))]);
    vec![
        ("name", text("Ada")),
        ("age", Value::I32(36)),
        ("plan", Value::EnumNumber(2)),
        ("address", Value::Message(address)),
        ("email", text("ada@example.com")),
    ]
}

#[test]
fn messages_are_checked_as_protovalidate_reads_them() {
    let pool = pool();
    let rules = FieldRules::compile(&pool, &[input(&pool, "demo.accounts.CreateAccountRequest")], FieldRulesMode::Enforce).unwrap();
    let address = |country: &str| Value::Message(message(&pool, "demo.accounts.Address", &[("country", text(country))]));
    let limits = |pairs: &[(&str, i64)]| Value::Map(pairs.iter().map(|(k, v)| (MapKey::String(k.to_string()), Value::I64(*v))).collect());
    let list = |items: &[&str]| Value::List(items.iter().map(|s| text(s)).collect());
    // (case, fields changed from the valid request (None: removed), the violation)
    type Row<'a> = (&'a str, Vec<(&'a str, Option<Value>)>, Option<(&'a str, &'a str)>);
    let rows: Vec<Row> = vec![
        ("valid", vec![], None),
        ("name empty (no presence: checked at its zero value)", vec![("name", None)], Some((".name", "string.min_len"))),
        ("name too long, in characters", vec![("name", Some(text("Ádá Lovelace!")))], Some((".name", "string.max_len"))),
        ("name of 12 characters, 15 bytes", vec![("name", Some(text("Ádá Lovelacé")))], None),
        ("age below", vec![("age", Some(Value::I32(17)))], Some((".age", "int32.range"))),
        ("age at the bounds", vec![("age", Some(Value::I32(150)))], None),
        ("plan unset (0 is not_in)", vec![("plan", None)], Some((".plan", "enum.not_in"))),
        ("plan undeclared", vec![("plan", Some(Value::EnumNumber(7)))], Some((".plan", "enum.defined_only"))),
        ("address missing (required)", vec![("address", None)], Some((".address", "required"))),
        ("nested: country lower-case", vec![("address", Some(address("de")))], Some((".address.country", "string.pattern"))),
        ("nested: country too long", vec![("address", Some(address("DEU")))], Some((".address.country", "string.len"))),
        ("tags within", vec![("tags", Some(list(&["a", "b"])))], None),
        ("tags too many", vec![("tags", Some(list(&["a", "b", "c", "d"])))], Some((".tags", "repeated.max_items"))),
        ("tags repeated", vec![("tags", Some(list(&["a", "a"])))], Some((".tags", "repeated.unique"))),
        ("a tag too long", vec![("tags", Some(list(&["a", "much-too-long"])))], Some((".tags[1]", "string.max_len"))),
        ("nickname unset (presence: not checked)", vec![], None),
        ("nickname set and short", vec![("nickname", Some(text("Al")))], Some((".nickname", "string.min_len"))),
        ("referrer empty (ignored at zero)", vec![("referrer_id", Some(text("")))], None),
        ("referrer not a uuid", vec![("referrer_id", Some(text("123")))], Some((".referrer_id", "string.uuid"))),
        ("referrer a uuid", vec![("referrer_id", Some(text("6f1c2d3e-4b5a-4c6d-8e9f-0a1b2c3d4e5f")))], None),
        ("balance negative", vec![("balance", Some(Value::F64(-0.5)))], Some((".balance", "double.gte"))),
        ("balance infinite", vec![("balance", Some(Value::F64(f64::INFINITY)))], Some((".balance", "double.finite"))),
        ("balance NaN", vec![("balance", Some(Value::F64(f64::NAN)))], Some((".balance", "double.finite"))),
        ("limits within", vec![("limits", Some(limits(&[("daily", 5)])))], None),
        ("a limit key not allowed", vec![("limits", Some(limits(&[("hourly", 5)])))], Some((".limits[hourly]", "string.in"))),
        ("a limit value zero", vec![("limits", Some(limits(&[("daily", 0)])))], Some((".limits[daily]", "int64.gt"))),
        ("no contact (oneof required)", vec![("email", None)], Some((".contact", "required"))),
        ("phone instead", vec![("email", None), ("phone", Some(text("+4930")))], None),
        ("phone without +", vec![("email", None), ("phone", Some(text("030")))], Some((".phone", "string.prefix"))),
        ("previous addresses checked too", vec![("previous", Some(Value::List(vec![address("FR"), address("fr")])))], Some((".previous[1].country", "string.pattern"))),
        ("score in the exclusive range's gap", vec![("score", Some(Value::U32(50)))], Some((".score", "uint32.range"))),
        ("score above", vec![("score", Some(Value::U32(101)))], None),
    ];
    for (case, changes, want) in rows {
        let mut fields = valid(&pool);
        for (name, value) in changes {
            fields.retain(|(f, _)| *f != name);
            if let Some(value) = value {
                fields.push((name, value));
            }
        }
        let m = message(&pool, "demo.accounts.CreateAccountRequest", &fields);
        let got = rules.check(&m).err().map(|v| (v.path, v.rule));
        assert_eq!(got, want.map(|(p, r)| (p.to_string(), r.to_string())), "{case}");
    }
}

#[test]
fn rules_meshward_does_not_implement_are_refused_or_left_to_the_service() {
    let pool = pool();
    let profile = input(&pool, "demo.accounts.Profile");
    let e = FieldRules::compile(&pool, std::slice::from_ref(&profile), FieldRulesMode::Enforce).unwrap_err();
    assert!(e.contains("demo.accounts.Profile.email.string") && e.contains("`email` is not implemented") && e.contains("enforce_known"), "{e}");
    let known = FieldRules::compile(&pool, &[profile], FieldRulesMode::EnforceKnown).unwrap();
    let check = |email: &str, handle: &str| {
        let m = message(&pool, "demo.accounts.Profile", &[("email", text(email)), ("handle", text(handle))]);
        known.check(&m).err().map(|v| v.rule)
    };
    assert_eq!(check("not an address", "ada"), None, "email left to the service");
    assert_eq!(check("a@b.c", "a"), Some("string.min_len".into()), "the rules meshward implements still hold");
    let off = FieldRules::compile(&pool, &[input(&pool, "demo.accounts.CreateAccountRequest")], FieldRulesMode::Off).unwrap();
    assert!(off.is_empty());
    // Messages without annotations (validate.proto's own carry CEL on their options, not rules).
    let plain = FieldRules::compile(&pool, &[input(&pool, "demo.accounts.Account")], FieldRulesMode::Enforce).unwrap();
    assert!(plain.is_empty());
}
