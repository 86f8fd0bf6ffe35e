"""`meshward test`: case files run in the real modules inside the CLI's proxy-wasm host, and the
same verdict as real Envoy: every case of the orders example is sent, as `meshward test` sent
it (its minted token included), through Envoy running what `meshward render envoy` writes for
the same policy, in both forms, and the two agree case by case."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from harness import DIST, REPO, Envoy
from test_cli import meshward
from tokens import AUDIENCE, ISSUER

POLICY = REPO / "examples" / "orders" / "policy.yaml"
CASES = REPO / "examples" / "orders" / "policy.test.yaml"
OPENAPI = REPO / "examples" / "orders" / "openapi.yaml"
SECRET = "test-webhook-secret"


@pytest.mark.parametrize("form", ["separate", "bundle"])
def test_the_orders_cases_pass(form):
    r = meshward("test", POLICY, CASES, "--form", form, "--modules", DIST)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    count = len(yaml.safe_load(CASES.read_text())["cases"])
    assert lines[-1] == f"{count} cases: {count} passed, 0 failed", r.stdout
    assert sum(line.startswith("PASS") for line in lines) == count
    # Every named rule, webhook endpoint and contract operation of the policy is reached.
    assert "coverage: 11 of 11 rules and operations decided by a case" in lines, r.stdout
    assert "  deny reasons the cases produced: jwt expired, missing_token, wrong_audience; ownership missing_scope, tenant_boundary; " \
           "ratelimit rate_limited; schema schema_violation; webhook bad_signature" in lines, r.stdout


def test_coverage_names_what_no_case_reached(tmp_path):
    cases = yaml.safe_load(CASES.read_text())
    cases["cases"] = [c for c in cases["cases"] if c["request"].get("method", "GET") == "GET"]
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(cases))
    r = meshward("test", POLICY, path, "--modules", DIST, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    coverage = json.loads(r.stdout)["coverage"]
    missed = [(c["stage"], c["name"]) for c in coverage["rules"] if not c["decided"]]
    assert missed == [("webhook", "payments"), ("schema", "createOrder"), ("schema", "paymentEvent"), ("ownership", "payments-webhook"),
                      ("ownership", "order-create"), ("ratelimit", "writes-per-user"), ("ratelimit", "webhook-deliveries")], missed
    assert coverage["deny_reasons"] == {"jwt": ["expired", "missing_token", "wrong_audience"], "ownership": ["missing_scope", "tenant_boundary"]}
    # Each stage's reasons no case produced, from the stage's own table of deny reasons.
    not_produced = coverage["deny_reasons_not_produced"]
    assert not_produced["ratelimit"] == ["rate_limited", "rate_limit_service_unavailable", "rate_limit_state_unavailable"], not_produced
    assert "bad_signature" in not_produced["jwt"] and "expired" not in not_produced["jwt"], not_produced
    assert sorted(not_produced) == ["jwt", "ownership", "ratelimit", "schema", "webhook"], not_produced


def test_a_wrong_expectation_fails_the_run_and_says_which(tmp_path):
    cases = yaml.safe_load(CASES.read_text())
    cases["cases"] = [
        {"name": "expects the wrong status", "request": {"path": "/tenants/acme/orders/42"}, "expect": {"status": 200}},
        {"name": "expects the wrong reason", "request": {"path": "/tenants/acme/orders/42"}, "expect": {"reason": "expired"}},
        {"name": "expects nothing", "request": {"path": "/healthz"}, "expect": {}},
        {"name": "right", "request": {"path": "/healthz"}, "expect": {"status": 200}},
    ]
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(cases))
    junit = tmp_path / "junit.xml"
    r = meshward("test", POLICY, path, "--modules", DIST, "--junit", junit)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "status: expected 200, got 401 missing_token" in r.stdout
    assert "reason: expected expired, got missing_token" in r.stdout
    assert "expect: says nothing" in r.stdout
    assert r.stdout.splitlines()[-1] == "4 cases: 1 passed, 3 failed"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("4", "3")
    failed = [c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None]
    assert failed == ["expects the wrong status", "expects the wrong reason", "expects nothing"]


@pytest.mark.parametrize("change, message", [
    ({"cases": [{"name": "x", "request": {"path": "/"}, "expect": {"status": 200}, "expct": {}}]}, "unknown field `expct`"),
    ({"keys": {"auth0": {}}}, "keys.auth0: the jwt stage has no provider `auth0` (it has: demo)"),
    ({"cases": [{"name": "x", "request": {"path": "/", "token": {"key": "other"}}, "expect": {"status": 200}}]}, "request.token.key: no test key `other`"),
    ({"cases": [{"name": "both", "request": {"path": "/"}, "expect": {"status": 200}, "steps": [{"request": {"path": "/"}, "expect": {"status": 200}}]}]},
     "cases[0] (both): a case has `request` and `expect` (with `upstream`, `repeat`), or `steps`, each with its own"),
    ({"cases": [{"name": "x", "request": {"path": "/", "body_file": "missing.bin"}, "expect": {"status": 200}}]}, "request.body_file: "),
    ({"cases": [{"name": "x", "request": {"path": "/", "body": "{}", "json": {}}, "expect": {"status": 200}}]}, "request: more than one body"),
])
def test_a_bad_case_file_is_refused_with_what_is_wrong(tmp_path, change, message):
    cases = yaml.safe_load(CASES.read_text())
    cases.update(change)
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(cases))
    r = meshward("test", POLICY, path, "--modules", DIST)
    assert message in r.stdout + r.stderr, r.stdout + r.stderr
    assert r.returncode in (1, 2)


def test_compiled_modules_are_cached_and_a_damaged_entry_is_compiled_again(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "MESHWARD_CACHE_DIR": str(cache)}
    r = meshward("test", POLICY, CASES, "--form", "bundle", "--modules", DIST, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    [entry] = cache.glob("*.cwasm")
    # Named by the digest of the module file the bundle form runs (the smallest edition).
    assert entry.name in {hashlib.sha256(f.read_bytes()).hexdigest() + ".cwasm" for f in DIST.glob("meshward.*wasm")}
    size = entry.stat().st_size
    entry.write_bytes(b"\0" * 64)
    r = meshward("test", POLICY, CASES, "--form", "bundle", "--modules", DIST, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert entry.stat().st_size == size, "the damaged entry was written again"
    r = meshward("test", POLICY, CASES, "--form", "bundle", "--modules", DIST, "--no-cache", env={**env, "MESHWARD_CACHE_DIR": str(tmp_path / "unused")})
    assert r.returncode == 0 and not (tmp_path / "unused").exists()


def test_state_does_not_leak_between_cases_and_repeat_reaches_a_limit(tmp_path):
    """Each case starts from the filters as configured: six writes in one case hit the limit of
    five, the next case's first write does not."""
    token = {"key": "demo", "claims": {"sub": "bob", "tenant": "acme", "scope": "orders:write"}}
    write = {"method": "POST", "path": "/tenants/acme/orders", "json": {"sku": "A-1", "quantity": 1}, "token": token}
    cases = yaml.safe_load(CASES.read_text())
    cases["cases"] = [
        {"name": "the sixth write in a minute", "request": write, "repeat": 6, "expect": {"status": 429, "reached_service": False}},
        {"name": "a first write", "request": write, "expect": {"reached_service": True}},
    ]
    path = tmp_path / "cases.yaml"
    path.write_text(yaml.safe_dump(cases))
    r = meshward("test", POLICY, path, "--modules", DIST, "--form", "bundle")
    assert r.returncode == 0, r.stdout + r.stderr


# The examples with their case files, their contracts, and the service each is sent to: the
# echo upstream (it answers every request with what it got) or the crAPI stand-in (objects with
# their owners, what the cases' `upstream` answers say).
EXAMPLES = {
    "orders": (POLICY, CASES, OPENAPI, "upstream"),
    "crapi": (REPO / "examples" / "crapi" / "policy.yaml", REPO / "examples" / "crapi" / "policy.test.yaml",
              REPO / "tests" / "specs" / "crapi-openapi-spec.json", "crapi"),
}


def send_as_sent(env: Envoy, case: dict):
    """Every request `meshward test` sent for a case (`--format json`: each step's request, as
    many times as it went) through the Envoy; the last answer."""
    for step in case["steps"]:
        headers = dict(step["request"]["headers"])
        method, path = headers.pop(":method"), headers.pop(":path")
        for own in (":authority", ":scheme", "x-forwarded-proto", "content-length"):
            headers.pop(own, None)
        body = step["request"]["body"]
        for _ in range(step["repeat"]):
            got = env.request(path, headers, method, body.encode() if body is not None else None)
    return got


@pytest.mark.parametrize("form", ["separate", "bundle"])
@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_meshward_test_and_envoy_agree_case_by_case(request, tmp_path, monkeypatch, example, form):
    policy_path, cases_path, openapi, service = EXAMPLES[example]
    upstream = request.getfixturevalue(service)
    cases = yaml.safe_load(cases_path.read_text())
    cases["at"] = int(time.time())  # Envoy's clock: the tokens are minted for now
    # `meshward test` starts every case from the configured filters; one Envoy keeps its counts
    # across them: a caller of its own per case keeps per-caller limits apart.
    for i, case in enumerate(cases["cases"]):
        if "token" in case["request"]:
            case["request"]["token"]["claims"]["sub"] += f"-{i}"
    case_file = tmp_path / "cases.yaml"
    case_file.write_text(yaml.safe_dump(cases))
    r = meshward("test", policy_path, case_file, "--openapi", openapi, "--form", form, "--modules", DIST, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    # The policy as `meshward test` ran it: each provider with a test key trusting it.
    policy = yaml.safe_load(policy_path.read_text())
    jwt = next(s["jwt"] for s in policy["stages"] if "jwt" in s)
    for provider, jwks in run["jwks"].items():
        jwt["providers"][provider]["local_jwks"] = {"inline_string": jwks}
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))
    monkeypatch.setenv("ORDERS_PAYMENTS_WEBHOOK_SECRET", SECRET)
    r = meshward("render", "envoy", policy_file, "--openapi", openapi, "--form", form, "--modules", DIST, "--listen", 0, "--admin", 0,
                 "--upstream", f"127.0.0.1:{upstream.port}")
    assert r.returncode == 0, r.stderr
    assert len(run["cases"]) == len(cases["cases"])
    with Envoy(yaml.safe_load(r.stdout), concurrency=1) as env:
        for case in run["cases"]:
            got = send_as_sent(env, case)
            want = case["outcome"]
            envoy = {"status": got.status, "reset": got.reset}
            if not got.reset:  # a cut answer carries no reason to the client
                envoy["reason"] = got.reason
            if service == "upstream":  # the echo answers with the request: whether it got there
                envoy["reached_service"] = got.reached_upstream
            assert envoy == {k: want[k] for k in envoy}, f"{case['name']}: meshward test {want}, Envoy {envoy}"
    env.cleanup()


# ---- calls answered from the case file: remote JWKS and the fleet engine -----------------------

SHOP_SECRET = "shop-hook-secret"


def shop_policy() -> dict:
    """A service whose modules call out: keys from a remote JWKS, a global read limit, webhook
    deliveries and order creation kept once across the fleet."""
    fleet = {"cluster": "meshward-fleet", "namespace": "shop"}
    return {"service": "shop", "namespace": "shop", "selector": {"app": "shop"}, "stages": [
        {"jwt": {"providers": {"idp": {"issuer": "https://idp.shop.test", "audiences": ["shop"],
                                       "remote_jwks": {"http_uri": {"uri": "http://idp.shop.test/jwks.json", "cluster": "idp", "timeout": "1s"},
                                                       "cache_duration": "300s"}}},
                 "rules": [{"match": {"path": "/hooks/pay"}}, {"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]}},
        {"webhook": {"unmatched": "allow", "fleet": fleet, "endpoints": [
            {"name": "pay", "match": {"path": "/hooks/pay"}, "scheme": "github", "secrets": [{"environment_variable": "SHOP_HOOK_SECRET"}]}]}},
        {"idempotency": {"operations": [{"name": "create-order", "match": {"path": "/orders", "methods": ["POST"]}}], "fleet": fleet}},
        {"ratelimit": {"global": {"cluster": "meshward-fleet", "domain": "shop"}, "rules": [
            {"name": "reads-per-user", "match": {"prefix": "/items", "methods": ["GET"]}, "key": ["subject"], "scope": "global",
             "limit": {"requests": 2, "per": "60s"}}]}},
    ]}


def shop_cases(now: int) -> dict:
    """Cases whose answers come from the case file; each one's caller, key and delivery its own,
    so one real engine can play them all in a row."""
    def token(sub):
        return {"key": "idp", "claims": {"sub": sub}}

    def delivery(i):
        body = '{"id":"evt_%d"}' % i
        signature = "sha256=" + hmac.new(SHOP_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
        return {"method": "POST", "path": "/hooks/pay", "body": body,
                "headers": {"content-type": "application/json", "x-github-delivery": f"d-{i}", "x-hub-signature-256": signature}}

    def order(sub, key, item=1):
        return {"method": "POST", "path": "/orders", "json": {"item": item}, "headers": {"idempotency-key": key}, "token": token(sub)}

    return {"keys": {"idp": {}}, "env": {"SHOP_HOOK_SECRET": SHOP_SECRET}, "at": now, "cases": [
        {"name": "a token signed by the key the remote JWKS serves", "request": {"path": "/profile", "token": token("u1")},
         "expect": {"status": 200, "reached_service": True}},
        {"name": "the IdP down since the proxy started", "jwks": "unavailable", "request": {"path": "/profile", "token": token("u2")},
         "expect": {"status": 503, "reason": "jwks_unavailable", "stage": "jwt"}},
        {"name": "the IdP answering 500 since the proxy started", "jwks": {"status": 500}, "request": {"path": "/profile", "token": token("u2b")},
         "expect": {"status": 503, "reason": "jwks_unavailable"}},
        {"name": "a third read in a minute", "repeat": 3, "fleet": {"ratelimit": ["ok", "ok", "over_limit"]},
         "request": {"path": "/items", "token": token("u3")}, "expect": {"status": 429, "reason": "rate_limited", "stage": "ratelimit"}},
        {"name": "two reads are within the limit", "repeat": 2, "request": {"path": "/items", "token": token("u3b")},
         "expect": {"status": 200, "reached_service": True}},
        {"name": "the rate-limit service down lets reads through", "fleet": {"ratelimit": "unavailable"},
         "request": {"path": "/items", "token": token("u4")}, "expect": {"status": 200, "reached_service": True}},
        {"name": "a delivery sent twice", "repeat": 2, "fleet": {"claim": ["claimed", "seen"]}, "request": delivery(1),
         "expect": {"status": 401, "reason": "replayed", "stage": "webhook"}},
        {"name": "a delivery another replica accepted", "fleet": {"claim": "seen"}, "request": delivery(4),
         "expect": {"status": 401, "reason": "replayed", "stage": "webhook"}},
        {"name": "a delivery while its first copy is in flight", "fleet": {"claim": "in_flight"}, "request": delivery(2),
         "expect": {"status": 409, "stage": "webhook", "reached_service": False}},
        {"name": "the seen-set down refuses deliveries", "fleet": {"claim": "unavailable"}, "request": delivery(3),
         "expect": {"status": 503, "reason": "replay_service_unavailable"}},
        {"name": "an order retried gets the first answer", "repeat": 2, "fleet": {"claim": ["claimed", "seen"]}, "request": order("u5", "k-5"),
         "expect": {"status": 200, "reached_service": False, "client_sees": {"idempotent-replayed": "true"}}},
        {"name": "a key used for another order", "fleet": {"claim": "reused"}, "request": order("u6", "k-6"),
         "expect": {"status": 422, "reason": "idempotency_key_reused", "stage": "idempotency"}},
        {"name": "an order, then its key again with another body", "fleet": {"claim": ["claimed", "seen"]}, "steps": [
            {"request": order("u7", "k-7", item=1), "expect": {"status": 200, "reached_service": True}},
            {"request": order("u7", "k-7", item=2), "expect": {"status": 422, "reason": "idempotency_key_reused", "stage": "idempotency"}}]},
        {"name": "a delivery whose body is a file", "request": {**delivery(8), "body": None, "body_file": "evt_8.json"},
         "expect": {"status": 200, "reached_service": True}},
    ]}


# The cases a real engine plays as the case file says: the engine's state comes from the case's
# own requests (its repeats), or from a JWKS server that is there or not.
REAL_ENGINE_PLAYS = {"a token signed by the key the remote JWKS serves", "a third read in a minute", "two reads are within the limit",
                     "a delivery sent twice", "an order retried gets the first answer", "an order, then its key again with another body",
                     "a delivery whose body is a file"}


def write_shop_cases(tmp_path, now: int) -> Path:
    cases = shop_cases(now)
    for case in cases["cases"]:
        request = case.get("request", {})
        if "body_file" in request:
            del request["body"]
            (tmp_path / request["body_file"]).write_text('{"id":"evt_8"}')
    path = tmp_path / "shop.test.yaml"
    path.write_text(yaml.safe_dump(cases, sort_keys=False))
    return path


@pytest.mark.parametrize("form", ["separate", "bundle"])
def test_jwks_and_fleet_answers_from_the_case_file_agree_with_envoy_on_the_real_engine(tmp_path, upstream, monkeypatch, form):
    from echo_upstream import jwks_server
    from fleet import FleetEngine, RedisServer, free_port

    policy_path = tmp_path / "shop.yaml"
    policy_path.write_text(yaml.safe_dump(shop_policy(), sort_keys=False))
    case_file = write_shop_cases(tmp_path, int(time.time()))
    r = meshward("test", policy_path, case_file, "--form", form, "--modules", DIST, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    assert all(c["passed"] for c in run["cases"]), [(c["name"], c["failures"]) for c in run["cases"] if not c["passed"]]
    by_name = {c["name"]: c for c in run["cases"]}
    # The calls were made and answered: the JWKS fetched from the provider's cluster (a case whose
    # proxy started without it fetches again), a claim in the seen-set.
    assert by_name["the IdP down since the proxy started"]["outcome"]["calls"] == [{"cluster": "idp", "http": True}]
    assert by_name["a delivery another replica accepted"]["outcome"]["calls"] == [{"cluster": "meshward-fleet", "grpc": "meshward.fleet.v1.SeenSet/Claim"}]

    # The same policy in Envoy, its JWKS served over HTTP and the fleet engine on Redis.
    out = tmp_path / "compiled"
    r = meshward("compile", policy_path, "--out", out)
    assert r.returncode == 0, r.stderr
    limits = yaml.safe_load((out / "meshward-fleet.yaml").read_text())["limits"]
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port, {(l["domain"], l["rule"]): (l["key"], l["requests"], l["per"]) for l in limits})
    idp = jwks_server(run["jwks"]["idp"].encode())
    monkeypatch.setenv("SHOP_HOOK_SECRET", SHOP_SECRET)
    try:
        for idp_port, played in ((idp.port, REAL_ENGINE_PLAYS), (free_port(), {"the IdP down since the proxy started"})):
            r = meshward("render", "envoy", policy_path, "--form", form, "--modules", DIST, "--listen", 0, "--admin", 0,
                         "--upstream", f"127.0.0.1:{upstream.port}", "--cluster", f"idp=127.0.0.1:{idp_port}",
                         "--cluster", f"meshward-fleet=127.0.0.1:{engine.port}")
            assert r.returncode == 0, r.stderr
            with Envoy(yaml.safe_load(r.stdout), concurrency=1) as env:
                for name in sorted(played):
                    case = by_name[name]
                    got = send_as_sent(env, case)
                    want = case["outcome"]
                    envoy = {"status": got.status, "reason": got.reason, "replayed": got.header("idempotent-replayed")}
                    host = {"status": want["status"], "reason": want["reason"],
                            "replayed": next((v for k, v in want["headers"] if k == "idempotent-replayed"), None)}
                    assert envoy == host, f"{name}: meshward test {host}, Envoy {envoy}"
            env.cleanup()
    finally:
        idp.stop()
        engine.stop()
        redis_server.stop()


def test_a_bad_answer_in_a_case_file_is_refused(tmp_path):
    policy_path = tmp_path / "shop.yaml"
    policy_path.write_text(yaml.safe_dump(shop_policy(), sort_keys=False))
    for change, message in ((lambda c: c["cases"][0].update(fleet={"claim": "maybe"}), "unknown variant `maybe`"),
                            (lambda c: c["cases"][0].update(fleet={"seen": "claimed"}), "unknown field `seen`"),
                            (lambda c: c.update(jwks="sometimes"), "jwks: \"sometimes\" is not served, unavailable or {status: 100-599}")):
        cases = shop_cases(1_767_225_600)
        change(cases)
        cases["cases"] = [c for c in cases["cases"] if "body_file" not in c.get("request", {})]
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(cases))
        r = meshward("test", policy_path, path, "--modules", DIST)
        assert r.returncode == 2 and message in r.stderr, (message, r.stdout, r.stderr)


# ---- a local reply through every filter's response callbacks --------------------------------

def login_guard_policy() -> dict:
    """A failure limit before the token check: the jwt stage's 401s spend the caller's budget as
    they leave through the rate-limit stage's response callbacks."""
    return {"service": "login", "namespace": "login", "selector": {"app": "login"}, "stages": [
        {"ratelimit": {"rules": [{"name": "token-guessing", "match": {"prefix": "/"}, "key": ["client_ip"], "counts": "failures",
                                  "limit": {"requests": 2, "per": "900s"}}]}},
        {"jwt": {"providers": {"idp": {"issuer": "https://idp.login.test", "audiences": ["login"],
                                       "local_jwks": {"inline_string": '{"keys":[]}'}}},
                 "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]}},
    ]}


@pytest.mark.parametrize("form", ["separate", "bundle"])
def test_a_refusal_spends_a_failure_budget_as_in_envoy(tmp_path, upstream, form):
    policy_path = tmp_path / "login.yaml"
    policy_path.write_text(yaml.safe_dump(login_guard_policy(), sort_keys=False))
    cases = {"keys": {"idp": {}}, "cases": [
        {"name": "two wrong tokens are answered 401", "repeat": 2, "request": {"path": "/me", "headers": {"authorization": "Bearer x.y.z"}},
         "expect": {"status": 401, "reason": "malformed_token"}},
        {"name": "the third try is locked out", "repeat": 3, "request": {"path": "/me", "headers": {"authorization": "Bearer x.y.z"}},
         "expect": {"status": 429, "reason": "rate_limited", "stage": "ratelimit", "reached_service": False}},
        {"name": "a valid token passes while the budget lasts", "request": {"path": "/me", "token": {"key": "idp", "claims": {"sub": "a"}}},
         "expect": {"status": 200, "reached_service": True}},
    ]}
    case_file = tmp_path / "login.test.yaml"
    case_file.write_text(yaml.safe_dump(cases, sort_keys=False))
    r = meshward("test", policy_path, case_file, "--form", form, "--modules", DIST, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    # Envoy, on the same policy (the test key trusted), from one client address: 401, 401, 429.
    policy = login_guard_policy()
    policy["stages"][1]["jwt"]["providers"]["idp"]["local_jwks"] = {"inline_string": run["jwks"]["idp"]}
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    r = meshward("render", "envoy", policy_path, "--form", form, "--modules", DIST, "--listen", 0, "--admin", 0, "--upstream", f"127.0.0.1:{upstream.port}")
    assert r.returncode == 0, r.stderr
    with Envoy(yaml.safe_load(r.stdout), concurrency=1) as env:
        got = [env.request("/me", {"authorization": "Bearer x.y.z"}) for _ in range(3)]
    env.cleanup()
    assert [(g.status, g.reason) for g in got] == [(401, "malformed_token"), (401, "malformed_token"), (429, "rate_limited")], got
    # The answers as the client gets them, headers the response callbacks added included.
    for want, envoy in ((run["cases"][0]["outcome"], got[1]), (run["cases"][1]["outcome"], got[2])):
        host = dict(want["headers"])
        assert (want["status"], want["reason"]) == (envoy.status, envoy.reason)
        for name in ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after", "www-authenticate"):
            assert host.get(name) == envoy.header(name), (name, host, envoy.headers)


@pytest.mark.parametrize("form", ["separate", "bundle"])
def test_a_refused_grpc_call_is_answered_trailers_only_as_in_envoy(tmp_path, upstream, form):
    """A gRPC request meshward refuses: Envoy answers HTTP 200 with the gRPC status (and the body
    as grpc-message); meshward test's host answers it the same way."""
    policy = login_guard_policy()
    del policy["stages"][0]
    policy_path = tmp_path / "grpc.yaml"
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    call = {"method": "POST", "path": "/demo.Echo/Say", "headers": {"content-type": "application/grpc", "te": "trailers"}, "body": "\u0000" * 5}
    cases = {"keys": {"idp": {}}, "cases": [{"name": "a call without a token", "request": call,
                                             "expect": {"status": 200, "grpc_status": 16, "reason": "missing_token", "reached_service": False}}]}
    case_file = tmp_path / "grpc.test.yaml"
    case_file.write_text(yaml.safe_dump(cases))
    r = meshward("test", policy_path, case_file, "--form", form, "--modules", DIST, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(r.stdout)
    host = dict(run["cases"][0]["outcome"]["headers"])
    policy["stages"][0]["jwt"]["providers"]["idp"]["local_jwks"] = {"inline_string": run["jwks"]["idp"]}
    policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
    r = meshward("render", "envoy", policy_path, "--form", form, "--modules", DIST, "--listen", 0, "--admin", 0, "--upstream", f"127.0.0.1:{upstream.port}")
    assert r.returncode == 0, r.stderr
    with Envoy(yaml.safe_load(r.stdout), concurrency=1) as env:
        got = env.request(call["path"], call["headers"], "POST", call["body"].encode())
    env.cleanup()
    assert got.status == 200, got
    for name in ("content-type", "grpc-status", "grpc-message", "meshward-reason"):
        assert host.get(name) == got.header(name), (name, host, got.headers)


# ---- meshward replay -------------------------------------------------------------------------

def orders_policy(tmp_path, keys, name: str, change=None) -> Path:
    """The orders policy trusting the test key ring's ES256 key, optionally changed."""
    policy = yaml.safe_load(POLICY.read_text())
    policy["openapi"] = str(OPENAPI)
    jwt = next(s["jwt"] for s in policy["stages"] if "jwt" in s)
    jwt["providers"]["demo"].update(issuer=ISSUER, audiences=[AUDIENCE], local_jwks={"inline_string": json.dumps(keys.jwks(["es256"]))})
    if change:
        change(policy)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def admins_read_any_tenant(policy):
    """order-read needs orders:admin and no longer checks the tenant."""
    rules = next(s["ownership"] for s in policy["stages"] if "ownership" in s)["rules"]
    rule = next(r for r in rules if r["name"] == "order-read")
    rule["scopes"] = ["orders:admin"]
    del rule["owner"]


def record_har(env: Envoy, keys, requests) -> dict:
    """Each request sent through the Envoy and recorded as a HAR entry with Envoy's answer."""
    entries = []
    for claims, path in requests:
        headers = {"authorization": f"Bearer {keys.token('ES256', **claims)}"} if claims else {}
        started = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        got = env.request(path, headers)
        entries.append({"startedDateTime": started,
                        "request": {"method": "GET", "url": f"http://orders.test{path}", "httpVersion": "HTTP/1.1",
                                    "headers": [{"name": k, "value": v} for k, v in headers.items()]},
                        "response": {"status": got.status, "content": {"text": got.body.decode()}}})
    return {"log": {"version": "1.2", "entries": entries}}


def test_replay_reports_what_a_change_would_refuse_and_allow(tmp_path, upstream, keys, monkeypatch):
    """Traffic recorded through a real Envoy on the policy in force, replayed against a change:
    reading another tenant's order becomes an admin's right (newly allowed), a reader without
    orders:admin loses it (newly refused); the policy in force replays unchanged."""
    monkeypatch.setenv("ORDERS_PAYMENTS_WEBHOOK_SECRET", SECRET)
    old = orders_policy(tmp_path, keys, "old.yaml")
    new = orders_policy(tmp_path, keys, "new.yaml", admins_read_any_tenant)
    r = meshward("render", "envoy", old, "--form", "bundle", "--modules", DIST, "--listen", 0, "--admin", 0, "--upstream", f"127.0.0.1:{upstream.port}")
    assert r.returncode == 0, r.stderr
    reader = {"sub": "alice", "tenant": "acme", "scope": "orders:read"}
    admin = {"sub": "root", "tenant": "acme", "scope": "orders:read orders:admin"}
    traffic = [(reader, "/tenants/acme/orders/1"), (reader, "/tenants/acme/orders/2"), (admin, "/tenants/globex/orders/3"),
               (None, "/tenants/acme/orders/4"), (None, "/healthz")]
    with Envoy(yaml.safe_load(r.stdout), concurrency=1) as env:
        har = record_har(env, keys, traffic)
    env.cleanup()
    assert [e["response"]["status"] for e in har["log"]["entries"]] == [200, 200, 403, 401, 200]
    path = tmp_path / "traffic.har"
    path.write_text(json.dumps(har))

    # The policy in force, replayed in the host, decides as Envoy did.
    r = meshward("replay", old, "--from", path, "--form", "bundle", "--modules", DIST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "5 requests replayed: 5 unchanged, 0 newly refused, 0 newly allowed", r.stdout

    for against in ([], ["--baseline", old]):
        r = meshward("replay", new, "--from", path, "--form", "bundle", "--modules", DIST, "--format", "json", *against)
        assert r.returncode == 1, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert (report["replayed"], report["unchanged"]) == (5, 2), report
        [refused] = report["newly_refused"]
        assert refused["why"] == "ownership order-read missing_scope (403)" and refused["count"] == 2, report
        assert refused["examples"][0].startswith("GET /tenants/acme/orders/1 (")
        [allowed] = report["newly_allowed"]
        want = "was ownership order-read tenant_boundary" if against else "was tenant_boundary"
        assert allowed["why"] == want and allowed["count"] == 1, report


def test_replay_from_the_replay_log_envoy_wrote(tmp_path, upstream, keys, monkeypatch):
    """The same traffic recorded by Envoy's access log as `render envoy --access-log` sets it up:
    no token in it, each caller's verified claims signed again for the replay; a request with a
    body is counted as not replayed (the log holds no body)."""
    monkeypatch.setenv("ORDERS_PAYMENTS_WEBHOOK_SECRET", SECRET)
    old = orders_policy(tmp_path, keys, "old.yaml")
    new = orders_policy(tmp_path, keys, "new.yaml", admins_read_any_tenant)
    log = tmp_path / "replay.log"
    r = meshward("render", "envoy", old, "--form", "bundle", "--modules", DIST, "--listen", 0, "--admin", 0,
                 "--upstream", f"127.0.0.1:{upstream.port}", "--access-log", log)
    assert r.returncode == 0, r.stderr
    reader = {"sub": "alice", "tenant": "acme", "scope": "orders:read"}
    admin = {"sub": "root", "tenant": "acme", "scope": "orders:read orders:admin"}
    writer = {"sub": "bob", "tenant": "acme", "scope": "orders:write"}
    traffic = [(reader, "/tenants/acme/orders/1"), (reader, "/tenants/acme/orders/2"), (admin, "/tenants/globex/orders/3"),
               (None, "/tenants/acme/orders/4"), (None, "/healthz")]
    tokens = []
    with Envoy(yaml.safe_load(r.stdout), concurrency=1) as env:
        for claims, path in traffic:
            headers = {"authorization": f"Bearer {keys.token('ES256', **claims)}"} if claims else {}
            tokens += headers.values()
            env.request(path, headers)
        write = env.request("/tenants/acme/orders", {"authorization": f"Bearer {keys.token('ES256', **writer)}", "content-type": "application/json"},
                            "POST", json.dumps({"item": "book", "quantity": 1}).encode())
        deadline = time.monotonic() + 10
        while len(log.read_text().splitlines()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    env.cleanup()
    assert write.status in (200, 201), write
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["status"] for line in lines] == [200, 200, 403, 401, 200, write.status], lines
    assert not any(t.split()[1] in text for t in tokens) and "Bearer" not in text, "a token reached the replay log"
    assert json.loads(lines[0]["principal"])["claims"]["sub"] == "alice"

    r = meshward("replay", old, "--from", log, "--form", "bundle", "--modules", DIST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-2:] == ["5 requests replayed: 5 unchanged, 0 newly refused, 0 newly allowed",
                                          "1 not replayed: its body is not in the log"], r.stdout
    for against in ([], ["--baseline", old]):
        r = meshward("replay", new, "--from", log, "--form", "bundle", "--modules", DIST, "--format", "json", *against)
        assert r.returncode == 1, r.stdout + r.stderr
        report = json.loads(r.stdout)
        assert (report["replayed"], report["unchanged"], report["skipped"]) == (5, 2, {"its body is not in the log": 1}), report
        [refused] = report["newly_refused"]
        assert refused["why"] == "ownership order-read missing_scope (403)" and refused["count"] == 2, report
        [allowed] = report["newly_allowed"]
        assert allowed["count"] == 1 and allowed["examples"][0].startswith("GET /tenants/globex/orders/3 ("), report
        assert allowed["why"] == ("was ownership order-read tenant_boundary" if against else "was refused (403)"), report


def test_replay_of_real_tokens_reads_the_idps_keys_given(tmp_path, keys, monkeypatch):
    """Recorded real tokens and a provider with remote_jwks: `--jwks demo=FILE` answers its fetch
    with the IdP's keys; without it the keys cannot be fetched and the change shows as such."""
    monkeypatch.setenv("ORDERS_PAYMENTS_WEBHOOK_SECRET", SECRET)

    def remote(policy):
        provider = next(s["jwt"] for s in policy["stages"] if "jwt" in s)["providers"]["demo"]
        del provider["local_jwks"]
        provider["remote_jwks"] = {"http_uri": {"uri": "https://idp.test/jwks.json", "cluster": "idp", "timeout": "1s"}}

    policy = orders_policy(tmp_path, keys, "remote.yaml", remote)
    now = int(time.time())
    token = keys.token("ES256", sub="alice", tenant="acme", scope="orders:read", iat=now, exp=now + 600)
    started = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    har = {"log": {"entries": [{"startedDateTime": started, "request": {"method": "GET", "url": "http://orders.test/tenants/acme/orders/1",
                                                                        "headers": [{"name": "authorization", "value": f"Bearer {token}"}]},
                                "response": {"status": 200, "content": {"text": "{}"}}}]}}
    traffic = tmp_path / "t.har"
    traffic.write_text(json.dumps(har))
    idp = tmp_path / "jwks.json"
    idp.write_text(json.dumps(keys.jwks(["es256"])))
    r = meshward("replay", policy, "--from", traffic, "--jwks", f"demo={idp}", "--modules", DIST)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "1 requests replayed: 1 unchanged, 0 newly refused, 0 newly allowed", r.stdout + r.stderr
    r = meshward("replay", policy, "--from", traffic, "--modules", DIST, "--format", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["newly_refused"][0]["why"] == "jwt jwks_unavailable (503)", r.stdout + r.stderr
    r = meshward("replay", policy, "--from", traffic, "--jwks", f"nobody={idp}", "--modules", DIST)
    assert r.returncode == 2 and "--jwks nobody:" in r.stderr and "no jwt provider `nobody` with remote_jwks" in r.stderr, r.stderr


def test_replay_marks_a_change_decided_on_a_fleet_answer(tmp_path, monkeypatch):
    """A delivery recorded as refused `replayed` (the fleet had seen it) is allowed on replay,
    where the fleet engine answers as a quiet fleet: the change is marked as such."""
    monkeypatch.setenv("SHOP_HOOK_SECRET", SHOP_SECRET)
    policy_path = tmp_path / "shop.yaml"
    policy_path.write_text(yaml.safe_dump(shop_policy(), sort_keys=False))
    body = '{"id":"evt_9"}'
    signature = "sha256=" + hmac.new(SHOP_SECRET.encode(), body.encode(), hashlib.sha256).hexdigest()
    entry = {"startedDateTime": "2026-01-01T00:00:00.000Z",
             "request": {"method": "POST", "url": "http://shop.test/hooks/pay", "postData": {"text": body},
                         "headers": [{"name": "content-type", "value": "application/json"}, {"name": "x-github-delivery", "value": "d-9"},
                                     {"name": "x-hub-signature-256", "value": signature}]},
             "response": {"status": 401, "content": {"text": json.dumps({"error": "unauthorized", "reason": "replayed", "request_id": "r"})}}}
    traffic = tmp_path / "t.har"
    traffic.write_text(json.dumps({"log": {"entries": [entry]}}))
    r = meshward("replay", policy_path, "--from", traffic, "--modules", DIST, "--format", "json")
    assert r.returncode == 1, r.stdout + r.stderr
    [allowed] = json.loads(r.stdout)["newly_allowed"]
    assert allowed["why"] == "was replayed [on a fleet answer: replay assumes a quiet fleet]", allowed


def test_replay_says_what_an_audit_record_lacks(tmp_path):
    record = {"producer": "orders/1", "seq": 1, "prev": "0" * 64, "hash": "1" * 64, "time": "2026-12-03T00:25:34.758Z", "method": "PUT",
              "path": "/tenants/acme/orders/1", "status": 200, "stages": []}
    path = tmp_path / "audit.log"
    path.write_text(json.dumps(record) + "\n")
    r = meshward("replay", POLICY, "--from", path, "--modules", DIST)
    assert r.returncode == 2 and "an audit record: it holds no caller's claims" in r.stderr and "--access-log" in r.stderr, r.stderr


def test_replay_refuses_what_is_not_a_har_file(tmp_path):
    path = tmp_path / "x.har"
    path.write_text(json.dumps({"entries": []}))
    r = meshward("replay", POLICY, "--from", path, "--modules", DIST)
    assert r.returncode == 2 and "not a HAR file (no log.entries)" in r.stderr, r.stderr
    path.write_text(json.dumps({"log": {"entries": [{"startedDateTime": "yesterday", "request": {}}]}}))
    r = meshward("replay", POLICY, "--from", path, "--modules", DIST)
    assert r.returncode == 2 and "log.entries[0]: startedDateTime: not an RFC 3339 time" in r.stderr, r.stderr


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_init_drafts_cases_that_run_and_pass(tmp_path, example):
    """`--init`: per rule a request it allows and one it refuses, expecting what the policy
    decides now; the file runs as it is."""
    policy, _, openapi, _ = EXAMPLES[example]
    # The same form both times: where two stages would refuse, each form names its first.
    r = meshward("test", policy, "--init", "--openapi", openapi, "--modules", DIST, "--form", "bundle")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# A starting case file for ")
    drafted = yaml.safe_load(r.stdout)
    path = tmp_path / "drafted.yaml"
    path.write_text(r.stdout)
    r = meshward("test", policy, path, "--openapi", openapi, "--modules", DIST, "--form", "bundle")
    assert r.returncode == 0, r.stdout + r.stderr
    by_name = {c["name"]: c["expect"] for c in drafted["cases"]}
    if example == "orders":
        assert by_name["jwt: POST /tenants/1/orders without a token"] == {"status": 401, "reason": "missing_token", "reached_service": False}
        assert by_name["ownership order-read: GET /tenants/owner-1/orders/1 as the rule allows"] == {"status": 200, "reached_service": True}
        assert by_name["ownership order-read: GET /tenants/owner-1/orders/1 without its scopes"]["reason"] == "missing_scope"
        assert by_name["ratelimit writes-per-user: 6 requests in a row"] == {"status": 429, "reason": "rate_limited", "reached_service": False}
    else:
        # An owner read from the service's answer: the drafted answer names the caller or not.
        assert by_name["ownership order-read: GET /workshop/api/shop/orders/1 as the rule allows"] == {"status": 200, "reached_service": True}
        assert by_name["ownership order-read: GET /workshop/api/shop/orders/1 as someone else"] == {"reset": True, "reason": "not_owner", "reached_service": True}


def test_init_drafts_the_fleet_engines_answers(tmp_path):
    """For a policy whose modules call the fleet engine, `--init` drafts cases that give its
    answers: a retry answered from the store, a key reused, the engine down, over a global limit."""
    policy_path = tmp_path / "shop.yaml"
    policy_path.write_text(yaml.safe_dump(shop_policy(), sort_keys=False))
    r = meshward("test", policy_path, "--init", "--modules", DIST)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "drafted.yaml"
    path.write_text(r.stdout)
    drafted = {c["name"]: c for c in yaml.safe_load(r.stdout)["cases"]}
    retry = drafted["idempotency create-order: a retry gets the first answer"]
    assert (retry["fleet"], retry["repeat"], retry["expect"]) == ({"claim": ["claimed", "seen"]}, 2, {"status": 200, "reached_service": False})
    assert drafted["idempotency create-order: the key used before for another request"]["expect"]["reason"] == "idempotency_key_reused"
    assert drafted["idempotency create-order: the fleet engine down"]["expect"]["reason"] == "idempotency_service_unavailable"
    assert drafted["ratelimit reads-per-user: over the fleet's limit"]["expect"] == {"status": 429, "reason": "rate_limited", "reached_service": False}
    r = meshward("test", policy_path, path, "--modules", DIST)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == f"{len(drafted)} cases: {len(drafted)} passed, 0 failed", r.stdout + r.stderr
