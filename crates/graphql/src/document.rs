//! What a GraphQL document asks for, read by Apollo's parser: the operations it names, how deep
//! its selections nest, how many aliases it uses, whether it introspects. Fragments are
//! followed where they are spread (a cycle is an invalid document).

use std::collections::HashMap;

use apollo_parser::cst::{self, CstNode};
use apollo_parser::Parser;

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
}

fn text(node: &impl CstNode) -> String {
    node.syntax().text().to_string()
}

/// One operation of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationInfo {
    /// `None` for an anonymous operation.
    pub name: Option<String>,
    /// A `query` (the shorthand `{ ... }` included): the only kind a GET may run.
    pub query: bool,
}

/// The document's operations once it is within `limits`.
pub fn check_document(source: &str, limits: &Limits) -> Result<Vec<OperationInfo>, GraphqlError> {
    let tree = Parser::new(source).recursion_limit(RECURSION_LIMIT).token_limit(TOKEN_LIMIT).parse();
    if tree.errors().len() > 0 {
        return Err(GraphqlError::InvalidDocument);
    }
    let mut operations = Vec::new();
    let mut fragments = HashMap::new();
    let mut selections = Vec::new();
    for definition in tree.document().definitions() {
        match definition {
            cst::Definition::OperationDefinition(op) => {
                let query = op.operation_type().is_none_or(|t| t.query_token().is_some());
                operations.push(OperationInfo { name: op.name().map(|n| text(&n)), query });
                selections.push(op.selection_set().ok_or(GraphqlError::InvalidDocument)?);
            }
            cst::Definition::FragmentDefinition(f) => {
                let name = f.fragment_name().and_then(|n| n.name()).map(|n| text(&n)).ok_or(GraphqlError::InvalidDocument)?;
                let set = f.selection_set().ok_or(GraphqlError::InvalidDocument)?;
                if fragments.insert(name, set).is_some() {
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
    let mut walk = Walk { fragments: &fragments, limits, aliases: 0, visits: 0, visiting: Vec::new() };
    for set in &selections {
        walk.selection_set(set, 1)?;
    }
    Ok(operations)
}

struct Walk<'a> {
    fragments: &'a HashMap<String, cst::SelectionSet>,
    limits: &'a Limits,
    aliases: usize,
    visits: usize,
    /// Fragments being expanded (a spread of one of them again is a cycle).
    visiting: Vec<String>,
}

impl Walk<'_> {
    /// The fields of a selection set at `depth` (top-level fields are at depth 1).
    fn selection_set(&mut self, set: &cst::SelectionSet, depth: usize) -> Result<(), GraphqlError> {
        if depth > self.limits.max_depth {
            return Err(GraphqlError::TooDeep { max: self.limits.max_depth });
        }
        for selection in set.selections() {
            self.visits += 1;
            if self.visits > MAX_VISITS {
                return Err(GraphqlError::TooComplex);
            }
            match selection {
                cst::Selection::Field(field) => {
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
                    if let Some(inner) = field.selection_set() {
                        self.selection_set(&inner, depth + 1)?;
                    }
                }
                cst::Selection::InlineFragment(fragment) => {
                    if let Some(inner) = fragment.selection_set() {
                        self.selection_set(&inner, depth)?;
                    }
                }
                cst::Selection::FragmentSpread(spread) => {
                    let name = spread.fragment_name().and_then(|n| n.name()).map(|n| text(&n)).ok_or(GraphqlError::InvalidDocument)?;
                    if self.visiting.contains(&name) {
                        return Err(GraphqlError::InvalidDocument);
                    }
                    if self.visiting.len() >= MAX_FRAGMENT_NESTING {
                        return Err(GraphqlError::TooComplex);
                    }
                    let inner = self.fragments.get(&name).ok_or(GraphqlError::InvalidDocument)?.clone();
                    self.visiting.push(name);
                    self.selection_set(&inner, depth)?;
                    self.visiting.pop();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_depth: 3, max_aliases: 2, introspection: false };

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
        ];
        let names = |r: Result<Vec<OperationInfo>, GraphqlError>| r.map(|ops| ops.into_iter().map(|o| o.name).collect::<Vec<_>>());
        for (document, want) in rows {
            assert_eq!(names(check_document(document, &LIMITS)), want, "{document}");
        }
        let kinds = check_document("query Q { a } mutation M { b } subscription S { c } { d }", &LIMITS).map(|ops| ops.iter().map(|o| o.query).collect::<Vec<_>>());
        assert_eq!(kinds, Ok(vec![true, false, false, true]));
        let open = Limits { introspection: true, ..LIMITS };
        assert_eq!(names(check_document("{ __schema { types { name } } }", &open)), Ok(vec![None]));
        // Each fragment spreads the next twice: 2^20 selections if expanded blindly.
        let mut doubling = String::from("{ ...F0 }");
        for i in 0..20 {
            doubling.push_str(&format!(" fragment F{i} on Q {{ ...F{} ...F{} }}", i + 1, i + 1));
        }
        doubling.push_str(" fragment F20 on Q { a }");
        assert_eq!(check_document(&doubling, &LIMITS), Err(GraphqlError::TooComplex));
        // A chain of fragments, each spreading the next.
        let mut chain = String::from("{ ...F0 }");
        for i in 0..5000 {
            chain.push_str(&format!(" fragment F{i} on Q {{ ...F{} }}", i + 1));
        }
        chain.push_str(" fragment F5000 on Q { a }");
        assert_eq!(check_document(&chain, &LIMITS), Err(GraphqlError::TooComplex));
        let deep = format!("{}{}", "{ a ".repeat(200), "}".repeat(200));
        assert_eq!(check_document(&deep, &LIMITS), Err(GraphqlError::InvalidDocument), "past the parser's recursion limit");
    }
}
