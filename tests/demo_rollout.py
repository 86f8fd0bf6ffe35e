"""`make demo`, second part: the whole bundle (JWT, webhook, schema, ownership, rate limit) on
one service, examples/orders, kept current by `meshward serve`, then its schema stage promoted
from shadow to enforce by the gate reading a real Prometheus.

Everything runs here on 127.0.0.1 and stops at the end: an echo upstream as the service, the
real Envoy with meshward.wasm, `meshward serve --dir` (ECDS files), Debian's `prometheus`
scraping Envoy. The policy is copied to a scratch directory first: promotion rewrites it.

    python tests/demo_rollout.py
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo import sign  # noqa: E402
from echo_upstream import echo_server  # noqa: E402
from harness import DIST, REPO, Envoy  # noqa: E402
from test_rollout import Prometheus  # noqa: E402

MESHWARD = REPO / "target" / "release" / "meshward"
EXAMPLE = REPO / "examples" / "orders"
WEBHOOK_SECRET = "demo-payments-webhook-secret"
unexpected: list[str] = []


def meshward(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(MESHWARD), *map(str, args)], capture_output=True, text=True, timeout=60)


def step(title: str):
    print(f"\n== {title}")


def show(command: list, r: subprocess.CompletedProcess, want: int):
    print("$ meshward " + " ".join(map(str, command)).replace(str(REPO) + "/", ""))
    for line in (r.stdout + r.stderr).rstrip().splitlines():
        print("  " + line)
    if r.returncode != want:
        unexpected.append(f"meshward {command[0]} exited {r.returncode}")
        print(f"  <-- UNEXPECTED, wanted exit {want}")


def run(command: list, want: int) -> subprocess.CompletedProcess:
    r = meshward(*command)
    show(command, r, want)
    return r


def table(env: Envoy, rows: list):
    """(what, method, path, headers, body, wanted status) → a printed row per request."""
    width = max(len(row[0]) for row in rows)
    for what, method, path, headers, body, want in rows:
        r = env.request(path, headers, method, body)
        got = "reached the service" if r.reached_upstream else (r.reason or "-")
        flag = "" if r.status == want else f"   <-- UNEXPECTED, wanted {want}"
        if flag:
            unexpected.append(what)
        print(f"  {what:<{width}}  {method:<4} {path:<32} {r.status}  {got}{flag}")


def webhook(body: bytes, secret: str = WEBHOOK_SECRET) -> dict:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={signature}"}


def schema_decisions(text: str) -> float:
    """The schema stage's decisions in a /stats/prometheus text (or 0)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(("meshward_schema_allowed_total", "meshward_schema_denied_total", "meshward_schema_shadow_denied_total")))


def scraped(env: Envoy, prometheus: Prometheus):
    """Waits until Prometheus has every schema decision Envoy counted so far (allowed decisions
    reach Envoy's counters within a second)."""
    time.sleep(1.2)
    counted = schema_decisions(env.prometheus())
    query = 'sum({__name__=~"meshward_schema_(allowed|denied|shadow_denied)_total"})'
    wait_for("Prometheus to scrape", lambda: prometheus.value(query) >= counted)


def wait_for(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.25)


def main() -> int:
    os.environ["ORDERS_PAYMENTS_WEBHOOK_SECRET"] = WEBHOOK_SECRET  # the sidecar's environment
    scratch = Path(tempfile.mkdtemp(prefix="meshward-demo-"))
    shutil.copy(EXAMPLE / "policy.yaml", scratch / "policy.yaml")
    shutil.copy(EXAMPLE / "openapi.yaml", scratch / "openapi.yaml")
    policy = scratch / "policy.yaml"
    upstream = echo_server()
    serve = env = prometheus = None
    try:
        step("1. The policy, checked against its contract")
        run(["check", policy], 0)

        step("2. meshward serve keeps a real Envoy (one meshward.wasm) current with the policy")
        serve_log: list[str] = []
        serve = subprocess.Popen([str(MESHWARD), "serve", str(policy), "--dir", str(scratch / "ecds"), "--form", "bundle",
                                  "--modules", str(DIST), "--interval-ms", "100"], stderr=subprocess.PIPE, text=True)
        threading.Thread(target=lambda: serve_log.extend(serve.stderr), daemon=True).start()
        wait_for("meshward serve", lambda: any("serving" in line for line in serve_log))
        rendered = meshward("render", "envoy", policy, "--form", "bundle", "--modules", DIST, "--listen", 0, "--admin", 0,
                            "--upstream", f"127.0.0.1:{upstream.port}", "--ecds", scratch / "ecds")
        if rendered.returncode != 0:
            raise RuntimeError(rendered.stderr)
        env = Envoy(yaml.safe_load(rendered.stdout), concurrency=2)
        env.start()
        prometheus = Prometheus(scratch, {"orders": env})
        print(f"  Envoy :{env.port}, Prometheus {prometheus.url}; " + serve_log[0].strip())

        step("3. Every stage on one service (schema in shadow: it counts, it does not refuse)")
        alice = {"authorization": "Bearer " + sign(scope="orders:read orders:write"), "content-type": "application/json"}
        forged = {"authorization": "Bearer " + sign(scope="orders:read orders:write")[:-4] + "AAAA"}
        order = json.dumps({"product_id": 7, "quantity": 2}).encode()
        mass_assignment = json.dumps({"product_id": 7, "quantity": 2, "price": 0}).encode()
        delivery = json.dumps({"event": "payment.succeeded", "id": "evt_1"}).encode()
        table(env, [
            ("health check (public)", "GET", "/healthz", {}, None, 200),
            ("alice reads her tenant's order", "GET", "/tenants/acme/orders/42", alice, None, 200),
            ("no token", "GET", "/tenants/acme/orders/42", {}, None, 401),
            ("forged signature", "GET", "/tenants/acme/orders/42", forged, None, 401),
            ("alice reads another tenant's order", "GET", "/tenants/globex/orders/42", alice, None, 403),
            ("alice creates an order", "POST", "/tenants/acme/orders", alice, order, 200),
            ("mass assignment (shadow: counted)", "POST", "/tenants/acme/orders", alice, mass_assignment, 200),
            ("signed webhook delivery", "POST", "/webhooks/payments", webhook(delivery), delivery, 200),
            ("the same delivery replayed", "POST", "/webhooks/payments", webhook(delivery), delivery, 401),
            ("webhook signed with another secret", "POST", "/webhooks/payments", webhook(b'{"event":"x"}', "not-the-secret-at-all"), b'{"event":"x"}', 401),
            # 5 writes a minute per user: the 6th is refused.
            *[(f"alice's write #{i} this minute", "POST", "/tenants/acme/orders", alice, order, 200 if i <= 5 else 429) for i in range(3, 7)],
        ])

        step("4. A client with a bug (1 read in 5 asks for /orders/latest): the gate says not ready")
        for i in range(100):
            env.request(f"/tenants/acme/orders/{'latest' if i % 5 == 0 else i + 1}", alice)
        scraped(env, prometheus)
        run(["rollout", "status", policy, "--prometheus", prometheus.url], 1)

        step("5. The client is fixed; clean traffic brings the denial rate under the 5% budget")
        for i in range(500):
            env.request(f"/tenants/acme/orders/{i + 1}", alice)
        scraped(env, prometheus)
        run(["rollout", "status", policy, "--prometheus", prometheus.url], 0)

        step("6. Promote: the policy file is rewritten enforcing; meshward serve pushes it to Envoy")
        before = sum("serving" in line for line in serve_log)
        run(["rollout", "promote", policy, "--prometheus", prometheus.url, "--apply"], 0)
        wait_for("the push", lambda: sum("serving" in line for line in serve_log) > before)
        print("  " + [line for line in serve_log if "serving" in line][-1].strip())
        wait_for("Envoy to apply it", lambda: env.request("/tenants/acme/orders/latest", alice).status == 400)
        table(env, [
            ("the buggy read, now refused", "GET", "/tenants/acme/orders/latest", alice, None, 400),
            ("mass assignment, now refused", "POST", "/tenants/acme/orders", {**alice, "authorization": "Bearer " + sign(sub="bob", scope="orders:write")}, mass_assignment, 400),
            ("a good read", "GET", "/tenants/acme/orders/42", alice, None, 200),
        ])

        step("7. Drift: what traffic asks for that the contract does not describe")
        for path in ("/tenants/acme/orders/42/export", "/admin/tenants", "/admin/tenants"):
            env.request(path, alice)
        scraped(env, prometheus)
        run(["drift", policy, "--prometheus", prometheus.url], 1)
    finally:
        for stop in (prometheus and prometheus.stop, env and env.stop, env and env.cleanup, serve and serve.terminate, upstream.stop):
            if stop:
                stop()
        shutil.rmtree(scratch, ignore_errors=True)
    if unexpected:
        print(f"\n{len(unexpected)} unexpected: {', '.join(unexpected)}")
        return 1
    print("\nevery answer as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
