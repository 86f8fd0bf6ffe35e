"""Audit records through the real Envoy: a policy with `audit`, rendered by `meshward render
envoy --form bundle --audit-log FILE` and run as rendered. A scripted sequence of calls is
checked record by record (what each stage decided, status, who, nothing secret), then
`meshward audit verify` passes the log, and catches it altered, cut short or reordered."""
from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
import yaml

from harness import DIST, Envoy
from test_cli import meshward
from test_jwt_envoy import jwt_config
from tokens import bearer

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def policy(keys, records: str = "writes", signing: dict | None = None) -> dict:
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    ownership = {"rules": [{"name": "tenant-orders", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}"},
                            "owner": [{"path_param": "tenant_id", "claim": "tenant"}]}]}
    audit = {"records": records, **({"signing": signing} if signing else {})}
    return {"service": "orders", "stages": [{"jwt": jwt}, {"ownership": ownership}], "audit": audit}


def render(tmp_path, doc: dict, upstream, *extra) -> tuple[dict | None, str]:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    r = meshward("render", "envoy", path, "--modules", DIST, "--listen", 0, "--admin", 0,
                 "--upstream", f"127.0.0.1:{upstream.port}", *extra)
    return (yaml.safe_load(r.stdout) if r.returncode == 0 else None), r.stderr


@pytest.fixture(scope="module")
def audited(tmp_path_factory, upstream, keys):
    """The log of a scripted sequence of calls through an Envoy with two workers, every record
    signed with a key made by `meshward audit keygen` and given to Envoy in its environment (as
    a secret would be); the log, a token, and the public key."""
    d = tmp_path_factory.mktemp("audit")
    log = d / "audit.log"
    pair = json.loads(meshward("audit", "keygen").stdout)
    signing = {"key": {"environment_variable": "MESHWARD_AUDIT_KEY"}, "every": 1}
    config, err = render(d, policy(keys, signing=signing), upstream, "--form", "bundle", "--audit-log", log)
    assert config is not None, err
    assert "MESHWARD_AUDIT_KEY" in json.dumps(config), "render hands the key's variable to the VM"
    os.environ["MESHWARD_AUDIT_KEY"] = pair["private_key"]
    alice = bearer(keys.token("ES256", sub="alice", tenant="acme", azp="orders-web"))
    calls = [
        # (method, path, headers, expected status)
        ("PUT", "/tenants/acme/orders/1?api_key=SECRET-QUERY", {**alice, "traceparent": TRACEPARENT}, 200),
        ("GET", "/tenants/acme/orders/1", alice, 200),
        ("DELETE", "/tenants/globex/orders/2", alice, 403),
        ("POST", "/tenants/acme/orders/3", {}, 401),
        ("PATCH", "/tenants/acme/orders/4", {**alice, "traceparent": "not-a-trace\",\"status\":200"}, 200),
    ]
    try:
        with Envoy(config, concurrency=2) as env:
            for method, path, headers, status in calls:
                r = env.request(path, headers, method=method, body=b"{}" if method != "GET" else None)
                assert r.status == status, (method, path, r)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(log.read_text().splitlines()) < 4:
                time.sleep(0.1)
    finally:
        del os.environ["MESHWARD_AUDIT_KEY"]
    env.cleanup()
    assert pair["private_key"] not in log.read_text() and pair["private_key"] not in env.log()
    return log, alice["authorization"].split(" ", 1)[1], pair["public_key"]


def records(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def verify(*files, fmt="json", key: str | None = None):
    r = meshward("audit", "verify", *files, "--format", fmt, *(["--key", key] if key else []))
    return r.returncode, (json.loads(r.stdout) if fmt == "json" else r.stdout)


def test_each_write_has_its_record(audited):
    log, _, _ = audited
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
    log, token, _ = audited
    text = log.read_text()
    for secret in [token, token.split(".")[2], "SECRET-QUERY", "api_key", "Bearer"]:
        assert secret not in text


def test_verify_passes_the_log_and_catches_tampering(audited, tmp_path):
    log, _, _ = audited
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


def sealed(record: dict) -> dict:
    """`record` with its hash recomputed, as anyone who can write the log store can."""
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return {**body, "hash": hashlib.sha256(canonical.encode()).hexdigest()}


def test_signed_records_hold_against_whoever_writes_the_log(audited, tmp_path):
    """The chain alone cannot stop a writer who recomputes it; the signatures can."""
    log, _, public = audited
    code, report = verify(log, key=public)
    assert code == 0 and report["intact"] and report["unsigned_tail"] == [], report
    all_records = records(log)
    # A denial rewritten as a success and every hash after it in its chain recomputed.
    i = next(k for k, r in enumerate(all_records) if r["status"] == 403)
    producer = all_records[i]["producer"]
    rewritten, prev = [], None
    for k, r in enumerate(all_records):
        if k == i:
            r = {**r, "status": 200}
        if r["producer"] == producer and k >= i:
            r = sealed({**r, "prev": prev} if prev else r)
            prev = r["hash"]
        rewritten.append(r)
    path = tmp_path / "rechained.log"
    path.write_text("".join(json.dumps(r) + "\n" for r in rewritten))
    code, report = verify(path)
    assert code == 0, ("the chain alone is fooled", report)
    code, report = verify(path, key=public)
    assert code == 1 and any("signature does not verify" in f["message"] for f in report["findings"]), report
    # An invented producer, chained from the start.
    invented = sealed({**all_records[0], "producer": "forger/1", "seq": 1, "prev": "0" * 64, "status": 204})
    invented.pop("signature", None)
    invented = sealed(invented)
    path = tmp_path / "invented.log"
    path.write_text(log.read_text() + json.dumps(invented) + "\n")
    assert verify(path)[0] == 0, "the chain alone is fooled"
    code, report = verify(path, key=public)
    assert code == 1 and any("forger/1: no record signed" in f["message"] for f in report["findings"]), report
    # Another key: nothing verifies.
    other = json.loads(meshward("audit", "keygen").stdout)["public_key"]
    assert verify(log, key=other)[0] == 1
    # One rotated file read alone (a producer's records from #2 on): its signatures anchor it.
    k = next(k for k, r in enumerate(all_records) if r["seq"] > 1)
    alone = [line for line, r in zip(log.read_text().splitlines(), all_records) if r["producer"] == all_records[k]["producer"] and r["seq"] >= all_records[k]["seq"]]
    path = tmp_path / "rotated.log"
    path.write_text("\n".join(alone) + "\n")
    assert verify(path)[0] == 1, "without a key, its first record follows nothing read"
    code, report = verify(path, key=public)
    assert code == 0 and report["starts"] == [{"producer": all_records[k]["producer"], "first_seq": all_records[k]["seq"]}], report
