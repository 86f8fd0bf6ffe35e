"""meshward_schema.wasm in the real Envoy with the crAPI contract (and Petstore from YAML):
conforming requests reach the upstream unchanged; each violation class is refused with its
status and a body naming the location and keyword, never the offending value."""
from __future__ import annotations

import json

import pytest

from harness import FORMS, REPO, Envoy, as_deployed, build_config, plugin

SPECS = REPO / "tests" / "specs"
CRAPI = json.loads((SPECS / "crapi-openapi-spec.json").read_text())
PETSTORE_YAML = (SPECS / "petstore-openapi.yaml").read_text()
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module", params=FORMS)
def crapi_envoy(request, upstream):
    with Envoy(build_config(upstream.port, as_deployed(request.param, [plugin("schema", {"openapi": CRAPI, "max_body_bytes": 65536})])), concurrency=2) as env:
        yield env
    env.cleanup()


def post(env, path, body: bytes, headers=JSON):
    return env.request(path, headers, method="POST", body=body)


def assert_refused(r, status, reason, location=None, keyword=None):
    assert r.status == status and r.reason == reason, r
    assert not r.reached_upstream
    body = r.json()
    if location is not None:
        assert (body["location"], body["keyword"]) == (location, keyword), body


def test_conforming_requests_reach_the_upstream_unchanged(crapi_envoy):
    body = b'{"product_id": 1,   "quantity": 2}'
    r = post(crapi_envoy, "/workshop/api/shop/orders", body)
    assert r.reached_upstream and r.json()["body"].encode() == body, r
    assert crapi_envoy.request("/workshop/api/shop/orders/all?limit=30&offset=0").reached_upstream
    assert crapi_envoy.request("/workshop/api/shop/orders/7").reached_upstream
    login = json.dumps({"email": "a@b.c", "password": "pw"}).encode()
    assert post(crapi_envoy, "/identity/api/auth/login", login).reached_upstream


def test_mass_assignment_and_types(crapi_envoy):
    assert_refused(post(crapi_envoy, "/workshop/api/shop/orders", b'{"product_id": 1, "quantity": 2, "is_admin": true}'),
                   400, "schema_violation", "/body", "unevaluatedProperties")
    r = post(crapi_envoy, "/workshop/api/shop/orders", b'{"product_id": "secret-value-1", "quantity": 2}')
    assert_refused(r, 400, "schema_violation", "/body/product_id", "type")
    assert b"secret-value-1" not in r.body, "the offending value is never echoed"
    assert_refused(post(crapi_envoy, "/workshop/api/shop/orders", b'{"product_id": 1}'), 400, "schema_violation", "/body", "required")


def test_parameters(crapi_envoy):
    assert_refused(crapi_envoy.request("/workshop/api/shop/orders/seven"), 400, "invalid_parameter", "path.order_id", "type")
    assert_refused(crapi_envoy.request("/workshop/api/shop/orders/all?offset=0"), 400, "missing_parameter")
    assert_refused(crapi_envoy.request("/workshop/api/shop/orders/all?limit=lots&offset=0"), 400, "invalid_parameter", "query.limit", "type")


def test_routes_methods_content_types_and_sizes(crapi_envoy):
    assert_refused(crapi_envoy.request("/workshop/api/shop/v2/orders"), 404, "unknown_route")
    assert_refused(crapi_envoy.request("/workshop/api/shop/orders/all?limit=1&offset=0", method="DELETE"), 405, "method_not_allowed")
    assert_refused(post(crapi_envoy, "/workshop/api/shop/orders", b"product_id=1", {"content-type": "application/x-www-form-urlencoded"}),
                   415, "unsupported_media_type")
    assert_refused(post(crapi_envoy, "/workshop/api/shop/orders", b'{"product_id": 1,'), 400, "invalid_json")
    deep = b"[" * 100 + b"]" * 100
    assert_refused(post(crapi_envoy, "/workshop/api/shop/orders", deep), 400, "too_deep")
    big = json.dumps({"product_id": 1, "quantity": 1, "pad": "x" * 100_000}).encode()
    assert_refused(post(crapi_envoy, "/workshop/api/shop/orders", big), 413, "body_too_large")
    # Beyond Envoy's own buffer limit (1 MiB), Envoy answers 413 before the filter decides.
    huge = json.dumps({"product_id": 1, "quantity": 1, "pad": "x" * (2 * 1024 * 1024)}).encode()
    r = post(crapi_envoy, "/workshop/api/shop/orders", huge)
    assert r.status == 413 and not r.reached_upstream


def test_bodies_where_none_belong_and_none_where_one_is_required(crapi_envoy):
    r = crapi_envoy.request("/workshop/api/shop/orders", JSON, method="POST")
    assert_refused(r, 400, "missing_body")
    r = crapi_envoy.request("/workshop/api/shop/orders/all?limit=1&offset=0", JSON, method="GET", body=b'{"a": 1}')
    assert_refused(r, 400, "unexpected_body")


def test_read_only_properties_cannot_be_written(upstream):
    """A property the contract marks readOnly is the server's to set: sending it is refused."""
    doc = json.loads(json.dumps(CRAPI))
    doc["components"]["schemas"]["ProductQuantity"]["properties"]["order_id"] = {"type": "integer", "readOnly": True}
    with Envoy(build_config(upstream.port, [plugin("schema", {"openapi": doc})]), concurrency=1) as env:
        assert post(env, "/workshop/api/shop/orders", b'{"product_id": 1, "quantity": 2}').reached_upstream
        r = post(env, "/workshop/api/shop/orders", b'{"product_id": 1, "quantity": 2, "order_id": 7}')
        assert_refused(r, 400, "schema_violation", "/body/order_id", "falseSchema")
    env.cleanup()


def test_metrics_per_operation(crapi_envoy):
    post(crapi_envoy, "/workshop/api/shop/orders", b'{"product_id": 1, "quantity": 2, "role": "admin"}')
    assert crapi_envoy.counter("meshward_schema_denied_total.route.create_order.reason.schema_violation") >= 1


def test_petstore_from_yaml(upstream):
    with Envoy(build_config(upstream.port, [plugin("schema", {"openapi_text": PETSTORE_YAML})]), concurrency=1) as env:
        pet = json.dumps({"name": "doggie", "photoUrls": ["u"], "status": "available"}).encode()
        assert post(env, "/pet", pet).reached_upstream
        r = post(env, "/pet", json.dumps({"name": "doggie", "photoUrls": ["u"], "status": "asleep"}).encode())
        assert_refused(r, 400, "schema_violation", "/body/status", "enum")
        assert env.request("/pet/findByStatus?status=available").reached_upstream
        assert_refused(env.request("/pet/findByStatus?status=asleep"), 400, "invalid_parameter", "query.status", "enum")
    env.cleanup()


def test_shadow_mode_forwards_and_counts(upstream):
    with Envoy(build_config(upstream.port, [plugin("schema", {"openapi": CRAPI, "mode": "shadow"})]), concurrency=1) as env:
        assert post(env, "/workshop/api/shop/orders", b'{"product_id": 1, "quantity": 2, "is_admin": true}').reached_upstream
        assert env.counter("meshward_schema_shadow_denied_total.route.create_order.reason.schema_violation") == 1
    env.cleanup()


def test_bad_spec_is_refused_naming_the_location(upstream):
    """`meshward compile` refuses a broken contract naming where; the module, which loads only
    compiled contracts, refuses the document as written whole."""
    from harness import CompileError, run_envoy_expecting_failure

    broken = json.loads(json.dumps(CRAPI))
    broken["paths"]["/workshop/api/shop/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"] = {"$ref": "#/components/schemas/Missing"}
    with pytest.raises(CompileError) as refused:
        plugin("schema", {"openapi": broken})
    assert "schema stage" in str(refused.value) and "#/components/schemas/Missing" in str(refused.value) and "does not resolve" in str(refused.value)
    log = run_envoy_expecting_failure(build_config(upstream.port, [plugin("schema", {"openapi": broken}, compile=False)]))
    assert "meshward_schema: invalid configuration: openapi: this module runs compiled contracts" in log, log[-2000:]


def tagged_crapi() -> dict:
    """crAPI as its team would tag it: the dashboard's contact fields are `pii`, the role is
    `internal` (and no longer promised to clients)."""
    doc = json.loads(json.dumps(CRAPI))
    schema = doc["paths"]["/identity/api/v2/user/dashboard"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    for field in ("email", "number"):
        schema["properties"][field]["x-data-class"] = "pii"
    schema["properties"]["role"]["x-data-class"] = "internal"
    schema["required"].remove("role")
    return doc


@pytest.fixture(scope="module", params=FORMS)
def response_envoy(request):
    from fake_crapi import crapi_server

    server = crapi_server()
    checks = {"validate": True, "data_classes": {"pii": "strip", "internal": "block"}}
    try:
        with Envoy(build_config(server.port, as_deployed(request.param, [plugin("schema", {"openapi": tagged_crapi(), "response": checks})])), concurrency=2) as env:
            yield env
        env.cleanup()
    finally:
        server.stop()


DASHBOARD = "/identity/api/v2/user/dashboard"


@pytest.mark.parametrize("variant", ["", "chunked"])
def test_pii_fields_are_stripped_from_answers(response_envoy, variant):
    r = response_envoy.request(DASHBOARD, {"x-fake-variant": variant})
    assert r.status == 200 and not r.reset, r
    answer = r.json()
    assert "email" not in answer and "number" not in answer, answer
    assert answer["name"] == "Jasen.Hamill" and answer["available_credit"] == 155
    assert b"7005397357" not in r.body and b"Jasen.Hamill@example.com" not in r.body
    length = dict((k.lower(), v) for k, v in r.headers).get("content-length")
    assert length is None or int(length) == len(r.body), r.headers
    assert response_envoy.counter("meshward_schema_stripped_total") >= 1


def test_blocked_field_and_broken_answers_never_leave(response_envoy):
    for variant, reason in [("role", "blocked_field"), ("broken", "response_violation")]:
        r = response_envoy.request(DASHBOARD, {"x-fake-variant": variant})
        # The status went out before the body was read; the body never does.
        assert r.reset and b"ROLE_ADMIN" not in r.body and b"lots" not in r.body, (variant, r)
        assert response_envoy.counter(f"meshward_schema_denied_total.route.get_dashboard.reason.{reason}") >= 1, reason


def test_undeclared_status_is_replaced_and_errors_pass(response_envoy):
    r = response_envoy.request(DASHBOARD, {"x-fake-variant": "created"})
    assert r.status == 502 and r.reason == "undeclared_response" and b"Jasen" not in r.body, r
    # Error answers pass as they are: they carry no object of the operation.
    r = response_envoy.request(DASHBOARD, {"x-fake-variant": "error"})
    assert r.status == 500 and r.json()["message"] == "boom", r
