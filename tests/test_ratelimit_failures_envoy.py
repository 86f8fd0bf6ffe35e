"""Failure-based rate limits (`counts: failures`) in the real Envoy, separate modules and the
bundle: only answers with the rule's statuses spend a key's budget, whether the service or a
meshward stage refused; once spent, the key is refused (429) on arrival, before the JWT
signature check or the service runs. Keys by client address, by header, by subject."""
from __future__ import annotations

from http.server import BaseHTTPRequestHandler

import pytest

from harness import FORMS, Envoy, as_deployed, build_config, http_server, plugin, static_cluster
from test_jwt_envoy import jwt_config
from tokens import KeyRing, bearer


class Service(BaseHTTPRequestHandler):
    """Answers with the status the test asks for (`x-answer`, default 200) and counts what
    reached it, per path."""

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.answer()

    def answer(self):
        with self.server.lock:
            self.server.reached[self.path] = self.server.reached.get(self.path, 0) + 1
        status = int(self.headers.get("x-answer", "200"))
        self.send_response(status)
        self.send_header("x-from-service", "1")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def failure_rule(name: str, prefix: str, key: list[str], requests: int = 3, **extra) -> dict:
    return {"name": name, "match": {"prefix": prefix}, "key": key, "counts": "failures", "limit": {"requests": requests, "per": "60s"}, **extra}


# Before the JWT stage: refusals come before any signature check; keys cannot name the principal.
BEFORE_JWT = {"rules": [
    failure_rule("login", "/login", ["client_ip"]),
    failure_rule("api", "/api/", ["header:x-client"]),
    failure_rule("otp", "/otp", ["header:x-client"], failure_statuses=[401, 403, 422]),
]}
# After it: per subject, counting what the service refuses (an object-id enumeration).
AFTER_JWT = {"rules": [failure_rule("probing", "/objects/", ["subject"], failure_statuses=[403, 404])]}


def jwt_stage(keys):
    config = jwt_config(keys)
    config["rules"] = [{"match": {"prefix": "/login"}}, {"match": {"prefix": "/otp"}}, {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    return plugin("jwt", config)


@pytest.fixture(scope="module")
def service():
    server = http_server(Service, reached={})
    yield server
    server.shutdown()


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, service, keys):
    plugins = [plugin("ratelimit", BEFORE_JWT), jwt_stage(keys)]
    with Envoy(build_config(service.server_address[1], as_deployed(request.param, plugins)), concurrency=2) as env:
        yield env
    env.cleanup()


@pytest.fixture(scope="module", params=FORMS)
def envoy_after_jwt(request, service, keys):
    plugins = [jwt_stage(keys), plugin("ratelimit", AFTER_JWT)]
    with Envoy(build_config(service.server_address[1], as_deployed(request.param, plugins)), concurrency=2) as env:
        yield env
    env.cleanup()


def reached(service, path: str) -> int:
    with service.lock:
        return service.reached.get(path, 0)


def from_service(r) -> bool:
    return r.header("x-from-service") == "1"


def test_failed_logins_lock_the_client_address_out_before_the_service(envoy, service):
    path = f"/login?envoy={envoy.port}"
    for _ in range(3):
        r = envoy.request(path, {"x-answer": "401"}, method="POST", body=b"{}")
        assert r.status == 401 and from_service(r), r
    # The right password now: refused on arrival, the service never sees it.
    locked = envoy.request(path, {"x-answer": "200"}, method="POST", body=b"{}")
    assert locked.status == 429 and locked.reason == "rate_limited", locked
    assert not from_service(locked)
    assert 1 <= int(locked.header("retry-after")) <= 20
    assert reached(service, path) == 3
    assert envoy.counter_reaches("meshward_ratelimit_failures_counted_total", 3) >= 3


def test_successes_and_other_statuses_do_not_spend_the_budget(envoy):
    client = {"x-client": "otp-patient"}
    for status in ["200"] * 6 + ["404", "500", "429"] * 2:
        assert envoy.request("/otp", {**client, "x-answer": status}).status == int(status)
    for status in ["422", "403"]:
        assert envoy.request("/otp", {**client, "x-answer": status}).status == int(status)
    # Two failures so far: a third is still answered (and counted), the next is refused.
    assert envoy.request("/otp", {**client, "x-answer": "401"}).status == 401
    assert envoy.request("/otp", {**client, "x-answer": "200"}).status == 429
    # Another client is not affected.
    assert envoy.request("/otp", {"x-client": "otp-other", "x-answer": "200"}).status == 200


def test_forged_tokens_lock_the_client_out_before_the_signature_check(envoy, keys):
    forger = {"x-client": "forger"}
    valid = bearer(keys.token("RS256", sub="alice"))
    for _ in range(3):
        forged = bearer(KeyRing().token("RS256", kid=keys.kid("RS256")))
        r = envoy.request("/api/orders", {**forger, **forged})
        assert (r.status, r.reason) == (401, "bad_signature") and not from_service(r), r
    # The JWT stage's own 401s counted: even a valid token is refused now, before it is checked.
    r = envoy.request("/api/orders", {**forger, **valid})
    assert (r.status, r.reason) == (429, "rate_limited") and not from_service(r), r
    assert envoy.request("/api/orders", {"x-client": "honest", **valid}).status == 200


def test_a_subject_probing_other_objects_is_locked_out(envoy_after_jwt, keys):
    mallory, alice = bearer(keys.token("ES256", sub="mallory")), bearer(keys.token("ES256", sub="alice-owner"))
    for n in range(3):
        r = envoy_after_jwt.request(f"/objects/{n}", {**mallory, "x-answer": "404" if n % 2 else "403"})
        assert r.status in (403, 404) and from_service(r), r
    r = envoy_after_jwt.request("/objects/mine", {**mallory, "x-answer": "200"})
    assert (r.status, r.reason) == (429, "rate_limited") and not from_service(r), r
    assert envoy_after_jwt.request("/objects/mine", {**alice, "x-answer": "200"}).status == 200
    # Refused by the JWT stage before this one: the request never reached the rule, nothing is
    # counted (in both forms alike, though the refusal passes this module's response callbacks).
    counted = envoy_after_jwt.counter("meshward_ratelimit_failures_counted_total")
    assert counted == 3
    for _ in range(4):
        assert envoy_after_jwt.request("/objects/x", {"authorization": "Bearer nope", "x-answer": "403"}).status == 401
    assert envoy_after_jwt.counter("meshward_ratelimit_failures_counted_total") == counted
