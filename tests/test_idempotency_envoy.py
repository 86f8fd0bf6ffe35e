"""Idempotency keys across replicas: two Envoys (meshward_jwt + meshward_idempotency modules, or
the bundle) share one key store in the fleet engine (`meshward-fleet`) on one Redis, all started
here. The shop behind both replicas counts every order that reaches it and answers as scripted;
clients are Python's http.client and httpx over HTTP/2."""
from __future__ import annotations

import concurrent.futures
import itertools
import json
import time
import uuid
from http.server import BaseHTTPRequestHandler

import httpx
import pytest

from fleet import FleetEngine, RedisServer
from harness import FORMS, Envoy, as_deployed, build_config, http_server, plugin, static_cluster
from test_jwt_envoy import jwt_config
from test_held_headers_envoy import EarlyAnswer
from tokens import bearer

EXPIRY_SECONDS = 4


class Shop(BaseHTTPRequestHandler):
    """The service: each POST that reaches it is an order (counted per idempotency key; request
    headers wait for the filter's decision, so a refused request never arrives); it
    answers 201 with the order's number and owner, or the next scripted (status, padding size,
    owner)."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        server = self.server
        with server.lock:
            key = self.headers.get("idempotency-key", "")
            server.orders.setdefault(key, []).append(body)
            number = next(server.numbers)
            status, size, owner = server.script.pop(0) if server.script else (201, 0, "alice")
        time.sleep(server.delay)
        answer = json.dumps({"order": number, "owner": owner, "padding": "x" * size}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("location", f"/orders/{number}")
        self.send_header("set-cookie", "session=secret")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def shop():
    server = http_server(Shop, orders={}, script=[], delay=0.0, numbers=itertools.count(1))
    yield server
    server.shutdown()


@pytest.fixture(autouse=True)
def fresh_script(shop):
    shop.script.clear()
    shop.delay = 0.0


def idempotency_config(failure_mode="deny", mode="enforce") -> dict:
    return {
        "mode": mode,
        "operations": [
            {"name": "create-order", "match": {"prefix": "/orders", "methods": ["POST"]}},
        ],
        "expiry": f"{EXPIRY_SECONDS}s",
        "in_flight_seconds": 30,
        "max_answer_bytes": 4096,
        "fleet": {"cluster": "fleet", "namespace": "shop", "timeout": "1s", "failure_mode": failure_mode},
    }


def replica(keys, shop, engine_port: int, form: str, failure_mode="deny", mode="enforce") -> Envoy:
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    # After the key is claimed (on the body), a later stage may still refuse on the body: that
    # answer is not the service's.
    ownership = {"rules": [
        {"name": "own-orders", "match": {"prefix": "/orders/for", "methods": ["POST"]}, "owner": [{"body_field": "/customer", "claim": "sub"}]},
        {"name": "own-answers", "match": {"prefix": "/orders/claim", "methods": ["POST"]}, "owner": [{"response_field": "/owner", "claim": "sub"}]},
        {"name": "all", "match": {"prefix": "/"}},
    ]}
    plugins = as_deployed(form, [plugin("jwt", jwt), plugin("idempotency", idempotency_config(failure_mode, mode)), plugin("ownership", ownership)])
    return Envoy(build_config(shop.server_address[1], plugins, clusters=[static_cluster("fleet", engine_port, http2=True)]), concurrency=2)


@pytest.fixture(scope="module", params=FORMS)
def fleet(request, keys, shop):
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port)
    a, b = replica(keys, shop, engine.port, request.param), replica(keys, shop, engine.port, request.param)
    a.start()
    b.start()
    yield a, b
    for thing in (a, b, engine, redis_server):
        thing.stop()
    a.cleanup()
    b.cleanup()


def order(env, keys, key: str | None, body: bytes = b'{"product": 1, "quantity": 2}', path="/orders", sub="alice"):
    headers = {**bearer(keys.token("ES256", sub=sub)), "content-type": "application/json"}
    if key is not None:
        headers["idempotency-key"] = key
    return env.request(path, headers, "POST", body)


def orders_for(shop, key: str) -> int:
    return len(shop.orders.get(key, []))


def test_a_retry_to_the_other_replica_gets_the_first_answer(fleet, keys, shop):
    a, b = fleet
    key = str(uuid.uuid4())
    first = order(a, keys, key)
    assert first.status == 201 and first.header("idempotent-replayed") is None, first
    for replica_ in (b, a):
        again = order(replica_, keys, key)
        assert (again.status, again.body) == (201, first.body), again
        assert again.header("idempotent-replayed") == "true"
        assert again.header("location") == first.header("location")
        assert again.header("set-cookie") is None, "credentials are never stored"
    # The structured-field form of the same key, over HTTP/2 to the other replica: the same key.
    token = keys.token("ES256", sub="alice")
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        r = client.post(f"http://127.0.0.1:{b.port}/orders", content=b'{"product": 1, "quantity": 2}',
                        headers={"authorization": f"Bearer {token}", "content-type": "application/json", "idempotency-key": f'"{key}"'})
    assert (r.status_code, r.content, r.headers.get("idempotent-replayed")) == (201, first.body, "true")
    assert orders_for(shop, key) == 1


def test_keys_belong_to_their_caller(fleet, keys, shop):
    a, b = fleet
    key = str(uuid.uuid4())
    alice = order(a, keys, key, sub="alice")
    bob = order(b, keys, key, sub="bob")
    assert alice.status == bob.status == 201 and alice.body != bob.body
    assert bob.header("idempotent-replayed") is None
    assert orders_for(shop, key) == 2


def test_a_key_reused_for_another_request_is_refused(fleet, keys, shop):
    a, b = fleet
    key = str(uuid.uuid4())
    assert order(a, keys, key).status == 201
    for r in (order(b, keys, key, body=b'{"product": 1, "quantity": 200}'), order(a, keys, key, path="/orders?dry_run=1")):
        assert (r.status, r.reason) == (422, "idempotency_key_reused"), r
    assert orders_for(shop, key) == 1


def test_requests_without_a_usable_key_or_caller_are_refused(fleet, keys, shop):
    a, _ = fleet
    r = order(a, keys, None)
    assert (r.status, r.reason) == (400, "idempotency_key_missing"), r
    assert "Idempotency-Key" in r.json()["error"]
    r = order(a, keys, "not a key")
    assert (r.status, r.reason) == (400, "idempotency_key_invalid"), r
    r = a.request("/orders", {"idempotency-key": "k", "content-type": "application/json"}, "POST", b"{}")
    assert r.status == 401, r
    assert orders_for(shop, "k") == orders_for(shop, "not a key") == 0
    # Reads need no key.
    assert a.request("/orders", bearer(keys.token("ES256"))).status == 200


def test_concurrent_duplicates_across_replicas_reach_the_service_once(fleet, keys, shop):
    a, b = fleet
    shop.delay = 0.5
    key = str(uuid.uuid4())
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: order((a, b)[i % 2], keys, key), range(8)))
    statuses = sorted(r.status for r in results)
    assert orders_for(shop, key) == 1, statuses
    assert set(statuses) <= {201, 409} and statuses.count(409) >= 1, statuses
    for r in results:
        if r.status == 409:
            assert r.reason == "idempotency_key_in_flight" and int(r.header("retry-after")) >= 1, r
    # Once answered, a retry gets the answer.
    again = order(b, keys, key)
    assert (again.status, again.header("idempotent-replayed")) == (201, "true")
    assert orders_for(shop, key) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_a_failed_answer_is_not_stored(fleet, keys, shop, status):
    a, b = fleet
    key = str(uuid.uuid4())
    shop.script.append((status, 0, "alice"))
    assert order(a, keys, key).status == status
    retried = order(b, keys, key)
    assert retried.status == 201 and retried.header("idempotent-replayed") is None, "the retry runs"
    assert order(a, keys, key).header("idempotent-replayed") == "true"
    assert orders_for(shop, key) == 2


def test_an_answer_too_large_to_store_is_not_stored(fleet, keys, shop):
    a, b = fleet
    key = str(uuid.uuid4())
    shop.script.append((201, 8000, "alice"))
    first = order(a, keys, key)
    assert first.status == 201 and len(first.body) > 8000, "it reaches the client whole"
    # The release is sent as the body streams on; the retry runs once it has landed.
    deadline = time.monotonic() + 5
    while (r := order(b, keys, key)).status == 409 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status == 201 and r.header("idempotent-replayed") is None, r
    assert orders_for(shop, key) == 2


def test_a_later_stages_refusal_is_not_stored(fleet, keys, shop):
    a, b = fleet
    key = str(uuid.uuid4())
    refused = order(a, keys, key, body=b'{"customer": "bob"}', path="/orders/for")
    assert (refused.status, refused.reason) == (403, "not_owner"), refused
    # Corrected, the same key runs: the refusal was neither stored nor left in flight.
    corrected = order(b, keys, key, body=b'{"customer": "alice"}', path="/orders/for")
    assert corrected.status == 201 and corrected.header("idempotent-replayed") is None, corrected
    assert orders_for(shop, key) == 1


def test_an_answer_a_later_stage_withheld_is_never_replayed(fleet, keys, shop):
    """The answer stored is the one the client got: stages see the response in reverse order (as
    Envoy's encoders run), so the idempotency stage copies it only after ownership let it pass."""
    a, b = fleet
    key = str(uuid.uuid4())
    shop.script.append((201, 0, "bob"))
    withheld = order(a, keys, key, path="/orders/claim")
    assert withheld.reset or withheld.status != 201 or b"bob" not in withheld.body, withheld
    # The service ran it, so the key is not released either: the retry waits, it is not replayed.
    retry = order(b, keys, key, path="/orders/claim")
    assert (retry.status, retry.reason) == (409, "idempotency_key_in_flight"), retry
    assert b"bob" not in retry.body
    assert orders_for(shop, key) == 1


def test_a_stored_answer_expires(fleet, keys, shop):
    a, b = fleet
    key = str(uuid.uuid4())
    assert order(a, keys, key).status == 201
    assert order(b, keys, key).header("idempotent-replayed") == "true"
    time.sleep(EXPIRY_SECONDS + 0.5)
    r = order(b, keys, key)
    assert r.status == 201 and r.header("idempotent-replayed") is None, "after expiry the key is new"
    assert orders_for(shop, key) == 2


@pytest.mark.parametrize("form", FORMS)
def test_a_service_that_answers_before_reading_the_body_runs_each_key_once(keys, form):
    """Request headers wait for the claim (as `meshward render` deploys the filter): a service
    that acts on headers alone never sees a duplicate."""
    server = http_server(EarlyAnswer, arrived=[])
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port)
    try:
        with Envoy(replica(keys, server, engine.port, form).config) as env:
            key = str(uuid.uuid4())
            answers = [order(env, keys, key) for _ in range(5)]
            assert [r.status for r in answers] == [200] * 5, answers
            assert [r.header("idempotent-replayed") for r in answers] == [None] + ["true"] * 4
            assert server.arrived == ["/orders"], server.arrived
        env.cleanup()
    finally:
        engine.stop()
        redis_server.stop()
        server.shutdown()


def test_shadow_mode_counts_and_lets_everything_through(keys, shop):
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port)
    try:
        with Envoy(replica(keys, shop, engine.port, "bundle", mode="shadow").config) as env:
            key = str(uuid.uuid4())
            answers = [order(env, keys, key) for _ in range(3)] + [order(env, keys, key, body=b'{"product": 2}')]
            assert [r.status for r in answers] == [201] * 4 and all(r.header("idempotent-replayed") is None for r in answers)
            assert orders_for(shop, key) == 4, "shadow: every request reaches the service"
            assert order(env, keys, None).status == 201
            assert env.counter_reaches("wasmcustom.meshward_idempotency_replays_total", 2) == 2
            assert env.counter("wasmcustom.meshward_idempotency_shadow_denied_total.route.create-order.reason.idempotency_key_reused") == 1
            assert env.counter("wasmcustom.meshward_idempotency_shadow_denied_total.route.create-order.reason.idempotency_key_missing") == 1
        env.cleanup()
    finally:
        engine.stop()
        redis_server.stop()


@pytest.mark.parametrize("failure_mode", ["deny", "allow"])
def test_the_engine_down_follows_the_failure_mode(keys, shop, failure_mode):
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port)
    with Envoy(replica(keys, shop, engine.port, "bundle", failure_mode).config) as env:
        key = str(uuid.uuid4())
        assert order(env, keys, key).status == 201
        engine.stop()
        r = order(env, keys, key)
        if failure_mode == "deny":
            assert (r.status, r.reason, r.header("retry-after")) == (503, "idempotency_service_unavailable", "5"), r
            assert orders_for(shop, key) == 1
        else:
            assert r.status == 201 and r.header("idempotent-replayed") is None
            assert orders_for(shop, key) == 2
        assert env.counter("meshward_idempotency_service_failures_total") >= 1
    env.cleanup()
    redis_server.stop()


def test_a_stored_answer_that_cannot_be_read_is_refused_not_run_again(keys, shop):
    redis_server = RedisServer()
    engine = FleetEngine(redis_server.port)
    try:
        with Envoy(replica(keys, shop, engine.port, "bundle").config) as env:
            key = str(uuid.uuid4())
            assert order(env, keys, key).status == 201
            client = redis_server.client()
            stored = client.keys("meshward:seen:shop/idempotency/create-order/*")
            assert len(stored) == 1, stored
            client.hset(stored[0], "record", b"\xff\xff not an answer")
            r = order(env, keys, key)
            assert (r.status, r.reason) == (503, "stored_answer_unreadable"), r
            assert orders_for(shop, key) == 1, "refused, never run a second time"
        env.cleanup()
    finally:
        engine.stop()
        redis_server.stop()
