"""Hostile traffic through the real Envoy: bytes that are not UTF-8, huge and numerous headers,
garbage tokens from many connections at once. Every request gets its specified answer, and the
VM is still there afterwards (a panic would abort it)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import socket

import pytest

from harness import FORMS, Envoy, as_deployed, build_config, plugin
from test_jwt_envoy import jwt_config
from tokens import bearer


def raw_request(port: int, lines: list[bytes], body: bytes = b"") -> tuple[int, bytes]:
    """Sends exactly these bytes (no client-side validation); returns (status, body)."""
    payload = b"\r\n".join(lines) + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), rest


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, upstream, keys):
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    ownership = {"rules": [{"name": "t", "match": {"template": "/tenants/{tenant}/x"}, "owner": [{"path_param": "tenant", "claim": "tenant"}]},
                           {"name": "api", "match": {"prefix": "/api/"}, "owner": [{"header": "x-account", "claim": "tenant"}]}]}
    ratelimit = {"rules": [{"name": "u", "match": {"prefix": "/"}, "key": ["subject"], "limit": {"requests": 100000, "per": "1s"}}]}
    plugins = [plugin("jwt", jwt), plugin("ownership", ownership), plugin("ratelimit", ratelimit)]
    with Envoy(build_config(upstream.port, as_deployed(request.param, plugins)), concurrency=2) as env:
        yield env
    env.cleanup()


def still_serving(envoy, keys):
    r = envoy.request("/tenants/acme/x", bearer(keys.token("ES256")))
    assert r.reached_upstream, r


def test_non_utf8_header_values(envoy, keys):
    good = bearer(keys.token("ES256"))["authorization"].encode()
    cases = [
        # A token that is not UTF-8 is no token.
        ([b"GET /tenants/acme/x HTTP/1.1", b"host: x", b"authorization: Bearer \xff\xfe\xfd"], 401, "missing_token"),
        # A checked header that is not UTF-8 is absent: the ownership check fails closed.
        ([b"GET /api/items HTTP/1.1", b"host: x", b"authorization: " + good, b"x-account: \xffacme"], 403, "tenant_boundary"),
        # Spoofed claim header with raw bytes: removed, the verified claim goes upstream.
        ([b"GET /tenants/acme/x HTTP/1.1", b"host: x", b"authorization: " + good, b"x-jwt-sub: \xc3\x28"], 200, None),
    ]
    for lines, status, reason in cases:
        got, body = raw_request(envoy.port, lines)
        assert got == status, (lines, got, body[:200])
        if reason:
            assert json.loads(body)["reason"] == reason
        else:
            seen = json.loads(body)["headers"]
            assert ["x-jwt-sub", "alice"] in seen and not any(k == "x-jwt-sub" and v != "alice" for k, v in seen)
    still_serving(envoy, keys)


def test_non_utf8_path(envoy, keys):
    good = bearer(keys.token("ES256"))["authorization"].encode()
    status, _ = raw_request(envoy.port, [b"GET /tenants/\xff\xfe/x HTTP/1.1", b"host: x", b"authorization: " + good])
    assert status in (400, 403, 404), status
    still_serving(envoy, keys)


def test_huge_and_numerous_headers(envoy, keys):
    token = keys.token("ES256")
    many = {f"x-filler-{i}": "v" * 400 for i in range(80)}
    assert envoy.request("/tenants/acme/x", {**bearer(token), **many}).reached_upstream
    # A 40 KiB token is refused before any parsing.
    r = envoy.request("/tenants/acme/x", {"authorization": "Bearer " + "a" * 40_000})
    assert r.status == 401 and r.reason == "token_too_large", r
    # Beyond Envoy's own header limit (60 KiB), Envoy answers before any filter: still no 200.
    status, _ = raw_request(envoy.port, [b"GET /tenants/acme/x HTTP/1.1", b"host: x", b"x-big: " + b"b" * 70_000])
    assert status == 431, status
    still_serving(envoy, keys)


def test_garbage_tokens_from_many_connections(envoy, keys):
    def garbage(i: int):
        token = ".".join(os.urandom(n).hex() for n in (i % 7 + 1, i % 5 + 3, i % 3 + 1))
        return envoy.request("/tenants/acme/x", {"authorization": f"Bearer {token}"})

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(garbage, range(200)))
    assert all(r.status == 401 for r in results), {r.status for r in results}
    still_serving(envoy, keys)
