"""meshward_jwt.wasm in the real Envoy: every algorithm, every deny reason, claim headers,
filter state, shadow mode, metrics and logs. Tokens come from PyJWT / jwcrypto."""
from __future__ import annotations

import json
import time

import jwt
import pytest

from harness import FORMS, Envoy, as_deployed, build_config, plugin
from tokens import ALGORITHMS, AUDIENCE, ISSUER, KeyRing, bearer, forge_hs256, unsigned


def jwt_config(keys: KeyRing, mode: str = "enforce") -> dict:
    return {
        "mode": mode,
        "providers": {
            "main": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE, "billing-api"],
                "local_jwks": {"inline_string": json.dumps(keys.jwks())},
                "claim_to_headers": [
                    {"header_name": "x-jwt-sub", "claim_name": "sub"},
                    {"header_name": "x-jwt-tenant", "claim_name": "tenant"},
                ],
            }
        },
        "rules": [
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/optional"}, "requires": {"requires_any": {"requirements": [{"provider_name": "main"}, {"allow_missing": {}}]}}},
            {"match": {"prefix": "/api"}, "requires": {"provider_name": "main"}},
        ],
    }


# Lets the tests see the filter state the JWT filter published, through the upstream echo.
PRINCIPAL_ECHO = [{"header": {"key": "x-test-principal", "value": "%FILTER_STATE(wasm.meshward.principal:PLAIN)%"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, upstream, keys):
    cfg = build_config(upstream.port, as_deployed(request.param, [plugin("jwt", jwt_config(keys))]), request_headers_to_add=PRINCIPAL_ECHO)
    with Envoy(cfg) as env:
        yield env
    env.cleanup()


def assert_denied(r, status: int, reason: str):
    assert r.status == status, r
    assert r.reason == reason, r
    assert r.header("content-type") == "application/json"
    assert not r.reached_upstream


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_family_reaches_upstream(envoy, keys, alg):
    r = envoy.request("/api/orders", bearer(keys.token(alg, sub=f"user-{alg}")))
    assert r.reached_upstream, r
    seen = r.upstream_headers()
    assert seen["x-jwt-sub"] == [f"user-{alg}"]
    assert seen["x-jwt-tenant"] == ["acme"]
    # forward: false (the default): the token itself does not travel upstream.
    assert "authorization" not in seen


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_every_algorithm_refuses_another_signer_and_a_tampered_payload(envoy, keys, alg):
    # Signed by the sender's own library with another key of the same family, under our kid.
    assert_denied(envoy.request("/api/orders", bearer(KeyRing().token(alg, kid=keys.kid(alg)))), 401, "bad_signature")
    head, _, signature = keys.token(alg).rpartition(".")
    header, _ = head.split(".")
    evil = keys.token(alg, sub="admin").split(".")[1]
    assert_denied(envoy.request("/api/orders", bearer(f"{header}.{evil}.{signature}")), 401, "bad_signature")


def test_token_without_kid_is_matched_by_algorithm(envoy, keys):
    assert envoy.request("/api/orders", bearer(keys.token("ES256", kid=None))).reached_upstream


def test_audience_array_any_configured_audience_matches(envoy, keys):
    assert envoy.request("/api/x", bearer(keys.token(aud=["someone-else", "billing-api"]))).reached_upstream


def test_principal_is_published_in_filter_state(envoy, keys):
    token = keys.token("RS256", sub="bob", scope="orders:read orders:write", tenant="t-9")
    r = envoy.request("/api/x", {**bearer(token), "x-test-principal": "forged"})
    principal = json.loads(r.upstream_headers()["x-test-principal"][0])
    assert principal["subject"] == "bob"
    assert principal["issuer"] == ISSUER
    assert principal["provider"] == "main"
    assert principal["scopes"] == ["orders:read", "orders:write"]
    assert principal["tenant"] == "t-9"
    assert principal["audiences"] == [AUDIENCE]


def test_client_sent_claim_headers_never_reach_upstream_as_trusted(envoy, keys):
    spoof = {"x-jwt-sub": "admin", "x-jwt-tenant": "root"}
    r = envoy.request("/api/x", {**bearer(keys.token(sub="alice")), **spoof})
    assert r.upstream_headers()["x-jwt-sub"] == ["alice"]
    assert r.upstream_headers()["x-jwt-tenant"] == ["acme"]
    # On a public route nothing is verified, and the spoofed headers are still removed.
    r = envoy.request("/public/info", spoof)
    assert r.reached_upstream
    assert "x-jwt-sub" not in r.upstream_headers() and "x-jwt-tenant" not in r.upstream_headers()
    # A token without the claim does not let the client's copy through either.
    r = envoy.request("/api/x", {**bearer(keys.token(tenant=None)), **spoof})
    assert "x-jwt-tenant" not in r.upstream_headers()


def test_missing_token(envoy):
    r = envoy.request("/api/x")
    assert_denied(r, 401, "missing_token")
    assert r.header("www-authenticate") == 'Bearer realm="meshward"'
    assert r.json()["request_id"]


def test_other_scheme_is_not_a_token(envoy, keys):
    assert_denied(envoy.request("/api/x", {"authorization": "Basic " + keys.token()}), 401, "missing_token")


def test_expired_and_clock_skew(envoy, keys):
    now = int(time.time())
    r = envoy.request("/api/x", bearer(keys.token(exp=now - 120, iat=now - 600)))
    assert_denied(r, 401, "expired")
    assert 'error="invalid_token"' in r.header("www-authenticate")
    # Within the default 60 s skew: still accepted.
    assert envoy.request("/api/x", bearer(keys.token(exp=now - 20, iat=now - 600))).reached_upstream


def test_not_yet_valid(envoy, keys):
    now = int(time.time())
    assert_denied(envoy.request("/api/x", bearer(keys.token(nbf=now + 600))), 401, "not_yet_valid")


def test_missing_exp_is_refused_by_default(envoy, keys):
    assert_denied(envoy.request("/api/x", bearer(keys.token(exp=None))), 401, "missing_exp")


def test_wrong_issuer(envoy, keys):
    assert_denied(envoy.request("/api/x", bearer(keys.token(iss="https://evil.test"))), 401, "wrong_issuer")
    assert_denied(envoy.request("/api/x", bearer(keys.token(iss=None))), 401, "wrong_issuer")


def test_wrong_audience_is_forbidden(envoy, keys):
    r = envoy.request("/api/x", bearer(keys.token(aud="payments-api")))
    assert_denied(r, 403, "wrong_audience")
    assert 'error="invalid_token"' in r.header("www-authenticate")
    assert_denied(envoy.request("/api/x", bearer(keys.token(aud=None))), 403, "wrong_audience")


def test_bad_signature(envoy, keys):
    impostor = KeyRing()
    assert_denied(envoy.request("/api/x", bearer(impostor.token("RS256"))), 401, "bad_signature")
    assert_denied(envoy.request("/api/x", bearer(impostor.token("ES256"))), 401, "bad_signature")
    assert_denied(envoy.request("/api/x", bearer(impostor.token("HS256"))), 401, "bad_signature")
    # Payload swapped after signing.
    header, _, sig = keys.token("RS256").split(".")
    _, payload, _ = keys.token("RS256", sub="admin").split(".")
    assert_denied(envoy.request("/api/x", bearer(f"{header}.{payload}.{sig}")), 401, "bad_signature")


def test_a_forged_token_repeated_is_refused_without_verifying_it_again(envoy, keys):
    """A flood of one forged token (valid kid, bad signature) costs a hash per request, not an
    RSA verification: each VM verifies it once, then refuses it from memory."""
    header, payload, _ = keys.token("RS256", sub=f"forger-{time.time()}").split(".")
    forged = f"{header}.{payload}.{'A' * 342}"
    before = envoy.counter("meshward_jwt_refused_from_memory_total")
    for _ in range(6):
        assert_denied(envoy.request("/api/x", bearer(forged)), 401, "bad_signature")
    # Two workers: at most one verification on each.
    assert envoy.counter("meshward_jwt_refused_from_memory_total") - before >= 4
    # The real token with the same header and claims still verifies.
    assert envoy.request("/api/x", bearer(keys.token("RS256"))).reached_upstream


def test_alg_none_is_refused(envoy, keys):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300}
    assert_denied(envoy.request("/api/x", bearer(unsigned(claims))), 401, "unsupported_algorithm")
    assert_denied(envoy.request("/api/x", bearer(unsigned(claims, alg="None"))), 401, "unsupported_algorithm")
    assert_denied(envoy.request("/api/x", bearer(jwt.encode(claims, None, algorithm="none"))), 401, "unsupported_algorithm")


def test_rs256_to_hs256_confusion_is_refused(envoy, keys):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "admin", "exp": now + 300}
    pem = keys.rsa_public_pem()
    # Naming the RSA key: its type does not fit HS256.
    forged = forge_hs256(pem, {"alg": "HS256", "typ": "JWT", "kid": "rsa"}, claims)
    assert_denied(envoy.request("/api/x", bearer(forged)), 401, "algorithm_mismatch")
    # Naming no key: only real HMAC keys are tried, and the public key is not one of them.
    forged = forge_hs256(pem, {"alg": "HS256", "typ": "JWT"}, claims)
    assert_denied(envoy.request("/api/x", bearer(forged)), 401, "bad_signature")


def test_unknown_kid(envoy, keys):
    assert_denied(envoy.request("/api/x", bearer(keys.token("RS256", kid="retired-key"))), 401, "unknown_kid")


def test_unknown_critical_header(envoy, keys):
    token = keys.token("ES256", headers={"crit": ["exp-ext"], "exp-ext": 1})
    assert_denied(envoy.request("/api/x", bearer(token)), 401, "unsupported_crit")


@pytest.mark.parametrize("token", ["abc", "a.b.c", "a.b", "a.b.c.d", "!!!.###.$$$", "eyJhbGciOiJSUzI1NiJ9.e30"])
def test_malformed_tokens(envoy, token):
    r = envoy.request("/api/x", bearer(token))
    assert r.status == 401 and r.reason in {"malformed_token", "unsupported_algorithm"}, r
    assert not r.reached_upstream


def test_oversized_token(envoy, keys):
    assert_denied(envoy.request("/api/x", bearer(keys.token(pad="x" * 9000))), 401, "token_too_large")


def test_routes_without_rule_are_denied(envoy, keys):
    assert_denied(envoy.request("/admin"), 403, "route_not_covered")
    assert_denied(envoy.request("/admin", bearer(keys.token())), 403, "route_not_covered")


def test_path_tricks_do_not_reach_protected_routes(envoy):
    for path in ["/public/../api/x", "/public/%2e%2e/api/x", "//api/x", "/public/./../api/x"]:
        r = envoy.request(path)
        assert r.status in (400, 401), (path, r)
        assert not r.reached_upstream, path


def test_allow_missing(envoy, keys):
    assert envoy.request("/optional/x").reached_upstream
    r = envoy.request("/optional/x", bearer(keys.token()))
    assert r.upstream_headers()["x-jwt-sub"] == ["alice"]
    # A token that is present must still be valid.
    assert_denied(envoy.request("/optional/x", bearer(keys.token(aud="payments-api"))), 403, "wrong_audience")


def test_metrics_by_reason(envoy, keys):
    before = envoy.counter("meshward_jwt_denied_total.reason.expired")
    envoy.request("/api/x", bearer(keys.token(exp=int(time.time()) - 3600)))
    assert envoy.counter("meshward_jwt_denied_total.reason.expired") == before + 1
    allowed = envoy.counter("meshward_jwt_allowed_total")
    assert envoy.request("/api/x", bearer(keys.token())).reached_upstream
    assert envoy.counter_reaches("meshward_jwt_allowed_total", allowed + 1) >= allowed + 1
    assert 'meshward_jwt_denied_total{reason="expired"}' in envoy.prometheus()


def test_one_log_line_per_denial_without_token_contents(envoy, keys):
    token = keys.token(aud="payments-api", sub="log-probe")
    r = envoy.request("/api/log-probe?secret=hunter2", bearer(token))
    request_id = r.json()["request_id"]
    line = envoy.wait_for_log(r"meshward_jwt: (\{.*\"request_id\":\"" + request_id + r"\".*\})").group(1)
    entry = json.loads(line)
    assert entry["reason"] == "wrong_audience" and entry["status"] == 403
    assert entry["path"] == "/api/log-probe" and entry["method"] == "GET"
    log = envoy.log()
    assert token not in log and token.split(".")[1] not in log and "hunter2" not in log


def test_shadow_mode_lets_bad_tokens_through_and_counts_them(upstream, keys):
    cfg = build_config(upstream.port, [plugin("jwt", jwt_config(keys, mode="shadow"))])
    with Envoy(cfg, concurrency=1) as env:
        expired = keys.token(exp=int(time.time()) - 3600)
        r = env.request("/api/x", bearer(expired))
        assert r.reached_upstream, r
        assert "x-jwt-sub" not in r.upstream_headers()
        r = env.request("/api/x")
        assert r.reached_upstream
        assert env.counter("meshward_jwt_shadow_denied_total.reason.expired") == 1
        assert env.counter("meshward_jwt_shadow_denied_total.reason.missing_token") == 1
        assert env.counter("meshward_jwt_denied_total.reason.expired") == 0
        # Valid tokens are still verified and published in shadow mode.
        r = env.request("/api/x", bearer(keys.token(sub="carol")))
        assert r.upstream_headers()["x-jwt-sub"] == ["carol"]
    env.cleanup()
