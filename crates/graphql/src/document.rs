//! What a GraphQL document asks for, read by Apollo's parser: the operations it names, how deep
//! its selections nest, how many aliases it uses, whether it introspects. Fragments are
//! followed where they are spread (a cycle is an invalid document).
//!
//! With the service's [`Schema`], each operation's fields are looked up (a field the schema does
//! not declare is refused: what it needs could not be known), and the walk also yields what the
//! operation costs ([`Cost`], evaluated with the request's variables) and which fields need
//! scopes ([`Access`]).

use std::collections::HashMap;

use apollo_parser::cst::{self, CstNode};
use apollo_parser::Parser;
use serde_json::{Map, Value};

use crate::schema::{non_negative, AnyOf, ListSize, OperationKind, Schema, TypeDef};
use crate::GraphqlError;

/// Syntax nesting the parser follows before it gives up (a document nested deeper is invalid).
const RECURSION_LIMIT: usize = 128;
/// Tokens the parser reads before it gives up.
const TOKEN_LIMIT: usize = 100_000;
/// Fragments spread inside fragments, nested, before a document is too complex (each level is
/// a frame of the walk: a chain of thousands would exhaust the VM's stack).
const MAX_FRAGMENT_NESTING: usize = 32;
/// Selections visited (fragments expanded where spread) before a document is too complex:
/// fragments spreading fragments twice over would otherwise double the work at each step.
const MAX_VISITS: usize = 10_000;

/// What a document may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_depth: usize,
    pub max_aliases: usize,
    pub introspection: bool,
    /// Items a list field is taken to answer with when neither an argument nor `@listSize` says.
    pub default_list_size: u64,
    /// Directives at one location (a field, a fragment, an operation, a variable).
    pub max_directives: usize,
}

/// Directives GraphQL defines, none repeatable (`@defer` / `@stream` as their RFC has them).
const BUILT_IN_DIRECTIVES: [&str; 7] = ["skip", "include", "deprecated", "specifiedBy", "oneOf", "defer", "stream"];

/// The directives at one location, as graphql-js's `UniqueDirectivesPerLocation` rule reads
/// them: a directive that is not repeatable (a built-in, or one the schema declares without
/// `repeatable`) given twice is invalid; and at most `limits.max_directives` of them (a
/// directive the server does not know is its own validation's to refuse, but only after it
/// read thousands of them).
fn check_directives(directives: Option<cst::Directives>, limits: &Limits, schema: Option<&Schema>) -> Result<(), GraphqlError> {
    let mut seen: Vec<String> = Vec::new();
    for directive in directives.iter().flat_map(|d| d.directives()) {
        if seen.len() >= limits.max_directives {
            return Err(GraphqlError::TooManyDirectives { max: limits.max_directives });
        }
        let name = directive.name().map(|n| text(&n)).unwrap_or_default();
        let repeatable = match schema.and_then(|s| s.directives.get(&name)) {
            Some(repeatable) => *repeatable,
            None => !BUILT_IN_DIRECTIVES.contains(&name.as_str()),
        };
        if !repeatable && seen.contains(&name) {
            return Err(GraphqlError::InvalidDocument);
        }
        seen.push(name);
    }
    Ok(())
}

fn text(node: &impl CstNode) -> String {
    node.syntax().text().to_string()
}

/// How many items a list answers with: the largest slicing argument given (literal, or a
/// variable's value), else `otherwise`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    literal: Option<u64>,
    /// Variables given as slicing arguments, with the operation's default for each.
    variables: Vec<(String, Option<u64>)>,
    otherwise: u64,
}

/// A variable's value as a list size: a non-negative integer (or absent / null).
fn size_value(value: Option<&Value>) -> Result<Option<u64>, GraphqlError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => Ok(Some(n)),
            // `as` saturates: 1e30 is u64::MAX.
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 => Ok(Some(f as u64)),
            _ => Err(GraphqlError::InvalidRequest),
        },
        Some(_) => Err(GraphqlError::InvalidRequest),
    }
}

impl Size {
    fn fixed(n: u64) -> Size {
        Size { literal: None, variables: Vec::new(), otherwise: n }
    }

    fn of(&self, variables: &Map<String, Value>) -> Result<u64, GraphqlError> {
        let mut given = self.literal;
        for (name, default) in &self.variables {
            if let Some(n) = size_value(variables.get(name))?.or(*default) {
                given = given.max(Some(n));
            }
        }
        Ok(given.unwrap_or(self.otherwise))
    }
}

/// A selection runs only when a variable has a value (`@include(if: $v)`: true; `@skip(if: $v)`:
/// false). A variable left out takes its default; with none, the selection counts as run (the
/// strict reading: its cost is paid, its scopes needed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    variable: String,
    runs_when: bool,
    default: Option<bool>,
}

/// Every condition holds with these variables (`Err`: a condition variable that is not a boolean).
fn all_hold(conditions: &[Condition], variables: &Map<String, Value>) -> Result<bool, GraphqlError> {
    for c in conditions {
        let value = match variables.get(&c.variable) {
            None | Some(Value::Null) => c.default,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(GraphqlError::InvalidRequest),
        };
        if value.is_some_and(|v| v != c.runs_when) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What an operation costs: fixed weights, plus lists whose size may come from variables, plus
/// selections that run only under conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cost {
    fixed: u64,
    lists: Vec<(Size, Cost)>,
    conditional: Vec<(Vec<Condition>, Cost)>,
}

impl Cost {
    fn add(&mut self, other: Cost) {
        self.fixed = self.fixed.saturating_add(other.fixed);
        self.lists.extend(other.lists);
        self.conditional.extend(other.conditional);
    }

    /// `size` times `each`, folded where nothing depends on the request.
    fn scaled(size: Size, each: Cost) -> Cost {
        if size.literal.is_none() && size.variables.is_empty() && each.lists.is_empty() && each.conditional.is_empty() {
            return Cost { fixed: size.otherwise.saturating_mul(each.fixed), ..Cost::default() };
        }
        Cost { lists: vec![(size, each)], ..Cost::default() }
    }

    /// The cost with these variables (`Err`: a size variable that is not a non-negative
    /// integer, a condition variable that is not a boolean).
    pub fn of(&self, variables: &Map<String, Value>) -> Result<u64, GraphqlError> {
        let mut total = self.fixed;
        for (size, each) in &self.lists {
            total = total.saturating_add(size.of(variables)?.saturating_mul(each.of(variables)?));
        }
        for (conditions, cost) in &self.conditional {
            if all_hold(conditions, variables)? {
                total = total.saturating_add(cost.of(variables)?);
            }
        }
        Ok(total)
    }
}

/// A selected field that needs scopes: every entry of `needs` met (any one list, all of it),
/// when its conditions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// `Type.field`, as the denial names it.
    pub coordinate: String,
    pub needs: Vec<AnyOf>,
    pub when: Vec<Condition>,
}

impl Access {
    /// The field runs with these variables.
    pub fn applies(&self, variables: &Map<String, Value>) -> Result<bool, GraphqlError> {
        all_hold(&self.when, variables)
    }
}

/// Whether a selection runs, by its `@skip` / `@include`.
enum Gate {
    Always,
    Never,
    When(Vec<Condition>),
}

/// One operation of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationInfo {
    /// `None` for an anonymous operation.
    pub name: Option<String>,
    /// A `query` (the shorthand `{ ... }` included): the only kind a GET may run.
    pub query: bool,
    /// With a schema: what it costs, and the fields that need scopes (else zero and none).
    pub cost: Cost,
    pub access: Vec<Access>,
}

/// A variable's default, where it decides something: a list size or a condition.
#[derive(Debug, Clone, Copy)]
enum VariableDefault {
    Size(u64),
    Flag(bool),
}

/// The operation's variables, each with its default (what a variable left out is).
fn defaults(op: &cst::OperationDefinition) -> HashMap<String, Option<VariableDefault>> {
    let definitions = op.variable_definitions().into_iter().flat_map(|d| d.variable_definitions());
    definitions
        .filter_map(|d| {
            let name = d.variable()?.name()?.text().to_string();
            let default = match d.default_value().and_then(|v| v.value()) {
                Some(cst::Value::IntValue(v)) => non_negative(&v).map(VariableDefault::Size),
                Some(cst::Value::BooleanValue(b)) => Some(VariableDefault::Flag(b.true_token().is_some())),
                _ => None,
            };
            Some((name, default))
        })
        .collect()
}

/// The document's operations once it is within `limits` (and, with a schema, selects only
/// fields it declares).
pub fn check_document(source: &str, limits: &Limits, schema: Option<&Schema>) -> Result<Vec<OperationInfo>, GraphqlError> {
    let tree = Parser::new(source).recursion_limit(RECURSION_LIMIT).token_limit(TOKEN_LIMIT).parse();
    if tree.errors().len() > 0 {
        return Err(GraphqlError::InvalidDocument);
    }
    let mut operations = Vec::new();
    let mut fragments = HashMap::new();
    for definition in tree.document().definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => {
                check_directives(op.directives(), limits, schema)?;
                for variable in op.variable_definitions().iter().flat_map(|v| v.variable_definitions()) {
                    check_directives(variable.directives(), limits, schema)?;
                }
                operations.push(op)
            }
            cst::Definition::FragmentDefinition(f) => {
                check_directives(f.directives(), limits, schema)?;
                let name = f.fragment_name().and_then(|n| n.name()).map(|n| text(&n)).ok_or(GraphqlError::InvalidDocument)?;
                let on = f.type_condition().and_then(|c| c.named_type()).and_then(|n| n.name()).map(|n| text(&n)).ok_or(GraphqlError::InvalidDocument)?;
                let set = f.selection_set().ok_or(GraphqlError::InvalidDocument)?;
                if fragments.insert(name, (on, set)).is_some() {
                    return Err(GraphqlError::InvalidDocument);
                }
            }
            // An executable document only: no schema definitions.
            _ => return Err(GraphqlError::InvalidDocument),
        }
    }
    if operations.is_empty() {
        return Err(GraphqlError::InvalidDocument);
    }
    let mut walk = Walk {
        fragments: &fragments,
        limits,
        schema,
        aliases: 0,
        visits: 0,
        visiting: Vec::new(),
        defaults: HashMap::new(),
        access: Vec::new(),
        conditions: Vec::new(),
        excluded: 0,
    };
    let mut infos = Vec::with_capacity(operations.len());
    for op in &operations {
        let set = op.selection_set().ok_or(GraphqlError::InvalidDocument)?;
        let kind = OperationKind::of(op.operation_type());
        let root = match schema.map(|s| s.root(kind)) {
            None => Parent::UNTYPED,
            Some(Some((name, ty))) => Parent { ty: Some(ty), name, sized: None },
            Some(None) => return Err(GraphqlError::InvalidDocument),
        };
        walk.defaults = defaults(op);
        let cost = walk.selection_set(&set, 1, root)?;
        infos.push(OperationInfo {
            name: op.name().map(|n| text(&n)),
            query: kind == OperationKind::Query,
            cost,
            access: std::mem::take(&mut walk.access),
        });
    }
    Ok(infos)
}

/// The type whose fields a selection set selects (`None`: no schema, or inside introspection),
/// and the size a connection field hands to its `sizedFields`.
#[derive(Clone, Copy)]
struct Parent<'s, 'z> {
    ty: Option<&'s TypeDef>,
    name: &'s str,
    sized: Option<(&'s ListSize, &'z Size)>,
}

impl Parent<'_, '_> {
    /// Fields read for the limits only.
    const UNTYPED: Parent<'static, 'static> = Parent { ty: None, name: "", sized: None };
}

struct Walk<'a> {
    fragments: &'a HashMap<String, (String, cst::SelectionSet)>,
    limits: &'a Limits,
    schema: Option<&'a Schema>,
    aliases: usize,
    visits: usize,
    /// Fragments being expanded (a spread of one of them again is a cycle).
    visiting: Vec<String>,
    /// The current operation's variable defaults, and the fields it selects that need scopes.
    defaults: HashMap<String, Option<VariableDefault>>,
    access: Vec<Access>,
    /// The conditions the selection being walked runs under; `excluded`: inside a selection
    /// that never runs (`@skip(if: true)`), checked but neither priced nor scoped.
    conditions: Vec<Condition>,
    excluded: usize,
}

impl<'a> Walk<'a> {
    /// The fields of a selection set at `depth` (top-level fields are at depth 1): what they cost.
    fn selection_set(&mut self, set: &cst::SelectionSet, depth: usize, parent: Parent<'a, '_>) -> Result<Cost, GraphqlError> {
        if depth > self.limits.max_depth {
            return Err(GraphqlError::TooDeep { max: self.limits.max_depth });
        }
        let mut cost = Cost::default();
        for selection in set.selections() {
            self.visits += 1;
            if self.visits > MAX_VISITS {
                return Err(GraphqlError::TooComplex);
            }
            let directives = match &selection {
                cst::Selection::Field(f) => f.directives(),
                cst::Selection::InlineFragment(f) => f.directives(),
                cst::Selection::FragmentSpread(f) => f.directives(),
            };
            let gate = self.gate(directives)?;
            let pushed = match &gate {
                Gate::Never => {
                    self.excluded += 1;
                    0
                }
                Gate::When(conditions) => {
                    self.conditions.extend(conditions.iter().cloned());
                    conditions.len()
                }
                Gate::Always => 0,
            };
            let selected = self.selection(selection, depth, parent);
            self.conditions.truncate(self.conditions.len() - pushed);
            let selected = selected?;
            match gate {
                Gate::Always => cost.add(selected),
                Gate::Never => self.excluded -= 1,
                Gate::When(conditions) => cost.add(Cost { conditional: vec![(conditions, selected)], ..Cost::default() }),
            }
        }
        Ok(cost)
    }

    fn selection(&mut self, selection: cst::Selection, depth: usize, parent: Parent<'a, '_>) -> Result<Cost, GraphqlError> {
        match selection {
            cst::Selection::Field(field) => self.field(&field, depth, parent),
            cst::Selection::InlineFragment(fragment) => {
                let on = fragment.type_condition().and_then(|c| c.named_type()).and_then(|n| n.name()).map(|n| text(&n));
                let inner = fragment.selection_set().ok_or(GraphqlError::InvalidDocument)?;
                let parent = self.narrowed(parent, on.as_deref())?;
                self.selection_set(&inner, depth, parent)
            }
            cst::Selection::FragmentSpread(spread) => {
                let name = spread.fragment_name().and_then(|n| n.name()).map(|n| text(&n)).ok_or(GraphqlError::InvalidDocument)?;
                if self.visiting.contains(&name) {
                    return Err(GraphqlError::InvalidDocument);
                }
                if self.visiting.len() >= MAX_FRAGMENT_NESTING {
                    return Err(GraphqlError::TooComplex);
                }
                let fragments = self.fragments;
                let (on, inner) = fragments.get(&name).ok_or(GraphqlError::InvalidDocument)?;
                let parent = self.narrowed(parent, Some(on))?;
                self.visiting.push(name);
                let cost = self.selection_set(inner, depth, parent);
                self.visiting.pop();
                cost
            }
        }
    }

    /// A selection's `@skip(if:)` / `@include(if:)`: a literal decides now, a variable later.
    fn gate(&self, directives: Option<cst::Directives>) -> Result<Gate, GraphqlError> {
        check_directives(directives.clone(), self.limits, self.schema)?;
        let mut conditions = Vec::new();
        for directive in directives.iter().flat_map(|d| d.directives()) {
            let runs_when = match directive.name().map(|n| n.text().to_string()).as_deref() {
                Some("include") => true,
                Some("skip") => false,
                _ => continue,
            };
            let arguments: Vec<cst::Argument> = directive.arguments().iter().flat_map(|a| a.arguments()).collect();
            let [argument] = arguments.as_slice() else { return Err(GraphqlError::InvalidDocument) };
            if argument.name().map(|n| n.text().to_string()).as_deref() != Some("if") {
                return Err(GraphqlError::InvalidDocument);
            }
            match argument.value() {
                Some(cst::Value::BooleanValue(b)) if b.true_token().is_some() != runs_when => return Ok(Gate::Never),
                Some(cst::Value::BooleanValue(_)) => {}
                Some(cst::Value::Variable(v)) => {
                    let (variable, default) = self.variable(&v)?;
                    let default = match default {
                        Some(VariableDefault::Flag(b)) => Some(b),
                        _ => None,
                    };
                    conditions.push(Condition { variable, runs_when, default });
                }
                _ => return Err(GraphqlError::InvalidDocument),
            }
        }
        Ok(if conditions.is_empty() { Gate::Always } else { Gate::When(conditions) })
    }

    /// Inside `... on T`: T's fields (a composite type the schema declares).
    fn narrowed<'z>(&self, parent: Parent<'a, 'z>, on: Option<&str>) -> Result<Parent<'a, 'z>, GraphqlError> {
        let (Some(schema), Some(_), Some(on)) = (self.schema, parent.ty, on) else { return Ok(parent) };
        match schema.types.get_key_value(on) {
            Some((name, ty)) if ty.composite() => Ok(Parent { ty: Some(ty), name, sized: parent.sized }),
            _ => Err(GraphqlError::UnknownField { coordinate: on.to_string() }),
        }
    }

    fn field(&mut self, field: &cst::Field, depth: usize, parent: Parent<'a, '_>) -> Result<Cost, GraphqlError> {
        let name = field.name().map(|n| text(&n)).unwrap_or_default();
        if !self.limits.introspection && (name == "__schema" || name == "__type") {
            return Err(GraphqlError::Introspection);
        }
        if field.alias().is_some() {
            self.aliases += 1;
            if self.aliases > self.limits.max_aliases {
                return Err(GraphqlError::TooManyAliases { max: self.limits.max_aliases });
            }
        }
        let inner = field.selection_set();
        let (Some(schema), Some(ty)) = (self.schema, parent.ty) else {
            // No schema (or introspection, which the schema does not describe): limits only.
            return match inner {
                Some(inner) => self.selection_set(&inner, depth + 1, Parent::UNTYPED),
                None => Ok(Cost::default()),
            };
        };
        if name.starts_with("__") {
            return match (name.as_str(), inner) {
                ("__typename", None) => Ok(Cost::default()),
                ("__schema" | "__type", Some(inner)) => self.selection_set(&inner, depth + 1, Parent::UNTYPED),
                _ => Err(GraphqlError::InvalidDocument),
            };
        }
        let coordinate = || format!("{}.{name}", parent.name);
        let Some(def) = ty.fields.get(&name) else { return Err(GraphqlError::UnknownField { coordinate: coordinate() }) };
        let Some((of_name, of)) = schema.types.get_key_value(&def.ty) else { return Err(GraphqlError::UnknownField { coordinate: coordinate() }) };
        let needs: Vec<AnyOf> = def.scopes.iter().chain(&of.scopes).cloned().collect();
        if !needs.is_empty() && self.excluded == 0 {
            let coordinate = coordinate();
            if !self.access.iter().any(|a| a.coordinate == coordinate && (a.when.is_empty() || a.when == self.conditions)) {
                self.access.push(Access { coordinate, needs, when: self.conditions.clone() });
            }
        }
        // A connection's size, handed down to its `sizedFields`; a list's own size.
        let slicing_size = |list_size: &ListSize| self.size(field, list_size);
        let handed = parent.sized.filter(|(s, _)| s.sized_fields.contains(&name)).map(|(_, size)| size.clone());
        let own_size = match (&def.list_size, def.list) {
            (Some(s), true) if s.sized_fields.is_empty() => Some(slicing_size(s)?),
            (_, true) => Some(Size::fixed(self.limits.default_list_size)),
            (_, false) => None,
        };
        let size = handed.or(own_size);
        let for_children = match &def.list_size {
            Some(s) if !s.sized_fields.is_empty() => Some((s, slicing_size(s)?)),
            _ => None,
        };
        let each = def.cost.or(of.cost).unwrap_or(u64::from(of.composite()));
        let mut per_item = Cost { fixed: each, ..Cost::default() };
        match (inner, of.composite()) {
            (Some(inner), true) => {
                let sized = for_children.as_ref().map(|(s, size)| (*s, size));
                per_item.add(self.selection_set(&inner, depth + 1, Parent { ty: Some(of), name: of_name, sized })?);
            }
            (None, false) => {}
            // Objects need a selection; scalars take none.
            _ => return Err(GraphqlError::InvalidDocument),
        }
        Ok(match size {
            Some(size) => Cost::scaled(size, per_item),
            None => per_item,
        })
    }

    /// A variable the selection uses, with its default; one its operation does not declare makes
    /// the document invalid.
    fn variable(&self, v: &cst::Variable) -> Result<(String, Option<VariableDefault>), GraphqlError> {
        let name = v.name().map(|n| n.text().to_string()).ok_or(GraphqlError::InvalidDocument)?;
        let default = *self.defaults.get(&name).ok_or(GraphqlError::InvalidDocument)?;
        Ok((name, default))
    }

    /// A list's size from its slicing arguments (literal or variable), else `@listSize`'s
    /// assumed size, else the default.
    fn size(&self, field: &cst::Field, list_size: &ListSize) -> Result<Size, GraphqlError> {
        let mut size = Size::fixed(list_size.assumed.unwrap_or(self.limits.default_list_size));
        for argument in field.arguments().into_iter().flat_map(|a| a.arguments()) {
            let Some(name) = argument.name().map(|n| n.text().to_string()) else { continue };
            if !list_size.slicing.contains(&name) {
                continue;
            }
            match argument.value() {
                Some(cst::Value::IntValue(v)) => {
                    let n = non_negative(&v).ok_or(GraphqlError::InvalidDocument)?;
                    size.literal = size.literal.max(Some(n));
                }
                Some(cst::Value::Variable(v)) => {
                    let (variable, default) = self.variable(&v)?;
                    let default = match default {
                        Some(VariableDefault::Size(n)) => Some(n),
                        _ => None,
                    };
                    size.variables.push((variable, default));
                }
                Some(cst::Value::NullValue(_)) | None => {}
                Some(_) => return Err(GraphqlError::InvalidDocument),
            }
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LIMITS: Limits = Limits { max_depth: 3, max_aliases: 2, introspection: false, default_list_size: 10, max_directives: 4 };

    #[test]
    fn documents_within_limits() {
        // (document, result: the operations' names)
        type Row<'a> = (&'a str, Result<Vec<Option<String>>, GraphqlError>);
        let rows: Vec<Row> = vec![
            ("{ book { title } }", Ok(vec![None])),
            ("query A { a } query B { b }", Ok(vec![Some("A".into()), Some("B".into())])),
            ("{ a { b { c } } }", Ok(vec![None])),
            ("{ a { b { c { d } } } }", Err(GraphqlError::TooDeep { max: 3 })),
            ("{ a { ...F } } fragment F on T { b { c { d } } }", Err(GraphqlError::TooDeep { max: 3 })),
            ("{ a { ... on T { b { c } } } }", Ok(vec![None])),
            ("{ x: a y: a z: a }", Err(GraphqlError::TooManyAliases { max: 2 })),
            ("{ ...F ...F } fragment F on Q { x: a y: a }", Err(GraphqlError::TooManyAliases { max: 2 })),
            ("{ __schema { types { name } } }", Err(GraphqlError::Introspection)),
            ("{ a { __type(name: \"X\") { name } } }", Err(GraphqlError::Introspection)),
            ("{ a { __typename } }", Ok(vec![None])),
            ("{ ...F } fragment F on Q { ...G } fragment G on Q { ...F }", Err(GraphqlError::InvalidDocument)),
            ("{ ...Missing }", Err(GraphqlError::InvalidDocument)),
            ("{ a ", Err(GraphqlError::InvalidDocument)),
            ("type Query { a: Int }", Err(GraphqlError::InvalidDocument)),
            ("fragment F on Q { a }", Err(GraphqlError::InvalidDocument)),
            ("", Err(GraphqlError::InvalidDocument)),
            // Directives, as graphql-js validates them: a built-in once per location; at most
            // `max_directives` anywhere; a directive the filter does not know may repeat.
            ("{ a @include(if: true) @skip(if: false) }", Ok(vec![None])),
            ("{ a @include(if: true) @include(if: true) }", Err(GraphqlError::InvalidDocument)),
            ("{ ... on Q @skip(if: false) @skip(if: false) { a } }", Err(GraphqlError::InvalidDocument)),
            ("{ ...F @skip(if: false) @skip(if: false) } fragment F on Q { a }", Err(GraphqlError::InvalidDocument)),
            ("query Q @defer @defer { a }", Err(GraphqlError::InvalidDocument)),
            ("{ ...F } fragment F on Q @stream @stream { a }", Err(GraphqlError::InvalidDocument)),
            ("query Q($v: Int @deprecated @deprecated) { a }", Err(GraphqlError::InvalidDocument)),
            ("{ a @tag @tag @tag @tag }", Ok(vec![None])),
            ("{ a @tag @tag @tag @tag @tag }", Err(GraphqlError::TooManyDirectives { max: 4 })),
            ("query Q @a @b @c @d @e { a }", Err(GraphqlError::TooManyDirectives { max: 4 })),
        ];
        let names = |r: Result<Vec<OperationInfo>, GraphqlError>| r.map(|ops| ops.into_iter().map(|o| o.name).collect::<Vec<_>>());
        for (document, want) in rows {
            assert_eq!(names(check_document(document, &LIMITS, None)), want, "{document}");
        }
        // A schema's own directives: repeatable when it says so, else once per location.
        let schema = Schema::parse("directive @tag(name: String) repeatable on FIELD directive @once on FIELD type Query { a: Int }").unwrap();
        assert_eq!(names(check_document("{ a @tag(name: \"x\") @tag(name: \"y\") }", &LIMITS, Some(&schema))), Ok(vec![None]));
        assert_eq!(names(check_document("{ a @once @once }", &LIMITS, Some(&schema))), Err(GraphqlError::InvalidDocument));
        let kinds = check_document("query Q { a } mutation M { b } subscription S { c } { d }", &LIMITS, None).map(|ops| ops.iter().map(|o| o.query).collect::<Vec<_>>());
        assert_eq!(kinds, Ok(vec![true, false, false, true]));
        let open = Limits { introspection: true, ..LIMITS };
        assert_eq!(names(check_document("{ __schema { types { name } } }", &open, None)), Ok(vec![None]));
        // Each fragment spreads the next twice: 2^20 selections if expanded blindly.
        let mut doubling = String::from("{ ...F0 }");
        for i in 0..20 {
            doubling.push_str(&format!(" fragment F{i} on Q {{ ...F{} ...F{} }}", i + 1, i + 1));
        }
        doubling.push_str(" fragment F20 on Q { a }");
        assert_eq!(check_document(&doubling, &LIMITS, None), Err(GraphqlError::TooComplex));
        // A chain of fragments, each spreading the next.
        let mut chain = String::from("{ ...F0 }");
        for i in 0..5000 {
            chain.push_str(&format!(" fragment F{i} on Q {{ ...F{} }}", i + 1));
        }
        chain.push_str(" fragment F5000 on Q { a }");
        assert_eq!(check_document(&chain, &LIMITS, None), Err(GraphqlError::TooComplex));
        let deep = format!("{}{}", "{ a ".repeat(200), "}".repeat(200));
        assert_eq!(check_document(&deep, &LIMITS, None), Err(GraphqlError::InvalidDocument), "past the parser's recursion limit");
    }

    const SDL: &str = r#"
        interface Node { id: ID! secret: String }
        type User implements Node {
          id: ID!
          name: String
          secret: String @requiresScopes(scopes: [["admin"]])
          email: String @requiresScopes(scopes: [["users:pii"], ["admin"]])
          friends(first: Int, last: Int): [User!]! @listSize(slicingArguments: ["first", "last"])
          posts(first: Int): PostConnection @listSize(slicingArguments: ["first"], sizedFields: ["edges"])
        }
        type PostConnection { edges: [PostEdge] totalCount: Int }
        type PostEdge { node: Post }
        type Post @cost(weight: 5) { title: String }
        union SearchResult = User | Post
        type Query {
          me: User
          users: [User]
          node(id: ID!): Node
          stats: Int @cost(weight: 7)
          search: [SearchResult] @listSize(assumedSize: 3)
        }
        type Mutation { rename(name: String!): User }
    "#;

    #[test]
    fn with_a_schema_fields_are_known_costed_and_scoped() {
        let schema = Schema::parse(SDL).unwrap();
        let limits = Limits { max_depth: 8, max_aliases: 5, introspection: false, default_list_size: 10, max_directives: 4 };
        let vars = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let cost = |document: &str, variables: serde_json::Value| {
            let ops = check_document(document, &limits, Some(&schema))?;
            ops[0].cost.of(&vars(variables))
        };
        // (document, variables, cost)
        type Row<'a> = (&'a str, serde_json::Value, Result<u64, GraphqlError>);
        let rows: Vec<Row> = vec![
            ("{ me { name } }", json!({}), Ok(1)),
            ("{ __typename me { __typename name } }", json!({}), Ok(1)),
            ("{ users { name } }", json!({}), Ok(10)),
            ("{ me { friends(first: 5) { name } } }", json!({}), Ok(6)),
            ("query Q($n: Int = 4) { me { friends(first: $n) { name } } }", json!({}), Ok(5)),
            ("query Q($n: Int = 4) { me { friends(first: $n) { name } } }", json!({"n": 20}), Ok(21)),
            ("query Q($n: Int) { me { friends(first: $n, last: 30) { name } } }", json!({"n": 2}), Ok(31)),
            ("query Q($n: Int) { me { friends(first: $n) { name } } }", json!({}), Ok(11)),
            ("query Q($n: Int) { me { friends(first: $n) { name } } }", json!({"n": null}), Ok(11)),
            ("query Q($n: Int) { me { friends(first: $n) { name } } }", json!({"n": "5"}), Err(GraphqlError::InvalidRequest)),
            ("query Q($n: Int) { me { friends(first: $n) { name } } }", json!({"n": -1}), Err(GraphqlError::InvalidRequest)),
            ("{ me { friends(first: 10) { friends(first: 10) { name } } } }", json!({}), Ok(111)),
            ("query Q($n: Int) { me { friends(first: $n) { friends(first: $n) { name } } } }", json!({"n": 1000}), Ok(1_001_001)),
            ("{ me { posts(first: 20) { edges { node { title } } totalCount } } }", json!({}), Ok(122)),
            ("{ me { posts(first: 20) { ...E } } } fragment E on PostConnection { edges { node { title } } }", json!({}), Ok(122)),
            ("{ stats }", json!({}), Ok(7)),
            ("{ search { ... on User { name } ... on Post { title } } }", json!({}), Ok(15)),
            ("mutation { rename(name: \"x\") { name } }", json!({}), Ok(1)),
            ("{ me { nope } }", json!({}), Err(GraphqlError::UnknownField { coordinate: "User.nope".into() })),
            ("{ search { name } }", json!({}), Err(GraphqlError::UnknownField { coordinate: "SearchResult.name".into() })),
            ("{ node(id: 1) { ... on Nope { id } } }", json!({}), Err(GraphqlError::UnknownField { coordinate: "Nope".into() })),
            ("{ ...F } fragment F on Nope { a }", json!({}), Err(GraphqlError::UnknownField { coordinate: "Nope".into() })),
            ("{ me }", json!({}), Err(GraphqlError::InvalidDocument)),
            ("{ stats { a } }", json!({}), Err(GraphqlError::InvalidDocument)),
            ("subscription { a }", json!({}), Err(GraphqlError::InvalidDocument)),
            ("{ me { friends(first: $undeclared) { name } } }", json!({}), Err(GraphqlError::InvalidDocument)),
            ("{ __schema { types { name } } }", json!({}), Err(GraphqlError::Introspection)),
            // @include / @skip: a literal decides at once, a variable with the request.
            ("query Q($e: Boolean!) { me { friends(first: 5) @include(if: $e) { name } } }", json!({"e": false}), Ok(1)),
            ("query Q($e: Boolean!) { me { friends(first: 5) @include(if: $e) { name } } }", json!({"e": true}), Ok(6)),
            ("query Q($e: Boolean!) { me { friends(first: 5) @include(if: $e) { name } } }", json!({}), Ok(6)),
            ("query Q($e: Boolean!) { me { friends(first: 5) @include(if: $e) { name } } }", json!({"e": "no"}), Err(GraphqlError::InvalidRequest)),
            ("query Q($s: Boolean = true) { me { friends(first: 5) @skip(if: $s) { name } } }", json!({}), Ok(1)),
            ("query Q($s: Boolean = true) { me { friends(first: 5) @skip(if: $s) { name } } }", json!({"s": false}), Ok(6)),
            ("{ me { friends(first: 5) @skip(if: true) { name } } }", json!({}), Ok(1)),
            ("{ me { ... on User @include(if: false) { friends(first: 5) { name } } } }", json!({}), Ok(1)),
            ("{ me { friends(first: 5) @skip(if: true) { nope } } }", json!({}), Err(GraphqlError::UnknownField { coordinate: "User.nope".into() })),
            ("{ me { name @include(if: $undeclared) } }", json!({}), Err(GraphqlError::InvalidDocument)),
            ("{ me { name @include(when: true) } }", json!({}), Err(GraphqlError::InvalidDocument)),
        ];
        for (document, variables, want) in rows {
            assert_eq!(cost(document, variables.clone()), want, "{document} {variables}");
        }
        // Introspection, where allowed, is not described by the schema: limits only.
        let open = Limits { introspection: true, ..limits };
        assert!(check_document("{ __schema { types { name } } }", &open, Some(&schema)).is_ok());

        // Fields that need scopes, once each, through fragments and interfaces.
        let access = |document: &str| check_document(document, &limits, Some(&schema)).map(|ops| ops[0].access.iter().map(|a| (a.coordinate.clone(), a.needs.clone())).collect::<Vec<_>>());
        let pii = vec![vec![vec!["users:pii".to_string()], vec!["admin".to_string()]]];
        let admin = vec![vec![vec!["admin".to_string()]]];
        assert_eq!(access("{ me { name } }"), Ok(vec![]));
        assert_eq!(access("{ me { email friends { email } } }"), Ok(vec![("User.email".into(), pii.clone())]));
        assert_eq!(access("{ node(id: 1) { ... on User { email } } }"), Ok(vec![("User.email".into(), pii.clone())]));
        assert_eq!(access("{ me { ...F } } fragment F on User { email }"), Ok(vec![("User.email".into(), pii)]));
        assert_eq!(access("{ node(id: 1) { secret } }"), Ok(vec![("Node.secret".into(), admin)]), "the interface's field needs what User's does");
        assert_eq!(access("{ me { email @skip(if: true) } }"), Ok(vec![]), "a field that never runs needs nothing");
    }

    #[test]
    fn without_cost_directives_the_conventional_slicing_arguments_bound_lists() {
        // A service schema as printed by most servers: no @listSize anywhere.
        let schema = Schema::parse(
            "type Query { users(first: Int, last: Int): [User] page(limit: Int): [User] all: [User] feed(first: Int, after: String): UserConnection me: User }
             type User { name: String friends(first: Int): [User] }
             type UserConnection { edges: [UserEdge] nodes: [User] totalCount: Int }
             type UserEdge { node: User }",
        )
        .unwrap();
        let limits = Limits { max_depth: 8, max_aliases: 5, introspection: false, default_list_size: 10, max_directives: 4 };
        let cost = |document: &str| check_document(document, &limits, Some(&schema)).and_then(|ops| ops[0].cost.of(&serde_json::Map::new()));
        let rows: [(&str, u64); 8] = [
            ("{ users(first: 1000) { name } }", 1000),
            ("{ users(last: 300) { name } }", 300),
            ("{ users { name } }", 10),
            ("{ page(limit: 50) { name } }", 50),
            ("{ all { name } }", 10),
            ("{ users(first: 100) { friends(first: 100) { name } } }", 100 + 100 * 100),
            ("{ feed(first: 500) { edges { node { name } } totalCount } }", 1 + 500 * 2),
            ("{ feed(first: 500) { nodes { name } } }", 1 + 500),
        ];
        for (document, want) in rows {
            assert_eq!(cost(document), Ok(want), "{document}");
        }
    }
}
