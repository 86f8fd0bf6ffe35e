//! The GraphQL policy as a [`Policy`] / [`Stage`].

use std::rc::Rc;

use meshward_core::principal::current_principal;
use meshward_core::request::essence;
use meshward_core::route::query_param;
use meshward_core::{config::ConfigError, Mode, Policy, RequestState, Stage, Step};
use meshward_host::Host;
use serde_json::{Map, Value};

use crate::config::GraphqlConfig;
use crate::decide::{check_request, operation, operations, Operation};
use crate::GraphqlError;

#[derive(Debug)]
pub struct GraphqlPolicy {
    pub config: GraphqlConfig,
}

impl Policy for GraphqlPolicy {
    const NAME: &'static str = "graphql";
    type Stage = GraphqlStage;

    fn configure(config: &[u8], _host: &dyn Host) -> Result<Self, ConfigError> {
        GraphqlConfig::parse(config).map(|config| GraphqlPolicy { config })
    }

    fn mode(&self) -> Mode {
        self.config.mode
    }

    fn new_stage(policy: &Rc<Self>) -> GraphqlStage {
        GraphqlStage { policy: Rc::clone(policy), body: None }
    }
}

/// How a POST carries its operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// `application/json`: one operation object, or a batch array.
    Json,
    /// `application/graphql`: the document itself.
    Document,
}

/// One request to a GraphQL endpoint.
#[derive(Debug)]
pub struct GraphqlStage {
    policy: Rc<GraphqlPolicy>,
    body: Option<Body>,
}

/// The operation a GET names in its query string (`+` is a space there, as servers read forms).
fn get_operation(raw_path: &str, read_variables: bool) -> Result<Operation, GraphqlError> {
    let path = raw_path.replace('+', "%20");
    let param = |name: &str| query_param(&path, name).map_err(|_| GraphqlError::InvalidRequest);
    let mut object = Map::new();
    for name in ["query", "operationName", "id", "documentId"] {
        if let Some(value) = param(name)? {
            object.insert(name.into(), Value::String(value));
        }
    }
    for name in ["extensions", "variables"] {
        if let Some(json) = param(name)? {
            let parsed = meshward_core::json::read(json.as_bytes(), 16).map_err(|_| GraphqlError::InvalidRequest)?;
            object.insert(name.into(), parsed.value);
        }
    }
    operation(&Value::Object(object), read_variables)
}

impl GraphqlStage {
    fn decide(&self, host: &dyn Host, request: &mut RequestState, ops: &[Operation], over_get: bool) -> Step {
        match check_request(&self.policy.config, ops, over_get, &mut || current_principal(host, &mut request.principal)) {
            Ok(()) => Step::Continue,
            Err(e) => Step::Deny(e.denial()),
        }
    }
}

impl Stage for GraphqlStage {
    fn on_request_headers(&mut self, host: &mut dyn Host, request: &mut RequestState) -> Step {
        let policy = Rc::clone(&self.policy);
        if !policy.config.paths.contains(&request.canonical) {
            return Step::Continue;
        }
        request.route = Some("graphql".into());
        match request.method.as_str() {
            "GET" => match get_operation(&request.path, policy.config.schema.is_some()) {
                Ok(op) => self.decide(host, request, &[op], true),
                Err(e) => Step::Deny(e.denial()),
            },
            "POST" => {
                self.body = match essence(request.header("content-type").unwrap_or("")).as_str() {
                    "application/json" | "application/graphql+json" => Some(Body::Json),
                    "application/graphql" => Some(Body::Document),
                    _ => return Step::Deny(GraphqlError::NotGraphql.denial()),
                };
                Step::NeedBody { max_bytes: policy.config.max_body_bytes }
            }
            _ => Step::Deny(GraphqlError::NotGraphql.denial()),
        }
    }

    fn on_request_body(&mut self, host: &mut dyn Host, request: &mut RequestState, body: &[u8]) -> Step {
        let policy = Rc::clone(&self.policy);
        let ops = match self.body {
            None => return Step::Continue,
            Some(Body::Document) => match std::str::from_utf8(body) {
                Ok(text) => vec![Operation { query: Some(text.to_string()), ..Operation::default() }],
                Err(_) => return Step::Deny(GraphqlError::InvalidRequest.denial()),
            },
            // The strict reader: JSON two servers read two ways (a repeated `query`) is refused.
            Some(Body::Json) => match request.json(body, meshward_core::json::MAX_DEPTH) {
                Ok(document) => match operations(&document.value, policy.config.max_batch, policy.config.schema.is_some()) {
                    Ok(ops) => ops,
                    Err(e) => return Step::Deny(e.denial()),
                },
                Err(_) => return Step::Deny(GraphqlError::InvalidRequest.denial()),
            },
        };
        self.decide(host, request, &ops, false)
    }
}
