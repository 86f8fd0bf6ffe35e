//! Why a gRPC call is refused: [`find_method`], then [`authorize`] (who may call it), then
//! [`check_request`] (the message itself). Pure functions; the stage feeds them.

use std::borrow::Cow;

use meshward_core::request::{decode, Coding};
use meshward_core::caller::Caller;
use meshward_core::Principal;
use prost_reflect::{DynamicMessage, Kind, MapKey, Value};

use crate::config::{GrpcConfig, Method, UnknownFields};
use crate::framing::{frames, next_frame, Frame};
use crate::GrpcError;

/// The offered method a call names: POST (gRPC has no other method) to its exact `:path`.
pub fn find_method<'a>(config: &'a GrpcConfig, http_method: &str, path: &str) -> Result<&'a Method, GrpcError> {
    if http_method != "POST" {
        return Err(GrpcError::NotPost);
    }
    config.methods.iter().find(|m| m.path == path).ok_or(GrpcError::MethodNotAllowed)
}

/// Who may call it: nothing asked of a public method, else its [`Requirement`](meshward_core::caller::Requirement).
pub fn authorize(method: &Method, caller: Caller<'_>) -> Result<(), GrpcError> {
    if method.public {
        return Ok(());
    }
    method.access.admit(caller)?;
    Ok(())
}

/// The request body of a unary or server-streaming call: exactly one message, as
/// [`check_message`] reads it.
pub fn check_request(config: &GrpcConfig, method: &Method, body: &[u8], encoding: Option<&str>, user: Option<&Principal>) -> Result<(), GrpcError> {
    let framed = frames(body)?;
    let [frame] = framed.as_slice() else { return Err(GrpcError::MalformedFrame) };
    check_message(config, method, *frame, encoding, user)
}

/// One message: decompressed by `grpc-encoding` when flagged, within the size limit, decoding
/// as the method's input, with no undeclared field (unless allowed) or enum value, within the
/// service's field rules, and its owner fields equal to the user's claims.
pub fn check_message(config: &GrpcConfig, method: &Method, frame: Frame<'_>, encoding: Option<&str>, user: Option<&Principal>) -> Result<(), GrpcError> {
    let max_bytes = config.max_message_bytes;
    let decompressed;
    let bytes = if frame.compressed {
        let coding = match encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
            Some("gzip") => Coding::Gzip,
            Some("deflate") => Coding::Deflate,
            _ => return Err(GrpcError::UnsupportedCompression),
        };
        decompressed = decode(coding, frame.message, max_bytes).map_err(|e| match e {
            meshward_core::request::BodyError::TooLarge { .. } | meshward_core::request::BodyError::CompressionRatio => {
                GrpcError::MessageTooLarge { max_bytes }
            }
            _ => GrpcError::InvalidMessage,
        })?;
        decompressed.as_slice()
    } else {
        frame.message
    };
    if bytes.len() > max_bytes {
        return Err(GrpcError::MessageTooLarge { max_bytes });
    }
    let message = DynamicMessage::decode(method.input.clone(), bytes).map_err(|_| GrpcError::InvalidMessage)?;
    check_fields(&message, config.unknown_fields, method.input.name())?;
    config.rules.check(&message).map_err(|v| GrpcError::RuleViolation { path: format!("{}{}", method.input.name(), v.path), rule: v.rule })?;
    for owner in &method.owner {
        let fail = if owner.claim == "tenant" { GrpcError::TenantBoundary } else { GrpcError::NotOwner };
        let user = user.ok_or(GrpcError::MissingPrincipal)?;
        let value = owner_value(&message, owner).ok_or(fail.clone())?;
        if !user.claim_values(&owner.claim).contains(&value) {
            return Err(fail);
        }
    }
    Ok(())
}

/// The messages of a client-streaming or bidirectional call as its body arrives: each is
/// checked ([`check_message`]) the moment its last byte is here; only the one being received
/// is held.
#[derive(Debug, Default)]
pub struct Stream {
    pending: Vec<u8>,
}

impl Stream {
    /// Takes the next piece of the body; `end_of_stream`: nothing may be left half-sent.
    pub fn take(&mut self, config: &GrpcConfig, method: &Method, chunk: &[u8], end_of_stream: bool, encoding: Option<&str>, user: Option<&Principal>) -> Result<(), GrpcError> {
        // Whole messages are read from the chunk itself; only a message cut by the chunk's end
        // is kept (and the next chunk joined to it).
        if self.pending.is_empty() {
            let taken = check_messages(config, method, chunk, encoding, user)?;
            self.pending.extend_from_slice(&chunk[taken..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let taken = check_messages(config, method, &self.pending, encoding, user)?;
            self.pending.drain(..taken);
        }
        if end_of_stream && !self.pending.is_empty() {
            return Err(GrpcError::MalformedFrame);
        }
        Ok(())
    }
}

/// The whole messages at the start of `bytes`, each checked: the bytes they take.
fn check_messages(config: &GrpcConfig, method: &Method, bytes: &[u8], encoding: Option<&str>, user: Option<&Principal>) -> Result<usize, GrpcError> {
    let mut start = 0;
    // The compressed form is bounded like the decoded one (as a unary message is).
    while let Some((frame, taken)) = next_frame(&bytes[start..], config.max_message_bytes)? {
        check_message(config, method, frame, encoding, user)?;
        start += taken;
    }
    Ok(start)
}

/// The text of an owner field; `None` when it is not set (proto3's empty default proves nothing).
fn owner_value(message: &DynamicMessage, owner: &crate::config::OwnerField) -> Option<String> {
    let (last, parents) = owner.path.split_last()?;
    let mut current = message;
    for field in parents {
        if !current.has_field(field) {
            return None;
        }
        // A field that is set is borrowed from its message: no copy of the nested message.
        current = match current.get_field(field) {
            Cow::Borrowed(Value::Message(inner)) => inner,
            _ => return None,
        };
    }
    let text = match current.get_field(last).as_ref() {
        Value::String(s) => s.clone(),
        Value::I32(n) => n.to_string(),
        Value::I64(n) => n.to_string(),
        Value::U32(n) => n.to_string(),
        Value::U64(n) => n.to_string(),
        _ => return None,
    };
    (!text.is_empty() && current.has_field(last)).then_some(text)
}

/// A value that breaks the descriptors, with the path to it: suffixes (`.field`, `[key]`,
/// `[3]`, `.#9`) gathered from the inside out, only once one is found.
struct Breach {
    enum_value: bool,
    suffixes: Vec<String>,
}

impl Breach {
    fn within(mut self, suffix: String) -> Breach {
        self.suffixes.push(suffix);
        self
    }
}

/// Undeclared fields (unless allowed) and undeclared enum numbers, anywhere in the message.
fn check_fields(message: &DynamicMessage, unknown: UnknownFields, at: &str) -> Result<(), GrpcError> {
    breach(message, unknown).map_err(|b| {
        let path = b.suffixes.iter().rev().fold(at.to_string(), |path, suffix| path + suffix);
        if b.enum_value { GrpcError::InvalidEnum { path } } else { GrpcError::UnknownField { path } }
    })
}

fn breach(message: &DynamicMessage, unknown: UnknownFields) -> Result<(), Breach> {
    if unknown == UnknownFields::Deny {
        if let Some(field) = message.unknown_fields().next() {
            return Err(Breach { enum_value: false, suffixes: vec![format!(".#{}", field.number())] });
        }
    }
    for (field, value) in message.fields() {
        let within_field = |b: Breach| b.within(format!(".{}", field.name()));
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else { continue };
            let value_field = entry.map_entry_value_field();
            if let Value::Map(map) = value {
                for (key, v) in map {
                    check_value(&value_field.kind(), v, unknown).map_err(|b| {
                        let key = match key {
                            MapKey::String(s) => s.clone(),
                            other => format!("{other:?}"),
                        };
                        within_field(b.within(format!("[{key}]")))
                    })?;
                }
            }
        } else {
            check_value(&field.kind(), value, unknown).map_err(within_field)?;
        }
    }
    Ok(())
}

fn check_value(kind: &Kind, value: &Value, unknown: UnknownFields) -> Result<(), Breach> {
    match (kind, value) {
        (_, Value::List(items)) => {
            items.iter().enumerate().try_for_each(|(i, v)| check_value(kind, v, unknown).map_err(|b| b.within(format!("[{i}]"))))
        }
        (Kind::Enum(e), Value::EnumNumber(n)) if e.get_value(*n).is_none() => Err(Breach { enum_value: true, suffixes: Vec::new() }),
        (_, Value::Message(inner)) => breach(inner, unknown),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
