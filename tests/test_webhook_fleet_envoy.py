"""Webhook replay protection across replicas: two Envoys (each with meshward_webhook.wasm, or the
bundle) share one seen-set in the fleet engine (`meshward-fleet`) on one Redis, all started here.
Deliveries are signed by the senders' own libraries; the receiver behind both replicas counts
what reached it and answers as scripted (accept, fail, be slow)."""
from __future__ import annotations

import concurrent.futures
import hashlib
import time
from http.server import BaseHTTPRequestHandler

import pytest

from fleet import FleetEngine, RedisServer
from harness import FORMS, Envoy, as_deployed, build_config, http_server, plugin, static_cluster
from test_webhook_envoy import (
    STRIPE_SECRET, assert_denied, github_headers, payload, post, standard, stripe_headers, webhook_config,
)


class Receiver(BaseHTTPRequestHandler):
    """The service behind both replicas: records each delivery that reaches it (request headers
    wait for the filter's decision, so a refused one never does) by its body digest, answers with
    the next scripted status (200 when the script is empty), after `delay` seconds."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        server = self.server
        with server.lock:
            server.seen.append(hashlib.sha256(body).hexdigest())
            status = server.script.pop(0) if server.script else 200
        time.sleep(server.delay)
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def receiver():
    server = http_server(Receiver, seen=[], script=[], delay=0.0)
    yield server
    server.shutdown()


def times_received(receiver, body: bytes) -> int:
    return receiver.seen.count(hashlib.sha256(body).hexdigest())


def fleet_webhook_config(failure_mode="deny") -> dict:
    cfg = webhook_config()
    cfg["fleet"] = {"cluster": "fleet", "namespace": "payments", "timeout": "1s", "failure_mode": failure_mode}
    return cfg


def replica(receiver, engine_port: int, form: str, failure_mode="deny") -> Envoy:
    plugins = as_deployed(form, [plugin("webhook", fleet_webhook_config(failure_mode), env={"STRIPE_WEBHOOK_SECRET": STRIPE_SECRET})])
    cfg = build_config(receiver.server_address[1], plugins, clusters=[static_cluster("fleet", engine_port, http2=True)])
    return Envoy(cfg, concurrency=2)


@pytest.fixture(scope="module", params=FORMS)
def fleet(request, receiver):
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port)
    a, b = replica(receiver, engine.port, request.param), replica(receiver, engine.port, request.param)
    a.start()
    b.start()
    yield a, b, redis_server, engine
    for thing in (a, b, engine, redis_server):
        thing.stop()
    a.cleanup()
    b.cleanup()


@pytest.fixture(autouse=True)
def fresh_script(receiver):
    receiver.script.clear()
    receiver.delay = 0.0


SENDERS = [("/hooks/standard", standard), ("/hooks/stripe", stripe_headers), ("/hooks/github", github_headers)]


@pytest.mark.parametrize("path,sign", SENDERS)
def test_accepted_by_one_replica_replayed_to_the_other_is_refused(fleet, receiver, path, sign):
    a, b, *_ = fleet
    body = payload()
    h = sign(body)
    assert post(a, path, h, body).status == 200
    assert_denied(post(b, path, h, body), 401, "replayed")
    assert_denied(post(a, path, h, body), 401, "replayed")
    assert times_received(receiver, body) == 1


def test_a_replay_dressed_as_a_new_delivery_is_refused(fleet, receiver):
    a, b, *_ = fleet
    # GitHub: a fresh, unsigned X-GitHub-Delivery.
    body = payload()
    assert post(a, "/hooks/github", github_headers(body, delivery="first"), body).status == 200
    assert_denied(post(b, "/hooks/github", github_headers(body, delivery="brand-new"), body), 401, "replayed")
    # Stripe: the same signature again, after a bogus one, in another order, in upper case.
    body = payload()
    h = stripe_headers(body)
    assert post(a, "/hooks/stripe", h, body).status == 200
    t, v1 = (dict(item.split("=", 1) for item in h["stripe-signature"].split(",")))["t"], h["stripe-signature"].split("v1=")[1]
    for header in (f"t={t},v1={'0' * 64},v1={v1}", f"v1={v1},t={t}", f"t={t},v1={v1.upper()}"):
        assert_denied(post(b, "/hooks/stripe", {**h, "stripe-signature": header}, body), 401, "replayed")
    assert times_received(receiver, body) == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_delivery_the_service_failed_passes_on_redelivery_to_the_other_replica(fleet, receiver, status):
    a, b, *_ = fleet
    body = payload()
    h = standard(body)
    receiver.script.append(status)
    assert post(a, "/hooks/standard", h, body).status == status
    assert post(b, "/hooks/standard", h, body).status == 200, "the sender's retry goes through"
    assert_denied(post(a, "/hooks/standard", h, body), 401, "replayed")
    assert times_received(receiver, body) == 2


def test_concurrent_duplicates_across_replicas_reach_the_service_once(fleet, receiver):
    a, b, *_ = fleet
    receiver.delay = 0.5
    body = payload()
    h = standard(body)
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda i: post((a, b)[i % 2], "/hooks/standard", h, body), range(12)))
    assert times_received(receiver, body) == 1
    assert sum(r.status == 200 for r in results) == 1, [r.status for r in results]
    refused = [r for r in results if r.status != 200]
    assert all((r.status, r.reason) in ((409, "in_flight"), (401, "replayed")) for r in refused), [(r.status, r.reason) for r in refused]
    assert any(r.status == 409 and 1 <= int(r.header("retry-after")) <= 60 for r in refused)


def test_engine_down_refuses_with_retry_after_or_passes_when_allowed(receiver):
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port)
    engine.stop()  # its port is known, nothing answers
    try:
        for mode in ("deny", "allow"):
            env = replica(receiver, engine.port, "separate", failure_mode=mode)
            with env:
                body = payload()
                h = standard(body)
                r = post(env, "/hooks/standard", h, body)
                if mode == "deny":
                    assert_denied(r, 503, "replay_service_unavailable")
                    assert r.header("retry-after") == "5"
                    assert times_received(receiver, body) == 0
                else:
                    assert r.status == 200
                    # This sidecar's own seen-set still stands as the first line.
                    assert_denied(post(env, "/hooks/standard", h, body), 401, "replayed")
                    assert times_received(receiver, body) == 1
                assert env.counter("meshward_webhook_replay_service_failures_total") == 1
            env.cleanup()
    finally:
        redis_server.stop()
