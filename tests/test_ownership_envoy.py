"""meshward_jwt.wasm + meshward_ownership.wasm chained in the real Envoy: tenant boundaries by
path and body, IDOR caught on the response, scopes, admin bypass, forged principals. Includes
the crAPI rule set from examples/crapi/ownership.json."""
from __future__ import annotations

import json

import pytest

from harness import FORMS, REPO, Envoy, as_deployed, build_config, plugin
from tokens import AUDIENCE, ISSUER, bearer
from test_jwt_envoy import jwt_config

CRAPI_RULES = json.loads((REPO / "examples" / "crapi" / "ownership.json").read_text())
ALICE_CAR, VICTIM_CAR = "4bae9968-ec7f-4de3-a3a0-ba1b2ab5e5e5", "0a9a5e2c-5b2b-4ae4-8e0e-1f0c7d1e7e11"


def ownership_config() -> dict:
    cfg = json.loads(json.dumps(CRAPI_RULES))
    cfg["rules"] = [
        {"name": "tenant-order-read", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}", "methods": ["GET"]},
         "scopes": ["orders:read"], "owner": [{"path_param": "tenant_id", "claim": "tenant"}]},
        {"name": "tenant-order-write", "match": {"template": "/tenants/{tenant_id}/orders", "methods": ["POST"]},
         "scopes": ["orders:write"],
         "owner": [{"path_param": "tenant_id", "claim": "tenant"}, {"body_field": "/tenant_id", "claim": "tenant"}]},
        {"name": "my-list", "match": {"path": "/list"}, "owner": [{"response_field": "/*/owner", "claim": "sub"}]},
        *cfg["rules"],
    ]
    return cfg


def chain_jwt_config(keys) -> dict:
    cfg = jwt_config(keys)
    cfg["rules"] = [{"match": {"prefix": "/identity/api/auth/"}}, {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    return cfg


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, crapi, keys):
    cfg = build_config(crapi.port, as_deployed(request.param, [plugin("jwt", chain_jwt_config(keys)), plugin("ownership", ownership_config())]))
    with Envoy(cfg) as env:
        yield env
    env.cleanup()


def token(keys, **claims):
    base = {"sub": "alice", "email": "alice@example.com", "tenant": "acme", "scope": "orders:read orders:write vehicles:read"}
    base.update(claims)
    return bearer(keys.token("ES256", **base))


def assert_denied(r, status, reason):
    assert r.status == status and r.reason == reason, r
    assert "method" not in r.body.decode(errors="replace"), "nothing of the upstream answer may leak"


def test_own_tenant_read_and_write_pass(envoy, keys):
    assert envoy.request("/tenants/acme/orders/7", token(keys)).reached_upstream
    body = json.dumps({"tenant_id": "acme", "item": "brake pads"}).encode()
    r = envoy.request("/tenants/acme/orders", token(keys), method="POST", body=body)
    assert r.reached_upstream and r.json()["body"].encode() == body


def test_cross_tenant_read_by_path(envoy, keys):
    assert_denied(envoy.request("/tenants/globex/orders/7", token(keys)), 403, "tenant_boundary")


def test_cross_tenant_write_by_body_field(envoy, keys):
    body = json.dumps({"tenant_id": "globex", "item": "brake pads"}).encode()
    assert_denied(envoy.request("/tenants/acme/orders", token(keys), method="POST", body=body), 403, "tenant_boundary")
    # No tenant in the body: it cannot be shown to stay inside the caller's tenant.
    assert_denied(envoy.request("/tenants/acme/orders", token(keys), method="POST", body=b'{"item": "x"}'), 403, "tenant_boundary")
    assert_denied(envoy.request("/tenants/acme/orders", token(keys), method="POST", body=b"tenant_id=acme"), 400, "invalid_body")


def test_missing_scope(envoy, keys):
    assert_denied(envoy.request("/tenants/acme/orders/7", token(keys, scope="profile")), 403, "missing_scope")


def assert_cut(r, leaked: bytes):
    # The status went out before the body was seen; the body never does: the stream is reset.
    assert r.reset and leaked not in r.body and r.body == b"", r


def test_idor_through_opaque_id_is_caught_on_the_response(envoy, keys):
    r = envoy.request(f"/identity/api/v2/vehicle/{ALICE_CAR}/location", token(keys))
    assert r.status == 200 and not r.reset and r.json()["email"] == "alice@example.com", r
    before = envoy.counter("meshward_ownership_denied_total.route.vehicle-location.reason.not_owner")
    assert_cut(envoy.request(f"/identity/api/v2/vehicle/{VICTIM_CAR}/location", token(keys)), b"victim@example.com")
    assert envoy.counter("meshward_ownership_denied_total.route.vehicle-location.reason.not_owner") == before + 1
    assert_cut(envoy.request("/workshop/api/shop/orders/2", token(keys)), b"victim")
    assert envoy.request("/workshop/api/shop/orders/1", token(keys)).json()["order"]["id"] == 1


def test_every_element_of_a_list_must_be_owned(envoy, keys):
    r = envoy.request("/list", token(keys))
    assert r.status == 200 and len(r.json()) == 2
    assert_cut(envoy.request("/list?leak=1", token(keys)), b"mallory")
    # A user with nothing yet: an empty list holds nothing of anyone else's and passes whole.
    r = envoy.request("/list?none=1", token(keys))
    assert r.status == 200 and not r.reset and r.json() == [], r


def test_function_level_admin_routes(envoy, keys):
    assert_denied(envoy.request("/workshop/api/management/users/all", token(keys)), 403, "missing_scope")
    assert_denied(envoy.request("/identity/api/v2/admin/videos/5", token(keys), method="DELETE"), 403, "missing_scope")
    admin = token(keys, sub="ops", email="ops@example.com", scope="crapi:admin")
    assert envoy.request("/workshop/api/management/users/all", admin).reached_upstream
    assert envoy.request("/identity/api/v2/admin/videos/5", admin, method="DELETE").reached_upstream


def test_admin_bypass_is_allowed_and_audited(envoy, keys):
    admin = token(keys, sub="ops", email="ops@example.com", tenant="ops", scope="crapi:admin orders:read")
    assert envoy.request("/tenants/globex/orders/7", admin).reached_upstream
    r = envoy.request(f"/identity/api/v2/vehicle/{VICTIM_CAR}/location", token(keys, sub="ops", email="ops@example.com", scope="crapi:admin vehicles:read"))
    assert r.status == 200 and r.json()["email"] == "victim@example.com"
    line = envoy.wait_for_log(r'meshward_ownership: (\{"decision":"bypass".*?\})').group(1)
    assert json.loads(line)["principal"] == "ops"
    assert envoy.counter("meshward_ownership_bypass_total") >= 2


def test_unlisted_routes_are_denied(envoy, keys):
    assert_denied(envoy.request("/workshop/api/shop/orders/1", token(keys), method="PUT", body=b"{}"), 403, "route_not_covered")


def test_public_route_needs_no_principal(envoy):
    assert envoy.request("/identity/api/auth/login", method="POST", body=b"{}").reached_upstream


def test_metrics_per_route_and_reason(envoy, keys):
    envoy.request("/tenants/globex/orders/7", token(keys))
    prom = envoy.prometheus()
    assert 'meshward_ownership_denied_total{route="tenant-order-read",reason="tenant_boundary"}' in prom or \
        'meshward_ownership_denied_total{reason="tenant_boundary",route="tenant-order-read"}' in prom, \
        [l for l in prom.splitlines() if "ownership" in l]


def test_forged_principal_headers_are_not_a_principal(crapi):
    """Without the JWT filter in front, nothing a client sends becomes a principal."""
    forged = json.dumps({"provider": "main", "issuer": ISSUER, "subject": "alice", "audiences": [AUDIENCE],
                         "scopes": ["orders:read"], "tenant": "acme", "claims": {"tenant": "acme", "sub": "alice"}})
    headers = {"x-meshward-principal": forged, "meshward.principal": forged, "x-jwt-sub": "alice", "x-jwt-tenant": "acme"}
    with Envoy(build_config(crapi.port, [plugin("ownership", ownership_config())]), concurrency=1) as env:
        r = env.request("/tenants/acme/orders/7", headers)
        assert_denied(r, 401, "missing_principal")
    env.cleanup()
