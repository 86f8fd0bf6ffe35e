"""Remote JWKS through Envoy's cluster: fetch, rotation, outage, fail-closed start, bounded refresh."""
from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager

import httpx

from echo_upstream import jwks_server
from harness import Envoy, as_deployed, build_config, plugin, static_cluster
from tokens import AUDIENCE, ISSUER, KeyRing, bearer


def remote_config(cache_duration: str = "600s", unavailable_status: int | None = None) -> dict:
    config = {
        "providers": {
            "idp": {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "remote_jwks": {
                    "http_uri": {"uri": "http://idp.test/.well-known/jwks.json", "cluster": "jwks", "timeout": "1s"},
                    "cache_duration": cache_duration,
                },
                "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
            }
        },
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
    }
    if unavailable_status is not None:
        config["providers"]["idp"]["remote_jwks"]["unavailable_status"] = unavailable_status
    return config


@contextmanager
def idp_and_envoy(upstream, content: bytes, status: int = 200, idp_up: bool = True, cache_duration="600s", concurrency=1, unavailable_status=None):
    """A JWKS server (stopped at once when not `idp_up`) and an Envoy fetching from it."""
    server = jwks_server(content, status)
    if not idp_up:
        server.stop()  # the port is known but nothing listens: the IdP is down
    cfg = build_config(upstream.port, [plugin("jwt", remote_config(cache_duration, unavailable_status))], clusters=[static_cluster("jwks", server.port)])
    env = Envoy(cfg, concurrency=concurrency)
    try:
        env.start()
        yield env, server
    finally:
        env.stop()
        server.stop()
        env.cleanup()


def wait_for_keys(env) -> None:
    """Until the first fetch has landed (a request before it spends the on-demand fetch)."""
    deadline = time.monotonic() + 10
    while env.counter("meshward_jwt_jwks_fetch_ok") < 1:
        assert time.monotonic() < deadline, "no JWKS fetched"
        time.sleep(0.05)


def jwks_bytes(ring: KeyRing, families=("rsa", "es256")) -> bytes:
    return json.dumps(ring.jwks(families)).encode()


def test_keys_are_fetched_and_rotation_is_picked_up(upstream):
    old, new = KeyRing("-2025"), KeyRing("-2026")
    with idp_and_envoy(upstream, jwks_bytes(old)) as (env, server):
        wait_for_keys(env)
        r = env.request("/orders", bearer(old.token("RS256")))
        assert r.reached_upstream, r
        assert r.upstream_headers()["x-jwt-sub"] == ["alice"]
        # The issuer rotates: the old key is gone, a new kid signs.
        server.set(content=jwks_bytes(new))
        hits = server.httpd.hits
        r = env.request("/orders", bearer(new.token("ES256", sub="after-rotation")))
        assert r.reached_upstream, r
        assert r.upstream_headers()["x-jwt-sub"] == ["after-rotation"]
        assert server.httpd.hits == hits + 1, "exactly one refresh for the unknown kid"
        # The old key was removed by the issuer, so its tokens now fail.
        r = env.request("/orders", bearer(old.token("RS256")))
        assert r.status == 401 and r.reason == "unknown_kid", r


def test_unknown_kids_do_not_cause_a_fetch_per_request(upstream):
    ring = KeyRing()
    with idp_and_envoy(upstream, jwks_bytes(ring), concurrency=2) as (env, server):
        assert env.request("/orders", bearer(ring.token("RS256"))).reached_upstream
        hits = server.httpd.hits
        for i in range(30):
            r = env.request("/orders", bearer(ring.token("RS256", kid=f"unknown-{i}")))
            assert r.status == 401 and r.reason == "unknown_kid", r
        # At most one on-demand refresh per sidecar (not per worker) in the refresh interval.
        assert server.httpd.hits - hits <= 1, server.httpd.hits - hits
        assert all(n > 0 for n in connections_per_worker(env).values()), connections_per_worker(env)


def connections_per_worker(env) -> dict:
    """Downstream connections each Envoy worker thread accepted on the listener."""
    text = env.admin("/stats?filter=" + re.escape("listener.127.0.0.1_") + ".*worker_[0-9]+.downstream_cx_total$").body.decode()
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        out[key.strip().rsplit(".", 2)[-2]] = int(value)
    assert len(out) == env.concurrency, text
    return out


def test_a_rotation_one_worker_fetched_is_used_by_every_worker(upstream):
    """The key set lives in proxy-wasm shared data (one vm_id per module): the sidecar fetches
    a rotated key set once, and every worker verifies with it."""
    old, new = KeyRing("-2025"), KeyRing("-2026")
    with idp_and_envoy(upstream, jwks_bytes(old), concurrency=2) as (env, server):
        wait_for_keys(env)
        for _ in range(10):
            assert env.request("/orders", bearer(old.token("RS256"))).reached_upstream
        time.sleep(0.5)  # the first fetches of every VM (one each, before keys are shared) are in
        hits = server.httpd.hits
        server.set(content=jwks_bytes(new))
        for i in range(30):
            r = env.request("/orders", bearer(new.token("ES256", sub=f"user-{i}")))
            assert r.reached_upstream, (i, r)
        assert server.httpd.hits == hits + 1, "one fetch for the new kid, for the whole sidecar"
        served = connections_per_worker(env)
        assert all(n > 0 for n in served.values()), served


def test_server_down_keeps_last_good_keys(upstream):
    ring = KeyRing()
    with idp_and_envoy(upstream, jwks_bytes(ring), cache_duration="1s") as (env, server):
        assert env.request("/orders", bearer(ring.token("RS256"))).reached_upstream
        server.stop()
        # Several refresh periods pass with the JWKS server unreachable.
        env.wait_for_log(r"JWKS fetch from http://idp.test/.well-known/jwks.json failed.*keeping the last good key set")
        assert env.counter("meshward_jwt_jwks_fetch_failed") >= 1
        r = env.request("/orders", bearer(ring.token("ES256", sub="still-ok")))
        assert r.reached_upstream, r
        # A server that answers with garbage does not replace the keys either.
        server.set(content=b"<html>maintenance</html>", status=200)
        server.start()
        env.wait_for_log(r"failed: JWKS is not a JSON object")
        assert env.request("/orders", bearer(ring.token("RS256"))).reached_upstream


def assert_unavailable(r):
    """The IdP being down is not the caller's fault: 503, retry later, counted under its own reason."""
    assert (r.status, r.reason, r.header("retry-after")) == (503, "jwks_unavailable", "5"), r
    assert not r.reached_upstream


def test_no_keys_yet_denies(upstream):
    ring = KeyRing()
    with idp_and_envoy(upstream, jwks_bytes(ring), idp_up=False) as (env, server):
        for _ in range(3):
            assert_unavailable(env.request("/orders", bearer(ring.token("RS256"))))
        assert env.counter_reaches("meshward_jwt_denied_total.reason.jwks_unavailable", 3) == 3
        # Once the IdP is back, an on-demand or scheduled fetch brings the keys.
        server.start()
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            r = env.request("/orders", bearer(ring.token("RS256")))
            if r.reached_upstream:
                break
            assert_unavailable(r)
            time.sleep(0.5)
        assert r.reached_upstream, r


def test_a_provider_may_answer_401_while_its_keys_are_unavailable(upstream):
    ring = KeyRing()
    with idp_and_envoy(upstream, jwks_bytes(ring), idp_up=False, unavailable_status=401) as (env, _):
        r = env.request("/orders", bearer(ring.token("RS256")))
        assert (r.status, r.reason, r.header("retry-after")) == (401, "jwks_unavailable", None), r


def test_non_200_jwks_is_not_accepted(upstream):
    ring = KeyRing()
    with idp_and_envoy(upstream, jwks_bytes(ring), status=500) as (env, server):
        assert_unavailable(env.request("/orders", bearer(ring.token("RS256"))))
        env.wait_for_log(r"HTTP status 500")


def test_a_body_arriving_while_keys_are_fetched_waits_for_the_decision(upstream):
    """The JWT stage pauses the request headers while its keys are fetched; a body arriving
    meanwhile must not release them. (It did: a POST with a forged token reached the service
    while the first fetch was in flight.) Each case runs against a fresh Envoy whose IdP
    answers its first fetch after 0.4 s, and sends right away."""
    ring, forger = KeyRing(), KeyRing()
    graphql = {"persisted": [{"document": "{ a }"}]}
    persisted = json.dumps({"query": "{ a }"}).encode()
    cases = [
        # (filters, token, body, content type, status, reached the upstream)
        ([plugin("jwt", remote_config())], forger.token("ES256"), b"x" * 100, "text/plain", 401, False),
        ([plugin("jwt", remote_config())], ring.token("ES256"), b"x" * 100, "text/plain", 200, True),
        # As Istio's WasmPlugin deploys it (the headers go on without waiting for body stages).
        ([plugin("jwt", remote_config(), hold_headers=False)], forger.token("ES256"), b"x" * 100, "text/plain", 401, False),
        ([plugin("jwt", remote_config(), hold_headers=False)], ring.token("ES256"), b"x" * 100, "text/plain", 200, True),
        (as_deployed("bundle", [plugin("jwt", remote_config()), plugin("graphql", graphql)]), forger.token("ES256"), persisted, "application/json", 401, False),
        (as_deployed("bundle", [plugin("jwt", remote_config()), plugin("graphql", graphql)]), ring.token("ES256"), persisted, "application/json", 200, True),
        (as_deployed("bundle", [plugin("jwt", remote_config()), plugin("graphql", graphql)]), ring.token("ES256"),
         json.dumps({"query": "{ secret }"}).encode(), "application/json", 403, False),
    ]
    for filters, token, body, content_type, status, reached in cases:
        idp = jwks_server(jwks_bytes(ring), delay=0.4)
        env = Envoy(build_config(upstream.port, filters, clusters=[static_cluster("jwks", idp.port)]), concurrency=1)
        try:
            env.start()
            # The GraphQL stage reads its endpoint only.
            tag = "/graphql" if len(filters) == 1 and filters[0]["name"] == "bundle" else "/api/paused"
            r = httpx.post(f"http://127.0.0.1:{env.port}{tag}", content=body, headers={**bearer(token), "content-type": content_type}, timeout=10)
            assert r.status_code == status, (filters[0]["name"], status, r.status_code, r.text)
            if reached:
                assert r.json()["path"] == tag and r.json()["body"] == body.decode(), "the body reached the service whole"
            else:
                assert "path" not in r.json(), r.text
            assert idp.httpd.hits >= 1, "the request waited for a fetch"
        finally:
            env.stop()
            idp.stop()
            env.cleanup()
