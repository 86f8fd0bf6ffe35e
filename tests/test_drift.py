"""`meshward drift` against a real Prometheus scraping a real Envoy (two workers) whose schema
stage watches Petstore traffic in shadow: routes the contract lacks are reported by shape, with
their request counts and first-seen times, the label set stays bounded under a client probing
random paths, and operations nobody called are listed."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from harness import REPO, Envoy, build_config, plugin
from test_cli import meshward
from test_rollout import Prometheus

PETSTORE = REPO / "tests" / "specs" / "petstore-openapi.yaml"
PROBES = 70  # distinct literal paths: more than a sidecar labels (64)


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("drift") / "pets.yaml"
    path.write_text(yaml.safe_dump({
        "service": "pets", "selector": {"app": "pets"}, "openapi": str(PETSTORE),
        "stages": [{"schema": {"mode": "shadow"}}],
    }))
    return str(path)


@pytest.fixture(scope="module")
def observed(upstream, policy_path, tmp_path_factory):
    compiled = meshward("compile", policy_path)
    assert compiled.returncode == 0, compiled.stderr
    schema = json.loads(compiled.stdout)["meshward_schema"]
    env = Envoy(build_config(upstream.port, [plugin("schema", schema)]), concurrency=2)
    env.start()
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), {"pets": env})
    try:
        started = time.time()
        for i in range(5):
            assert env.request(f"/api/v3/pet/{i}").reached_upstream
        assert env.request("/api/v3/store/inventory").reached_upstream
        # Outside the contract (shadow: they reach the service, and are counted).
        for user in ("17", "18", "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"):
            assert env.request(f"/api/v3/admin/users/{user}?token=secret").reached_upstream
        assert env.request("/api/v3/pet/7", method="PATCH").reached_upstream
        for i in range(PROBES):
            env.request(f"/probe-{chr(97 + i // 26)}{chr(97 + i % 26)}")  # words, not ids
        total = 'sum({__name__=~"meshward_schema_(allowed|shadow_denied)_total"})'
        deadline = time.monotonic() + 30
        while prometheus.value(total) < 6 + 4 + PROBES:
            assert time.monotonic() < deadline, prometheus.value(total)
            time.sleep(0.5)
        yield prometheus, started
    finally:
        prometheus.stop()
        env.stop()
        env.cleanup()


def drift(policy_path, prometheus, *args):
    return meshward("drift", policy_path, "--prometheus", prometheus.url, "--window", "600", *args)


def test_routes_outside_the_contract_are_reported_by_shape_and_bounded(observed, policy_path):
    prometheus, started = observed
    r = drift(policy_path, prometheus, "--format", "json")
    assert r.returncode == 1, r.stdout + r.stderr  # drift found: a rollout step stops on it
    report = json.loads(r.stdout)
    routes = {u["route"]: u for u in report["unknown_routes"]}
    assert routes["GET /api/v3/admin/users/{id}"]["requests"] == 3, routes
    assert routes["GET /api/v3/admin/users/{id}"]["label"] == "GET-api-v3-admin-users-_v", routes
    assert routes["PATCH /api/v3/pet/{id}"]["requests"] == 1, routes
    # First seen within the test's run, as Prometheus saw it.
    assert 0 <= routes["GET /api/v3/admin/users/{id}"]["first_seen_secs_ago"] <= time.time() - started + 2, routes
    # 64 labels per sidecar: the two above and 62 probes; the other 8 probes are one label.
    probes = [r for r in routes if r.startswith("GET /probe-")]
    assert len(probes) == 62 and routes["other routes"]["requests"] == PROBES - 62, sorted(routes)
    assert len(routes) == 65
    # Nothing of the query string or an id reaches a label.
    assert "secret" not in r.stdout and "5f0c1d2e" not in r.stdout
    # Contract operations nobody called; the ones called are not listed.
    unseen = {op["operation"]: op for op in report["unseen_operations"]}
    assert "getPetById" not in unseen and "getInventory" not in unseen, unseen
    assert unseen["deletePet"] == {"operation": "deletePet", "method": "DELETE", "path": "/pet/{petId}"}
    assert len(unseen) == 19 - 2, sorted(unseen)


def test_the_text_report_and_a_window_without_the_traffic(observed, policy_path, tmp_path):
    prometheus, _ = observed
    text = drift(policy_path, prometheus)
    assert text.returncode == 1 and "routes seen but not in the contract: 65" in text.stdout, text.stdout
    assert "GET /api/v3/admin/users/{id}" in text.stdout and "first seen" in text.stdout and "deletePet" in text.stdout
    # Another service's selector sees none of it: nothing outside the contract, nothing called.
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({
        "service": "other", "selector": {"app": "other"}, "openapi": str(PETSTORE), "stages": [{"schema": {"mode": "shadow"}}]}))
    r = meshward("drift", str(other), "--prometheus", prometheus.url, "--window", "600", "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["unknown_routes"] == [] and len(json.loads(r.stdout)["unseen_operations"]) == 19


def test_drift_needs_a_schema_stage(tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text(yaml.safe_dump({"service": "x", "stages": [{"ownership": {"rules": []}}]}))
    r = meshward("drift", str(policy), "--prometheus", "http://127.0.0.1:1")
    assert r.returncode == 2 and "has no `schema` stage" in r.stderr, r.stderr


def test_the_dashboards_drift_panel_shows_the_shapes(observed):
    from test_monitoring import dashboard_queries
    prometheus, _ = observed
    [expr] = [e for e in dashboard_queries() if "unknown_route" in e]
    # rate() needs two samples of a series: some scrapes after the traffic.
    deadline = time.monotonic() + 20
    while not (rows := prometheus.query(expr.replace("$app", "pets"))):
        assert time.monotonic() < deadline, expr
        time.sleep(0.5)
    assert "GET-api-v3-admin-users-_v" in {r["metric"]["route"] for r in prometheus.query(expr.replace("$app", "pets").replace("topk(10,", "topk(100,"))}, rows
