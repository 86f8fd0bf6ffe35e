"""What the service sees of a request a stage refuses on its body. Deployed as `meshward render`
and envoy/envoy.yaml deploy it (Envoy's `allow_on_headers_stop_iteration` + the module told so),
the request headers wait for the body decisions: a refused request never reaches the service,
not even its headers, so a service that answers before reading the body cannot act on it.
Deployed as Istio's WasmPlugin deploys it (no such setting), headers go on first: a service
that answers before the body was checked sees the request, and its answer is replaced (502)."""
from __future__ import annotations

import http.client
import time
from http.server import BaseHTTPRequestHandler

import pytest

from harness import FORMS, Envoy, Response, as_deployed, build_config, http_server, plugin
from test_webhook_envoy import STRIPE_SECRET, assert_denied, payload, standard, webhook_config


class EarlyAnswer(BaseHTTPRequestHandler):
    """A service that records every request whose headers reach it and answers at once, before
    reading the body (as a handler that needs no body does)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        with self.server.lock:
            self.server.arrived.append(self.path)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
        self.close_connection = True

    def log_message(self, *args):
        pass


def slow_post(env, path: str, headers: dict, body: bytes) -> Response:
    """A POST whose body follows its headers 0.3 s later (a client on a slow link): time enough
    for headers that go on to reach the service before the body is read."""
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for k, v in {**headers, "content-length": str(len(body))}.items():
            conn.putheader(k, v)
        conn.endheaders()
        time.sleep(0.3)
        conn.send(body)
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def service():
    server = http_server(EarlyAnswer, arrived=[])
    yield server
    server.shutdown()


@pytest.fixture(params=[True, False], ids=["held", "as-istio-deploys"])
def hold(request):
    return request.param


@pytest.fixture(params=FORMS)
def envoy(request, service, hold):
    schema = {"openapi": {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {"/orders": {"post": {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["quantity"], "additionalProperties": False,
            "properties": {"quantity": {"type": "integer", "maximum": 10}}}}}},
        "responses": {"200": {"description": "ok"}}}},
        "/hooks/standard": {"post": {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                                     "responses": {"200": {"description": "ok"}}}}}}, "reject_unknown_properties": False}
    plugins = [plugin("webhook", webhook_config(), env={"STRIPE_WEBHOOK_SECRET": STRIPE_SECRET}, hold_headers=hold), plugin("schema", schema, hold_headers=hold)]
    with Envoy(build_config(service.server_address[1], as_deployed(request.param, plugins)), concurrency=1) as env:
        service.arrived.clear()
        yield env
    env.cleanup()


def test_a_request_refused_on_its_body_never_reaches_the_service_when_headers_are_held(envoy, service, hold):
    body = payload()
    forged = {**standard(body), "webhook-signature": "v1,AAAA"}
    refused_webhook = slow_post(envoy, "/hooks/standard", forged, body)
    refused_order = slow_post(envoy, "/orders", {"content-type": "application/json"}, b'{"quantity": 1000}')
    valid_webhook = slow_post(envoy, "/hooks/standard", standard(body), body)
    valid_order = slow_post(envoy, "/orders", {"content-type": "application/json"}, b'{"quantity": 2}')
    if hold:
        assert_denied(refused_webhook, 401, "bad_signature")
        assert (refused_order.status, refused_order.reason) == (400, "schema_violation"), refused_order
        assert valid_webhook.status == valid_order.status == 200
        assert service.arrived == ["/hooks/standard", "/orders"], "not even the headers of a refused request"
    else:
        # Headers go on before the body is read, and the service answered before meshward read
        # it: the service saw all four, and none of its answers to an unchecked request leaves.
        assert service.arrived == ["/hooks/standard", "/orders"] * 2, service.arrived
        for r in (refused_webhook, refused_order, valid_webhook, valid_order):
            assert (r.status, r.reason) == (502, "answered_before_checked"), r


@pytest.mark.parametrize("transport", ["bootstrap", "xds"])
def test_what_meshward_renders_holds_the_headers(service, keys, monkeypatch, tmp_path, transport):
    """The Envoy `meshward render envoy` writes, with the filters in its bootstrap or pushed by
    `meshward serve --xds`: a body the contract refuses never reaches the service."""
    import json

    import yaml
    from test_cli import AUDIENCE, DIST, EXAMPLE, ISSUER, Serve, meshward

    monkeypatch.setenv("MESHWARD_CRAPI_JWKS", json.dumps(keys.jwks(["hs"])))
    serve = Serve(EXAMPLE, "bundle", "xds", tmp_path) if transport == "xds" else None
    try:
        if serve:
            config = serve.render_envoy(EXAMPLE, "bundle", type("Upstream", (), {"port": service.server_address[1]}))
        else:
            r = meshward("render", "envoy", EXAMPLE, "--form", "bundle", "--modules", DIST, "--listen", 0, "--admin", 0,
                         "--upstream", f"127.0.0.1:{service.server_address[1]}")
            assert r.returncode == 0, r.stderr
            config = yaml.safe_load(r.stdout)
            assert "allow_on_headers_stop_iteration" in r.stdout and "MESHWARD_HOLD_REQUEST_HEADERS" in r.stdout
        with Envoy(config, concurrency=1) as env:
            token = keys.token("HS256", iss=ISSUER, aud=AUDIENCE, sub="alice", email="alice@example.com", scope="orders:write", exp=int(time.time()) + 300)
            auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            service.arrived.clear()
            r = slow_post(env, "/workshop/api/shop/orders", auth, b'{"product_id": 1, "quantity": "many"}')
            assert (r.status, r.reason) == (400, "schema_violation"), r
            assert service.arrived == [], "not even the headers of a refused request"
            assert env.request("/workshop/api/shop/orders", auth, "POST", b'{"product_id": 1, "quantity": 2}').status == 200
            assert service.arrived == ["/workshop/api/shop/orders"]
        env.cleanup()
    finally:
        if serve:
            serve.stop()
