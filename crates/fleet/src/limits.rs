//! Envoy's rate-limit service (RLS v3) in front of Limitador: each descriptor a filter sends is
//! one rule's hit, counted by Limitador in Redis (fixed windows, atomic check-and-update, expiry
//! by Redis). What is ours is the mapping from descriptors to Limitador's limits and back.

use std::collections::HashMap;

use limitador::limit::{Context, Expression, Limit, Namespace, Predicate};
use limitador::AsyncRateLimiter;
use meshward_ratelimit::rls::{self, DescriptorStatus, RateLimitRequest, RateLimitResponse};
use tonic::Status;

use crate::config::LimitConfig;

/// How long an admitted hit is held if its commit never comes.
const RESERVATION_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// A CEL string literal.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Limitador limit of one configured rule: it applies to descriptors naming the rule and
/// counts per value of each key part.
fn limitador_limit(config: &LimitConfig) -> Result<Limit, String> {
    let condition = Predicate::parse(format!("descriptors[0].rule == {}", quoted(&config.rule))).map_err(|e| e.to_string())?;
    let variables = config
        .key
        .iter()
        .map(|part| Expression::parse(format!("descriptors[0][{}]", quoted(part))).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let id = format!("{}/{}", config.domain, config.rule);
    let mut limit = Limit::with_id(id, config.domain.as_str(), config.requests, config.window_secs, [condition], variables);
    limit.set_name(config.rule.clone());
    Ok(limit)
}

/// `RateLimitResponse.RateLimit.Unit` for a window, when it is one.
fn unit(window_secs: u64) -> i32 {
    match window_secs {
        1 => 1,
        60 => 2,
        3600 => 3,
        86400 => 4,
        _ => 0,
    }
}

pub struct Limits {
    limiter: AsyncRateLimiter,
    rules: HashMap<(String, String), LimitConfig>,
}

impl Limits {
    pub fn new(limiter: AsyncRateLimiter, configs: &[LimitConfig]) -> Result<Limits, String> {
        let mut rules = HashMap::new();
        for config in configs {
            limiter.add_limit(limitador_limit(config)?);
            rules.insert((config.domain.clone(), config.rule.clone()), config.clone());
        }
        Ok(Limits { limiter, rules })
    }

    /// One `ShouldRateLimit` call. A descriptor the engine has no limit for, or one missing a key
    /// part, is an error (the filter applies its `failure_mode`), never a silent pass.
    pub async fn should_rate_limit(&self, request: RateLimitRequest) -> Result<RateLimitResponse, Status> {
        let delta = u64::from(request.hits_addend.max(1));
        let namespace = Namespace::from(request.domain.as_str());
        let mut response = RateLimitResponse { overall_code: rls::CODE_OK, statuses: Vec::with_capacity(request.descriptors.len()) };
        for descriptor in request.descriptors {
            let entries: HashMap<String, String> = descriptor.entries.into_iter().map(|e| (e.key, e.value)).collect();
            let rule = entries.get("rule").cloned().ok_or_else(|| Status::invalid_argument("a descriptor without a `rule` entry"))?;
            let config = self.rules.get(&(request.domain.clone(), rule.clone())).ok_or_else(|| {
                Status::failed_precondition(format!("no limit is configured for rule {rule:?} of domain {:?}", request.domain))
            })?;
            if let Some(missing) = config.key.iter().find(|part| !entries.contains_key(*part)) {
                return Err(Status::invalid_argument(format!("rule {rule:?}: the descriptor lacks key part {missing:?}")));
            }
            let mut context = Context::default();
            context.list_binding("descriptors".to_string(), vec![entries]);
            let storage_error = |e: limitador::errors::LimitadorError| Status::unavailable(format!("rate-limit storage: {e}"));
            // Limitador's check-and-update reads the counters, then increments them: two
            // requests racing on one counter could both pass. A reservation is one atomic
            // script that checks the amount against the counter and every live hold, and holds
            // it; committing turns the hold into the count. Exact under concurrency, for one
            // more Redis round trip. A hold never committed (the engine died) expires.
            let result = self.limiter.reserve(&namespace, &context, delta, Some(RESERVATION_TTL)).await.map_err(storage_error)?;
            if !result.limited {
                self.limiter.commit_reservation(&namespace, &context, result.reservation_id.as_ref(), delta).await.map_err(storage_error)?;
            }
            // The limit exists and the key parts are there: Limitador not counting would be a
            // silent pass.
            let Some(counter) = result.counters.iter().min_by_key(|c| c.remaining().unwrap_or(c.max_value())) else {
                return Err(Status::internal(format!("rule {rule:?}: no counter applied")));
            };
            let code = if result.limited { rls::CODE_OVER_LIMIT } else { rls::CODE_OK };
            if result.limited {
                response.overall_code = rls::CODE_OVER_LIMIT;
            }
            let reset = counter.expires_in().unwrap_or_else(|| std::time::Duration::from_secs(config.window_secs));
            response.statuses.push(DescriptorStatus {
                code,
                current_limit: Some(rls::RateLimit {
                    requests_per_unit: u32::try_from(config.requests).unwrap_or(u32::MAX),
                    unit: unit(config.window_secs),
                }),
                limit_remaining: u32::try_from(counter.remaining().unwrap_or(0)).unwrap_or(u32::MAX),
                duration_until_reset: Some(rls::Duration {
                    seconds: i64::try_from(reset.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(reset.subsec_nanos()).unwrap_or(0),
                }),
            });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_becomes_a_limit_on_its_descriptors() {
        let config = LimitConfig {
            domain: "orders".into(),
            rule: "per-tenant".into(),
            key: vec!["tenant".into(), "header.x-api-key".into()],
            requests: 5,
            window_secs: 60,
        };
        let limit = limitador_limit(&config).unwrap();
        assert_eq!(limit.max_value(), 5);
        assert_eq!(limit.seconds(), 60);
        assert_eq!(limit.namespace().as_ref(), "orders");
        let mut ctx = Context::default();
        let entries = [("rule", "per-tenant"), ("tenant", "acme"), ("header.x-api-key", "k")];
        ctx.list_binding("descriptors".into(), vec![entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()]);
        assert!(limit.applies(&ctx));
        let mut other = Context::default();
        other.list_binding("descriptors".into(), vec![[("rule".to_string(), "per-user".to_string())].into_iter().collect()]);
        assert!(!limit.applies(&other));
        assert_eq!(quoted("a\"b\\"), "\"a\\\"b\\\\\"");
        assert_eq!((unit(1), unit(60), unit(3600), unit(86400), unit(10)), (1, 2, 3, 4, 0));
    }
}
