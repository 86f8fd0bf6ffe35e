//! Why a request is allowed or denied: one row per case.

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::*;
use crate::config::{JwtConfig, KeySource};
use crate::testkit::{b64, hs256, local_config, TestKeys, AUDIENCE, ISSUER, NOW};

fn config(keys: &TestKeys, extra: Value) -> JwtConfig {
    JwtConfig::parse(local_config(&keys.jwks(), extra).as_bytes(), &|_| None).unwrap()
}

fn local_keys(config: &JwtConfig) -> impl Fn(usize) -> Option<Rc<KeySet>> + '_ {
    move |i| match &config.providers[i].keys {
        KeySource::Local(k) => Some(Rc::clone(k)),
        KeySource::Remote(_) | KeySource::Native { .. } => None,
    }
}

fn decide(config: &JwtConfig, authorization: Option<&str>) -> Outcome {
    let auth = authorization.map(str::to_string);
    let header = move |name: &str| if name == "authorization" { auth.clone() } else { None };
    let keys = local_keys(config);
    let requirement = Requirement::Provider(0);
    authenticate(
        config,
        &requirement,
        &Inputs { header: &header, keys: &keys, may_refresh: &|_| true, cached: &|_, _| None, remember: &|_, _, _| {}, refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW },
    )
}

fn with(changes: Value) -> Map<String, Value> {
    let mut c = TestKeys::claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.remove(k);
        } else {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn denied(outcome: Outcome) -> JwtError {
    match outcome {
        Outcome::Denied(e) => e,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[test]
fn valid_tokens_for_each_key_type_are_allowed() {
    let keys = TestKeys::new();
    let cfg = config(&keys, json!({}));
    for (alg, kid) in [("HS256", Some("hs")), ("ES256", Some("es")), ("EdDSA", Some("ed")), ("ES256", None), ("HS256", None)] {
        let token = keys.sign(alg, kid, &TestKeys::claims());
        match decide(&cfg, Some(&format!("Bearer {token}"))) {
            Outcome::Allowed(Some(a)) => {
                assert_eq!(a.principal.subject.as_deref(), Some("alice"), "{alg}");
                assert_eq!(a.principal.tenant.as_deref(), Some("acme"));
                assert_eq!(a.principal.scopes, vec!["orders:read", "orders:write"]);
                assert_eq!(a.principal.audiences, vec![AUDIENCE]);
                assert_eq!(a.token_header, "authorization");
            }
            other => panic!("{alg} {kid:?}: {other:?}"),
        }
    }
}

#[test]
fn deny_reasons() {
    let keys = TestKeys::new();
    let cfg = config(&keys, json!({}));
    let other = TestKeys::new();
    let sign = |claims: Map<String, Value>| keys.sign("ES256", Some("es"), &claims);
    let forged_hs_with_ec_kid = hs256(
        keys.es.verifying_key().to_sec1_point(true).as_bytes(),
        &json!({"alg": "HS256", "kid": "es"}),
        &TestKeys::claims(),
    );
    let crit = hs256(&keys.hmac_secret, &json!({"alg": "HS256", "kid": "hs", "crit": ["b64"], "b64": false}), &TestKeys::claims());
    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(Value::Object(TestKeys::claims()).to_string().as_bytes()));
    let unknown_alg = hs256(&keys.hmac_secret, &json!({"alg": "HS1024", "kid": "hs"}), &TestKeys::claims());
    let tampered = {
        let good = sign(TestKeys::claims());
        let evil = sign(with(json!({"sub": "admin"})));
        let g: Vec<&str> = good.split('.').collect();
        let e: Vec<&str> = evil.split('.').collect();
        format!("{}.{}.{}", g[0], e[1], g[2])
    };
    let cases: Vec<(&str, Option<String>, JwtError)> = vec![
        ("no header", None, JwtError::MissingToken),
        ("other scheme", Some(format!("Basic {}", sign(TestKeys::claims()))), JwtError::MissingToken),
        ("empty bearer", Some("Bearer ".into()), JwtError::MissingToken),
        ("one segment", Some("Bearer abc".into()), JwtError::MalformedToken),
        ("four segments", Some("Bearer a.b.c.d".into()), JwtError::MalformedToken),
        ("header not base64", Some("Bearer !!.e30.sig".into()), JwtError::MalformedToken),
        ("header not json", Some(format!("Bearer {}.e30.c2ln", b64(b"nope"))), JwtError::MalformedToken),
        ("too large", Some(format!("Bearer {}", sign(with(json!({"pad": "x".repeat(9000)}))))), JwtError::TokenTooLarge),
        ("alg none", Some(format!("Bearer {none}")), JwtError::UnsupportedAlgorithm),
        ("unknown alg", Some(format!("Bearer {unknown_alg}")), JwtError::UnsupportedAlgorithm),
        ("crit", Some(format!("Bearer {crit}")), JwtError::UnsupportedCritical),
        ("unknown kid", Some(format!("Bearer {}", keys.sign("ES256", Some("gone"), &TestKeys::claims()))), JwtError::UnknownKid),
        ("EC key used as HMAC secret", Some(format!("Bearer {forged_hs_with_ec_kid}")), JwtError::AlgorithmMismatch),
        ("other signer, same kid", Some(format!("Bearer {}", other.sign("ES256", Some("es"), &TestKeys::claims()))), JwtError::BadSignature),
        ("other hmac secret", Some(format!("Bearer {}", hs256(b"another-secret-another-secret-xx", &json!({"alg":"HS256","kid":"hs"}), &TestKeys::claims()))), JwtError::BadSignature),
        ("payload swapped", Some(format!("Bearer {tampered}")), JwtError::BadSignature),
        ("expired beyond skew", Some(format!("Bearer {}", sign(with(json!({"exp": NOW - 61}))))), JwtError::Expired),
        ("nbf beyond skew", Some(format!("Bearer {}", sign(with(json!({"nbf": NOW + 61}))))), JwtError::NotYetValid),
        ("iat far in the future", Some(format!("Bearer {}", sign(with(json!({"iat": NOW + 3600}))))), JwtError::NotYetValid),
        ("no exp", Some(format!("Bearer {}", sign(with(json!({"exp": null}))))), JwtError::MissingExpiration),
        ("wrong iss", Some(format!("Bearer {}", sign(with(json!({"iss": "https://evil.test"}))))), JwtError::WrongIssuer),
        ("no iss", Some(format!("Bearer {}", sign(with(json!({"iss": null}))))), JwtError::WrongIssuer),
        ("iss differs in case", Some(format!("Bearer {}", sign(with(json!({"iss": ISSUER.to_uppercase()}))))), JwtError::WrongIssuer),
        ("wrong aud", Some(format!("Bearer {}", sign(with(json!({"aud": "payments"}))))), JwtError::WrongAudience),
        ("no aud", Some(format!("Bearer {}", sign(with(json!({"aud": null}))))), JwtError::WrongAudience),
        ("aud array without ours", Some(format!("Bearer {}", sign(with(json!({"aud": ["a", "b"]}))))), JwtError::WrongAudience),
        // Registered claims of another type (RFC 7519 §4.1) are not read some other way.
        ("exp as text", Some(format!("Bearer {}", sign(with(json!({"exp": (NOW + 300).to_string()}))))), JwtError::MalformedToken),
        ("exp with a fraction", Some(format!("Bearer {}", sign(with(json!({"exp": NOW as f64 + 300.5}))))), JwtError::MalformedToken),
        ("negative nbf", Some(format!("Bearer {}", sign(with(json!({"nbf": -1}))))), JwtError::MalformedToken),
        ("sub a number", Some(format!("Bearer {}", sign(with(json!({"sub": 42}))))), JwtError::MalformedToken),
        ("iss an array", Some(format!("Bearer {}", sign(with(json!({"iss": [ISSUER]}))))), JwtError::MalformedToken),
        ("aud with a number", Some(format!("Bearer {}", sign(with(json!({"aud": [AUDIENCE, 7]}))))), JwtError::MalformedToken),
        ("signature of the wrong size", Some(format!("Bearer {}.AAAA", sign(TestKeys::claims()).rsplit_once('.').unwrap().0)), JwtError::MalformedToken),
    ];
    for (name, header, want) in cases {
        assert_eq!(denied(decide(&cfg, header.as_deref())), want, "{name}");
    }
}

#[test]
fn clock_skew_and_optional_expiration() {
    let keys = TestKeys::new();
    let cfg = config(&keys, json!({}));
    let ok = |cfg: &JwtConfig, claims| matches!(decide(cfg, Some(&format!("Bearer {}", keys.sign("HS256", Some("hs"), &claims)))), Outcome::Allowed(Some(_)));
    assert!(ok(&cfg, with(json!({"exp": NOW - 59}))), "within the default 60 s skew");
    assert!(ok(&cfg, with(json!({"nbf": NOW + 59}))));
    assert!(ok(&cfg, with(json!({"aud": ["other", AUDIENCE]}))));
    assert!(ok(&cfg, with(json!({"bearer-case": 1}))));
    let strict = config(&keys, json!({"clock_skew_seconds": 0}));
    assert!(!ok(&strict, with(json!({"exp": NOW - 1}))));
    let lax = config(&keys, json!({"require_expiration": false}));
    assert!(ok(&lax, with(json!({"exp": null}))));
    // Lower-case scheme is the same scheme (RFC 7235).
    let token = keys.sign("HS256", Some("hs"), &TestKeys::claims());
    assert!(matches!(decide(&cfg, Some(&format!("bearer {token}"))), Outcome::Allowed(Some(_))));
}

#[test]
fn requirement_combinations() {
    let keys = TestKeys::new();
    let cfg = config(&keys, json!({}));
    let keys_fn = local_keys(&cfg);
    let good = format!("Bearer {}", keys.sign("HS256", Some("hs"), &TestKeys::claims()));
    let expired = format!("Bearer {}", keys.sign("HS256", Some("hs"), &with(json!({"exp": NOW - 600}))));
    let run = |req: &Requirement, auth: Option<&str>| {
        let auth = auth.map(str::to_string);
        let header = move |n: &str| if n == "authorization" { auth.clone() } else { None };
        authenticate(&cfg, req, &Inputs { header: &header, keys: &keys_fn, may_refresh: &|_| false, cached: &|_, _| None, remember: &|_, _, _| {}, refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW })
    };
    let optional = Requirement::Any(vec![Requirement::Provider(0), Requirement::AllowMissing]);
    assert_eq!(run(&optional, None), Outcome::Allowed(None));
    assert!(matches!(run(&optional, Some(&good)), Outcome::Allowed(Some(_))));
    // Present but invalid: the deepest failure is reported, not "missing".
    assert_eq!(run(&optional, Some(&expired)), Outcome::Denied(JwtError::Expired));
    assert_eq!(run(&Requirement::AllowMissing, None), Outcome::Allowed(None));
    assert_eq!(run(&Requirement::AllowMissing, Some(&expired)), Outcome::Denied(JwtError::Expired));
    let both = Requirement::All(vec![Requirement::Provider(0), Requirement::Provider(0)]);
    assert!(matches!(run(&both, Some(&good)), Outcome::Allowed(Some(_))));
    assert_eq!(run(&both, None), Outcome::Denied(JwtError::MissingToken));
}

fn remote_config() -> JwtConfig {
    let json = json!({
        "providers": {"idp": {"issuer": ISSUER, "audiences": [AUDIENCE],
            "remote_jwks": {"http_uri": {"uri": "https://idp.test/jwks", "cluster": "idp"}}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
    });
    JwtConfig::parse(json.to_string().as_bytes(), &|_| None).unwrap()
}

#[test]
fn remote_keys_are_fetched_on_demand_or_the_request_is_denied() {
    let keys = TestKeys::new();
    let cfg = remote_config();
    let token = format!("Bearer {}", keys.sign("ES256", Some("new-kid"), &TestKeys::claims()));
    let header = |n: &str| if n == "authorization" { Some(token.clone()) } else { None };
    let cached = Rc::new(crate::jwks::parse_jwks(keys.jwks().as_bytes(), true).unwrap().set);
    let req = Requirement::Provider(0);
    let run = |keys: &dyn Fn(usize) -> Option<Rc<KeySet>>, may: bool| {
        authenticate(&cfg, &req, &Inputs { header: &header, keys, may_refresh: &|_| may, cached: &|_, _| None, remember: &|_, _, _| {}, refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW })
    };
    // No keys yet.
    assert_eq!(run(&|_| None, true), Outcome::NeedKeys(0));
    assert_eq!(run(&|_| None, false), Outcome::Denied(JwtError::JwksUnavailable { retry_later: true }));
    // A provider that asks for 401 while its keys are unavailable gets it.
    let mut unauthorized = remote_config();
    if let crate::config::KeySource::Remote(r) = &mut unauthorized.providers[0].keys {
        r.unavailable_status = 401;
    }
    let no_keys = Inputs { header: &header, keys: &|_| None, may_refresh: &|_| false, cached: &|_, _| None, remember: &|_, _, _| {}, refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW };
    assert_eq!(authenticate(&unauthorized, &req, &no_keys), Outcome::Denied(JwtError::JwksUnavailable { retry_later: false }));
    // Keys cached, but not this kid.
    assert_eq!(run(&|_| Some(Rc::clone(&cached)), true), Outcome::NeedKeys(0));
    assert_eq!(run(&|_| Some(Rc::clone(&cached)), false), Outcome::Denied(JwtError::UnknownKid));
    // No token: no fetch is needed to say so.
    let none = |_: &str| None;
    assert_eq!(
        authenticate(&cfg, &req, &Inputs { header: &none, keys: &|_| None, may_refresh: &|_| true, cached: &|_, _| None, remember: &|_, _, _| {}, refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW }),
        Outcome::Denied(JwtError::MissingToken)
    );
}

#[test]
fn cached_tokens_skip_the_signature_but_not_the_clock() {
    use std::cell::RefCell;
    let keys = TestKeys::new();
    let cfg = config(&keys, json!({}));
    let keys_fn = local_keys(&cfg);
    let cache = RefCell::new(crate::cache::TokenCache::new(8));
    let token = keys.sign("ES256", Some("es"), &with(json!({"exp": NOW + 100})));
    let auth = format!("Bearer {token}");
    let header = |n: &str| if n == "authorization" { Some(auth.clone()) } else { None };
    let verifications = RefCell::new(0);
    let run = |now: u64, keys: &dyn Fn(usize) -> Option<Rc<KeySet>>| {
        authenticate(&cfg, &Requirement::Provider(0), &Inputs {
            header: &header,
            keys,
            may_refresh: &|_| false,
            cached: &|i, t| cache.borrow().get(i, 0, t),
            remember: &|i, t, p| { *verifications.borrow_mut() += 1; cache.borrow_mut().insert(i, 0, t, p) },
            refused: &|_, _| None,
            remember_refusal: &|_, _, _| {},
            native_payload: &|_| None,
            now,
        })
    };
    assert!(matches!(run(NOW, &keys_fn), Outcome::Allowed(Some(_))));
    // Second time: no keys at all, still allowed from the cache; nothing verified again.
    assert!(matches!(run(NOW + 10, &|_| None), Outcome::Allowed(Some(_))));
    assert_eq!(*verifications.borrow(), 1);
    // The cache never extends a token's life.
    assert_eq!(run(NOW + 100 + 61, &keys_fn), Outcome::Denied(JwtError::Expired));
    // A tampered token is another token: it misses the cache and fails verification.
    let tampered = format!("Bearer {}x", token);
    let header2 = |n: &str| if n == "authorization" { Some(tampered.clone()) } else { None };
    let out = authenticate(&cfg, &Requirement::Provider(0), &Inputs {
        header: &header2, keys: &keys_fn, may_refresh: &|_| false,
        cached: &|i, t| cache.borrow().get(i, 0, t), remember: &|_, _, _| {}, refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW,
    });
    assert!(matches!(out, Outcome::Denied(_)));
}

#[test]
fn a_forged_token_repeated_is_refused_from_memory_without_verifying() {
    let keys = TestKeys::new();
    let cfg = config(&keys, json!({}));
    let keys_fn = local_keys(&cfg);
    let refused = std::cell::RefCell::new(crate::cache::RefusedTokens::new(8));
    let signed = keys.sign("ES256", Some("es"), &TestKeys::claims());
    let (head, _) = signed.rsplit_once('.').unwrap();
    let forged = format!("Bearer {head}.{}", "A".repeat(86));
    let header = |n: &str| if n == "authorization" { Some(forged.clone()) } else { None };
    let run = |keys: &dyn Fn(usize) -> Option<Rc<KeySet>>| {
        authenticate(&cfg, &Requirement::Provider(0), &Inputs {
            header: &header, keys, may_refresh: &|_| false, cached: &|_, _| None, remember: &|_, _, _| {},
            refused: &|i, t| refused.borrow().get(i, 0, t),
            remember_refusal: &|i, t, e| refused.borrow_mut().insert(i, 0, t, e),
            native_payload: &|_| None, now: NOW,
        })
    };
    assert_eq!(run(&keys_fn), Outcome::Denied(JwtError::BadSignature));
    // Again: refused from memory; the keys (and the signature check) are not even consulted.
    assert_eq!(run(&|_| panic!("verified again")), Outcome::Denied(JwtError::BadSignature));
    // Other failures are not remembered: they depend on time or trigger a key refresh.
    let expired = format!("Bearer {}", keys.sign("ES256", Some("es"), &with(json!({"exp": NOW - 1000}))));
    let header = |n: &str| if n == "authorization" { Some(expired.clone()) } else { None };
    let out = authenticate(&cfg, &Requirement::Provider(0), &Inputs {
        header: &header, keys: &keys_fn, may_refresh: &|_| false, cached: &|_, _| None, remember: &|_, _, _| {},
        refused: &|i, t| refused.borrow().get(i, 0, t),
        remember_refusal: &|i, t, e| refused.borrow_mut().insert(i, 0, t, e),
        native_payload: &|_| None, now: NOW,
    });
    assert_eq!(out, Outcome::Denied(JwtError::Expired));
    assert_eq!(refused.borrow().get(0, 0, &expired[7..]), None);
}

#[test]
fn revoked_tokens_are_denied_verified_or_cached() {
    use std::cell::RefCell;
    let keys = TestKeys::new();
    let cfg = config(&keys, json!({"revoked": {"token_ids": ["t-9"], "subjects": [{"sub": "mallory"}, {"sub": "alice", "issued_before": NOW - 5}]}}));
    let bearer = |changes: Value| format!("Bearer {}", keys.sign("ES256", Some("es"), &with(changes)));
    assert_eq!(denied(decide(&cfg, Some(&bearer(json!({"jti": "t-9"}))))), JwtError::TokenRevoked);
    assert_eq!(denied(decide(&cfg, Some(&bearer(json!({"sub": "mallory"}))))), JwtError::TokenRevoked);
    // alice's tokens from before the cut-off are revoked (iat NOW - 10), later ones are not.
    assert_eq!(denied(decide(&cfg, Some(&bearer(json!({}))))), JwtError::TokenRevoked);
    assert!(matches!(decide(&cfg, Some(&bearer(json!({"iat": NOW})))), Outcome::Allowed(Some(_))));

    // A revoked token that sits in the verified-token cache is still denied.
    let cache = RefCell::new(crate::cache::TokenCache::new(8));
    let auth = bearer(json!({"jti": "t-9"}));
    let header = |n: &str| if n == "authorization" { Some(auth.clone()) } else { None };
    let keys_fn = local_keys(&cfg);
    let run = |keys: &dyn Fn(usize) -> Option<Rc<KeySet>>| {
        authenticate(&cfg, &Requirement::Provider(0), &Inputs {
            header: &header, keys, may_refresh: &|_| false,
            cached: &|i, t| cache.borrow().get(i, 0, t), remember: &|i, t, p| cache.borrow_mut().insert(i, 0, t, p), refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| None, now: NOW,
        })
    };
    assert_eq!(run(&keys_fn), Outcome::Denied(JwtError::TokenRevoked));
    assert_eq!(run(&|_| None), Outcome::Denied(JwtError::TokenRevoked), "from the cache");
}

/// What the stage found in native jwt_authn's metadata.
type NativePayload = Option<Result<Map<String, Value>, JwtError>>;

/// A provider on native jwt_authn's payload: (payload in the metadata, outcome).
#[test]
fn native_payloads_are_checked_like_verified_tokens() {
    let cfg = JwtConfig::parse(
        json!({"providers": {"main": {"issuer": ISSUER, "audiences": [AUDIENCE], "from_native_jwt_authn": {"payload_in_metadata": "main"},
                                        "revoked": {"subjects": [{"sub": "mallory"}]}}},
               "rules": [{"match": {"prefix": "/api"}, "requires": {"provider_name": "main"}},
                         {"match": {"prefix": "/maybe"}, "requires": {"allow_missing": {}}}]})
        .to_string()
        .as_bytes(),
        &|_| None,
    )
    .unwrap();
    let run = |payload: NativePayload, requirement: &Requirement| {
        // A token in the request changes nothing: only what jwt_authn verified counts.
        let forged = format!("Bearer {}", hs256(b"x", &json!({"alg": "HS256"}), &TestKeys::claims()));
        let header = move |name: &str| (name == "authorization").then(|| forged.clone());
        authenticate(&cfg, requirement, &Inputs {
            header: &header, keys: &|_| None, may_refresh: &|_| false, cached: &|_, _| None, remember: &|_, _, _| {},
            refused: &|_, _| None, remember_refusal: &|_, _, _| {}, native_payload: &|_| payload.clone(), now: NOW,
        })
    };
    // As the stage reads it: through Envoy's metadata encoding (numbers become doubles).
    let encoded = |claims: Map<String, Value>| crate::native::payload_from_metadata(&crate::native::encode_metadata("main", &claims), "main");
    let provider = Requirement::Provider(0);
    match run(encoded(TestKeys::claims()), &provider) {
        Outcome::Allowed(Some(a)) => {
            assert_eq!(a.principal.subject.as_deref(), Some("alice"));
            assert_eq!(a.principal.tenant.as_deref(), Some("acme"));
            assert_eq!(a.token_header, "", "jwt_authn already removed the token");
        }
        other => panic!("{other:?}"),
    }
    let rows: Vec<(&str, NativePayload, JwtError)> = vec![
        ("no payload: jwt_authn verified nothing", None, JwtError::MissingToken),
        ("metadata unreadable", Some(Err(JwtError::MalformedToken)), JwtError::MalformedToken),
        ("another audience", encoded(with(json!({"aud": "payments"}))), JwtError::WrongAudience),
        ("another issuer", encoded(with(json!({"iss": "https://evil.test"}))), JwtError::WrongIssuer),
        ("expired", encoded(with(json!({"exp": NOW - 3600}))), JwtError::Expired),
        ("no exp", encoded(with(json!({"exp": null}))), JwtError::MissingExpiration),
        ("exp with a fraction", encoded(with(json!({"exp": NOW as f64 + 0.5}))), JwtError::MalformedToken),
        ("revoked subject", encoded(with(json!({"sub": "mallory"}))), JwtError::TokenRevoked),
    ];
    for (name, payload, want) in rows {
        assert_eq!(run(payload, &provider), Outcome::Denied(want), "{name}");
    }
    // allow_missing: no payload passes as anonymous; a payload must pass the checks.
    assert_eq!(run(None, &Requirement::AllowMissing), Outcome::Allowed(None));
    assert_eq!(run(encoded(with(json!({"aud": "payments"}))), &Requirement::AllowMissing), Outcome::Denied(JwtError::WrongAudience));
}
