//! The service's schema in SDL, read once at configuration: every type's fields with their
//! types, and what the schema's directives say about them — `@cost(weight:)` and
//! `@listSize(assumedSize:, slicingArguments:, sizedFields:)` (the GraphQL cost directives
//! Apollo and IBM publish) and `@requiresScopes(scopes: [[...]])` (Apollo Federation's: any one
//! inner list, all of its scopes).
//!
//! An interface's field answers with whichever object implements it, so what it needs is what
//! each implementation's field needs (scopes merged, the highest cost); a type's own scopes and
//! cost reach the interfaces it implements and the unions it is a member of the same way.

use std::collections::{BTreeSet, HashMap};

use apollo_parser::cst;
use apollo_parser::Parser;
use meshward_core::config::ConfigError;

/// Scopes a field or type needs: any one of the inner lists, every scope of it.
pub type AnyOf = Vec<Vec<String>>;

/// How many items a list field answers with (`@listSize`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListSize {
    pub assumed: Option<u64>,
    /// Arguments whose value bounds the list (`first`, `limit`); the largest given counts.
    pub slicing: Vec<String>,
    /// Fields of the answer the size applies to (a connection's `edges`) instead of the field.
    pub sized_fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    /// The named type the field answers with (lists and non-null unwrapped).
    pub ty: String,
    pub list: bool,
    pub cost: Option<u64>,
    pub list_size: Option<ListSize>,
    /// Every entry must be met (the field's own, its type's, its implementations').
    pub scopes: Vec<AnyOf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Interface,
    Union,
    /// Scalars and enums: no selections.
    Leaf,
    Input,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDef {
    pub kind: Kind,
    pub fields: HashMap<String, FieldDef>,
    pub cost: Option<u64>,
    pub scopes: Vec<AnyOf>,
    /// Interfaces it implements / members of a union.
    related: Vec<String>,
}

impl TypeDef {
    fn new(kind: Kind) -> TypeDef {
        TypeDef { kind, fields: HashMap::new(), cost: None, scopes: Vec::new(), related: Vec::new() }
    }

    pub fn composite(&self) -> bool {
        matches!(self.kind, Kind::Object | Kind::Interface | Kind::Union)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub types: HashMap<String, TypeDef>,
    pub query: String,
    pub mutation: Option<String>,
    pub subscription: Option<String>,
    /// The directives the schema declares, each with whether it is `repeatable`.
    pub directives: HashMap<String, bool>,
}

const BUILT_IN_SCALARS: [&str; 5] = ["Int", "Float", "String", "Boolean", "ID"];

/// Arguments that bound a list by convention (Relay's `first` / `last`, and `limit`), read as
/// `@listSize(slicingArguments:)` where a field has no `@listSize`.
const SLICING_ARGUMENTS: [&str; 3] = ["first", "last", "limit"];

fn name_of(name: Option<cst::Name>) -> Option<String> {
    name.map(|n| n.text().to_string())
}

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError::new("schema", message)
}

/// The named type and whether a list wraps it.
fn unwrap_type(ty: cst::Type) -> Option<(String, bool)> {
    match ty {
        cst::Type::NamedType(n) => Some((name_of(n.name())?, false)),
        cst::Type::ListType(l) => Some((unwrap_type(l.ty()?)?.0, true)),
        cst::Type::NonNullType(n) => match (n.named_type(), n.list_type()) {
            (Some(named), _) => Some((name_of(named.name())?, false)),
            (None, Some(list)) => Some((unwrap_type(list.ty()?)?.0, true)),
            (None, None) => None,
        },
    }
}

/// The directives meshward reads on a field or type.
#[derive(Default)]
struct Directives {
    cost: Option<u64>,
    list_size: Option<ListSize>,
    scopes: Option<AnyOf>,
}

fn int(value: &cst::Value, at: &str) -> Result<u64, ConfigError> {
    match value {
        cst::Value::IntValue(v) => non_negative(v).ok_or_else(|| err(format!("{at}: a non-negative Int"))),
        // IBM's draft takes the weight as a string.
        cst::Value::StringValue(v) => String::from(v).parse().map_err(|_| err(format!("{at}: a non-negative Int"))),
        _ => Err(err(format!("{at}: a non-negative Int"))),
    }
}

fn strings(value: &cst::Value, at: &str) -> Result<Vec<String>, ConfigError> {
    let cst::Value::ListValue(list) = value else { return Err(err(format!("{at}: a list of strings"))) };
    list.values()
        .map(|v| match v {
            cst::Value::StringValue(s) => Ok(String::from(&s)),
            _ => Err(err(format!("{at}: a list of strings"))),
        })
        .collect()
}

fn directives(found: Option<cst::Directives>, at: &str) -> Result<Directives, ConfigError> {
    let mut out = Directives::default();
    for directive in found.iter().flat_map(|d| d.directives()) {
        let name = name_of(directive.name()).unwrap_or_default();
        let arguments: Vec<(String, cst::Value)> =
            directive.arguments().iter().flat_map(|a| a.arguments()).filter_map(|a| Some((name_of(a.name())?, a.value()?))).collect();
        let argument = |wanted: &str| arguments.iter().find(|(n, _)| n == wanted).map(|(_, v)| v);
        match name.as_str() {
            "cost" => {
                let weight = argument("weight").ok_or_else(|| err(format!("{at}: @cost needs `weight`")))?;
                out.cost = Some(int(weight, &format!("{at}: @cost(weight)"))?);
            }
            "listSize" => {
                let list = |arg: &str| argument(arg).map(|v| strings(v, &format!("{at}: @listSize({arg})"))).transpose();
                out.list_size = Some(ListSize {
                    assumed: argument("assumedSize").map(|v| int(v, &format!("{at}: @listSize(assumedSize)"))).transpose()?,
                    slicing: list("slicingArguments")?.unwrap_or_default(),
                    sized_fields: list("sizedFields")?.unwrap_or_default(),
                });
            }
            "requiresScopes" => {
                let at = format!("{at}: @requiresScopes(scopes)");
                let Some(cst::Value::ListValue(outer)) = argument("scopes") else { return Err(err(format!("{at}: a list of lists of scopes"))) };
                let any_of = outer.values().map(|inner| strings(&inner, &at)).collect::<Result<AnyOf, _>>()?;
                if any_of.is_empty() {
                    return Err(err(format!("{at}: name at least one list of scopes")));
                }
                out.scopes = Some(any_of);
            }
            _ => {}
        }
    }
    Ok(out)
}

impl Schema {
    /// Reads SDL; refuses what a schema cannot be (syntax errors, executable definitions,
    /// fields of undeclared types, a malformed directive meshward reads).
    pub fn parse(sdl: &str) -> Result<Schema, ConfigError> {
        let tree = Parser::new(sdl).parse();
        if let Some(e) = tree.errors().next() {
            return Err(err(format!("does not parse: {} at byte {}", e.message(), e.index())));
        }
        let mut types: HashMap<String, TypeDef> = BUILT_IN_SCALARS.iter().map(|s| (s.to_string(), TypeDef::new(Kind::Leaf))).collect();
        let mut roots: HashMap<OperationKind, String> = HashMap::new();
        let mut declared: HashMap<String, bool> = HashMap::new();
        for definition in tree.document().definitions() {
            let (name, kind, implements, found_directives, fields, members, extension) = match definition {
                cst::Definition::ObjectTypeDefinition(d) => (d.name(), Kind::Object, d.implements_interfaces(), d.directives(), d.fields_definition(), None, false),
                cst::Definition::ObjectTypeExtension(d) => (d.name(), Kind::Object, d.implements_interfaces(), d.directives(), d.fields_definition(), None, true),
                cst::Definition::InterfaceTypeDefinition(d) => (d.name(), Kind::Interface, d.implements_interfaces(), d.directives(), d.fields_definition(), None, false),
                cst::Definition::InterfaceTypeExtension(d) => (d.name(), Kind::Interface, d.implements_interfaces(), d.directives(), d.fields_definition(), None, true),
                cst::Definition::UnionTypeDefinition(d) => (d.name(), Kind::Union, None, d.directives(), None, d.union_member_types(), false),
                cst::Definition::UnionTypeExtension(d) => (d.name(), Kind::Union, None, d.directives(), None, d.union_member_types(), true),
                cst::Definition::ScalarTypeDefinition(d) => (d.name(), Kind::Leaf, None, d.directives(), None, None, false),
                cst::Definition::EnumTypeDefinition(d) => (d.name(), Kind::Leaf, None, d.directives(), None, None, false),
                cst::Definition::InputObjectTypeDefinition(d) => (d.name(), Kind::Input, None, None, None, None, false),
                cst::Definition::SchemaDefinition(d) => {
                    for root in d.root_operation_type_definitions() {
                        let kind = OperationKind::of(root.operation_type());
                        let ty = root.named_type().and_then(|n| name_of(n.name())).ok_or_else(|| err("a root operation type without a name"))?;
                        roots.insert(kind, ty);
                    }
                    continue;
                }
                cst::Definition::DirectiveDefinition(d) => {
                    let name = name_of(d.name()).ok_or_else(|| err("a directive without a name"))?;
                    declared.insert(name, d.repeatable_token().is_some());
                    continue;
                }
                cst::Definition::OperationDefinition(_) | cst::Definition::FragmentDefinition(_) => {
                    return Err(err("a schema holds type definitions, not operations or fragments"));
                }
                _ => continue,
            };
            let name = name_of(name).ok_or_else(|| err("a type without a name"))?;
            let own = directives(found_directives, &name)?;
            if own.list_size.is_some() {
                return Err(err(format!("{name}: @listSize belongs on list fields")));
            }
            let entry = types.entry(name.clone());
            let exists = matches!(entry, std::collections::hash_map::Entry::Occupied(_));
            if exists != extension && !BUILT_IN_SCALARS.contains(&name.as_str()) {
                return Err(err(if extension { format!("`extend` of undeclared type {name}") } else { format!("{name} is declared twice") }));
            }
            let ty = entry.or_insert_with(|| TypeDef::new(kind));
            if ty.kind != kind {
                return Err(err(format!("{name} is extended as another kind of type")));
            }
            ty.cost = own.cost.or(ty.cost);
            ty.scopes.extend(own.scopes);
            ty.related.extend(implements.iter().flat_map(|i| i.named_types()).filter_map(|n| name_of(n.name())));
            ty.related.extend(members.iter().flat_map(|m| m.named_types()).filter_map(|n| name_of(n.name())));
            for field in fields.iter().flat_map(|f| f.field_definitions()) {
                let field_name = name_of(field.name()).ok_or_else(|| err(format!("{name}: a field without a name")))?;
                let at = format!("{name}.{field_name}");
                let (of, list) = field.ty().and_then(unwrap_type).ok_or_else(|| err(format!("{at}: no type")))?;
                let d = directives(field.directives(), &at)?;
                let arguments: Vec<String> =
                    field.arguments_definition().iter().flat_map(|a| a.input_value_definitions()).filter_map(|v| name_of(v.name())).collect();
                let slicing: Vec<String> = SLICING_ARGUMENTS.iter().filter(|a| arguments.iter().any(|n| n == *a)).map(|a| a.to_string()).collect();
                // Without `@listSize`, the conventional slicing arguments bound a list (or a
                // connection: see `connections_sized`).
                let list_size = d.list_size.or_else(|| (!slicing.is_empty()).then(|| ListSize { slicing, ..ListSize::default() }));
                let def = FieldDef { ty: of, list, cost: d.cost, list_size, scopes: d.scopes.into_iter().collect() };
                if ty.fields.insert(field_name, def).is_some() {
                    return Err(err(format!("{at} is declared twice")));
                }
            }
        }
        let root = |kind: OperationKind, default: &str| roots.get(&kind).cloned().or_else(|| types.contains_key(default).then(|| default.to_string()));
        let schema = Schema {
            query: root(OperationKind::Query, "Query").ok_or_else(|| err("no query type (`type Query` or `schema { query: ... }`)"))?,
            mutation: root(OperationKind::Mutation, "Mutation"),
            subscription: root(OperationKind::Subscription, "Subscription"),
            types,
            directives: declared,
        };
        schema.connections_sized().checked()?.merged()
    }

    /// A sliced field (by convention, or `@listSize` without `sizedFields`) that answers with a
    /// Relay connection, not a list: the size applies to the connection's `edges` and `nodes`
    /// (the lists it holds).
    fn connections_sized(mut self) -> Schema {
        let lists_of = |ty: &TypeDef| -> Vec<String> {
            ["edges", "nodes"].iter().filter(|f| ty.fields.get(**f).is_some_and(|d| d.list)).map(|f| f.to_string()).collect()
        };
        let sized: HashMap<String, Vec<String>> =
            self.types.iter().map(|(name, ty)| (name.clone(), lists_of(ty))).filter(|(_, lists)| !lists.is_empty()).collect();
        for ty in self.types.values_mut() {
            for field in ty.fields.values_mut() {
                let Some(size) = field.list_size.as_mut() else { continue };
                if !field.list && size.sized_fields.is_empty() && size.assumed.is_none() {
                    if let Some(lists) = sized.get(&field.ty) {
                        size.sized_fields = lists.clone();
                    }
                }
            }
        }
        self
    }

    /// Every named type exists and is of a kind that fits where it is named.
    fn checked(self) -> Result<Schema, ConfigError> {
        for root in [Some(&self.query), self.mutation.as_ref(), self.subscription.as_ref()].into_iter().flatten() {
            if self.types.get(root).map(|t| t.kind) != Some(Kind::Object) {
                return Err(err(format!("root type {root} is not a declared object type")));
            }
        }
        for (name, ty) in &self.types {
            for related in &ty.related {
                let want = if ty.kind == Kind::Union { Kind::Object } else { Kind::Interface };
                if self.types.get(related).map(|t| t.kind) != Some(want) {
                    return Err(err(format!("{name}: {related} is not a declared {}", if want == Kind::Object { "object type" } else { "interface" })));
                }
            }
            for (field_name, field) in &ty.fields {
                let Some(of) = self.types.get(&field.ty) else { return Err(err(format!("{name}.{field_name}: undeclared type {}", field.ty))) };
                if of.kind == Kind::Input && ty.kind != Kind::Input {
                    return Err(err(format!("{name}.{field_name}: an input type answers no query")));
                }
                if field.list_size.as_ref().is_some_and(|s| !s.sized_fields.is_empty()) && !of.composite() {
                    return Err(err(format!("{name}.{field_name}: @listSize(sizedFields) on a field without fields")));
                }
            }
        }
        Ok(self)
    }

    /// What an interface or union answers with is one of its implementations / members: their
    /// scopes (type and field) reach it, and their highest cost.
    fn merged(mut self) -> Result<Schema, ConfigError> {
        let mut implementations: HashMap<String, BTreeSet<String>> = HashMap::new();
        for (name, ty) in &self.types {
            for related in &ty.related {
                let (group, member) = if ty.kind == Kind::Union { (name, related) } else { (related, name) };
                implementations.entry(group.clone()).or_default().insert(member.clone());
            }
        }
        // Interfaces implementing interfaces: follow to the objects (bounded by the type count).
        for _ in 0..self.types.len() {
            let mut grown = false;
            for group in implementations.keys().cloned().collect::<Vec<_>>() {
                let members: Vec<String> = implementations[&group].iter().cloned().collect();
                for m in members {
                    if let Some(more) = implementations.get(&m).cloned() {
                        let set = implementations.entry(group.clone()).or_default();
                        for x in more {
                            grown |= set.insert(x);
                        }
                    }
                }
            }
            if !grown {
                break;
            }
        }
        let original = self.types.clone();
        for (group, members) in &implementations {
            let Some(ty) = self.types.get_mut(group) else { continue };
            for member in members.iter().filter_map(|m| original.get(m)) {
                ty.scopes.extend(member.scopes.iter().cloned());
                ty.cost = ty.cost.max(member.cost);
                for (field_name, field) in ty.fields.iter_mut() {
                    if let Some(theirs) = member.fields.get(field_name) {
                        field.scopes.extend(theirs.scopes.iter().cloned());
                        field.cost = field.cost.max(theirs.cost);
                    }
                }
            }
            dedup(&mut ty.scopes);
            for field in ty.fields.values_mut() {
                dedup(&mut field.scopes);
            }
        }
        Ok(self)
    }

    /// The root type an operation starts at, by name (`None`: the schema has no such root).
    pub fn root(&self, kind: OperationKind) -> Option<(&str, &TypeDef)> {
        let name = match kind {
            OperationKind::Query => Some(&self.query),
            OperationKind::Mutation => self.mutation.as_ref(),
            OperationKind::Subscription => self.subscription.as_ref(),
        }?;
        self.types.get_key_value(name).map(|(name, ty)| (name.as_str(), ty))
    }
}

fn dedup(scopes: &mut Vec<AnyOf>) {
    let mut seen = BTreeSet::new();
    scopes.retain(|s| seen.insert(s.clone()));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperationKind {
    Query,
    Mutation,
    Subscription,
}

impl OperationKind {
    /// An operation's kind as written (none: the `{ ... }` shorthand, a query).
    pub fn of(written: Option<cst::OperationType>) -> OperationKind {
        match written {
            Some(t) if t.mutation_token().is_some() => OperationKind::Mutation,
            Some(t) if t.subscription_token().is_some() => OperationKind::Subscription,
            _ => OperationKind::Query,
        }
    }
}

/// An Int literal that is a non-negative 32-bit integer (GraphQL's `Int`).
pub fn non_negative(value: &cst::IntValue) -> Option<u64> {
    i32::try_from(value).ok().and_then(|n| u64::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDL: &str = r#"
        interface Node { id: ID! }
        type User implements Node @requiresScopes(scopes: [["users:read"]]) {
          id: ID!
          email: String @requiresScopes(scopes: [["users:pii"], ["admin"]])
          friends(first: Int): [User!]! @listSize(slicingArguments: ["first"], assumedSize: 50)
        }
        type Book implements Node { id: ID! title: String @cost(weight: 3) }
        union Result = User | Book
        type Query { node(id: ID!): Node  search: [Result] }
        extend type Query { me: User }
    "#;

    #[test]
    fn reads_types_fields_and_directives() {
        let schema = Schema::parse(SDL).unwrap();
        assert_eq!(schema.query, "Query");
        assert_eq!(schema.mutation, None);
        let user = &schema.types["User"];
        assert_eq!(user.scopes, vec![vec![vec!["users:read".to_string()]]]);
        assert_eq!(user.fields["email"].scopes, vec![vec![vec!["users:pii".to_string()], vec!["admin".to_string()]]]);
        let friends = &user.fields["friends"];
        assert_eq!((friends.ty.as_str(), friends.list), ("User", true));
        assert_eq!(friends.list_size, Some(ListSize { assumed: Some(50), slicing: vec!["first".into()], sized_fields: vec![] }));
        assert!(schema.types["Query"].fields.contains_key("me"), "extensions add fields");
        // An interface or union answers with User: User's scopes reach them.
        assert_eq!(schema.types["Node"].scopes, user.scopes);
        assert_eq!(schema.types["Result"].scopes, user.scopes);
        assert_eq!(schema.types["Book"].fields["title"].cost, Some(3));
    }

    #[test]
    fn refuses_what_is_not_a_schema() {
        let rows = [
            ("type Query { a: Missing }", "Query.a: undeclared type Missing"),
            ("type Query { a: Int } type Query { b: Int }", "Query is declared twice"),
            ("extend type Other { a: Int } type Query { a: Int }", "`extend` of undeclared type Other"),
            ("type Other { a: Int }", "no query type"),
            ("type Query { a: Int @cost(weight: -1) }", "Query.a: @cost(weight): a non-negative Int"),
            ("type Query { a: Int @requiresScopes(scopes: []) }", "name at least one list"),
            ("type Query { a: Int @requiresScopes(scopes: [[1]]) }", "a list of strings"),
            ("type Query { a: Int } union U = Query | Int", "U: Int is not a declared object type"),
            ("type Query { a: Int", "does not parse"),
            ("{ a }", "not operations"),
            ("schema { query: Q } type Query { a: Int }", "root type Q is not a declared object type"),
            // Escapes the lexer must refuse before the parser's unescaping (which panics on them).
            (r#"type Query { a: Int @requiresScopes(scopes: [["\uD800"]]) }"#, "does not parse"),
            (r#"type Query { a: Int @requiresScopes(scopes: [["\u{110000}"]]) }"#, "does not parse"),
            (r#"type Query { a: Int @requiresScopes(scopes: [["\uDC00\uD800"]]) }"#, "does not parse"),
        ];
        for (sdl, want) in rows {
            let e = Schema::parse(sdl).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(want), "{sdl}: {e}");
        }
    }
}
