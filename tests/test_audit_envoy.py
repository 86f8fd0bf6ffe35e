"""Audit records through the real Envoy: a policy with `audit`, rendered by `meshward render
envoy --form bundle --audit-log FILE` and run as rendered. A scripted sequence of calls is
checked record by record (what each stage decided, status, who, nothing secret), then
`meshward audit verify` passes the log, and catches it altered, cut short or reordered."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from harness import DIST, Envoy
from test_cli import meshward
from test_jwt_envoy import jwt_config
from tokens import bearer

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def policy(keys, records: str = "writes") -> dict:
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    ownership = {"rules": [{"name": "tenant-orders", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}"},
                            "owner": [{"path_param": "tenant_id", "claim": "tenant"}]}]}
    return {"service": "orders", "stages": [{"jwt": jwt}, {"ownership": ownership}], "audit": {"records": records}}


def render(tmp_path, doc: dict, upstream, *extra) -> tuple[dict | None, str]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = meshward("render", "envoy", path, "--modules", DIST, "--listen", 0, "--admin", 0,
                 "--upstream", f"127.0.0.1:{upstream.port}", *extra)
    return (yaml.safe_load(r.stdout) if r.returncode == 0 else None), r.stderr


@pytest.fixture(scope="module")
def audited(tmp_path_factory, upstream, keys):
    """The log of a scripted sequence of calls through an Envoy with two workers."""
    d = tmp_path_factory.mktemp("audit")
    log = d / "audit.log"
    config, err = render(d, policy(keys), upstream, "--form", "bundle", "--audit-log", log)
    assert config is not None, err
    alice = bearer(keys.token("ES256", sub="alice", tenant="acme", azp="orders-web"))
    calls = [
        # (method, path, headers, expected status)
        ("PUT", "/tenants/acme/orders/1?api_key=SECRET-QUERY", {**alice, "traceparent": TRACEPARENT}, 200),
        ("GET", "/tenants/acme/orders/1", alice, 200),
        ("DELETE", "/tenants/globex/orders/2", alice, 403),
        ("POST", "/tenants/acme/orders/3", {}, 401),
        ("PATCH", "/tenants/acme/orders/4", {**alice, "traceparent": "not-a-trace\",\"status\":200"}, 200),
    ]
    with Envoy(config, concurrency=2) as env:
        for method, path, headers, status in calls:
            r = env.request(path, headers, method=method, body=b"{}" if method != "GET" else None)
            assert r.status == status, (method, path, r)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(log.read_text().splitlines()) < 4:
            time.sleep(0.1)
    env.cleanup()
    return log, alice["authorization"].split(" ", 1)[1]


def records(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def verify(*files, fmt="json"):
    r = meshward("audit", "verify", *files, "--format", fmt)
    return r.returncode, (json.loads(r.stdout) if fmt == "json" else r.stdout)


def test_each_write_has_its_record(audited):
    log, _ = audited
    got = [(r["method"], r["path"], r["status"], [(s["stage"], s["decision"], s["reason"]) for s in r["stages"]]) for r in records(log)]
    assert got == [
        ("PUT", "/tenants/acme/orders/1", 200, [("jwt", "allowed", None), ("ownership", "allowed", None)]),
        ("DELETE", "/tenants/globex/orders/2", 403, [("jwt", "allowed", None), ("ownership", "denied", "tenant_boundary")]),
        ("POST", "/tenants/acme/orders/3", 401, [("jwt", "denied", "missing_token"), ("ownership", "not_reached", None)]),
        ("PATCH", "/tenants/acme/orders/4", 200, [("jwt", "allowed", None), ("ownership", "allowed", None)]),
    ], "one record per write, none for the GET"
    first, denied, anonymous, forged = records(log)
    assert (first["subject"], first["tenant"], first["actor"]) == ("alice", "acme", "orders-web")
    assert first["traceparent"] == TRACEPARENT and first["request_id"]
    assert first["objects"] == {"tenant_id": "acme", "order_id": "1"} and denied["objects"]["tenant_id"] == "globex"
    assert anonymous["subject"] is None and anonymous["objects"] == {}
    assert forged["traceparent"] is None, "a malformed traceparent is left out, not copied"
    assert all(r["latency_us"] >= 0 and len(r["policy"]) == 16 and r["workload"] is None for r in records(log))
    assert first["time"].endswith("Z")
    # Producers are named by the proxy's node id (`render envoy` sets it to the service).
    assert all(r["producer"].startswith("orders/") for r in records(log)), [r["producer"] for r in records(log)]


def test_nothing_secret_in_the_log(audited):
    log, token = audited
    text = log.read_text()
    for secret in [token, token.split(".")[2], "SECRET-QUERY", "api_key", "Bearer"]:
        assert secret not in text


def test_verify_passes_the_log_and_catches_tampering(audited, tmp_path):
    log, _ = audited
    code, report = verify(log)
    assert code == 0 and report["intact"] and report["records"] == 4, report
    lines = log.read_text().splitlines()
    by_producer: dict[str, list[int]] = {}
    for i, r in enumerate(records(log)):
        by_producer.setdefault(r["producer"], []).append(i)
    producer, mine = max(by_producer.items(), key=lambda kv: len(kv[1]))
    assert len(mine) >= 2, by_producer  # two workers, sequential calls: at least one has two

    def tampered(name, new_lines) -> list[str]:
        path = tmp_path / name
        path.write_text("\n".join(new_lines) + "\n")
        code, report = verify(path)
        assert code == 1 and not report["intact"], (name, report)
        return [f"{f['line']}: {f['message']}" for f in report["findings"]]

    # A denial rewritten as a success.
    altered = list(lines)
    i = next(i for i, r in enumerate(records(log)) if r["status"] == 403)
    altered[i] = altered[i].replace('"status":403', '"status":200')
    assert any("altered" in f for f in tampered("altered.log", altered))
    # The same denial with a success added before it: a reader that keeps the last value of a
    # key still reads 403 (and the hash over it holds); one that keeps the first reads 200.
    doubled = list(lines)
    doubled[i] = doubled[i].replace("{", '{"status":200,', 1)
    assert any(f.startswith(f"{i + 1}: not one reading") for f in tampered("doubled.log", doubled))
    # A record removed from the middle of a producer's chain.
    removed = [line for k, line in enumerate(lines) if k != mine[0]]
    assert any("missing" in f for f in tampered("removed.log", removed))
    # Two records of one producer swapped.
    swapped = list(lines)
    swapped[mine[0]], swapped[mine[1]] = swapped[mine[1]], swapped[mine[0]]
    assert any("out of order" in f for f in tampered("swapped.log", swapped))
    # The text report names the file and line.
    code, text = verify(tmp_path / "altered.log", fmt="text")
    assert code == 1 and f"altered.log:{i + 1}:" in text and "tampered with" in text, text


def test_an_empty_log_proves_nothing(tmp_path):
    (tmp_path / "empty.log").write_text("")
    code, report = verify(tmp_path / "empty.log")
    assert code == 1 and report["records"] == 0


def test_audit_needs_the_bundle(tmp_path, upstream, keys):
    config, err = render(tmp_path, policy(keys), upstream, "--form", "separate")
    assert config is None and "use --form bundle" in err, err
    bad = policy(keys, records="reads")
    config, err = render(tmp_path, bad, upstream, "--form", "bundle")
    assert config is None and "audit" in err and "unknown variant `reads`" in err, err
