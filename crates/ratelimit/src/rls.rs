//! The Envoy rate-limit service protocol (`envoy.service.ratelimit.v3.RateLimitService`),
//! the few messages and fields meshward uses, declared by hand for prost. Field numbers follow
//! `envoy/service/ratelimit/v3/rls.proto` and `envoy/extensions/common/ratelimit/v3/ratelimit.proto`.

use prost::Message;

pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitRequest {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitDescriptor {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `RateLimitResponse.Code`.
pub const CODE_OK: i32 = 1;
pub const CODE_OVER_LIMIT: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct RateLimitResponse {
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Clone, PartialEq, Message)]
pub struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RateLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// What the service said, reduced to what the filter needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceVerdict {
    pub over_limit: bool,
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub reset_secs: Option<u64>,
}

/// Encodes a request for one descriptor per rule hit.
pub fn encode_request(domain: &str, descriptors: &[Vec<(String, String)>], hits: u32) -> Vec<u8> {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries.iter().map(|(k, v)| Entry { key: k.clone(), value: v.clone() }).collect(),
            })
            .collect(),
        hits_addend: hits,
    }
    .encode_to_vec()
}

/// Decodes the answer; `None` for anything that is not a well-formed OK / OVER_LIMIT.
pub fn decode_response(bytes: &[u8]) -> Option<ServiceVerdict> {
    let response = RateLimitResponse::decode(bytes).ok()?;
    let over_limit = match response.overall_code {
        CODE_OK => false,
        CODE_OVER_LIMIT => true,
        _ => return None,
    };
    // Report the tightest descriptor, as the headers describe one limit.
    let tightest = response.statuses.iter().min_by_key(|s| s.limit_remaining);
    Some(ServiceVerdict {
        over_limit,
        limit: tightest.and_then(|s| s.current_limit.as_ref()).map(|l| u64::from(l.requests_per_unit)),
        remaining: tightest.map(|s| u64::from(s.limit_remaining)),
        reset_secs: tightest
            .and_then(|s| s.duration_until_reset.as_ref())
            .map(|d| u64::try_from(d.seconds).unwrap_or(0) + u64::from(d.nanos > 0)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wire_layout() {
        let bytes = encode_request("meshward", &[vec![("rule".into(), "per-user".into()), ("key".into(), "alice".into())]], 3);
        let back = RateLimitRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(back.domain, "meshward");
        assert_eq!(back.hits_addend, 3);
        assert_eq!(back.descriptors[0].entries[1].value, "alice");
        // Field 1 (domain), length-delimited: 0x0a.
        assert_eq!(bytes[0], 0x0a);
        let response = RateLimitResponse {
            overall_code: CODE_OVER_LIMIT,
            statuses: vec![DescriptorStatus {
                code: CODE_OVER_LIMIT,
                current_limit: Some(RateLimit { requests_per_unit: 5, unit: 2 }),
                limit_remaining: 0,
                duration_until_reset: Some(Duration { seconds: 41, nanos: 5 }),
            }],
        }
        .encode_to_vec();
        assert_eq!(
            decode_response(&response),
            Some(ServiceVerdict { over_limit: true, limit: Some(5), remaining: Some(0), reset_secs: Some(42) })
        );
        assert_eq!(decode_response(&RateLimitResponse { overall_code: 0, statuses: vec![] }.encode_to_vec()), None);
        assert_eq!(decode_response(b"\xff\xff"), None);
    }
}
