"""monitoring/: the alerting rules pass `promtool check rules` and their unit tests (`promtool
test rules`, Debian's prometheus package), and the dashboard is importable Grafana JSON whose
every query names a known series family. (tests/test_rollout.py evaluates the rules and every
dashboard query in a real Prometheus scraping real Envoys.)"""
from __future__ import annotations

import json
import re
import shutil
import subprocess

from harness import REPO

MONITORING = REPO / "monitoring"


def promtool(*args) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        raise FileNotFoundError("promtool is missing: run `make system-deps`")
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=MONITORING, timeout=60)


def test_alerting_rules_check_and_pass_their_unit_tests():
    r = promtool("check", "rules", "meshward-alerts.yaml")
    assert r.returncode == 0 and "SUCCESS: 10 rules found" in r.stdout, r.stdout + r.stderr
    r = promtool("test", "rules", "meshward-alerts.test.yaml")
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_a_broken_rule_is_caught(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text((MONITORING / "meshward-alerts.yaml").read_text().replace("rate(meshward_ratelimit", "rate(meshward_ratelimit[", 1))
    r = promtool("check", "rules", str(broken))
    assert r.returncode != 0, r.stdout


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "meshward-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_the_dashboard_is_importable_and_reads_meshward_series():
    dashboard = json.loads((MONITORING / "meshward-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["__inputs"][0]["type"] == "datasource"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"app", "stage"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for expr in dashboard_queries():
        assert re.search(r"meshward(:|_)", expr) and '{app="$app"' in expr, expr
