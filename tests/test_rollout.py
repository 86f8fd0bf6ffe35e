"""`meshward rollout status|promote` against a real Prometheus (Debian's `prometheus`, started
here on 127.0.0.1) scraping two real Envoys' `/stats/prometheus` under scripted traffic: one
service over its shadow budget, one within it."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from fleet import free_port, wait_until_ready
from harness import DIST, REPO, Envoy, build_config, plugin
from test_cli import Serve, meshward, wait_until
from test_monitoring import dashboard_queries

OWNERSHIP = {"mode": "shadow", "unmatched": "allow",
             "rules": [{"name": "orders", "match": {"prefix": "/orders"}, "scopes": ["orders:read"]}]}
WINDOW = "120"


class Prometheus:
    """prometheus from the distribution, scraping `targets` ({app label: Envoy}) every second."""

    def __init__(self, root, targets: dict):
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is missing: run `make system-deps`")
        self.port = free_port()
        config = root / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            # The shipped recording and alerting rules, evaluated on what the Envoys report.
            "rule_files": [str(REPO / "monitoring" / "meshward-alerts.yaml")],
            "scrape_configs": [
                {"job_name": app, "metrics_path": "/stats/prometheus",
                 "static_configs": [{"targets": [f"127.0.0.1:{env.admin_port}"], "labels": {"app": app}}]}
                for app, env in targets.items()
            ],
        }))
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_until_ready(f"{self.url}/-/ready", self.proc, "prometheus")
        except RuntimeError:
            self.stop()
            raise

    def query(self, promql: str) -> list:
        with urllib.request.urlopen(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=5) as r:
            answer = json.loads(r.read())
        assert answer["status"] == "success", (promql, answer)
        return answer["data"]["result"]

    def value(self, promql: str) -> float:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def policy_file(tmp_path, app: str, mode: str = "shadow", min_shadow: str | None = None) -> str:
    path = tmp_path / f"{app}-{mode}-{min_shadow}.yaml"
    rollout = {"window": "3600s", "budgets": {"ownership": "1%"}}
    if min_shadow:
        rollout["min_shadow"] = min_shadow
    path.write_text(yaml.safe_dump({
        "service": app, "namespace": app, "selector": {"app": app},
        "modules": {"url": "oci://registry.example.com/meshward/{module}:0.1.0"},
        "stages": [{"ownership": {**OWNERSHIP, "mode": mode}}],
        "rollout": rollout,
    }))
    return str(path)


@pytest.fixture(scope="module")
def observed(upstream, tmp_path_factory):
    """Two services' Envoys, scraped; `orders` gets 40 of 100 requests shadow-denied, `billing`
    none. Yields Prometheus once it has seen all of it."""
    envs = {app: Envoy(build_config(upstream.port, [plugin("ownership", OWNERSHIP)]), concurrency=1) for app in ("orders", "billing")}
    for env in envs.values():
        env.start()
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), envs)
    try:
        # Every series exists before the traffic that is judged (increase() starts from a sample).
        for env in envs.values():
            env.request("/health")
        envs["orders"].request("/orders/0")
        total = 'sum({__name__=~"meshward_ownership_(allowed|shadow_denied)_total"})'
        deadline = time.monotonic() + 30
        while prometheus.value(total) < 3:
            assert time.monotonic() < deadline, "Prometheus never scraped the Envoys"
            time.sleep(0.5)
        for i in range(100):
            envs["orders"].request(f"/orders/{i}" if i % 5 < 2 else "/health")
            envs["billing"].request("/health")
        deadline = time.monotonic() + 30
        while prometheus.value(total) < 203:
            assert time.monotonic() < deadline, prometheus.value(total)
            time.sleep(0.5)
        time.sleep(2.5)  # a few more scrapes: increase() sees the whole step
        yield prometheus
    finally:
        prometheus.stop()
        for env in envs.values():
            env.stop()
            env.cleanup()


def rollout(*args) -> subprocess.CompletedProcess:
    return meshward("rollout", *args)


def test_a_service_over_its_shadow_budget_is_not_ready(observed, tmp_path):
    r = rollout("status", policy_file(tmp_path, "orders"), "--prometheus", observed.url, "--window", WINDOW, "--format", "json")
    assert r.returncode == 1, r.stdout + r.stderr
    stage = json.loads(r.stdout)["stages"][0]
    assert stage["verdict"] == "over_budget" and stage["mode"] == "shadow", stage
    # 40 of 100 judged decisions were denials (increase() extrapolates a little).
    assert 0.3 < stage["rate"] < 0.5 and 80 < stage["decisions"] < 130, stage
    assert stage["top_reasons"][0][0] == "missing_principal" and stage["top_routes"][0][0] == "orders", stage
    text = rollout("status", policy_file(tmp_path, "orders"), "--prometheus", observed.url, "--window", WINDOW)
    assert text.returncode == 1 and "OVER BUDGET" in text.stdout and "missing_principal" in text.stdout and "not ready" in text.stdout, text.stdout
    # Promotion is refused, with the reasons.
    promote = rollout("promote", policy_file(tmp_path, "orders"), "--prometheus", observed.url, "--window", WINDOW, "--dist", DIST)
    assert promote.returncode == 1 and promote.stdout == "" and "OVER BUDGET" in promote.stderr, promote


def test_a_service_within_budget_is_ready_and_promote_renders_it_enforcing(observed, tmp_path):
    r = rollout("status", policy_file(tmp_path, "billing"), "--prometheus", observed.url, "--window", WINDOW, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    status = json.loads(r.stdout)
    assert status["ready"] and status["stages"][0]["verdict"] == "ready" and status["stages"][0]["denials"] == 0, status
    promote = rollout("promote", policy_file(tmp_path, "billing"), "--prometheus", observed.url, "--window", WINDOW, "--dist", DIST)
    assert promote.returncode == 0, promote.stderr
    docs = [d for d in yaml.safe_load_all(promote.stdout) if d]
    assert [d["spec"]["pluginConfig"]["mode"] for d in docs] == ["enforce"], docs
    assert docs[0]["spec"]["selector"]["matchLabels"] == {"app": "billing"}


def test_a_stage_within_budget_must_also_have_been_in_shadow_for_min_shadow(observed, tmp_path):
    # The fixture's Envoys have reported for seconds, not an hour: within budget, not ready.
    r = rollout("status", policy_file(tmp_path, "billing", min_shadow="3600s"), "--prometheus", observed.url, "--window", WINDOW, "--format", "json")
    assert r.returncode == 1, r.stdout + r.stderr
    stage = json.loads(r.stdout)["stages"][0]
    # (Read at min_shadow / 300 = 12 s steps: seconds of data may show as 0, never as an hour.)
    assert stage["verdict"] == "shadow_too_short" and stage["denials"] == 0 and 0 <= stage["shadow_secs"] < 600, stage
    text = rollout("status", policy_file(tmp_path, "billing", min_shadow="3600s"), "--prometheus", observed.url, "--window", WINDOW)
    assert "SHADOW TOO SHORT" in text.stdout and "of the 3600s min_shadow" in text.stdout and "not ready" in text.stdout, text.stdout
    promote = rollout("promote", policy_file(tmp_path, "billing", min_shadow="3600s"), "--prometheus", observed.url, "--window", WINDOW, "--dist", DIST)
    assert promote.returncode == 1 and promote.stdout == "", promote
    # Reporting for longer than a short min_shadow: ready.
    r = rollout("status", policy_file(tmp_path, "billing", min_shadow="2s"), "--prometheus", observed.url, "--window", WINDOW, "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["stages"][0]["verdict"] == "ready", r.stdout
    # Over budget stays over budget whatever the time in shadow.
    r = rollout("status", policy_file(tmp_path, "orders", min_shadow="3600s"), "--prometheus", observed.url, "--window", WINDOW, "--format", "json")
    assert json.loads(r.stdout)["stages"][0]["verdict"] == "over_budget", r.stdout


def test_an_enforcing_stage_over_budget_stops_the_line(observed, tmp_path):
    r = rollout("status", policy_file(tmp_path, "orders", mode="enforce"), "--prometheus", observed.url, "--window", WINDOW)
    assert r.returncode == 1 and "STOP THE LINE" in r.stdout and "roll back" in r.stdout, r.stdout


def test_a_service_without_traffic_is_not_ready_and_prometheus_down_is_an_error(observed, tmp_path):
    r = rollout("status", policy_file(tmp_path, "payments"), "--prometheus", observed.url, "--window", WINDOW, "--format", "json")
    assert r.returncode == 1 and json.loads(r.stdout)["stages"][0]["verdict"] == "no_traffic", r.stdout
    r = rollout("status", policy_file(tmp_path, "orders"), "--prometheus", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 2 and "Prometheus at" in r.stderr, r.stderr


def test_the_recording_rules_and_every_dashboard_query_work_on_real_envoy_metrics(observed):
    # The rules saw what rollout status saw: orders' ownership denies ~40 %, billing's nothing.
    deadline = time.monotonic() + 20
    ratio = 'meshward:stage_denial_ratio:rate5m{app="%s",stage="ownership"}'
    while not observed.query(ratio % "billing"):
        assert time.monotonic() < deadline, "the recording rules never evaluated"
        time.sleep(0.5)
    assert 0.25 < observed.value(ratio % "orders") < 0.55
    assert observed.value(ratio % "billing") == 0
    has_data = {}
    for expr in dashboard_queries():
        for stage in ("ownership", "ratelimit"):
            promql = expr.replace("$app", "orders").replace("${stage}", stage).replace("$stage", stage)
            has_data[(expr, stage)] = bool(observed.query(promql))  # valid PromQL, or query() fails
    # The stage-wide panels, ownership's shadow reasons and routes show orders' traffic, and the
    # configuration each proxy runs; no schema stage ran, so the drift panel shows nothing.
    with_data = {(e, s) for (e, s), yes in has_data.items() if yes}
    assert {s for e, s in with_data if "stage_" in e} == {"ownership", "ratelimit"}, with_data
    assert {("shadow" in e, "by (reason)" in e, "by (route)" in e, "config_info" in e) for e, s in with_data if s == "ownership" and "meshward_" in e} == {
        (True, True, False, False), (True, False, True, False), (False, False, False, True)}, with_data
    assert not any("unknown_route" in e for e, _ in with_data)


def test_promote_apply_rewrites_the_policy_and_serve_pushes_it_to_the_running_envoy(observed, upstream, tmp_path):
    path = policy_file(tmp_path, "billing")
    original = open(path).read()
    serve = Serve(path, "separate", "files", tmp_path)
    try:
        with Envoy(serve.render_envoy(path, "separate", upstream), concurrency=1) as env:
            (tmp_path / "own-prometheus").mkdir()
            own = Prometheus(tmp_path / "own-prometheus", {"billing": env})
            try:
                assert env.request("/orders/1").reached_upstream  # shadow: through, counted
                before = serve.versions()
                r = rollout("promote", path, "--prometheus", observed.url, "--window", WINDOW, "--apply")
                assert r.returncode == 0 and "promoted" in r.stdout and f"{path}.previous" in r.stdout, r.stdout + r.stderr
                assert open(f"{path}.previous").read() == original
                assert yaml.safe_load(open(path))["stages"][0]["ownership"]["mode"] == "enforce"
                # serve saw the new file and pushed it; the same Envoy now refuses.
                wait_until(lambda: serve.versions() > before)
                wait_until(lambda: not env.request("/orders/1").reached_upstream)
                refused = env.request("/orders/1")
                assert refused.reason == "missing_principal", refused
                assert env.request("/health").reached_upstream
                # The same check after promotion, on this Envoy's own numbers (its shadow and
                # enforced denials of one route and reason are two series): stop the line, and
                # roll back to the file promote kept.
                denied = 'sum(meshward_ownership_denied_total{app="billing"})'
                wait_until(lambda: own.value(denied) >= 2 and own.value('sum(meshward_ownership_shadow_denied_total{app="billing"})') >= 1)
                r = rollout("status", path, "--prometheus", own.url, "--window", WINDOW, "--format", "json")
                status = json.loads(r.stdout)
                assert r.returncode == 1 and status["stages"][0]["verdict"] == "stop_the_line", r.stdout + r.stderr
                assert status["stages"][0]["denials"] >= 3 and status["rollback"] == f"{path}.previous", status
                # Which configuration the proxy runs: the promoted policy's, not the one before.
                [proxy] = status["proxies"]
                assert proxy["current"] and [m for m, _ in proxy["configs"]] == ["meshward_ownership"], status
                before = json.loads(rollout("status", f"{path}.previous", "--prometheus", own.url, "--window", WINDOW, "--format", "json").stdout)
                assert [p["current"] for p in before["proxies"]] == [False], before
                text = rollout("status", f"{path}.previous", "--prometheus", own.url, "--window", WINDOW).stdout
                assert "proxies: 0 of 1 run this policy" in text and "runs another configuration: meshward_ownership " in text, text
                text = rollout("status", path, "--prometheus", own.url, "--window", WINDOW).stdout
                assert f"roll back to {path}.previous (the policy before its promotion)" in text, text
            finally:
                own.stop()
        env.cleanup()
    finally:
        serve.stop()


def test_promote_apply_refuses_a_service_that_is_not_ready_and_changes_nothing(observed, tmp_path):
    path = policy_file(tmp_path, "orders")
    original = open(path).read()
    r = rollout("promote", path, "--prometheus", observed.url, "--window", WINDOW, "--apply")
    assert r.returncode == 1 and "OVER BUDGET" in r.stderr and r.stdout == "", r
    assert open(path).read() == original
    assert not os.path.exists(f"{path}.previous")
