"""What the filter checks is what the service reads: every attack class of the request-model
work, sent through the real Envoy in each wire form a client can choose (HTTP/1.1 with
content-length, HTTP/1.1 chunked, HTTP/2 cleartext with and without content-length, gzip),
by real clients (Python's http.client, httpx with h2, curl). Each attack is refused with its
reason and never reaches the upstream; the same request in its valid form reaches the upstream
unchanged in every wire form.

Chain: meshward_jwt -> meshward_ownership -> meshward_schema, separate modules and the bundle.
SECURITY.md carries the table of classes, forms and results."""
from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import zlib
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from harness import FORMS, Envoy, Response, as_deployed, build_config, http_server, plugin
from test_ownership_envoy import chain_jwt_config

ORDER = {"type": "object", "required": ["tenant_id", "product_id", "quantity"], "properties": {
    "tenant_id": {"type": "string"}, "product_id": {"type": "integer", "format": "int32"},
    "quantity": {"type": "integer", "minimum": 1, "maximum": 50}, "note": {"type": "string"},
    "deliver_at": {"type": "string", "format": "date-time"},
    "items": {"type": "array", "items": {"type": "object", "properties": {"sku": {"type": "string"}, "owner": {"type": "string"}}}},
    "revision": {"type": "integer", "format": "int64"}, "größe": {"type": "integer"}}}
PATCH = {"type": "object", "properties": ORDER["properties"]}
ID = {"name": "tenant_id", "in": "path", "required": True, "schema": {"type": "string"}}
ORDER_ID = {"name": "order_id", "in": "path", "required": True, "schema": {"type": "integer", "format": "int64"}}
NOTIFY = {"name": "notify", "in": "query", "schema": {"type": "string", "enum": ["email", "none"]}}
CONTRACT = {
    "openapi": "3.1.0", "info": {"title": "orders", "version": "1"},
    "paths": {
        "/tenants/{tenant_id}/orders": {"post": {
            "operationId": "create_order", "parameters": [ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": ORDER}}},
            "responses": {"200": {"description": "created"}}}},
        "/tenants/{tenant_id}/notes": {"post": {
            "operationId": "add_note", "parameters": [ID],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"type": "object", "properties": {"text": {"type": "string"}}}},
                "application/xml": {"schema": {"type": "object", "properties": {"text": {"type": "string"}}}}}},
            "responses": {"200": {"description": "added"}}}},
        "/tenants/{tenant_id}/orders/{order_id}": {
            "get": {"operationId": "get_order", "parameters": [ID, ORDER_ID], "responses": {"200": {"description": "the order"}}},
            "patch": {"operationId": "update_order", "parameters": [ID, ORDER_ID, NOTIFY],
                      "requestBody": {"content": {"application/json": {"schema": PATCH},
                                                  "application/x-www-form-urlencoded": {"schema": PATCH},
                                                  "multipart/form-data": {"schema": PATCH}}},
                      "responses": {"200": {"description": "updated"}}}},
    },
}
RULES = {"rules": [
    {"name": "order-write", "match": {"template": "/tenants/{tenant_id}/orders", "methods": ["POST"]},
     "owner": [{"path_param": "tenant_id", "claim": "tenant"}, {"body_field": "/tenant_id", "claim": "tenant"},
               {"body_field": "/items/*/owner", "claim": "sub", "required": False}]},
    {"name": "order-update", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}", "methods": ["PATCH"]},
     "owner": [{"path_param": "tenant_id", "claim": "tenant"}, {"body_field": "/tenant_id", "claim": "tenant", "required": False}]},
    {"name": "notes", "match": {"template": "/tenants/{tenant_id}/notes", "methods": ["POST"]},
     "owner": [{"path_param": "tenant_id", "claim": "tenant"}]},
    {"name": "order-read", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}", "methods": ["GET"]},
     "owner": [{"path_param": "tenant_id", "claim": "tenant"}]},
], "unmatched": "deny"}

GOOD = json.dumps({"tenant_id": "acme", "product_id": 1, "quantity": 2, "deliver_at": "2026-12-24T09:00:00Z",
                   "items": [{"sku": "a", "owner": "alice"}]}).encode()


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, upstream, keys):
    plugins = [plugin("jwt", chain_jwt_config(keys)), plugin("ownership", RULES),
               plugin("schema", {"openapi": CONTRACT, "max_body_bytes": 65536})]
    with Envoy(build_config(upstream.port, as_deployed(request.param, plugins))) as env:
        yield env
    env.cleanup()


@pytest.fixture(scope="module")
def auth(keys):
    token = keys.token("ES256", sub="alice", tenant="acme", scope="orders:write")
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


# -- the wire forms ----------------------------------------------------------------------------

def h1_length(env, method, path, headers, body):
    return env.request(path, headers, method, body)


def h1_chunked(env, method, path, headers, body):
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        conn.request(method, path, body=iter([body[:5], body[5:]]) if body else iter([]), headers=headers, encode_chunked=True)
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def _h2(env, method, path, headers, content):
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        r = client.request(method, f"http://127.0.0.1:{env.port}{path}", headers=headers, content=content)
        assert r.http_version == "HTTP/2"
        return Response(r.status_code, list(r.headers.items()), r.content)


def h2_length(env, method, path, headers, body):
    return _h2(env, method, path, headers, body)


def h2_streamed(env, method, path, headers, body):
    """HTTP/2 DATA frames without a content-length header."""
    def frames():
        yield body[:5]
        yield body[5:]
    return _h2(env, method, path, headers, frames())


def curl(env, method, path, headers, body, *flags):
    args = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, *flags]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    args += ["--data-binary", "@-", f"http://127.0.0.1:{env.port}{path}"]
    # (20 tries: on a loaded machine curl lost the answer 5 times in a row.)
    for _ in range(20):
        done = subprocess.run(args, input=body, capture_output=True, timeout=20)
        payload, _, status = done.stdout.rpartition(b"\n")
        if done.returncode == 0 or status not in (b"", b"000"):
            return Response(int(status), [], payload)
        # A refusal at the headers ends the stream while curl still uploads: Envoy sends the
        # answer, then RST_STREAM(NO_ERROR) (RFC 9113 §8.1), and curl 7.88 sometimes drops the
        # answer and exits 92. That is curl's; ask again.
        if done.returncode != 92:
            break
    raise AssertionError(f"curl failed ({done.returncode}): {done.stderr[-500:]!r}")


def curl_chunked(env, method, path, headers, body):
    return curl(env, method, path, {**headers, "transfer-encoding": "chunked"}, body)


def curl_h2(env, method, path, headers, body):
    return curl(env, method, path, headers, body, "--http2-prior-knowledge")


WIRE_FORMS = {"h1-length": h1_length, "h1-chunked": h1_chunked, "h2-length": h2_length,
              "h2-streamed": h2_streamed, "curl-chunked": curl_chunked, "curl-h2": curl_h2}


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


# -- valid requests pass in every form ----------------------------------------------------------

@pytest.mark.parametrize("wire", WIRE_FORMS)
def test_valid_requests_reach_the_upstream_unchanged_in_every_form(envoy, auth, wire):
    send = WIRE_FORMS[wire]
    r = send(envoy, "POST", "/tenants/acme/orders", auth, GOOD)
    assert r.reached_upstream and r.json()["body"].encode() == GOOD, r
    patch = json.dumps({"quantity": 3}).encode()
    r = send(envoy, "PATCH", "/tenants/acme/orders/7", auth, patch)
    assert r.reached_upstream and r.json()["body"].encode() == patch, r
    # A form body the contract declares.
    form = b"quantity=3&note=a+b"
    r = send(envoy, "PATCH", "/tenants/acme/orders/7", {**auth, "content-type": "application/x-www-form-urlencoded"}, form)
    assert r.reached_upstream and r.json()["body"].encode() == form, r
    # A multipart form with a field named in UTF-8 (RFC 7578 §5.1) and a `;` in a filename, as
    # httpx encodes it; an optional query parameter given; the lowest int64 id.
    upload = httpx.Request("PATCH", "http://x/", data={"größe": "3"}, files={"note": ("a;b.txt", b"x")})
    multipart = upload.read()
    r = send(envoy, "PATCH", "/tenants/acme/orders/-9223372036854775808?notify=email", {**auth, "content-type": upload.headers["content-type"]}, multipart)
    assert r.reached_upstream and r.json()["body"].encode() == multipart, r
    # The same body, compressed: checked decoded, forwarded as sent.
    r = send(envoy, "POST", "/tenants/acme/orders", {**auth, "content-encoding": "gzip"}, gz(GOOD))
    assert r.reached_upstream and r.json()["method"] == "POST", r
    # A JSON note on an operation that also declares XML passes.
    assert send(envoy, "POST", "/tenants/acme/notes", auth, b'{"text": "x"}').reached_upstream
    # A case-variant path and a trailing slash are the same operation (and pass).
    assert send(envoy, "POST", "/Tenants/acme/Orders/", auth, GOOD).reached_upstream


def test_bodiless_reads_and_head(envoy, auth):
    assert envoy.request("/tenants/acme/orders/7", auth).reached_upstream
    r = envoy.request("/tenants/acme/orders/7", auth, method="HEAD")
    assert r.status == 200, r
    r = envoy.request("/tenants/globex/orders/7", auth, method="HEAD")
    assert r.status == 403, "HEAD is authorized as GET"
    r = envoy.request("/tenants/acme/orders/seven", auth, method="HEAD")
    assert r.status == 400, "HEAD is validated as GET"


# -- each attack is refused in every form -------------------------------------------------------

BAD_QUANTITY = json.dumps({"tenant_id": "acme", "product_id": 1, "quantity": 900}).encode()
OTHER_TENANT = json.dumps({"tenant_id": "globex", "product_id": 1, "quantity": 2}).encode()
ATTACKS = {
    # class 1: framing, the contract and ownership rules hold whatever the framing.
    "contract violation": ("POST", "/tenants/acme/orders", {}, BAD_QUANTITY, 400, "schema_violation"),
    "optional body, contract violation": ("PATCH", "/tenants/acme/orders/7", {}, json.dumps({"quantity": 900}).encode(), 400, "schema_violation"),
    "optional body, foreign tenant": ("PATCH", "/tenants/acme/orders/7", {}, json.dumps({"tenant_id": "globex"}).encode(), 403, "tenant_boundary"),
    "foreign tenant in the body": ("POST", "/tenants/acme/orders", {}, OTHER_TENANT, 403, "tenant_boundary"),
    # class 2: JSON that services read differently.
    "duplicate member": ("POST", "/tenants/acme/orders", {}, b'{"tenant_id": "acme", "product_id": 1, "quantity": 2, "tenant_id": "globex"}', 400, "ambiguous_json"),
    "escaped duplicate": ("POST", "/tenants/acme/orders", {}, b'{"tenant_id": "acme", "product_id": 1, "quantity": 2, "tenant_\\u0069d": "globex"}', 400, "ambiguous_json"),
    "case-variant member": ("POST", "/tenants/acme/orders", {}, b'{"tenant_id": "acme", "product_id": 1, "quantity": 2, "Tenant_ID": "globex"}', 400, "ambiguous_json"),
    "nested duplicate": ("PATCH", "/tenants/acme/orders/7", {}, b'{"note": "x", "extra": {"a": 1, "a": 2}}', 400, "ambiguous_json"),
    "byte-order mark": ("POST", "/tenants/acme/orders", {}, b"\xef\xbb\xbf" + GOOD, 400, "ambiguous_json"),
    "invalid UTF-8": ("POST", "/tenants/acme/orders", {}, b'{"tenant_id": "acme", "product_id": 1, "quantity": 2, "note": "\xff"}', 400, "ambiguous_json"),
    "lone surrogate": ("POST", "/tenants/acme/orders", {}, b'{"tenant_id": "acme", "product_id": 1, "quantity": 2, "note": "\\ud800"}', 400, "ambiguous_json"),
    "integer past 64 bits": ("POST", "/tenants/acme/orders", {}, b'{"tenant_id": "acme", "product_id": 18446744073709551616, "quantity": 2}', 400, "ambiguous_json"),
    # class 3: encodings.
    "gzip, contract violation": ("POST", "/tenants/acme/orders", {"content-encoding": "gzip"}, gz(BAD_QUANTITY), 400, "schema_violation"),
    "gzip, foreign tenant": ("POST", "/tenants/acme/orders", {"content-encoding": "gzip"}, gz(OTHER_TENANT), 403, "tenant_boundary"),
    "deflate, foreign tenant": ("POST", "/tenants/acme/orders", {"content-encoding": "deflate"}, zlib.compress(OTHER_TENANT), 403, "tenant_boundary"),
    "unsupported coding": ("POST", "/tenants/acme/orders", {"content-encoding": "br"}, GOOD, 415, "unsupported_encoding"),
    "gzip that is not gzip": ("POST", "/tenants/acme/orders", {"content-encoding": "gzip"}, GOOD, 400, "invalid_encoding"),
    "compression ratio": ("POST", "/tenants/acme/orders", {"content-encoding": "gzip"}, gz(b" " * 60_000), 413, "compression_ratio"),
    "gzip bomb": ("POST", "/tenants/acme/orders", {"content-encoding": "gzip"}, gz(b" " * 8_000_000), 413, None),
    # class 4: a declared media type meshward cannot check is refused, not passed.
    "XML body": ("POST", "/tenants/acme/notes", {"content-type": "application/xml"}, b"<note><text>x</text></note>", 415, "unchecked_media_type"),
    # class 5: method override.
    "method override header": ("POST", "/tenants/acme/orders", {"x-http-method-override": "DELETE"}, GOOD, 400, "method_override"),
    "x-http-method": ("POST", "/tenants/acme/orders", {"x-http-method": "PUT"}, GOOD, 400, "method_override"),
    "x-method-override": ("POST", "/tenants/acme/orders", {"x-method-override": "PUT"}, GOOD, 400, "method_override"),
    "_method parameter": ("POST", "/tenants/acme/orders?_method=DELETE", {}, GOOD, 400, "method_override"),
    "_method in a form body": ("PATCH", "/tenants/acme/orders/7", {"content-type": "application/x-www-form-urlencoded"}, b"quantity=3&_method=DELETE", 400, "method_override"),
    # class 4: form bodies are checked like JSON ones.
    "form, contract violation": ("PATCH", "/tenants/acme/orders/7", {"content-type": "application/x-www-form-urlencoded"}, b"quantity=900", 400, "schema_violation"),
    "form, repeated field": ("PATCH", "/tenants/acme/orders/7", {"content-type": "application/x-www-form-urlencoded"}, b"quantity=3&quantity=900", 400, "ambiguous_form"),
    # class 6: one path.
    "path parameter": ("POST", "/tenants/acme/orders;x=1", {}, BAD_QUANTITY, 400, "invalid_path"),
    "trailing slash": ("POST", "/tenants/acme/orders/", {}, OTHER_TENANT, 403, "tenant_boundary"),
    "other case": ("POST", "/TENANTS/acme/ORDERS", {}, OTHER_TENANT, 403, "tenant_boundary"),
    "dot segments": ("POST", "/tenants/x/../acme/orders", {}, OTHER_TENANT, 403, "tenant_boundary"),
    # class 7: arrays in ownership rules: every element carries the field and matches.
    "array element without the owner": ("POST", "/tenants/acme/orders", {}, json.dumps({"tenant_id": "acme", "product_id": 1, "quantity": 2,
                                        "items": [{"sku": "a", "owner": "alice"}, {"sku": "b"}]}).encode(), 403, "not_owner"),
    "array element of another owner": ("POST", "/tenants/acme/orders", {}, json.dumps({"tenant_id": "acme", "product_id": 1, "quantity": 2,
                                       "items": [{"sku": "a", "owner": "alice"}, {"sku": "b", "Owner": "mallory"}]}).encode(), 403, "not_owner"),
    # class 8: integer ranges and formats, empty parameters.
    "int64 below its range": ("PATCH", "/tenants/acme/orders/-9223372036854775809", {}, b'{"quantity": 3}', 400, "invalid_parameter"),
    "int64 below its range, in a form": ("PATCH", "/tenants/acme/orders/7", {"content-type": "application/x-www-form-urlencoded"},
                                         b"revision=-9223372036854775809", 400, "schema_violation"),
    "optional query parameter given empty": ("PATCH", "/tenants/acme/orders/7?notify=", {}, b'{"quantity": 3}', 400, "invalid_parameter"),
    "int32 past its range": ("POST", "/tenants/acme/orders", {}, json.dumps({"tenant_id": "acme", "product_id": 2**31, "quantity": 2}).encode(), 400, "schema_violation"),
    "date-time that is not one": ("POST", "/tenants/acme/orders", {}, json.dumps({"tenant_id": "acme", "product_id": 1, "quantity": 2, "deliver_at": "tomorrow"}).encode(), 400, "schema_violation"),
}


@pytest.mark.parametrize("wire", WIRE_FORMS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_each_attack_is_refused_in_every_form(envoy, auth, wire, attack):
    method, path, extra, body, status, reason = ATTACKS[attack]
    r = WIRE_FORMS[wire](envoy, method, path, {**auth, **extra}, body)
    assert r.status == status, (attack, wire, r)
    if reason is not None:
        assert r.reason == reason, (attack, wire, r)
    assert not r.reached_upstream


def test_content_type_given_twice_is_refused(envoy, auth):
    headers = [("authorization", auth["authorization"]), ("content-type", "text/plain"), ("content-type", "application/json")]
    r = envoy.request("/tenants/acme/orders", headers, "POST", GOOD)
    assert r.status == 400 and r.reason == "ambiguous_header", r


# -- answers the upstream compresses ------------------------------------------------------------

class _Compressing(BaseHTTPRequestHandler):
    """Answers an order with an e-mail address tagged `pii`: gzipped whenever the client
    accepts gzip (`/orders/1`), or always (`/orders/2`, a misbehaving upstream)."""
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"id": 1, "email": "alice@acme.test"}).encode()
        accepts = "gzip" in (self.headers.get("accept-encoding") or "")
        compress = self.path.endswith("/2") or accepts
        if compress:
            body = gzip.compress(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if compress:
            self.send_header("content-encoding", "gzip")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def compressing():
    server = http_server(_Compressing)
    yield server
    server.shutdown()


RESPONSE_CONTRACT = {
    "openapi": "3.1.0", "info": {"title": "orders", "version": "1"},
    "paths": {"/orders/{id}": {"get": {"operationId": "get_order", "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
              "responses": {"200": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                  "id": {"type": "integer"}, "email": {"type": "string", "x-data-class": "pii"}}}}}}}}}},
}


@pytest.mark.parametrize("form", FORMS)
def test_classified_fields_never_leave_compressed(compressing, form):
    config = {"openapi": RESPONSE_CONTRACT, "response": {"data_classes": {"pii": "strip"}}}
    with Envoy(build_config(compressing.server_address[1], as_deployed(form, [plugin("schema", config)])), concurrency=1) as env:
        # The client accepts gzip; meshward asks the upstream for identity and strips the field.
        r = env.request("/orders/1", {"accept-encoding": "gzip"})
        assert r.status == 200 and r.header("content-encoding") is None, r
        assert json.loads(r.body) == {"id": 1}, r
        # An upstream that compresses anyway: the answer is refused, not passed unread.
        r = env.request("/orders/2", {"accept-encoding": "gzip"})
        assert r.status == 502 and r.reason == "encoded_response", r
        assert b"alice@acme.test" not in r.body and b"alice@acme.test" not in gzip_or_raw(r.body)
    env.cleanup()


def gzip_or_raw(body: bytes) -> bytes:
    try:
        return gzip.decompress(body)
    except OSError:
        return body
