//! The stored answer: what a retry gets back instead of running the operation again.

use meshward_core::Reply;
use prost::Message;

/// The header that marks a replayed answer (as Stripe names it).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

#[derive(Clone, PartialEq, Message)]
struct StoredHeader {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct StoredAnswer {
    #[prost(uint32, tag = "1")]
    status: u32,
    #[prost(message, repeated, tag = "2")]
    headers: Vec<StoredHeader>,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
}

/// Encodes an answer for the engine.
pub fn encode(status: u16, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    StoredAnswer {
        status: u32::from(status),
        headers: headers.iter().map(|(name, value)| StoredHeader { name: name.clone(), value: value.clone() }).collect(),
        body: body.to_vec(),
    }
    .encode_to_vec()
}

/// The reply a retry gets: the stored answer, marked as replayed. `None` when the record is not
/// a stored answer (the caller refuses rather than running the request again).
pub fn replay(record: &[u8]) -> Option<Reply> {
    let answer = StoredAnswer::decode(record).ok()?;
    let status = u16::try_from(answer.status).ok().filter(|s| (200..=599).contains(s))?;
    let mut headers: Vec<(String, String)> = answer.headers.into_iter().map(|h| (h.name, h.value)).collect();
    headers.push((REPLAYED_HEADER.to_string(), "true".to_string()));
    Some(Reply { status, headers, body: answer.body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_marked_as_replayed() {
        let headers = vec![("content-type".to_string(), "application/json".to_string()), ("location".to_string(), "/orders/7".to_string())];
        let reply = replay(&encode(201, &headers, b"{\"id\":7}")).unwrap();
        assert_eq!(reply.status, 201);
        assert_eq!(reply.body, b"{\"id\":7}");
        assert_eq!(reply.headers[..2], headers[..]);
        assert_eq!(reply.headers[2], (REPLAYED_HEADER.to_string(), "true".to_string()));
        assert_eq!(replay(&encode(204, &[], b"")).map(|r| (r.status, r.body.len())), Some((204, 0)));
        // Not an answer: refused, never replayed as something.
        assert_eq!(replay(b""), None, "status 0");
        assert_eq!(replay(&encode(99, &[], b"")), None);
        assert_eq!(replay(b"\xff\xff\xff"), None);
    }
}
