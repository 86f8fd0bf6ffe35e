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


# -- a body that does not come ------------------------------------------------------------------

def held_without_its_body(env: Envoy, body: bytes, sent: int, pace: float | None) -> tuple[Response, float]:
    """A signed delivery over HTTP/1.1 whose first `sent` bytes come, then nothing (`pace`:
    one more byte every `pace` seconds instead): the answer and how long it took."""
    import socket

    headers = {**standard(body), "host": "x", "content-length": str(len(body))}
    head = "POST /hooks/standard HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", env.port), timeout=10) as sock:
        sock.sendall(head.encode() + body[:sent])
        sock.settimeout(pace or 10)
        answer = b""
        for byte in body[sent:] if pace else []:
            try:
                answer += sock.recv(65536)
                break
            except TimeoutError:
                sock.sendall(bytes([byte]))
        sock.settimeout(10)
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head_text, _, rest = answer.partition(b"\r\n\r\n")
        lines = head_text.decode().split("\r\n")
        status = int(lines[0].split()[1])
        fields = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
        length = int(dict((k.lower(), v) for k, v in fields).get("content-length", len(rest)))
        while len(rest) < length:
            rest += sock.recv(65536)
    return Response(status, fields, rest), time.monotonic() - started


@pytest.mark.parametrize("form", FORMS)
def test_a_body_that_does_not_come_is_answered_not_held(upstream, form):
    """The bound on a held request's wait for its body (`MESHWARD_BODY_TIMEOUT_SECONDS`, 1 s
    here): a sender that stops after part of the body, or trickles it, gets 408 `body_timeout`
    within about the bound (not Envoy's idle timeout); nothing reaches the service; a delivery
    in time passes."""
    env_vars = {"STRIPE_WEBHOOK_SECRET": STRIPE_SECRET, "MESHWARD_BODY_TIMEOUT_SECONDS": "1"}
    with Envoy(build_config(upstream.port, as_deployed(form, [plugin("webhook", webhook_config(), env=env_vars)])), concurrency=1) as env:
        body = payload()
        for name, pace in [("silent", None), ("trickling", 0.3)]:
            r, took = held_without_its_body(env, body, 10, pace)
            assert (r.status, r.reason) == (408, "body_timeout"), (name, r)
            assert 0.9 < took < 3.5, (name, took)
            assert not r.reached_upstream
        assert env.counter_reaches("meshward_webhook_denied_total.route.svix.reason.body_timeout", 2) == 2
        line = env.wait_for_log(r'meshward_webhook: \{[^\n]*"body_timeout"[^\n]*').group(0)
        assert '"route":"svix"' in line, line
        # Over HTTP/2: the headers and part of the body, then nothing.
        from test_grpc_envoy import h2_exchange
        h2_headers = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/hooks/standard"), *standard(body).items()]
        answer = h2_exchange(env.port, h2_headers, [body[:10]], end_stream=False, timeout=5)
        assert answer.get(":status") == "408", answer
        r = env.request("/hooks/standard", standard(body), "POST", body)
        assert r.reached_upstream, r
    env.cleanup()
