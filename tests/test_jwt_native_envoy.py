"""meshward_jwt.wasm on the payload Envoy's own jwt_authn verified (`from_native_jwt_authn`),
in the real Envoy, separate module and bundle: the signature is native's, meshward's checks
(audience, issuer, time, revocation, the principal and its claim headers) apply on top, and
nothing but jwt_authn's dynamic metadata can hand meshward a payload."""
from __future__ import annotations

import json

import pytest

from harness import FORMS, Envoy, as_deployed, build_config, plugin
from tokens import ALGORITHMS, AUDIENCE, ISSUER, KeyRing, bearer

OTHER_AUDIENCE = "payments-api"


def native_jwt_authn(keys: KeyRing) -> dict:
    """Native jwt_authn as Istio's RequestAuthentication configures it: it verifies, stores the
    payload under the issuer... here under `main`, and removes the token (forward: false)."""
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"main": {"issuer": ISSUER, "audiences": [AUDIENCE, OTHER_AUDIENCE],
                                   "local_jwks": {"inline_string": json.dumps(keys.jwks(("rsa", "es256", "es384", "ed")))},
                                   "payload_in_metadata": "main"}},
            "rules": [
                {"match": {"prefix": "/lenient"}, "requires": {"requires_any": {"requirements": [{"provider_name": "main"}, {"allow_missing_or_failed": {}}]}}},
                {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}},
            ],
        },
    }


def meshward_config() -> dict:
    return {
        "providers": {"main": {"issuer": ISSUER, "audiences": [AUDIENCE], "from_native_jwt_authn": {"payload_in_metadata": "main"},
                               "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
                               "revoked": {"subjects": [{"sub": "mallory"}]}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}],
    }


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, upstream, keys):
    cfg = build_config(upstream.port, as_deployed(request.param, [plugin("jwt", meshward_config())]), native_filters=[native_jwt_authn(keys)])
    with Envoy(cfg) as env:
        yield env
    env.cleanup()


@pytest.mark.parametrize("alg", [a for a in ALGORITHMS if not a.startswith("HS")])
def test_a_token_native_verified_reaches_the_service_with_meshward_principal(envoy, keys, alg):
    r = envoy.request("/api/orders", {**bearer(keys.token(alg, sub=f"user-{alg}")), "x-jwt-sub": "forged"})
    assert r.reached_upstream, r
    seen = r.upstream_headers()
    assert seen["x-jwt-sub"] == [f"user-{alg}"]
    assert "authorization" not in seen, "jwt_authn removed the token"


def test_meshward_checks_apply_on_top_of_native(envoy, keys):
    # An audience native accepts and this service does not.
    r = envoy.request("/api/orders", bearer(keys.token("ES256", aud=OTHER_AUDIENCE)))
    assert (r.status, r.reason) == (403, "wrong_audience"), r
    r = envoy.request("/api/orders", bearer(keys.token("ES256", sub="mallory")))
    assert (r.status, r.reason) == (401, "token_revoked"), r
    # Native refuses what it cannot verify before meshward runs (its own 401, no meshward reason).
    r = envoy.request("/api/orders", bearer(KeyRing().token("ES256", kid=keys.kid("ES256"))))
    assert r.status == 401 and not r.reached_upstream, r


def test_no_payload_in_metadata_is_a_missing_token_whatever_the_request_carries(envoy, keys):
    # Native lets a failed token through on /lenient without storing a payload: meshward refuses.
    forged = KeyRing().token("ES256", kid=keys.kid("ES256"))
    for headers in [bearer(forged), {}, {"x-jwt-payload": json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice"})}]:
        r = envoy.request("/lenient/orders", headers)
        assert (r.status, r.reason) == (401, "missing_token"), (headers.keys(), r)
    assert envoy.request("/lenient/orders", bearer(keys.token("ES256"))).reached_upstream
