"""`meshward test`: case files run in the real modules inside the CLI's proxy-wasm host, and the
same verdict as real Envoy: every case of the orders example is sent, as `meshward test` sent
it (its minted token included), through Envoy running what `meshward render envoy` writes for
the same policy, in both forms, and the two agree case by case."""
from __future__ import annotations

import hashlib
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
            headers = dict(case["request"]["headers"])
            method, path = headers.pop(":method"), headers.pop(":path")
            for own in (":authority", ":scheme", "x-forwarded-proto", "content-length"):
                headers.pop(own, None)
            body = case["request"]["body"]
            for _ in range(case["repeat"]):
                got = env.request(path, headers, method, body.encode() if body is not None else None)
            want = case["outcome"]
            envoy = {"status": got.status, "reset": got.reset}
            if not got.reset:  # a cut answer carries no reason to the client
                envoy["reason"] = got.reason
            if service == "upstream":  # the echo answers with the request: whether it got there
                envoy["reached_service"] = got.reached_upstream
            assert envoy == {k: want[k] for k in envoy}, f"{case['name']}: meshward test {want}, Envoy {envoy}"
    env.cleanup()


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
