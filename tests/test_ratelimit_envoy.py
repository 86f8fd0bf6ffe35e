"""meshward_ratelimit.wasm in the real Envoy (2 workers), behind meshward_jwt.wasm: exact
per-principal limits under concurrency, isolation between principals, cost, refill, headers,
unauthenticated traffic by client IP; and the global mode: two Envoys sharing one limit
through the fleet engine (`meshward-fleet`: Limitador on Redis, RLS v3 over gRPC)."""
from __future__ import annotations

import concurrent.futures
import time

import pytest

from harness import FORMS, Envoy, as_deployed, build_config, plugin, static_cluster
from fleet import FleetEngine, RedisServer
from test_jwt_envoy import jwt_config
from tokens import bearer


def local_config() -> dict:
    return {
        "rules": [
            {"name": "per-user", "match": {"prefix": "/api/"}, "key": ["subject"], "limit": {"requests": 5, "per": "60s"}},
            {"name": "export", "match": {"path": "/api/export"}, "key": ["subject"], "limit": {"requests": 10, "per": "60s"}, "cost": 4},
            {"name": "refill", "match": {"prefix": "/fast/"}, "key": ["subject"], "limit": {"requests": 2, "per": "4s"}},
            {"name": "anonymous", "match": {"prefix": "/public/"}, "applies_to": "unauthenticated", "key": ["client_ip"], "limit": {"requests": 3, "per": "60s"}},
        ]
    }


def chain(keys, upstream_port, rl_config, clusters=(), form="separate"):
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/public/"}}, {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    return build_config(upstream_port, as_deployed(form, [plugin("jwt", jwt), plugin("ratelimit", rl_config)]), clusters=list(clusters))


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, upstream, keys):
    with Envoy(chain(keys, upstream.port, local_config(), form=request.param), concurrency=2) as env:
        yield env
    env.cleanup()


def user(keys, sub):
    return bearer(keys.token("ES256", sub=sub))


def burst(env, path, headers, n, workers=10):
    """n requests at once from many connections."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda _: env.request(path, headers), range(n)))


def test_exactly_the_limit_passes_under_concurrency(envoy, keys):
    results = burst(envoy, "/api/orders", user(keys, "alice-concurrent"), 24)
    passed = [r for r in results if r.reached_upstream]
    limited = [r for r in results if r.status == 429]
    assert len(passed) == 5 and len(limited) == 19, [r.status for r in results]
    assert all(r.reason == "rate_limited" for r in limited)


def test_principals_do_not_affect_each_other(envoy, keys):
    assert sum(r.reached_upstream for r in burst(envoy, "/api/orders", user(keys, "bob-1"), 8)) == 5
    assert sum(r.reached_upstream for r in burst(envoy, "/api/orders", user(keys, "carol-1"), 8)) == 5


def test_headers(envoy, keys):
    h = user(keys, "dave-headers")
    first = envoy.request("/api/orders", h)
    assert first.reached_upstream
    assert (first.header("ratelimit-limit"), first.header("ratelimit-remaining")) == ("5", "4")
    assert 0 < int(first.header("ratelimit-reset")) <= 12
    for _ in range(4):
        envoy.request("/api/orders", h)
    denied = envoy.request("/api/orders", h)
    assert denied.status == 429 and denied.reason == "rate_limited"
    assert denied.header("ratelimit-remaining") == "0"
    # One request refills every 12 s (5 per 60 s): the client is told to come back then.
    assert 1 <= int(denied.header("retry-after")) <= 12
    assert denied.json()["request_id"]


def test_cost_weighted_rule(envoy, keys):
    h = user(keys, "erin-export")
    # 10 per minute at cost 4: two exports fit, the third does not.
    results = [envoy.request("/api/export", h) for _ in range(3)]
    assert [r.status for r in results] == [200, 200, 429]
    # The export budget is its own: reads still pass. (The per-user rule also counted the three
    # export attempts: 3 of its 5 are used, so a read is its 4th.)
    r = envoy.request("/api/orders", h)
    assert r.reached_upstream and r.header("ratelimit-remaining") == "1", r
    assert envoy.counter("meshward_ratelimit_denied_total.route.export.reason.rate_limited") >= 1


def test_refill_after_the_window(envoy, keys):
    h = user(keys, "frank-refill")
    results = [envoy.request("/fast/x", h) for _ in range(3)]
    assert [r.status for r in results] == [200, 200, 429]
    time.sleep(int(results[2].header("retry-after")))
    assert envoy.request("/fast/x", h).reached_upstream


def test_unauthenticated_traffic_is_limited_by_client_ip(envoy):
    results = [envoy.request("/public/catalog") for _ in range(5)]
    assert [r.status for r in results] == [200, 200, 200, 429, 429]


def test_client_ip_is_the_peer_not_a_forwarded_for_header(upstream, keys):
    """A client cannot pick its own budget by sending X-Forwarded-For: the client address is the
    one Envoy saw (the shipped configuration trusts no forwarding hops)."""
    with Envoy(chain(keys, upstream.port, local_config()), concurrency=1) as env:
        results = [env.request("/public/catalog", {"x-forwarded-for": f"198.51.100.{i}"}) for i in range(5)]
        assert [r.status for r in results] == [200, 200, 200, 429, 429]
    env.cleanup()


def test_a_header_value_like_the_missing_placeholder_has_its_own_budget(upstream, keys):
    cfg = {"rules": [{"name": "by-key", "match": {"prefix": "/public/"}, "applies_to": "unauthenticated",
                      "key": ["header:x-api-key"], "limit": {"requests": 2, "per": "60s"}}]}
    with Envoy(chain(keys, upstream.port, cfg), concurrency=1) as env:
        assert [env.request("/public/x").status for _ in range(3)] == [200, 200, 429]
        assert [env.request("/public/x", {"x-api-key": "-"}).status for _ in range(3)] == [200, 200, 429]
        assert [env.request("/public/x", {"x-api-key": "%-"}).status for _ in range(3)] == [200, 200, 429]
    env.cleanup()


def test_shadow_mode_counts_but_forwards(upstream, keys):
    cfg = local_config()
    cfg["mode"] = "shadow"
    with Envoy(chain(keys, upstream.port, cfg), concurrency=1) as env:
        results = [env.request("/api/orders", user(keys, "gina-shadow")) for _ in range(7)]
        assert all(r.reached_upstream for r in results)
        assert env.counter("meshward_ratelimit_shadow_denied_total.route.per-user.reason.rate_limited") == 2
    env.cleanup()


# --- global mode: the fleet engine (Limitador on Redis) -------------------------------------

DOMAIN = "meshward-test"


def global_config(failure_mode="allow") -> dict:
    return {
        "global": {"cluster": "rls", "domain": DOMAIN, "timeout": "1s", "failure_mode": failure_mode},
        "rules": [{"name": "fleet-user", "match": {"prefix": "/api/"}, "key": ["subject"], "scope": "global"}],
    }


# An hour's window: a test never straddles one.
FLEET_LIMITS = {(DOMAIN, "fleet-user"): (["subject"], 4, "3600s")}


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer(durable=True)
    yield server
    server.stop()


def global_envoy(keys, upstream, engine, failure_mode="allow", form="separate", concurrency=2) -> Envoy:
    return Envoy(chain(keys, upstream.port, global_config(failure_mode), [static_cluster("rls", engine.port, http2=True)], form=form), concurrency=concurrency)


@pytest.mark.parametrize("form", FORMS)
def test_two_envoys_share_one_global_limit(upstream, keys, redis_server, form):
    # Each replica has its own engine, as a mesh may; Redis is what they share.
    engine_a, engine_b = FleetEngine(redis_server.port, FLEET_LIMITS), FleetEngine(redis_server.port, FLEET_LIMITS)
    env_a, env_b = global_envoy(keys, upstream, engine_a, form=form), global_envoy(keys, upstream, engine_b, form=form)
    try:
        env_a.start()
        env_b.start()
        h = user(keys, f"henry-fleet-{form}")
        results = [env.request("/api/orders", h) for env in (env_a, env_b, env_a, env_b, env_a, env_b)]
        assert [r.status for r in results] == [200, 200, 200, 200, 429, 429], [r.status for r in results]
        assert results[0].header("ratelimit-limit") == "4" and results[0].header("ratelimit-remaining") == "3"
        assert results[3].header("ratelimit-remaining") == "0"
        assert results[4].reason == "rate_limited" and 1 <= int(results[4].header("retry-after")) <= 3600
        assert env_a.counter("cluster.rls.upstream_rq_200") == 3 and env_b.counter("cluster.rls.upstream_rq_200") == 3
        # Another principal has its own budget across the fleet.
        assert env_b.request("/api/orders", user(keys, f"iris-fleet-{form}")).reached_upstream
    finally:
        for thing in (env_a, env_b, engine_a, engine_b):
            thing.stop()
        env_a.cleanup()
        env_b.cleanup()


def test_concurrent_requests_across_replicas_never_exceed_the_limit(upstream, keys, redis_server):
    engine = FleetEngine(redis_server.port, FLEET_LIMITS)
    env_a, env_b = global_envoy(keys, upstream, engine), global_envoy(keys, upstream, engine)
    try:
        env_a.start()
        env_b.start()
        h = user(keys, "kate-burst")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: (env_a, env_b)[i % 2].request("/api/orders", h), range(16)))
        assert sum(r.reached_upstream for r in results) == 4, [r.status for r in results]
        assert sum(r.status == 429 for r in results) == 12
    finally:
        for thing in (env_a, env_b, engine):
            thing.stop()
        env_a.cleanup()
        env_b.cleanup()


@pytest.mark.parametrize("failure_mode, status_while_down", [("allow", 200), ("deny", 503)])
def test_redis_restart_honours_failure_mode_and_counts_nothing_twice(upstream, keys, redis_server, failure_mode, status_while_down):
    engine = FleetEngine(redis_server.port, FLEET_LIMITS)
    env = global_envoy(keys, upstream, engine, failure_mode=failure_mode, concurrency=1)
    try:
        env.start()
        h = user(keys, f"lena-restart-{failure_mode}")
        assert [env.request("/api/orders", h).status for _ in range(2)] == [200, 200]
        redis_server.stop()
        down = [env.request("/api/orders", h) for _ in range(3)]
        assert [r.status for r in down] == [status_while_down] * 3, [r.status for r in down]
        if failure_mode == "deny":
            assert down[0].reason == "rate_limit_service_unavailable"
        assert env.counter("meshward_ratelimit_service_failures_total") == 3
        redis_server.start()
        # The engine reconnects by itself; another principal probes until it has.
        deadline = time.monotonic() + 15
        while env.request("/api/orders", user(keys, f"probe-{failure_mode}")).status != 200:
            assert time.monotonic() < deadline, engine.log()
            time.sleep(0.2)
        # The counter survived the restart and nothing that failed while Redis was down was
        # counted: exactly the 2 remaining requests pass.
        after = [env.request("/api/orders", h).status for _ in range(4)]
        assert after == [200, 200, 429, 429], after
    finally:
        if redis_server.proc.poll() is not None:
            redis_server.start()
        env.stop()
        engine.stop()
        env.cleanup()


def test_a_rule_the_engine_does_not_know_is_a_service_failure_not_a_pass(upstream, keys, redis_server):
    engine = FleetEngine(redis_server.port, {})  # the policy names a rule the engine lacks
    try:
        for mode, status in (("allow", 200), ("deny", 503)):
            with global_envoy(keys, upstream, engine, failure_mode=mode, concurrency=1) as env:
                r = env.request("/api/orders", user(keys, f"mona-{mode}"))
                assert r.status == status, r
                assert env.counter("meshward_ratelimit_service_failures_total") == 1
            env.cleanup()
        assert 'no limit is configured for rule "fleet-user" of domain "meshward-test"' in engine.log()
    finally:
        engine.stop()


def test_service_down_fails_open_by_default_and_closed_when_configured(upstream, keys, redis_server):
    dead = FleetEngine(redis_server.port, FLEET_LIMITS)
    dead.stop()  # the port is known, nothing answers
    for mode, status in (("allow", 200), ("deny", 503)):
        with global_envoy(keys, upstream, dead, failure_mode=mode, concurrency=1) as env:
            r = env.request("/api/orders", user(keys, f"jack-{mode}"))
            assert r.status == status, r
            if mode == "deny":
                assert r.reason == "rate_limit_service_unavailable"
            assert env.counter("meshward_ratelimit_service_failures_total") == 1
        env.cleanup()
