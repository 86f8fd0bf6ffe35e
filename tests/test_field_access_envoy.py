"""Field-level access on answers through the real Envoy: crAPI's dashboard with fields tagged
`x-required-scope` in the contract; jwt + schema (response checks) as separate modules and as
the bundle. A caller gets the fields its token's scopes allow, over HTTP/1.1 and HTTP/2, and the
answer stays valid against the contract; `required_scope: block` refuses the whole answer."""
from __future__ import annotations

import json

import httpx
import pytest

from harness import FORMS, Envoy, as_deployed, build_config, plugin
from test_jwt_envoy import jwt_config
from test_schema_envoy import CRAPI
from tokens import bearer

DASHBOARD = "/identity/api/v2/user/dashboard"


def scoped_crapi() -> dict:
    """The dashboard's credit needs `credit:read`; its e-mail needs both `user:read` and `user:pii`."""
    doc = json.loads(json.dumps(CRAPI))
    schema = doc["paths"][DASHBOARD]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    schema["properties"]["available_credit"]["x-required-scope"] = "credit:read"
    schema["properties"]["email"]["x-required-scope"] = ["user:read", "user:pii"]
    schema["required"].remove("role")  # the fake crAPI leaves it out
    return doc


def plugins(keys, response: dict) -> list[dict]:
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    return [plugin("jwt", jwt), plugin("schema", {"openapi": scoped_crapi(), "response": response})]


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, crapi, keys):
    with Envoy(build_config(crapi.port, as_deployed(request.param, plugins(keys, {"validate": True}))), concurrency=2) as env:
        yield env
    env.cleanup()


def token(keys, scope: str) -> dict:
    return bearer(keys.token("ES256", scope=scope))


@pytest.mark.parametrize("scope, shown", [
    ("credit:read user:read user:pii", {"available_credit", "email"}),
    ("credit:read user:read", {"available_credit"}),
    ("user:pii", set()),
    ("", set()),
])
def test_each_caller_gets_the_fields_its_scopes_allow(envoy, keys, scope, shown):
    r = envoy.request(DASHBOARD, token(keys, scope))
    assert r.status == 200 and not r.reset, r
    answer = r.json()
    assert {"available_credit", "email"} & set(answer) == shown, answer
    assert answer["name"] == "Jasen.Hamill", "untagged fields stay"
    if "email" not in shown:
        assert b"Jasen.Hamill@example.com" not in r.body
    length = r.header("content-length")
    assert length is None or int(length) == len(r.body), r.headers


def test_over_http2_and_chunked_alike(envoy, keys):
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        r = client.get(f"http://127.0.0.1:{envoy.port}{DASHBOARD}", headers=token(keys, "user:read"))
    assert r.http_version == "HTTP/2" and r.status_code == 200, r
    assert "available_credit" not in r.json() and "email" not in r.json()
    chunked = envoy.request(DASHBOARD, {**token(keys, "user:read"), "x-fake-variant": "chunked"})
    assert chunked.status == 200 and "available_credit" not in chunked.json(), chunked


def test_block_refuses_the_answer_to_a_caller_without_the_scope(crapi, keys):
    config = build_config(crapi.port, as_deployed("bundle", plugins(keys, {"validate": True, "required_scope": "block"})))
    with Envoy(config, concurrency=1) as env:
        assert env.request(DASHBOARD, token(keys, "credit:read user:read user:pii")).status == 200
        r = env.request(DASHBOARD, token(keys, "credit:read"))
        assert (r.status == 502 and r.reason == "blocked_field") or r.reset, r
        assert b"Jasen.Hamill@example.com" not in r.body
        assert env.counter("meshward_schema_denied_total.route.get_dashboard.reason.blocked_field") >= 1
    env.cleanup()
