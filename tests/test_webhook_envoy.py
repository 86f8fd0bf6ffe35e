"""meshward_webhook.wasm in the real Envoy, with deliveries signed by the senders' own libraries:
standardwebhooks (Standard Webhooks / Svix), stripe, githubkit."""
from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import time
from datetime import datetime, timezone

import pytest
import standardwebhooks
import stripe
from cryptography.hazmat.primitives.asymmetric import ed25519
from githubkit.webhooks import sign as github_sign

from harness import FORMS, Envoy, as_deployed, build_config, plugin

SW_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
SW_OLD_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
STRIPE_SECRET = "whsec_" + os.urandom(16).hex()
GITHUB_SECRET = "github-" + os.urandom(16).hex()
ED_KEY = ed25519.Ed25519PrivateKey.generate()
ED_PUBLIC = "whpk_" + base64.b64encode(ED_KEY.public_key().public_bytes_raw()).decode()


def webhook_config(mode: str = "enforce") -> dict:
    def endpoint(name, path, scheme, secrets, **extra):
        return {"name": name, "match": {"path": path}, "scheme": scheme, "secrets": secrets, **extra}

    return {
        "mode": mode,
        "endpoints": [
            # Rotation: the new secret first, the old one still accepted.
            endpoint("svix", "/hooks/standard", "standard_webhooks", [{"inline_string": SW_SECRET}, {"inline_string": SW_OLD_SECRET}], max_body_bytes=4096),
            endpoint("signed", "/hooks/ed25519", "standard_webhooks", [{"inline_string": ED_PUBLIC}]),
            endpoint("stripe", "/hooks/stripe", "stripe", [{"environment_variable": "STRIPE_WEBHOOK_SECRET"}]),
            endpoint("github", "/hooks/github", "github", [{"inline_string": GITHUB_SECRET}]),
        ],
        "unmatched": "allow",
    }


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, upstream):
    cfg = build_config(upstream.port, as_deployed(request.param, [plugin("webhook", webhook_config(), env={"STRIPE_WEBHOOK_SECRET": STRIPE_SECRET})]))
    with Envoy(cfg, concurrency=2) as env:
        yield env
    env.cleanup()


def standard(payload: bytes, secret: str = SW_SECRET, msg_id: str | None = None, ts: float | None = None) -> dict:
    msg_id = msg_id or "msg_" + os.urandom(8).hex()
    when = datetime.fromtimestamp(ts if ts is not None else time.time(), tz=timezone.utc)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, when, payload.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(when.timestamp())), "webhook-signature": signature, "content-type": "application/json"}


def stripe_headers(payload: bytes, ts: int | None = None, secret: str = STRIPE_SECRET) -> dict:
    header = stripe.WebhookSignature.generate_signature_header(payload.decode(), secret, timestamp=ts if ts is not None else int(time.time()))
    return {"stripe-signature": header, "content-type": "application/json"}


def github_headers(payload: bytes, delivery: str | None = None, secret: str = GITHUB_SECRET) -> dict:
    return {"x-hub-signature-256": github_sign(secret, payload), "x-github-delivery": delivery or os.urandom(8).hex(), "x-github-event": "push"}


def payload(**fields) -> bytes:
    # Deliberately unusual bytes: spacing, unicode, trailing newline must survive unchanged.
    return (json.dumps({"type": "invoice.paid", "id": os.urandom(6).hex(), "note": "caf\u00e9 \u2713", **fields}, indent=1) + "\n").encode()


def post(envoy, path, headers, body):
    return envoy.request(path, headers, method="POST", body=body)


def assert_delivered(r, body: bytes):
    assert r.reached_upstream, r
    assert r.json()["body"].encode() == body, "the body must reach the upstream byte-identical"


def assert_denied(r, status: int, reason: str):
    assert r.status == status and r.reason == reason, r
    assert not r.reached_upstream


def test_standard_webhooks_delivery(envoy):
    body = payload()
    assert_delivered(post(envoy, "/hooks/standard", standard(body), body), body)


def test_standard_webhooks_rotated_secret_still_accepted(envoy):
    body = payload()
    assert_delivered(post(envoy, "/hooks/standard", standard(body, secret=SW_OLD_SECRET), body), body)


def test_standard_webhooks_svix_header_names(envoy):
    body = payload()
    h = {k.replace("webhook-", "svix-"): v for k, v in standard(body).items()}
    assert_delivered(post(envoy, "/hooks/standard", h, body), body)


def test_standard_webhooks_ed25519(envoy):
    body = payload()
    msg_id, ts = "msg_" + os.urandom(8).hex(), str(int(time.time()))
    sig = base64.b64encode(ED_KEY.sign(f"{msg_id}.{ts}.".encode() + body)).decode()
    h = {"webhook-id": msg_id, "webhook-timestamp": ts, "webhook-signature": f"v1a,{sig}"}
    assert_delivered(post(envoy, "/hooks/ed25519", h, body), body)
    h["webhook-id"] = "msg_" + os.urandom(8).hex()
    assert_denied(post(envoy, "/hooks/ed25519", h, body), 401, "bad_signature")


def test_stripe_delivery(envoy):
    body = payload()
    assert_delivered(post(envoy, "/hooks/stripe", stripe_headers(body), body), body)


def test_github_delivery(envoy):
    body = payload()
    assert_delivered(post(envoy, "/hooks/github", github_headers(body), body), body)


@pytest.mark.parametrize("path,sign", [("/hooks/standard", standard), ("/hooks/stripe", stripe_headers), ("/hooks/github", github_headers)])
def test_tampered_body(envoy, path, sign):
    body = payload(amount=100)
    assert_denied(post(envoy, path, sign(body), payload(amount=100_000)), 401, "bad_signature")


def test_wrong_secret(envoy):
    body = payload()
    wrong_sw = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    assert_denied(post(envoy, "/hooks/standard", standard(body, secret=wrong_sw), body), 401, "bad_signature")
    assert_denied(post(envoy, "/hooks/stripe", stripe_headers(body, secret="whsec_wrong_wrong_wrong"), body), 401, "bad_signature")
    assert_denied(post(envoy, "/hooks/github", github_headers(body, secret="wrong-wrong-wrong-wrong"), body), 401, "bad_signature")


def test_stale_and_future_timestamps(envoy):
    body = payload()
    now = time.time()
    for ts in (now - 400, now + 400):
        assert_denied(post(envoy, "/hooks/standard", standard(body, ts=ts), body), 401, "timestamp_out_of_window")
        assert_denied(post(envoy, "/hooks/stripe", stripe_headers(body, ts=int(ts)), body), 401, "timestamp_out_of_window")
    # Inside the window, either direction.
    assert_delivered(post(envoy, "/hooks/standard", standard(body, ts=now - 200), body), body)
    assert_delivered(post(envoy, "/hooks/stripe", stripe_headers(body, ts=int(now + 200)), body), body)


def test_missing_headers(envoy):
    body = payload()
    for path in ("/hooks/standard", "/hooks/stripe", "/hooks/github"):
        assert_denied(post(envoy, path, {"content-type": "application/json"}, body), 401, "missing_signature")
    h = standard(body)
    del h["webhook-id"]
    assert_denied(post(envoy, "/hooks/standard", h, body), 401, "missing_signature")
    # X-GitHub-Delivery is not signed: neither required nor trusted as the replay key.
    h = github_headers(body)
    del h["x-github-delivery"]
    assert_delivered(post(envoy, "/hooks/github", h, body), body)
    assert_denied(post(envoy, "/hooks/github", github_headers(body), body), 401, "replayed")


@pytest.mark.parametrize("path,sign", [("/hooks/standard", standard), ("/hooks/stripe", stripe_headers), ("/hooks/github", github_headers)])
def test_replayed_delivery(envoy, path, sign):
    body = payload()
    h = sign(body)
    assert_delivered(post(envoy, path, h, body), body)
    assert_denied(post(envoy, path, h, body), 401, "replayed")


def test_replay_race_across_workers_admits_exactly_one(envoy):
    body = payload()
    h = github_headers(body)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: post(envoy, "/hooks/github", h, body), range(32)))
    assert sum(r.reached_upstream for r in results) == 1, [r.status for r in results]
    # While the first is being answered a copy is in flight (409), after it a replay (401).
    refused = [r for r in results if not r.reached_upstream]
    assert all((r.status, r.reason) in ((409, "in_flight"), (401, "replayed")) for r in refused), [(r.status, r.reason) for r in refused]
    assert all(int(r.header("retry-after")) >= 1 for r in refused if r.status == 409)


def test_body_over_limit(envoy):
    body = payload(pad="x" * 5000)
    assert_denied(post(envoy, "/hooks/standard", standard(body), body), 413, "body_too_large")


def test_chunked_body_split_into_pieces_arrives_intact(envoy):
    body = payload(items=list(range(200)))
    h = standard(body)
    conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
    chunks = [body[i:i + 7] for i in range(0, len(body), 7)]
    conn.request("POST", "/hooks/standard", body=iter(chunks), headers=h, encode_chunked=True)
    r = conn.getresponse()
    echoed = json.loads(r.read())
    conn.close()
    assert r.status == 200 and echoed["body"].encode() == body


def test_unmatched_routes_follow_the_unmatched_setting(envoy):
    assert envoy.request("/health").reached_upstream


def test_metrics_and_no_secrets_in_logs(envoy):
    body = payload()
    post(envoy, "/hooks/github", github_headers(body, secret="wrong-wrong-wrong-wrong"), body)
    assert envoy.counter("meshward_webhook_denied_total.route.github.reason.bad_signature") >= 1
    prom = envoy.prometheus()
    assert 'meshward_webhook_denied_total{route="github",reason="bad_signature"}' in prom or \
        'meshward_webhook_denied_total{reason="bad_signature",route="github"}' in prom, prom
    log = envoy.log()
    # The denial's log line names the endpoint (`endpoints[].name`).
    line = envoy.wait_for_log(r'meshward_webhook: \{[^\n]*"bad_signature"[^\n]*"github"[^\n]*').group(0)
    assert json.loads(line.split(": ", 1)[1])["route"] == "github", line
    for secret in (SW_SECRET, SW_OLD_SECRET, STRIPE_SECRET, GITHUB_SECRET):
        assert secret not in log and secret.removeprefix("whsec_") not in log


def test_shadow_mode_forwards_and_counts(upstream):
    cfg = build_config(upstream.port, [plugin("webhook", webhook_config("shadow"), env={"STRIPE_WEBHOOK_SECRET": STRIPE_SECRET})])
    with Envoy(cfg, concurrency=1) as env:
        body = payload()
        r = post(env, "/hooks/github", github_headers(body, secret="wrong-wrong-wrong-wrong"), body)
        assert_delivered(r, body)
        assert env.counter("meshward_webhook_shadow_denied_total.route.github.reason.bad_signature") == 1
    env.cleanup()
