"""Fleet state under faults, in real Envoy: two replicas (the bundle: jwt, webhook, idempotency,
ratelimit with a global rule) on one `meshward-fleet` and one Redis (append-only, fsync always),
all started here, the engine's cluster named as the README names it.

Each row injects one fault at one step of one request and then behaves as the client would:
the sender (webhook) or the caller (idempotency key) retries the same request, to the other
replica and back, until it gets a final answer. The service counts how many times it ran each
request. Faults: Redis stopped (and started with its data), Redis restarted without its data,
the engine killed (and started again), the engine unreachable (SIGSTOP: its port accepts,
nothing answers, as a dropped port looks to a caller with a deadline). Steps: at the claim
(before the request), while the service runs (fault and recovery inside the service's run), at
the settle (the fault starts while the service runs and lasts past its answer).

The guarantee (README, "Fleet state under faults"): per key, within its window, the service runs
at most once; a request refused while the engine was down runs once when retried. When Redis
comes back without its data, the engine refuses claims for a recovery period while sidecars
record again the outcomes they hold (outcomes recorded before the loss are gone: this matrix
injects faults around one request, so it has none).

`MESHWARD_FAULTS=N` runs N faults drawn from the matrix with a fixed seed (`make fault-test`:
200); by default each cell of the matrix runs once. The test prints its counts."""
from __future__ import annotations

import collections
import itertools
import json
import os
import random
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

import pytest

from fleet import FleetEngine, RedisServer, free_port
from harness import Envoy, as_deployed, build_config, http_server, plugin, static_cluster
from test_jwt_envoy import jwt_config
from test_webhook_envoy import SW_SECRET, standard
from tokens import bearer

# The README's cluster name: its 14 bytes parse as a protobuf message (a fixed32 field 13, a
# fixed64 field 12), which Envoy took for a GrpcService without a target and aborted on.
CLUSTER = "meshward-fleet"
DOMAIN = "faults"
LIMIT_RULE = "fleet-limit"

FAULTS = ["redis_stopped", "redis_wiped", "engine_killed", "engine_unreachable"]
STEPS = ["claim", "service", "settle"]
STAGES = ["webhook", "idempotency", "limit"]

# How long the engine refuses claims after Redis came back without its data (its default is 15).
RECOVERY_SECONDS = 6
# How long a retrying client keeps at it (engine back, outcome re-recorded, ticks with backoff).
RETRY_FOR_SECONDS = 25


class Service(BaseHTTPRequestHandler):
    """Counts each run by request key (webhook-id, idempotency-key, x-client); runs the fault
    hook of the current row inside the run, then answers 200 (201 for orders)."""

    protocol_version = "HTTP/1.1"

    def _run(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        key = self.headers.get("webhook-id") or self.headers.get("idempotency-key") or self.headers.get("x-client") or self.path
        server = self.server
        with server.lock:
            server.runs[key] += 1
            run = server.runs[key]
            hook, server.during = server.during, None
        if hook is not None:
            hook()
        answer = json.dumps({"key": key, "run": run}).encode()
        self.send_response(201 if self.path.startswith("/orders") else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_POST = _run
    do_GET = _run

    def log_message(self, *args):
        pass


def policy_plugins() -> list[dict]:
    fleet = {"cluster": CLUSTER, "timeout": "1s", "failure_mode": "deny"}
    return [
        ("jwt", None),
        ("webhook", {
            "endpoints": [{"name": "payments", "match": {"path": "/hooks/standard"}, "scheme": "standard_webhooks",
                           "secrets": [{"inline_string": SW_SECRET}], "in_flight_seconds": 30}],
            "unmatched": "allow",
            "fleet": {**fleet, "namespace": "faults-webhook"},
        }),
        ("idempotency", {
            "operations": [{"name": "create-order", "match": {"prefix": "/orders", "methods": ["POST"]}}],
            "expiry": "600s", "in_flight_seconds": 30, "max_answer_bytes": 4096,
            "fleet": {**fleet, "namespace": "faults-shop"},
        }),
        ("ratelimit", {
            "global": {"cluster": CLUSTER, "domain": DOMAIN, "timeout": "1s", "failure_mode": "allow"},
            "rules": [{"name": LIMIT_RULE, "match": {"prefix": "/limited"}, "key": ["header:x-client"], "scope": "global"}],
        }),
    ]


def replica(keys, service_port: int, engine_port: int) -> Envoy:
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/orders"}, "requires": {"provider_name": "main"}}, {"match": {"prefix": "/"}}]
    plugins = [plugin(name, jwt if name == "jwt" else config) for name, config in policy_plugins()]
    cfg = build_config(service_port, as_deployed("bundle", plugins), clusters=[static_cluster(CLUSTER, engine_port, http2=True)])
    return Envoy(cfg, concurrency=2)


class Fleet:
    """Redis, the engine, two replicas and the service; and the faults."""

    def __init__(self, keys):
        self.keys = keys
        self.service = http_server(Service, runs=collections.Counter(), during=None)
        self.redis = RedisServer(durable=True)
        limits = {(DOMAIN, LIMIT_RULE): (["header.x-client"], 100000, "3600s")}
        self.engine = FleetEngine(self.redis.port, limits, port=free_port(), args=("--recovery-seconds", str(RECOVERY_SECONDS)))
        self.replicas = [replica(keys, self.service.server_address[1], self.engine.port) for _ in range(2)]
        for env in self.replicas:
            env.start()

    def stop(self):
        for thing in (*self.replicas, self.engine, self.redis):
            thing.stop()
        for env in self.replicas:
            env.cleanup()
        self.service.shutdown()

    def begin(self, fault: str):
        if fault in ("redis_stopped", "redis_wiped"):
            self.redis.stop()
        elif fault == "engine_killed":
            self.engine.kill()
        elif fault == "engine_unreachable":
            self.engine.freeze()

    def end(self, fault: str):
        if fault == "redis_stopped":
            self.redis.start()
        elif fault == "redis_wiped":
            self.redis.wipe()
        elif fault == "engine_killed":
            self.engine.start()
        elif fault == "engine_unreachable":
            self.engine.thaw()

    def crashed(self) -> list[int]:
        return [i for i, env in enumerate(self.replicas) if env.proc.poll() is not None]

    def recovered(self) -> int:
        return sum(env.counter("meshward_fleet_settles_recovered_total") for env in self.replicas)


@pytest.fixture(scope="module")
def fleet(keys):
    f = Fleet(keys)
    yield f
    f.stop()


def request_for(stage: str, keys):
    """A fresh request of `stage`: (key, send(env) -> Response)."""
    if stage == "webhook":
        body = json.dumps({"type": "invoice.paid", "id": uuid.uuid4().hex}).encode()
        headers = standard(body)
        return headers["webhook-id"], lambda env: env.request("/hooks/standard", headers, "POST", body)
    if stage == "idempotency":
        key = "order-" + uuid.uuid4().hex
        headers = {**bearer(keys.token("ES256", sub="alice")), "content-type": "application/json", "idempotency-key": key}
        return key, lambda env: env.request("/orders", headers, "POST", b'{"product": 1}')
    client = "client-" + uuid.uuid4().hex
    return client, lambda env: env.request("/limited", {"x-client": client})


# What the first try gets, by stage and step (a fault at the claim refuses a webhook or an
# idempotent request — failure_mode deny — and lets a limited one through — allow).
FIRST_ANSWER = {
    ("webhook", "claim"): (503, "replay_service_unavailable"),
    ("idempotency", "claim"): (503, "idempotency_service_unavailable"),
    ("limit", "claim"): (200, None),
    ("webhook", "service"): (200, None),
    ("idempotency", "service"): (201, None),
    ("limit", "service"): (200, None),
    ("webhook", "settle"): (200, None),
    ("idempotency", "settle"): (201, None),
    ("limit", "settle"): (200, None),
}
# A final answer to a retry: the request ran (once) or is known to have run.
FINAL = {"webhook": {(200, None), (401, "replayed")}, "idempotency": {(201, None)}, "limit": {(200, None)}}
WAIT = {(409, "in_flight"), (409, "idempotency_key_in_flight"), (503, "replay_service_unavailable"), (503, "idempotency_service_unavailable")}


def run_row(f: Fleet, fault: str, step: str, stage: str) -> dict:
    """One fault at one step; the client's retries; what it got and how often the service ran."""
    key, send = request_for(stage, f.keys)
    a, b = f.replicas
    if step == "claim":
        f.begin(fault)
    elif step == "service":
        def hook():
            f.begin(fault)
            f.end(fault)
        f.service.during = hook
    else:
        f.service.during = lambda: f.begin(fault)
    try:
        first = send(a)
    finally:
        f.service.during = None
        if step != "service":
            f.end(fault)
    row = {"fault": fault, "step": step, "stage": stage, "first": (first.status, first.reason), "at": time.strftime("%H:%M:%S")}
    answers = []
    deadline = time.monotonic() + RETRY_FOR_SECONDS
    replicas = itertools.cycle([b, a])
    while True:
        r = send(next(replicas))
        answers.append((r.status, r.reason))
        final = (r.status, r.reason) in FINAL[stage]
        if final and stage == "idempotency" and first.status == 201:
            final = r.header("idempotent-replayed") == "true"
        if final and stage == "webhook" and first.status == 200:
            final = (r.status, r.reason) == (401, "replayed")
        if final or time.monotonic() > deadline:
            break
        assert (r.status, r.reason) in WAIT, (row, answers)
        time.sleep(0.3)
    row.update(retries=answers, runs=f.service.runs[key], crashed=f.crashed())
    if fault == "redis_wiped":
        # The next row starts from a fleet that has noticed the loss and recovered.
        probe_key, probe = request_for("webhook", f.keys)
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        while probe(a).status != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
    return row


def test_the_readme_cluster_name_and_names_that_parse_as_protobuf_reach_the_engine(keys):
    """Each name is the engine's cluster of two replicas; replays across them are refused,
    limits counted, no Envoy aborts."""
    # `\n\r\n\x0bfleet-decoy` is itself a serialized GrpcService naming the cluster
    # `fleet-decoy`: read as such, calls would go there instead.
    names = [CLUSTER, "outbound|8081||meshward-fleet.mesh.svc.cluster.local", "\n\r\n\x0bfleet-decoy"]
    service = http_server(Service, runs=collections.Counter(), during=None)
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port, {(DOMAIN, LIMIT_RULE): (["header.x-client"], 2, "3600s")})
    try:
        for name in names:
            plugins = []
            for stage, config in policy_plugins():
                if stage == "jwt":
                    continue
                config = json.loads(json.dumps(config).replace(json.dumps(CLUSTER), json.dumps(name)))
                if "fleet" in config:
                    config["fleet"]["namespace"] += "-" + uuid.uuid4().hex[:8]
                plugins.append(plugin(stage, config))
            clusters = [static_cluster(name, engine.port, http2=True), static_cluster("fleet-decoy", free_port(), http2=True)]
            envs = [Envoy(build_config(service.server_address[1], as_deployed(form, plugins), clusters=clusters), concurrency=1) for form in ("separate", "bundle")]
            for env in envs:
                env.start()
            try:
                body = json.dumps({"id": uuid.uuid4().hex}).encode()
                headers = standard(body)
                assert envs[0].request("/hooks/standard", headers, "POST", body).status == 200, name
                r = envs[1].request("/hooks/standard", headers, "POST", body)
                assert (r.status, r.reason) == (401, "replayed"), (name, r)
                client = "c-" + uuid.uuid4().hex
                statuses = [env.request("/limited", {"x-client": client}).status for env in (envs[0], envs[1], envs[0])]
                assert statuses == [200, 200, 429], (name, statuses)
                for env in envs:
                    assert env.proc.poll() is None, f"Envoy aborted with cluster {name!r}:\n{env.log()[-2000:]}"
                    assert "unset oneof" not in env.log()
            finally:
                for env in envs:
                    env.stop()
                    env.cleanup()
    finally:
        engine.stop()
        redis_server.stop()
        service.shutdown()


def test_no_fault_runs_a_request_twice_or_crashes_envoy(fleet):
    cells = list(itertools.product(FAULTS, STEPS, STAGES))
    count = int(os.environ.get("MESHWARD_FAULTS", "0"))
    rows = random.Random(34).choices(cells, k=count) if count else cells
    results = [run_row(fleet, *cell) for cell in rows]
    second_runs = [r for r in results if r["runs"] > 1 and r["stage"] != "limit"]
    never_ran = [r for r in results if r["runs"] == 0]
    crashes = [r for r in results if r["crashed"]]
    wrong_first = [r for r in results if r["first"] != FIRST_ANSWER[(r["stage"], r["step"])]]
    print(f"\nfleet faults: {len(results)} faults, {len(crashes)} Envoy crashes, {len(second_runs)} second runs, "
          f"{len(never_ran)} never ran, {len(wrong_first)} unexpected first answers")
    for fault, step, stage in sorted(set(rows)):
        row = next(r for r in results if (r["fault"], r["step"], r["stage"]) == (fault, step, stage))
        print(f"  {row['at']} {fault:18} {step:8} {stage:12} first {row['first']}, retries {len(row['retries'])} "
              f"(last {row['retries'][-1]}), service ran {row['runs']}")
    assert not crashes, crashes
    assert not second_runs, second_runs
    assert not never_ran, never_ran
    assert not wrong_first, wrong_first
    # Every fault path was counted: settle failures kept and recovered on both stages.
    envs = fleet.replicas
    if not count or count >= 36:
        assert sum(e.counter("meshward_webhook_settle_failures_total") for e in envs) >= 1
        assert sum(e.counter("meshward_idempotency_settle_failures_total") for e in envs) >= 1
        assert fleet.recovered() >= 2
        conflicts = []
        for e in envs:
            lines = [line for line in e.log().splitlines() if "wasm log" in line]
            conflicts += ["\n".join(lines[max(0, i - 12):i + 1]) for i, line in enumerate(lines) if "another claim" in line]
        assert sum(e.counter("meshward_fleet_settle_conflicts_total") for e in envs) == 0, conflicts
