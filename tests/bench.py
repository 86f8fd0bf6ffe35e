"""`make bench`: what each meshward filter adds to a request through the real Envoy, measured
side by side in ONE run against plain Envoy and Envoy's closest native filter.

Envoy runs with one worker (--concurrency 1) in front of a fast upstream (a second Envoy that
answers from memory with direct_response), driven by wrk over loopback. The measured Envoy has
the first core to itself; wrk and the upstream share the rest. Every scenario's Envoy is started
first, then the rounds interleave short runs of all of them and each reports its median round.
Absolute numbers on a shared machine are noisy; the ratios in the same run are what to read.

    python tests/bench.py [--duration 3] [--rounds 5] [--only REGEX] [--connections 32] [--json bench-results.json]
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures
import gzip
import hashlib
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import standardwebhooks  # noqa: E402

from fleet import FleetEngine, RedisServer  # noqa: E402
from harness import DIST, REPO, TEST_MODULES, Envoy, audit_access_log, bundle, build_config, plugin, static_cluster  # noqa: E402
from test_workload_envoy import BILLING, caller_config, make_pki, with_tls_listener  # noqa: E402
from tokens import AUDIENCE, ISSUER, KeyRing  # noqa: E402


def upstream_config() -> dict:
    """An Envoy that answers every request itself: the fastest upstream there is."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "fast",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "fast",
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                        {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "{\"ok\":true}"}}}]}]},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                },
            }]}],
        }]},
    }


def jwt_authn(keys: KeyRing, families, cache: bool = True, payload_in_metadata: str | None = None) -> dict:
    provider = {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline_string": json.dumps(keys.jwks(families))}}
    if payload_in_metadata:
        provider["payload_in_metadata"] = payload_in_metadata
    if cache:
        # The same verified-token cache meshward has on by default, so both skip repeat work.
        # Without `jwt_cache_config` Envoy verifies every request (its default).
        provider["jwt_cache_config"] = {"jwt_cache_size": 1024}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"main": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}],
        },
    }


def local_ratelimit() -> dict:
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": {"max_tokens": 1000000000, "tokens_per_fill": 1000000000, "fill_interval": "1s"},
            "filter_enabled": {"runtime_key": "rl_enabled", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            "filter_enforced": {"runtime_key": "rl_enforced", "default_value": {"numerator": 100, "denominator": "HUNDRED"}},
        },
    }


# CEL, as Envoy's RBAC takes it: a parsed expression tree (google.api.expr.v1alpha1.Expr).
def _cel(node: dict) -> dict:
    _cel.ids += 1
    return {"id": _cel.ids, **node}


_cel.ids = 0
cel_text = lambda s: _cel({"const_expr": {"string_value": s}})  # noqa: E731
cel_ident = lambda name: _cel({"ident_expr": {"name": name}})  # noqa: E731
cel_field = lambda operand, field: _cel({"select_expr": {"operand": operand, "field": field}})  # noqa: E731
cel_call = lambda function, *args, target=None: _cel({"call_expr": {"function": function, "args": list(args), **({"target": target} if target else {})}})  # noqa: E731


def native_chain(keys: KeyRing, families) -> list[dict]:
    """What a platform team would run instead of jwt + ownership + ratelimit: Envoy's jwt_authn,
    then rbac whose CEL condition compares the token's tenant with the path's (for every tenant)
    and asks for the scope, then local_ratelimit with one bucket per subject and rate-limit
    headers on the answer (as meshward's)."""
    authn = jwt_authn(keys, families)
    provider = authn["typed_config"]["providers"]["main"]
    provider["payload_in_metadata"] = "jwt_payload"
    provider["claim_to_headers"] = [{"header_name": "x-jwt-sub", "claim_name": "sub"}]
    claim = lambda name: cel_call("_[_]", cel_call("_[_]", cel_call("_[_]", cel_field(cel_ident("metadata"), "filter_metadata"),  # noqa: E731
                                                                         cel_text("envoy.filters.http.jwt_authn")), cel_text("jwt_payload")), cel_text(name))
    path = lambda: cel_field(cel_ident("request"), "path")  # noqa: E731
    condition = cel_call("_&&_",
                         cel_call("_&&_",
                                  cel_call("matches", cel_text("^/tenants/[^/]+/orders/[^/]+$"), target=path()),
                                  cel_call("startsWith", cel_call("_+_", cel_call("_+_", cel_text("/tenants/"), claim("tenant")), cel_text("/")), target=path())),
                         cel_call("matches", cel_text("(^| )orders:read( |$)"), target=claim("scope")))
    rbac = {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"tenant-orders": {
                "permissions": [{"any": True}], "principals": [{"any": True}], "condition": condition,
                "cel_config": {"enable_string_concat": True}}}},
        },
    }
    ratelimit = local_ratelimit()
    rl = ratelimit["typed_config"]
    # One bucket per subject (the claim header jwt_authn wrote), as meshward's `key: [subject]`.
    rl["descriptors"] = [{"entries": [{"key": "sub"}], "token_bucket": dict(rl["token_bucket"])}]
    rl["max_dynamic_descriptors"] = 100000
    rl["rate_limits"] = [{"actions": [{"request_headers": {"header_name": "x-jwt-sub", "descriptor_key": "sub"}}]}]
    # meshward's rate limiter answers with the limit, remaining and reset headers: so does this.
    rl["enable_x_ratelimit_headers"] = "DRAFT_VERSION_03"
    return [authn, rbac, ratelimit]


# meshward's checks on the payload native jwt_authn verified (no signature work in wasm).
MESHWARD_ON_NATIVE = plugin("jwt", {
    "providers": {"main": {"issuer": ISSUER, "audiences": [AUDIENCE], "from_native_jwt_authn": {"payload_in_metadata": "main"}}},
    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}],
})


def meshward_jwt(keys: KeyRing, families, cache: int = 1024) -> dict:
    return plugin("jwt", {
        "providers": {"main": {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline_string": json.dumps(keys.jwks(families))}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}],
        "token_cache_size": cache,
    })


OWNERSHIP = plugin("ownership", {"rules": [{"name": "orders", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}"},
                                           "scopes": ["orders:read"], "owner": [{"path_param": "tenant_id", "claim": "tenant"}]}]})
RATELIMIT = plugin("ratelimit", {"rules": [{"name": "per-user", "match": {"prefix": "/"}, "key": ["subject"], "limit": {"requests": 1000000000, "per": "10000s"}}]})
RATELIMIT_ANON = plugin("ratelimit", {"rules": [{"name": "per-ip", "match": {"prefix": "/"}, "key": ["client_ip"], "limit": {"requests": 1000000000, "per": "10000s"}}]})
# Token guessing: 5 failures (401/403) per client, then one more try every 12 s.
FAILURE_LIMIT = plugin("ratelimit", {"rules": [{"name": "token-guessing", "match": {"prefix": "/"}, "key": ["header:x-client"],
                                               "counts": "failures", "limit": {"requests": 5, "per": "60s"}}]})
SW_SECRET = "whsec_" + base64.b64encode(b"meshward-bench-secret-32-bytes!!").decode()
# The same signed delivery is sent for the whole run: its timestamp must stay in the window.
WEBHOOK = plugin("webhook", {"endpoints": [{"name": "hooks", "match": {"prefix": "/"}, "scheme": "standard_webhooks",
                                            "secrets": [{"inline_string": SW_SECRET}], "replay_protection": False,
                                            "tolerance_seconds": 3600}]})

# Fleet-wide state: the engine (meshward-fleet on Redis) every such scenario's Envoy reaches as
# cluster `fleet`. A global limit no request reaches, keyed like the native filter's descriptor.
FLEET_DOMAIN, FLEET_RULE = "bench", "per-client"
FLEET_LIMITS = {(FLEET_DOMAIN, FLEET_RULE): (["header.x-client"], 1_000_000_000, "3600s")}
RATELIMIT_GLOBAL = plugin("ratelimit", {"global": {"cluster": "fleet", "domain": FLEET_DOMAIN, "timeout": "1s", "failure_mode": "deny"},
                                        "rules": [{"name": FLEET_RULE, "match": {"prefix": "/"}, "key": ["header:x-client"], "scope": "global"}]})
# Every delivery stays seen until its timestamp leaves the window: the cache must hold a whole
# run's deliveries (the default 16384 fills in seconds at these rates, then refuses with 503).
REPLAY_ENDPOINT = {"name": "hooks", "match": {"prefix": "/"}, "scheme": "standard_webhooks", "secrets": [{"inline_string": SW_SECRET}],
                   "tolerance_seconds": 3600, "replay_cache_entries": 1 << 20}
WEBHOOK_REPLAY_LOCAL = plugin("webhook", {"endpoints": [REPLAY_ENDPOINT]})
WEBHOOK_REPLAY_FLEET = plugin("webhook", {"endpoints": [REPLAY_ENDPOINT], "fleet": {"cluster": "fleet", "namespace": "bench", "timeout": "1s"}})


def native_global_ratelimit() -> dict:
    """Envoy's own RLS client (envoy.filters.http.ratelimit) asking the same engine the same
    question: descriptor (rule, header.x-client), set on the virtual host."""
    return {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": FLEET_DOMAIN, "failure_mode_deny": True, "timeout": "1s",
        "rate_limit_service": {"grpc_service": {"envoy_grpc": {"cluster_name": "fleet"}}, "transport_api_version": "V3"}}}


NATIVE_RATE_LIMITS = [{"actions": [{"generic_key": {"descriptor_key": "rule", "descriptor_value": FLEET_RULE}},
                                   {"request_headers": {"header_name": "x-client", "descriptor_key": "header.x-client"}}]}]


def new_deliveries(directory: Path, body: bytes, count: int) -> Path:
    """`count` distinct Standard Webhooks deliveries of `body` (id, timestamp, signature per
    line) for a wrk script to send one by one: a replay check that refuses nothing."""
    signer, now = standardwebhooks.Webhook(SW_SECRET), datetime.now(tz=timezone.utc)
    stamp = str(int(now.timestamp()))
    text = body.decode()
    path = directory / f"deliveries-{time.monotonic_ns()}.tsv"
    with path.open("w") as f:
        for i in range(count):
            msg_id = f"msg_{os.urandom(6).hex()}_{i}"
            f.write(f"{msg_id}\t{stamp}\t{signer.sign(msg_id, now, text)}\n")
    return path


# The floor: a Rust proxy-wasm filter that does nothing (tests/noop-filter, `make test-modules`).
NOOP = plugin("noop", "{}", module=str(TEST_MODULES / "meshward_noop.wasm"))
# The floor of a chain of three modules: three VMs per worker doing nothing.
NOOP3 = [plugin(f"noop{i}", "{}", module=str(TEST_MODULES / "meshward_noop.wasm")) for i in (1, 2, 3)]

# East-west: the calling workload's SPIFFE ID decides (the caller's sidecar presents it over mTLS).
OWNERSHIP_WORKLOAD = plugin("ownership", {"rules": [{"name": "orders", "match": {"template": "/tenants/{tenant_id}/orders/{order_id}"},
                                                     "workloads": [BILLING], "require_user": False}]})


def native_rbac_by_spiffe_id() -> dict:
    """Envoy's rbac allowing one SPIFFE ID (the URI SAN of the verified peer certificate)."""
    return {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "ALLOW", "policies": {"billing": {
            "permissions": [{"any": True}],
            "principals": [{"authenticated": {"principal_name": {"exact": BILLING}}}]}}}}}

# The floor for filters that read the body: the same module buffering it and reading it once.
NOOP_BODY = plugin("noop", {"read_body": True}, module=str(TEST_MODULES / "meshward_noop.wasm"))

# Hostcalls the floor module can repeat (tests/noop-filter), and how often per request.
HOSTCALLS = ("headers", "header", "time", "set_property", "get_property", "metric", "shared_get", "shared_set", "set_header")
HOSTCALL_REPEAT = 50
HOSTCALL_ROW = f"floor making {HOSTCALL_REPEAT}x hostcall: "


def noop_repeating(call: str) -> dict:
    return plugin("noop", {"repeat": {call: HOSTCALL_REPEAT}}, module=str(TEST_MODULES / "meshward_noop.wasm"))


def hostcall_costs(by_name: dict) -> dict:
    """µs one hostcall adds to a request: per round, (1/rps of the row - 1/rps of the floor) /
    the repeat count, then the median."""
    floor = by_name.get("do-nothing wasm filter (floor)")
    out = {}
    for call in HOSTCALLS:
        row = by_name.get(HOSTCALL_ROW + call)
        if floor and row:
            per_round = [(1e6 / r - 1e6 / f) / HOSTCALL_REPEAT for r, f in zip(row["rounds"], floor["rounds"])]
            out[call] = round(statistics.median(per_round), 2)
    return out


CRAPI = json.loads((REPO / "tests" / "specs" / "crapi-openapi-spec.json").read_text())
SCHEMA = plugin("schema", {"openapi": CRAPI})
SCHEMA_SHADOW = plugin("schema", {"openapi": CRAPI, "mode": "shadow"})
# crAPI's create_order: the write operation the chain protects.
ORDER_PATH = "/workshop/api/shop/orders"
ORDER_BODY = json.dumps({"product_id": 1, "quantity": 2}).encode()
# Idempotency keys on the crAPI order write, in the fleet engine; answers kept for the run.
IDEMPOTENCY = plugin("idempotency", {"operations": [{"name": "create-order", "match": {"path": "/workshop/api/shop/orders", "methods": ["POST"]}}],
                                     "expiry": "3600s", "fleet": {"cluster": "fleet", "namespace": "bench", "timeout": "1s"}})

ORDER_OWNERSHIP = plugin("ownership", {"rules": [{"name": "create_order", "match": {"path": ORDER_PATH, "methods": ["POST"]}, "scopes": ["orders:read"]}]})


# Of the connections of a flood row, this share sends forged tokens; the rest are the valid client.
FLOOD_SHARE = 0.9


def forged_prefix(token: str) -> str:
    """A valid token's header and payload: forged tokens add a signature of the right length."""
    return token.rsplit(".", 1)[0]


def flood_script(directory: Path, prefix: str, signature_chars: int = 342) -> Path:
    """wrk sends `prefix` with a different bad signature on every request: no cache can help.
    The flooding client names itself (`x-client: flood`): every wrk connection comes from
    127.0.0.1, so the failure-limit row keys on this header where a deployment keys on
    `client_ip`."""
    # Zero bytes first, so the signature is below the modulus and costs the whole verification
    # (a signature not below it is refused at once); the counter in the low bytes, then a
    # last character whose unused bits are zero (a strict base64url reader refuses others).
    pad = "A" * (signature_chars - 11)
    path = directory / "flood.lua"
    path.write_text(f"local sent = 0\nwrk.headers['x-client'] = 'flood'\nrequest = function()\n  sent = sent + 1\n"
                    f"  wrk.headers['authorization'] = 'Bearer {prefix}.{pad}' .. string.format('%010d', sent) .. 'A'\n"
                    f"  return wrk.format()\nend\n")
    return path


class Scenario:
    """One measured setup: meshward plugins and/or native filters, and the request wrk sends."""

    def __init__(self, name, plugins=(), native=(), headers=None, body=None, compare=None, path="/tenants/acme/orders/42", baseline="plain envoy",
                 fleet=False, rate_limits=(), new_deliveries=False, new_keys=False, flood=None, mtls=False, audit=False, grpc=False):
        self.name, self.plugins, self.native = name, list(plugins), list(native)
        self.headers, self.body, self.compare, self.path = headers or {}, body, compare, path
        # The plain-Envoy scenario sending the same request.
        self.baseline = baseline
        # Reaches the fleet engine (cluster `fleet`); route-level rate-limit actions (native RLS).
        self.fleet, self.rate_limits = fleet, list(rate_limits)
        # Every request a new signed webhook delivery (`headers` are replaced per request).
        self.new_deliveries = new_deliveries
        # Every request a new `idempotency-key`.
        self.new_keys = new_keys
        # Forged tokens (this header.payload with a different bad signature each time) sent
        # from most connections while the row's own client sends `headers`: the row reports
        # that client ([`FLOOD_SHARE`]).
        self.flood = flood
        # East-west: wrk talks to a caller-side Envoy (on the load cores) that presents the
        # `billing` workload's certificate over mTLS to the measured Envoy's TLS listener.
        self.mtls = mtls
        # The measured Envoy writes the bundle's audit records to a file (as `render envoy`).
        self.audit = audit
        # A unary gRPC call (`body` is its framed message) over HTTP/2, driven by h2load.
        self.grpc = grpc


# The JWT rows: HMAC, and the four public-key families a new token costs most in.
JWT_ALGORITHMS = ("HS256", "RS256", "PS256", "ES256", "EdDSA")


EAST_WEST = "east-west mTLS: "
GRAPHQL_ROW = "GraphQL POST: "
_BOOK = "query Book($id: ID!) { book(id: $id) { title author { name } } }"
GRAPHQL_PERSISTED = json.dumps({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(_BOOK.encode()).hexdigest()}},
                                "variables": {"id": "7"}}).encode()
GRAPHQL_RAW = json.dumps({"query": "{ books { title author { name books { title } } } }"}).encode()
GRAPHQL = plugin("graphql", {"persisted": [{"document": _BOOK}], "allow_raw_documents": True, "max_depth": 8})
# The same endpoint with the service's schema: list sizes priced, a field scoped.
_SDL = ('type Author { name: String books(first: Int): [Book] @listSize(slicingArguments: ["first"]) } '
        'type Book { title: String author: Author isbn: String @requiresScopes(scopes: [["orders:read"]]) } '
        'type Query { book(id: ID!): Book books(first: Int): [Book] @listSize(slicingArguments: ["first"]) }')
_SHELF = "query Shelf($n: Int) { books(first: $n) { title author { name } } }"
GRAPHQL_PRICED = json.dumps({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(_SHELF.encode()).hexdigest()}},
                             "variables": {"n": 20}}).encode()
GRAPHQL_SCOPED = json.dumps({"query": "{ books(first: 10) { title isbn author { name } } }"}).encode()
GRAPHQL_SCHEMA = plugin("graphql", {"persisted": [{"document": _BOOK}, {"document": _SHELF}], "allow_raw_documents": True, "max_depth": 8,
                                    "schema": _SDL, "max_cost": 1000})
GRPC_ROW = "gRPC unary GetOrder: "
# GetOrderRequest{tenant_id: "acme", order_id: "42"}, framed (uncompressed, 10-byte message).
_GET_ORDER = b"\x0a\x04acme\x12\x0242"
GET_ORDER_FRAME = b"\x00" + len(_GET_ORDER).to_bytes(4, "big") + _GET_ORDER
_DESCRIPTORS = base64.b64encode((REPO / "crates" / "grpc" / "tests" / "orders.pb").read_bytes()).decode()
GRPC_STAGE = plugin("grpc", {"descriptor_set": _DESCRIPTORS, "services": {"demo.orders.Orders": {"methods": {"GetOrder": {"public": True}}}}})
# CreateAccountRequest{name "Ada", age 36, plan PRO, address {country "DE", city "Berlin"}, email}:
# a message every protovalidate rule of tests/protos/accounts.proto checks and lets through.
_CREATE_ACCOUNT = (b"\x0a\x03Ada" b"\x10\x24" b"\x18\x02" b"\x22\x0c\x0a\x02DE\x12\x06Berlin" b"\x5a\x0fada@example.com")
CREATE_ACCOUNT_FRAME = b"\x00" + len(_CREATE_ACCOUNT).to_bytes(4, "big") + _CREATE_ACCOUNT
GRPC_RULES_ROW = "gRPC unary CreateAccount, protovalidate rules: "
GRPC_RULES = plugin("grpc", {"descriptor_set": base64.b64encode((REPO / "crates" / "grpc" / "tests" / "accounts.pb").read_bytes()).decode(),
                             "services": {"demo.accounts.Accounts": {"methods": {"CreateAccount": {"public": True}}}}})
# Upload(stream Item): three Items {sku "a"/"b"/"c", quantity 1}, framed one after another,
# checked one by one as the stream arrives.
UPLOAD_FRAMES = b"".join(b"\x00\x00\x00\x00\x05\x0a\x01" + sku + b"\x10\x01" for sku in (b"a", b"b", b"c"))
GRPC_STREAM_ROW = "gRPC client stream Upload, 3 messages: "
GRPC_UPLOAD = plugin("grpc", {"descriptor_set": _DESCRIPTORS, "services": {"demo.orders.Orders": {"methods": {"Upload": {"public": True}}}}})
GRPC_RULES_OFF = {**GRPC_RULES, "config": {**GRPC_RULES["config"], "field_rules": "off"}}
GRPC_OWNED = plugin("grpc", {"descriptor_set": _DESCRIPTORS, "services": {"demo.orders.Orders": {"methods": {
    "GetOrder": {"scopes": ["orders:read"], "owner": [{"field": "tenant_id", "claim": "tenant"}]}}}}})


def east_west_pki(work: Path) -> dict:
    """Certificates for the east-west rows, made once per run."""
    if not hasattr(east_west_pki, "pki"):
        directory = work / "pki"
        directory.mkdir(exist_ok=True)
        east_west_pki.pki = make_pki(directory)
    return east_west_pki.pki


def audited(bundle_plugin: dict, sign_every: int | None = None) -> dict:
    """The bundle writing an audit record of every request (signed at least every `sign_every`
    records with a bench-only Ed25519 key)."""
    audit = {"records": "all"}
    if sign_every:
        audit["signing"] = {"key": {"inline_string": base64.b64encode(bytes(range(32))).decode()}, "every": sign_every}
    return {**bundle_plugin, "config": {**bundle_plugin["config"], "audit": audit}}


def scenarios(keys: KeyRing) -> list[Scenario]:
    tok = {alg: keys.token(alg, scope="orders:read", exp=int(time.time()) + 3600) for alg in JWT_ALGORITHMS}
    auth = lambda alg: {"authorization": f"Bearer {tok[alg]}"}  # noqa: E731
    body = json.dumps({"type": "invoice.paid", "data": "x" * 1990}).encode()[:2048]
    msg_id, now = "msg_bench", datetime.now(tz=timezone.utc)
    sw_headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                  "webhook-signature": standardwebhooks.Webhook(SW_SECRET).sign(msg_id, now, body.decode()), "content-type": "application/json"}
    fam = {"HS256": ["hs"], "RS256": ["rsa"], "PS256": ["rsa"], "ES256": ["es256"], "EdDSA": ["ed"]}
    es = auth("ES256")
    as_billing = {"x-as": "billing"}
    graphql = {"path": "/graphql", "body": GRAPHQL_PERSISTED, "headers": {"content-type": "application/json"}}
    unary = {"path": "/demo.orders.Orders/GetOrder", "body": GET_ORDER_FRAME, "headers": {"content-type": "application/grpc", "te": "trailers"}}
    upload = {**unary, "path": "/demo.orders.Orders/Upload", "body": UPLOAD_FRAMES}
    create_account = {**unary, "path": "/demo.accounts.Accounts/CreateAccount", "body": CREATE_ACCOUNT_FRAME}
    order = {"headers": {**es, "content-type": "application/json"}, "body": ORDER_BODY, "path": ORDER_PATH, "baseline": "plain envoy, crAPI POST order"}
    chain4 = [meshward_jwt(keys, fam["ES256"]), SCHEMA, ORDER_OWNERSHIP, RATELIMIT]
    out = [Scenario("plain envoy", compare="plain"),
           Scenario("do-nothing wasm filter (floor)", [NOOP]),
           Scenario("three do-nothing wasm filters (floor of 3 modules)", NOOP3)]
    for alg in JWT_ALGORITHMS:
        # Cached against native with its cache on (as deployed); every request verified
        # (the cost of a new token) against native with its cache off.
        out.append(Scenario(f"jwt {alg} (meshward)", [meshward_jwt(keys, fam[alg])], headers=auth(alg), compare=f"jwt_authn {alg} (native)"))
        out.append(Scenario(f"jwt {alg} (meshward, no cache)", [meshward_jwt(keys, fam[alg], cache=0)], headers=auth(alg),
                            compare=f"jwt_authn {alg} (native, no cache)"))
        out.append(Scenario(f"jwt_authn {alg} (native)", native=[jwt_authn(keys, fam[alg])], headers=auth(alg)))
        out.append(Scenario(f"jwt_authn {alg} (native, no cache)", native=[jwt_authn(keys, fam[alg], cache=False)], headers=auth(alg)))
    # Where the sidecar runs native jwt_authn anyway (Istio RequestAuthentication): meshward reads
    # its verified payload, so a new token costs native's verification, not wasm's.
    out.append(Scenario("jwt ES256 on native jwt_authn's payload, no cache (meshward)", [MESHWARD_ON_NATIVE],
                        native=[jwt_authn(keys, fam["ES256"], cache=False, payload_in_metadata="main")], headers=auth("ES256"),
                        compare="jwt_authn ES256 (native, no cache)"))
    out += [
        Scenario("ratelimit (meshward, not limited)", [RATELIMIT_ANON], compare="local_ratelimit"),
        Scenario("local_ratelimit (native)", native=[local_ratelimit()]),
        Scenario("webhook standard 2KiB (meshward)", [WEBHOOK], headers=sw_headers, body=body),
        # Every request a new delivery, so the replay check claims, and settles on the answer.
        Scenario("webhook new deliveries, replay check in this sidecar", [WEBHOOK_REPLAY_LOCAL], headers=sw_headers, body=body,
                 new_deliveries=True, compare="webhook standard 2KiB (meshward)"),
        Scenario("webhook new deliveries, fleet replay check (meshward-fleet)", [WEBHOOK_REPLAY_FLEET], headers=sw_headers, body=body,
                 new_deliveries=True, fleet=True, compare="webhook new deliveries, replay check in this sidecar"),
        Scenario("ratelimit global (meshward, meshward-fleet)", [RATELIMIT_GLOBAL], headers={"x-client": "bench"}, fleet=True,
                 compare="ratelimit global (native"),
        Scenario("ratelimit global (native ratelimit filter, meshward-fleet)", native=[native_global_ratelimit()], headers={"x-client": "bench"},
                 fleet=True, rate_limits=NATIVE_RATE_LIMITS),
        Scenario("jwt ES256, POST order (meshward)", [meshward_jwt(keys, fam["ES256"])], **order),
        # Every request a new key: claimed in the engine, the answer stored before it leaves.
        Scenario("jwt ES256 + idempotency, new keys (meshward-fleet)", [meshward_jwt(keys, fam["ES256"]), IDEMPOTENCY], fleet=True, new_keys=True,
                 compare="jwt ES256, POST order (meshward)", **order),
        # Every request the same key: answered from the engine, the upstream never asked.
        Scenario("jwt ES256 + idempotency, retries answered from the store (meshward-fleet)", [meshward_jwt(keys, fam["ES256"]), IDEMPOTENCY],
                 fleet=True, compare="jwt ES256, POST order (meshward)",
                 **{**order, "headers": {**order["headers"], "idempotency-key": f"bench-retry-{uuid.uuid4()}"}}),
        # A flood of forged RS256 tokens (valid kid, bad signature, all different) beside one
        # valid client: what the valid client still gets.
        Scenario("jwt RS256 under a forged-token flood (meshward)", [meshward_jwt(keys, fam["RS256"])], headers=auth("RS256"),
                 flood=forged_prefix(tok["RS256"]), compare="jwt_authn RS256 under a forged-token flood"),
        # The same flood with a failure limit before the JWT stage: the flooding client's 401s
        # spend its budget, then it is refused (429) before any signature check.
        Scenario("jwt RS256 under a forged-token flood, failures limited before it (meshward)",
                 [bundle([FAILURE_LIMIT, meshward_jwt(keys, fam["RS256"])])], headers=auth("RS256"),
                 flood=forged_prefix(tok["RS256"]), compare="jwt_authn RS256 under a forged-token flood"),
        Scenario("jwt_authn RS256 under a forged-token flood (native)", native=[jwt_authn(keys, fam["RS256"])], headers=auth("RS256"),
                 flood=forged_prefix(tok["RS256"])),
        Scenario("jwt ES256 + ownership (meshward)", [meshward_jwt(keys, fam["ES256"]), OWNERSHIP], headers=es),
        Scenario("plain envoy, crAPI POST order", **order),
        Scenario("do-nothing wasm filter reading the body (floor), crAPI POST order", [NOOP_BODY], **order),
        Scenario("schema crAPI POST order (meshward)", [SCHEMA], **order),
        # Drift: a request outside the contract is counted under its route's shape (one shared-
        # data read for the sidecar's shape table); in shadow it goes on, so the row compares
        # with a known route in shadow.
        Scenario("schema crAPI GET order, shadow (meshward)", [SCHEMA_SHADOW], path="/workshop/api/shop/orders/42"),
        Scenario("schema crAPI GET outside the contract, shadow: counted by shape (meshward)", [SCHEMA_SHADOW],
                 path="/workshop/api/shop/v9/orders/42", compare="schema crAPI GET order, shadow"),
        # The same denial cost without a shape: a known route with a parameter the contract refuses.
        Scenario("schema crAPI GET order, bad parameter, shadow (meshward)", [SCHEMA_SHADOW],
                 path="/workshop/api/shop/orders/seven", compare="schema crAPI GET order, shadow"),
        Scenario("schema crAPI POST order, gzip body (meshward)", [SCHEMA],
                 **{**order, "headers": {**order["headers"], "content-encoding": "gzip"}, "body": gzip.compress(ORDER_BODY)}),
        Scenario("chain jwt+schema+ownership+ratelimit (4 modules)", chain4, **order),
        Scenario("bundle jwt+schema+ownership+ratelimit (1 module)", [bundle(chain4)], **order),
        Scenario("native chain jwt_authn+rbac+local_ratelimit", native=native_chain(keys, fam["ES256"]), headers=es),
        Scenario("chain jwt+ownership+ratelimit (3 modules)", [meshward_jwt(keys, fam["ES256"]), OWNERSHIP, RATELIMIT], headers=es, compare="native chain"),
        Scenario("bundle jwt+ownership+ratelimit (1 module)", [bundle([meshward_jwt(keys, fam["ES256"]), OWNERSHIP, RATELIMIT])], headers=es, compare="native chain"),
        Scenario("bundle jwt only (1 module)", [bundle([meshward_jwt(keys, fam["ES256"])])], headers=es),
        Scenario("bundle jwt+ownership+ratelimit, audit record of every request (1 module)",
                 [audited(bundle([meshward_jwt(keys, fam["ES256"]), OWNERSHIP, RATELIMIT]))], headers=es, audit=True,
                 compare="bundle jwt+ownership+ratelimit (1 module)"),
        *(Scenario(f"bundle jwt+ownership+ratelimit, audit record of every request, signed every {every} (1 module)",
                   [audited(bundle([meshward_jwt(keys, fam["ES256"]), OWNERSHIP, RATELIMIT]), sign_every=every)], headers=es, audit=True,
                   compare="bundle jwt+ownership+ratelimit, audit record of every request (1 module)") for every in (64, 1)),
        Scenario(f"{GRAPHQL_ROW}plain envoy, persisted query", **graphql, baseline=f"{GRAPHQL_ROW}plain envoy, persisted query"),
        Scenario(f"{GRAPHQL_ROW}do-nothing wasm filter reading the body (floor)", [NOOP_BODY], **graphql, baseline=f"{GRAPHQL_ROW}plain envoy, persisted query"),
        Scenario(f"{GRAPHQL_ROW}graphql persisted query (meshward)", [GRAPHQL], **graphql, baseline=f"{GRAPHQL_ROW}plain envoy, persisted query"),
        Scenario(f"{GRAPHQL_ROW}graphql raw document parsed, within limits (meshward)", [GRAPHQL], **{**graphql, "body": GRAPHQL_RAW},
                 baseline=f"{GRAPHQL_ROW}plain envoy, persisted query"),
        Scenario(f"{GRAPHQL_ROW}graphql persisted query priced by the schema, list size from a variable (meshward)", [GRAPHQL_SCHEMA],
                 **{**graphql, "body": GRAPHQL_PRICED}, baseline=f"{GRAPHQL_ROW}plain envoy, persisted query"),
        Scenario(f"{GRAPHQL_ROW}bundle jwt+graphql, raw document priced and a scoped field checked (1 module)",
                 [bundle([meshward_jwt(keys, fam["ES256"]), GRAPHQL_SCHEMA])], **{**graphql, "body": GRAPHQL_SCOPED, "headers": {**graphql["headers"], **es}},
                 baseline=f"{GRAPHQL_ROW}plain envoy, persisted query"),
        Scenario(f"{GRPC_ROW}plain envoy", grpc=True, **unary, baseline=f"{GRPC_ROW}plain envoy"),
        Scenario(f"{GRPC_ROW}do-nothing wasm filter (floor)", [NOOP_BODY], grpc=True, **unary, baseline=f"{GRPC_ROW}plain envoy"),
        Scenario(f"{GRPC_ROW}grpc stage, message checked (meshward)", [GRPC_STAGE], grpc=True, **unary, baseline=f"{GRPC_ROW}plain envoy"),
        Scenario(f"{GRPC_ROW}bundle jwt+grpc, scope and tenant field (1 module)", [bundle([meshward_jwt(keys, fam["ES256"]), GRPC_OWNED])], grpc=True,
                 **{**unary, "headers": {**unary["headers"], **es}}, baseline=f"{GRPC_ROW}plain envoy"),
        Scenario(f"{GRPC_STREAM_ROW}plain envoy", grpc=True, **upload, baseline=f"{GRPC_STREAM_ROW}plain envoy"),
        Scenario(f"{GRPC_STREAM_ROW}do-nothing wasm filter (floor)", [NOOP_BODY], grpc=True, **upload, baseline=f"{GRPC_STREAM_ROW}plain envoy"),
        Scenario(f"{GRPC_STREAM_ROW}grpc stage, each message checked as it arrives (meshward)", [GRPC_UPLOAD], grpc=True, **upload,
                 baseline=f"{GRPC_STREAM_ROW}plain envoy"),
        Scenario(f"{GRPC_RULES_ROW}plain envoy", grpc=True, **create_account, baseline=f"{GRPC_RULES_ROW}plain envoy"),
        Scenario(f"{GRPC_RULES_ROW}do-nothing wasm filter (floor)", [NOOP_BODY], grpc=True, **create_account, baseline=f"{GRPC_RULES_ROW}plain envoy"),
        Scenario(f"{GRPC_RULES_ROW}grpc stage, message decoded, field_rules: off (meshward)", [GRPC_RULES_OFF], grpc=True, **create_account,
                 baseline=f"{GRPC_RULES_ROW}plain envoy"),
        Scenario(f"{GRPC_RULES_ROW}grpc stage, message decoded and its field rules checked (meshward)", [GRPC_RULES], grpc=True, **create_account,
                 baseline=f"{GRPC_RULES_ROW}plain envoy", compare=f"{GRPC_RULES_ROW}grpc stage, message decoded, field_rules: off (meshward)"),
        Scenario(f"{EAST_WEST}plain envoy", mtls=True, headers=as_billing, baseline=f"{EAST_WEST}plain envoy"),
        Scenario(f"{EAST_WEST}do-nothing wasm filter (floor)", [NOOP], mtls=True, headers=as_billing, baseline=f"{EAST_WEST}plain envoy"),
        Scenario(f"{EAST_WEST}rbac by SPIFFE ID (native)", native=[native_rbac_by_spiffe_id()], mtls=True, headers=as_billing,
                 baseline=f"{EAST_WEST}plain envoy"),
        Scenario(f"{EAST_WEST}ownership workload rule (meshward)", [OWNERSHIP_WORKLOAD], mtls=True, headers=as_billing,
                 baseline=f"{EAST_WEST}plain envoy", compare=f"{EAST_WEST}rbac"),
    ]
    # What one hostcall costs: the floor module making it HOSTCALL_REPEAT times per request.
    out += [Scenario(f"{HOSTCALL_ROW}{call}", [noop_repeating(call)], headers=es) for call in HOSTCALLS]
    return out


# What `meshward render` deploys for the crAPI policy (the smallest bundle edition holding its
# stages): the row the footprint goals are measured on.
CRAPI_AS_RENDERED = "  as rendered: meshward.openapi.wasm"
# The same policy where Envoy's jwt_authn verifies tokens: the edition without signature crypto.
CRAPI_ON_NATIVE_AS_RENDERED = "  as rendered: meshward.native.wasm"


def memory_scenarios(keys: KeyRing) -> list[tuple[str, list[dict], list[dict]]]:
    """What each module costs every pod in memory: (name, meshward plugins, native filters
    before them)."""
    es = [meshward_jwt(keys, ["es256"])]
    crapi = [*es, SCHEMA, ORDER_OWNERSHIP, RATELIMIT]
    lite = [*es, ORDER_OWNERSHIP, RATELIMIT]
    # Istio's RequestAuthentication: Envoy's jwt_authn verifies, meshward reads its payload.
    native_authn = [jwt_authn(keys, ["es256"], payload_in_metadata="main")]
    crapi_on_native = [MESHWARD_ON_NATIVE, SCHEMA, ORDER_OWNERSHIP, RATELIMIT]
    return [
        ("plain envoy", [], []),
        ("do-nothing wasm filter (floor)", [NOOP], []),
        ("jwt ES256 (meshward)", es, []),
        ("schema, whole crAPI contract (meshward)", [SCHEMA], []),
        ("bundle jwt+schema (crAPI)+ownership+ratelimit, meshward.wasm (all stages)", [bundle(crapi)], []),
        (CRAPI_AS_RENDERED, [bundle(crapi, module="meshward.openapi.wasm")], []),
        ("bundle jwt+ownership+ratelimit, meshward.wasm", [bundle(lite)], []),
        ("  as rendered: meshward.lite.wasm", [bundle(lite, module="meshward.lite.wasm")], []),
        ("native jwt_authn ES256 alone", [], native_authn),
        ("crAPI on native jwt_authn, meshward.openapi.wasm", [bundle(crapi_on_native, module="meshward.openapi.wasm")], native_authn),
        (CRAPI_ON_NATIVE_AS_RENDERED, [bundle(crapi_on_native, module="meshward.native.wasm")], native_authn),
    ]


def rss_bytes(env: Envoy) -> int:
    """Resident memory of the Envoy process, from /proc (VM linear memory and compiled code
    included, which Envoy's own allocator statistics miss)."""
    for line in Path(f"/proc/{env.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def memory_breakdown(env: Envoy) -> dict:
    """Where the process's resident memory is (bytes): V8's compiled code (its executable
    anonymous mappings), Envoy's allocator (tcmalloc's physical bytes, from the admin API), the
    rest of the anonymous memory (the VMs' linear memories and V8's heaps, mapped by V8), and
    Envoy's own binary (the V8 compiler's pages are touched in it)."""
    rss, kind = collections.Counter(), None
    for line in Path(f"/proc/{env.proc.pid}/smaps").read_text().splitlines():
        fields = line.split()
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            perms, path = fields[1], (fields[5] if len(fields) > 5 else "")
            kind = "code" if perms.startswith("rwx") and not path else "anon" if not path else "binary" if path.endswith("/envoy") else None
        elif fields[0] == "Rss:" and kind is not None:
            rss[kind] += int(fields[1]) * 1024
    stats = json.loads(env.admin("/memory").body)
    allocator = int(stats["total_physical_bytes"])
    return {"v8_code_bytes": rss["code"], "allocator_bytes": allocator, "allocator_live_bytes": int(stats["allocated"]),
            "vm_memory_bytes": rss["anon"] - allocator, "envoy_binary_bytes": rss["binary"]}


def measure_memory(name: str, plugins: list[dict], upstream: Envoy, keys: KeyRing, native: list[dict] = ()) -> dict:
    """RSS and configuration time at 1 and 2 workers, after a few requests through each worker."""
    token = keys.token("ES256", scope="orders:read", exp=int(time.time()) + 3600)
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    out = {"name": name}
    for workers in (1, 2):
        env = Envoy(build_config(upstream.port, plugins, native_filters=native), concurrency=workers)
        env.start()
        try:
            for _ in range(8 * workers):
                r = env.request(ORDER_PATH, headers, method="POST", body=ORDER_BODY)
                if r.status != 200:
                    raise RuntimeError(f"{name}: answered {r.status} {r.body[:200]!r}")
            time.sleep(1)
            out[f"rss_bytes_{workers}w"] = rss_bytes(env)
            if workers == 2:
                out.update(memory_breakdown(env))
            out[f"config_ms_{workers}w"] = config_ms(env) if plugins else None
        finally:
            env.stop()
            env.cleanup()
    return out


def footprint(keys: KeyRing) -> list[dict]:
    """The memory rows, side by side in one run, each against plain Envoy's."""
    memory = []
    upstream = Envoy(upstream_config(), concurrency=1)
    upstream.start()
    try:
        for name, plugins, native in memory_scenarios(keys):
            memory.append(measure_memory(name, plugins, upstream, keys, native))
    finally:
        upstream.stop()
        upstream.cleanup()
    plain = next(m for m in memory if m["name"] == "plain envoy")
    for m in memory:
        m["over_plain_bytes_2w"] = m["rss_bytes_2w"] - plain["rss_bytes_2w"]
        m["per_extra_worker_bytes"] = (m["rss_bytes_2w"] - m["rss_bytes_1w"]) - (plain["rss_bytes_2w"] - plain["rss_bytes_1w"])
    return memory


def print_memory(memory: list[dict]) -> int:
    print(f"\n{'memory (RSS from /proc)':<50} {'1 worker':>9} {'2 workers':>9} {'over plain':>10} {'+worker':>8} {'config ms':>9}"
          f"   at 2 workers: {'V8 code':>8} {'allocator (live)':>16} {'VM memory':>9} {'binary':>7}")
    mib = lambda b: b / 2**20  # noqa: E731
    for m in memory:
        configured = f"{m['config_ms_1w']:.0f} / {m['config_ms_2w']:.0f}" if m["config_ms_1w"] is not None else "-"
        print(f"{m['name']:<50} {mib(m['rss_bytes_1w']):>7.0f} M {mib(m['rss_bytes_2w']):>7.0f} M {mib(m['over_plain_bytes_2w']):>8.0f} M "
              f"{mib(m['per_extra_worker_bytes']):>6.1f} M {configured:>9}                 "
              f"{mib(m['v8_code_bytes']):>6.0f} M {mib(m['allocator_bytes']):>6.0f} M ({mib(m['allocator_live_bytes']):>3.0f} M) "
              f"{mib(m['vm_memory_bytes']):>7.0f} M {mib(m['envoy_binary_bytes']):>5.0f} M")
    for t in memory_targets(memory):
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
    return 0


def config_ms(env: Envoy) -> float | None:
    """The longest configuration compile any meshward VM of this Envoy reported."""
    times = [float(m) for m in re.findall(r"configuration accepted in ([\d.]+) ms", env.log())]
    return max(times) if times else None


def wrk_script(directory: Path, headers: dict, body: bytes | None, deliveries: Path | None = None, new_keys: bool = False) -> Path:
    lines = []
    if body is not None:
        lines.append('wrk.method = "POST"')
        # Lua decimal escapes: any bytes (a gzip body) travel as they are.
        lines.append("wrk.body = \"" + "".join(f"\\{b:03d}" for b in body) + "\"")
    for k, v in headers.items():
        lines.append(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}")
    if deliveries is not None:
        # One signed delivery per request, in order (a wrap-around would be refused as replays).
        lines.append(f"local deliveries = {{}}\nfor line in io.lines({json.dumps(str(deliveries))}) do deliveries[#deliveries + 1] = line end")
        lines.append("local sent = 0\nrequest = function()\n  sent = sent + 1\n"
                     "  local id, ts, sig = deliveries[(sent - 1) % #deliveries + 1]:match('^([^\\t]+)\\t([^\\t]+)\\t(.+)$')\n"
                     "  wrk.headers['webhook-id'] = id\n  wrk.headers['webhook-timestamp'] = ts\n  wrk.headers['webhook-signature'] = sig\n"
                     "  return wrk.format()\nend")
    if new_keys:
        # A key no earlier request (of this run or an earlier round) used.
        lines.append("math.randomseed(os.time())\nlocal prefix = os.time() .. '-' .. math.random(1, 1000000000)\n"
                     "local sent = 0\nrequest = function()\n  sent = sent + 1\n"
                     "  wrk.headers['idempotency-key'] = prefix .. '-' .. sent\n  return wrk.format()\nend")
    path = directory / ("script.lua" if deliveries is None else f"{deliveries.stem}.lua")
    path.write_text("\n".join(lines) + "\n")
    return path


# With two or more cores, the measured Envoy gets the first to itself; wrk and the upstream share
# the others. It no longer competes with its own load generator, so what it costs per request
# decides its throughput, and runs move far less.
CPUS = sorted(os.sched_getaffinity(0))
MEASURED_CPUS = set(CPUS[:1]) if len(CPUS) > 1 else set(CPUS)
LOAD_CPUS = set(CPUS[1:]) if len(CPUS) > 1 else set(CPUS)


def pin(pid: int, cpus: set) -> None:
    """Every thread of a process onto `cpus`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except (ProcessLookupError, OSError):
            pass


def run_wrk(port: int, path: str, script: Path, duration: int, connections: int) -> dict:
    cmd = ["taskset", "-c", ",".join(map(str, sorted(LOAD_CPUS))), "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
        return float(m.group(1)) * scale
    # wrk counts the answers that are not 2xx/3xx itself, so a misconfigured scenario cannot pass
    # as fast. (A Lua counter cannot: wrk's done() runs in another Lua state than response().)
    non200 = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    return {"rps": rps, "requests": requests, "p50_ms": pct(50), "p99_ms": pct(99), "non_200": non200}


def grpc_probe(port: int, path: str, headers: dict, body: bytes):
    """One gRPC call over HTTP/2 (prior knowledge). The fast upstream's answer is Envoy's own
    (`grpc-status` 2 for a direct response), the same in every row; a meshward refusal carries
    `meshward-reason`."""
    import httpx

    from harness import Response
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        r = client.post(f"http://127.0.0.1:{port}{path}", headers=headers, content=body)
    status = 403 if "meshward-reason" in r.headers else r.status_code
    return Response(status, list(r.headers.items()), r.content)


def run_h2load(port: int, path: str, headers: dict, body: Path, duration: int, connections: int) -> dict:
    """h2load over HTTP/2 (h2c): `p50_ms` is its mean, `p99_ms` its max (it reports no percentiles)."""
    cmd = ["taskset", "-c", ",".join(map(str, sorted(LOAD_CPUS))), "h2load", "-t1", f"-c{connections}", "-m1", f"-D{duration}",
           "-d", str(body), *[f"-H{k}: {v}" for k, v in headers.items()], f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", out)
    latency = re.search(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", out)
    ms = lambda v, u: float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[u]  # noqa: E731
    requests, succeeded = int(done.group(2)), int(done.group(3))
    return {"rps": rps, "requests": requests, "p50_ms": ms(latency.group(5), latency.group(6)), "p99_ms": ms(latency.group(3), latency.group(4)),
            "non_200": requests - succeeded}


def cpu_seconds(env: Envoy) -> float:
    """CPU time (user + system) the measured Envoy has used so far, from /proc."""
    fields = Path(f"/proc/{env.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_bytes(env: Envoy) -> int:
    return int(json.loads(env.admin("/memory").body)["allocated"])


def targets(by_name: dict, sizes: dict) -> list[dict]:
    """Each target of the benchmark issue, with what this run measured."""
    out = []

    def ratio(target: str, a: str, b: str, key: str, at_least: float | None = None, at_most: float | None = None):
        if a in by_name and b in by_name:
            pairs = list(zip(by_name[a].get("rounds", []), by_name[b].get("rounds", [])))
            if key == "rps" and pairs:
                # Per round, then the median: a slow spell of the machine hits both alike.
                value = statistics.median(x / y for x, y in pairs)
            else:
                value = by_name[a][key] / by_name[b][key]
            met = (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
            out.append({"target": target, "measured": f"{value:.2f}x", "met": met})

    for alg in JWT_ALGORITHMS:
        ratio(f"jwt {alg} throughput >= native jwt_authn", f"jwt {alg} (meshward)", f"jwt_authn {alg} (native)", "rps", at_least=1.0)
        ratio(f"jwt {alg} cached throughput >= 0.95x do-nothing wasm floor", f"jwt {alg} (meshward)", "do-nothing wasm filter (floor)", "rps", at_least=0.95)
        if alg != "HS256":
            ratio(f"jwt {alg} every token verified >= 0.33x native jwt_authn without cache", f"jwt {alg} (meshward, no cache)",
                  f"jwt_authn {alg} (native, no cache)", "rps", at_least=0.33)
    ratio("ratelimit throughput >= native local_ratelimit", "ratelimit (meshward, not limited)", "local_ratelimit (native)", "rps", at_least=1.0)
    # The request model (strict JSON reader, framing, decoding) kept within 10% of 0.72x.
    ratio("schema crAPI POST >= 0.65x plain", "schema crAPI POST order (meshward)", "plain envoy, crAPI POST order", "rps", at_least=0.65)
    ratio("schema crAPI POST >= 0.9x the do-nothing wasm floor reading the body", "schema crAPI POST order (meshward)",
          "do-nothing wasm filter reading the body (floor), crAPI POST order", "rps", at_least=0.9)
    ratio("schema crAPI POST gzip >= 0.9x the same uncompressed", "schema crAPI POST order, gzip body (meshward)",
          "schema crAPI POST order (meshward)", "rps", at_least=0.9)
    ratio("full chain (4 modules) p50 <= 2x plain", "chain jwt+schema+ownership+ratelimit (4 modules)", "plain envoy, crAPI POST order", "p50_ms", at_most=2.0)
    ratio("bundle (4 stages) p50 <= 2x plain", "bundle jwt+schema+ownership+ratelimit (1 module)", "plain envoy, crAPI POST order", "p50_ms", at_most=2.0)
    ratio("bundle (jwt+ownership+ratelimit) throughput >= 0.8x single jwt module",
          "bundle jwt+ownership+ratelimit (1 module)", "jwt ES256 (meshward)", "rps", at_least=0.8)
    # Per-request cost: meshward's own work against the native chain and the wasm floor.
    ratio("bundle (jwt+ownership+ratelimit) throughput >= 0.9x native chain",
          "bundle jwt+ownership+ratelimit (1 module)", "native chain jwt_authn+rbac+local_ratelimit", "rps", at_least=0.9)
    ratio("chain jwt+ownership+ratelimit (3 modules) throughput >= 0.8x native chain",
          "chain jwt+ownership+ratelimit (3 modules)", "native chain jwt_authn+rbac+local_ratelimit", "rps", at_least=0.8)
    ratio("jwt ES256 on native jwt_authn's payload >= 0.9x native jwt_authn alone (both verifying every token)",
          "jwt ES256 on native jwt_authn's payload, no cache (meshward)", "jwt_authn ES256 (native, no cache)", "rps", at_least=0.9)
    ratio("ratelimit (meshward, not limited) throughput >= 0.9x do-nothing wasm floor", "ratelimit (meshward, not limited)",
          "do-nothing wasm filter (floor)", "rps", at_least=0.9)
    ratio("bundle auditing every request >= 0.9x the same bundle without records", "bundle jwt+ownership+ratelimit, audit record of every request (1 module)",
          "bundle jwt+ownership+ratelimit (1 module)", "rps", at_least=0.9)
    ratio("audit records signed every 64 >= 0.9x the same records unsigned",
          "bundle jwt+ownership+ratelimit, audit record of every request, signed every 64 (1 module)",
          "bundle jwt+ownership+ratelimit, audit record of every request (1 module)", "rps", at_least=0.9)
    ratio("east-west workload rule >= 0.9x the do-nothing wasm floor (both over mTLS)", f"{EAST_WEST}ownership workload rule (meshward)",
          f"{EAST_WEST}do-nothing wasm filter (floor)", "rps", at_least=0.9)
    ratio("gRPC protovalidate field rules >= 0.9x the same stage with field_rules: off",
          f"{GRPC_RULES_ROW}grpc stage, message decoded and its field rules checked (meshward)",
          f"{GRPC_RULES_ROW}grpc stage, message decoded, field_rules: off (meshward)", "rps", at_least=0.9)
    ratio("GraphQL persisted query priced by the schema >= 0.9x the do-nothing wasm floor reading the body",
          f"{GRAPHQL_ROW}graphql persisted query priced by the schema, list size from a variable (meshward)", f"{GRAPHQL_ROW}do-nothing wasm filter reading the body (floor)", "rps", at_least=0.9)
    ratio("GraphQL persisted query >= 0.9x the do-nothing wasm floor reading the body", f"{GRAPHQL_ROW}graphql persisted query (meshward)",
          f"{GRAPHQL_ROW}do-nothing wasm filter reading the body (floor)", "rps", at_least=0.9)
    ratio("gRPC unary: grpc stage >= 0.9x the do-nothing wasm floor reading the body", f"{GRPC_ROW}grpc stage, message checked (meshward)",
          f"{GRPC_ROW}do-nothing wasm filter (floor)", "rps", at_least=0.9)
    ratio("bundle memory < 4-module chain memory", "bundle jwt+schema+ownership+ratelimit (1 module)",
          "chain jwt+schema+ownership+ratelimit (4 modules)", "memory_bytes", at_most=0.999)
    for name, size in sizes.items():
        limit = 3 if name == "meshward_schema.wasm" else None if name == "meshward.wasm" else 1
        if limit is not None:
            out.append({"target": f"{name} < {limit} MiB", "measured": f"{size / 2**20:.2f} MiB", "met": size < limit * 2**20})
    return out


class Running:
    """One scenario's Envoy, started once and kept for every round."""

    def __init__(self, sc: Scenario, upstream: Envoy, work: Path, fleet_port: int | None = None):
        self.sc = sc
        clusters = [static_cluster("fleet", fleet_port, http2=True)] if sc.fleet else []
        self.dir = Path(tempfile.mkdtemp(dir=work))
        cfg = build_config(upstream.port, sc.plugins, clusters=clusters, native_filters=sc.native)
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        if sc.rate_limits:
            hcm["route_config"]["virtual_hosts"][0]["rate_limits"] = sc.rate_limits
        if sc.audit:
            hcm["access_log"] = [audit_access_log(self.dir / "audit.log")]
        if sc.mtls:
            cfg = with_tls_listener(cfg, east_west_pki(work))
        self.env = Envoy(cfg, concurrency=1)
        self.env.start()
        pin(self.env.proc.pid, MEASURED_CPUS)
        self.front = None
        self.port = self.env.port
        if sc.mtls:
            self.front = Envoy(caller_config(self.env.port, east_west_pki(work)), concurrency=1)
            self.front.start()
            pin(self.front.proc.pid, LOAD_CPUS)
            self.port = self.front.port
        headers = sc.headers
        if sc.new_deliveries:
            line = new_deliveries(self.dir, sc.body, 1).read_text().split("\t")
            headers = {**sc.headers, "webhook-id": line[0], "webhook-timestamp": line[1], "webhook-signature": line[2].strip()}
        if sc.new_keys:
            headers = {**headers, "idempotency-key": f"probe-{uuid.uuid4()}"}
        if sc.grpc:
            probe = grpc_probe(self.port, sc.path, headers, sc.body)
        else:
            probe = self.env._http(self.port, "POST" if sc.body is not None else "GET", sc.path, headers, sc.body)
        if probe.status != 200:
            self.stop()
            raise RuntimeError(f"{sc.name}: probe answered {probe.status} {probe.body[:200]!r}")
        self.script = wrk_script(self.dir, sc.headers, sc.body, new_keys=sc.new_keys)
        if sc.grpc:
            (self.dir / "message.bin").write_bytes(sc.body)

    def run(self, duration: int, connections: int) -> dict:
        script = self.script
        if self.sc.new_deliveries:
            # More fresh deliveries than any run sends (non-200 answers would show a shortfall).
            script = wrk_script(self.dir, self.sc.headers, self.sc.body, deliveries=new_deliveries(self.dir, self.sc.body, 40_000 * duration))
        cpu_before = cpu_seconds(self.env)
        if self.sc.flood is not None:
            forged = max(1, round(connections * FLOOD_SHARE))
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                flood = pool.submit(run_wrk, self.port, self.sc.path, flood_script(self.dir, self.sc.flood), duration, forged)
                r = run_wrk(self.port, self.sc.path, script, duration, max(1, connections - forged))
                f = flood.result()
            # The forged requests are all refused (401), as they must be.
            r["flood_rps"], r["flood_refused"] = f["rps"], f["non_200"] == f["requests"]
        elif self.sc.grpc:
            r = run_h2load(self.port, self.sc.path, self.sc.headers, self.dir / "message.bin", duration, connections)
        else:
            r = run_wrk(self.port, self.sc.path, script, duration, connections)
        # What one request costs the measured Envoy in CPU.
        r["cpu_us_per_request"] = (cpu_seconds(self.env) - cpu_before) * 1e6 / max(1, r["requests"])
        return r

    def stop(self) -> None:
        for env in (self.env, self.front):
            if env is not None:
                env.stop()
                env.cleanup()


def memory_targets(memory: list[dict]) -> list[dict]:
    """The footprint issue's goals for the bundle with the whole crAPI contract, as `meshward
    render` deploys it."""
    bundle4 = next((m for m in memory if m["name"] == CRAPI_AS_RENDERED), None)
    if bundle4 is None:
        return []
    return [
        {"target": "bundle with crAPI: RSS over plain Envoy at 2 workers <= 40 MiB", "measured": f"{bundle4['over_plain_bytes_2w'] / 2**20:.0f} MiB",
         "met": bundle4["over_plain_bytes_2w"] <= 40 * 2**20},
        {"target": "bundle with crAPI: RSS per additional worker <= 5 MiB", "measured": f"{bundle4['per_extra_worker_bytes'] / 2**20:.1f} MiB",
         "met": bundle4["per_extra_worker_bytes"] <= 5 * 2**20},
        {"target": "bundle with crAPI: configuration <= 50 ms per worker", "measured": f"{bundle4['config_ms_2w']:.0f} ms",
         "met": bundle4["config_ms_2w"] is not None and bundle4["config_ms_2w"] <= 50},
    ]


def policy_test_rate(cases: int = 1000, rounds: int = 3) -> dict:
    """`meshward test` on the orders example: `cases` cases, each with its own token (a
    signature the module has not seen), in the bundle, the module compiled once (its cache
    filled by a first run, timed apart); against one case, so loading is counted apart too.
    Median of `rounds`."""
    import yaml
    example = REPO / "examples" / "orders"
    base = yaml.safe_load((example / "policy.test.yaml").read_text())
    work = Path(tempfile.mkdtemp(prefix="meshward-test-bench-"))

    def timed(n: int) -> float:
        spec = dict(base)
        spec["cases"] = []
        for i in range(n):
            case = json.loads(json.dumps(base["cases"][i % len(base["cases"])]))
            case["name"] = f"{i} {case['name']}"
            if "token" in case["request"]:
                case["request"]["token"]["claims"]["sub"] = f"user{i}"
            spec["cases"].append(case)
        path = work / f"cases-{n}.yaml"
        path.write_text(yaml.safe_dump(spec))
        started = time.perf_counter()
        r = subprocess.run([str(REPO / "target" / "release" / "meshward"), "test", str(example / "policy.yaml"), str(path), "--form", "bundle",
                            "--modules", str(DIST)], capture_output=True, text=True, timeout=300, env={**os.environ, "MESHWARD_CACHE_DIR": str(work / "cache")})
        elapsed = time.perf_counter() - started
        if r.returncode != 0:
            raise RuntimeError(f"meshward test failed: {r.stdout[-2000:]}{r.stderr}")
        return elapsed

    compiling = timed(1)
    one = statistics.median(timed(1) for _ in range(rounds))
    all_ = statistics.median(timed(cases) for _ in range(rounds))
    shutil.rmtree(work, ignore_errors=True)
    return {"cases": cases, "seconds": all_, "one_case_seconds": one, "first_run_seconds": compiling,
            "cases_per_second": (cases - 1) / max(all_ - one, 1e-9)}


def main() -> int:
    ap = argparse.ArgumentParser(description="meshward benchmarks")
    ap.add_argument("--duration", type=int, default=3, help="seconds per scenario per round")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--json", default=str(REPO / "bench-results.json"))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each scenario reports its median round")
    ap.add_argument("--only", help="regex: only the scenarios it matches (and the ones they are compared with)")
    ap.add_argument("--memory-only", action="store_true", help="only the footprint rows (RSS and configuration time at 1 and 2 workers)")
    ap.add_argument("--first-seconds-rounds", type=int, default=3,
                    help="rounds of the first-seconds rows (tests/first_seconds.py: just started, right after a push); 0 skips them")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: run `make system-deps`", file=sys.stderr)
        return 2
    keys = KeyRing()
    if args.memory_only:
        return print_memory(footprint(keys))
    plan = scenarios(keys)
    if args.only:
        wanted = [sc for sc in plan if re.search(args.only, sc.name)]
        needed = {sc.baseline for sc in wanted} | {x.name for x in plan for sc in wanted if sc.compare and x.name.startswith(sc.compare) and "native" in x.name}
        plan = [sc for sc in plan if sc in wanted or sc.name in needed]
    upstream = Envoy(upstream_config(), concurrency=1)
    upstream.start()
    pin(upstream.proc.pid, LOAD_CPUS)
    rounds: dict[str, list[dict]] = {sc.name: [] for sc in plan}
    work = Path(tempfile.mkdtemp(prefix="meshward-bench-"))
    running: list[Running] = []
    redis_server = engine = None
    if any(sc.fleet for sc in plan):
        # The fleet engine and its Redis run beside the upstream, off the measured core.
        redis_server = RedisServer()
        engine = FleetEngine(redis_server.port, FLEET_LIMITS)
        for pid in (redis_server.proc.pid, engine.proc.pid):
            pin(pid, LOAD_CPUS)
    try:
        # Every scenario's Envoy is up (idle) for the whole run, so rounds can interleave short
        # runs of all of them: a slow spell of the shared machine hits every scenario alike.
        for sc in plan:
            running.append(Running(sc, upstream, work, engine.port if engine else None))
            running[-1].run(2, args.connections)  # warm-up
        for round_no in range(args.rounds):
            for one in running:
                r = one.run(args.duration, args.connections)
                rounds[one.sc.name].append(r)
                print(f"  {one.sc.name:<50} {r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
                      + (f"  (round {round_no + 1})" if args.rounds > 1 else ""), flush=True)
        # Each scenario's median round by throughput (non-200 answers of any round count).
        results = []
        for one in running:
            runs = sorted(rounds[one.sc.name], key=lambda r: r["rps"])
            r = dict(runs[len(runs) // 2], non_200=sum(x["non_200"] for x in runs), rounds=[round(x["rps"]) for x in rounds[one.sc.name]],
                     cpu_us_per_request=sorted(x["cpu_us_per_request"] for x in runs)[len(runs) // 2])
            r.update(name=one.sc.name, compare=one.sc.compare, baseline=one.sc.baseline, memory_bytes=memory_bytes(one.env),
                     config_ms=config_ms(one.env) if one.sc.plugins else None)
            results.append(r)
    finally:
        for one in running:
            one.stop()
        upstream.stop()
        upstream.cleanup()
        for thing in (engine, redis_server):
            if thing is not None:
                thing.stop()

    memory = [] if args.only else footprint(keys)
    cases = None if args.only else policy_test_rate()

    # A VM's first seconds, after start and after a push, one Envoy at a time.
    from first_seconds import ROWS, measure, table, targets as first_targets
    first_plan = [sc for sc in plan if sc.name in ROWS]
    first = measure(first_plan, 10, 5, args.first_seconds_rounds, args.connections, log=lambda line: print(line, flush=True)) \
        if first_plan and args.first_seconds_rounds else {}

    by_name = {r["name"]: r for r in results}
    for r in results:
        r["vs_plain"] = r["rps"] / by_name[r["baseline"]]["rps"]
        native = next((x for x in results if r["compare"] and x["name"].startswith(r["compare"]) and x is not r and "native" in x["name"]), None)
        r["vs_native"] = r["rps"] / native["rps"] if native else None
    sizes = {p.name: p.stat().st_size for p in sorted(DIST.glob("*.wasm"))}
    report = {
        "date": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
        "settings": {"envoy_concurrency": 1, "wrk": f"-t1 -c{args.connections} -d{args.duration}s", "upstream": "envoy direct_response", "rounds": args.rounds},
        "results": results,
        "hostcall_us": hostcall_costs({r["name"]: r for r in results}),
        "memory": memory,
        "first_seconds": first,
        "meshward_test": cases,
        "module_bytes": sizes,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"{'scenario':<50} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'vs plain':>8} {'vs native':>9} {'cpu µs':>7} {'mem MiB':>7} {'config ms':>9} {'non-200':>7}")
    for r in results:
        native = f"{r['vs_native']:.2f}x" if r["vs_native"] else "-"
        configured = f"{r['config_ms']:.1f}" if r["config_ms"] is not None else "-"
        print(f"{r['name']:<50} {r['rps']:>9.0f} {r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['vs_plain']:>7.2f}x {native:>9} {r['cpu_us_per_request']:>7.1f} "
              f"{r['memory_bytes'] / 2**20:>7.1f} {configured:>9} {r['non_200']:>7}")
    print("\nmodule sizes: " + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sizes.items()))
    if report["hostcall_us"]:
        print("\nwhat one hostcall adds to a request (µs): " + ", ".join(f"{k} {v}" for k, v in report["hostcall_us"].items()))
    if memory:
        print_memory(memory)
    if cases:
        print(f"\nmeshward test, orders example in the bundle, a new token per case: {cases['cases']} cases in {cases['seconds']:.2f} s "
              f"(one case: {cases['one_case_seconds']:.2f} s; the first run, compiling the module: {cases['first_run_seconds']:.2f} s), "
              f"{cases['cases_per_second']:.0f} cases/s")
    if first:
        print("\nthe first 10 s after start and after a push (h2load, every request timed; tests/first_seconds.py):")
        print("\n".join(table(first, 10)))
    report["targets"] = targets(by_name, sizes) + memory_targets(memory) + (first_targets(first) if first else [])
    if cases:
        report["targets"].append({"target": f"meshward test: {cases['cases']} cases < 2 s (issue #37)", "measured": f"{cases['seconds']:.2f} s",
                                  "met": cases["seconds"] < 2})
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print("\ntargets (from the benchmark issue; read, not asserted):")
    for t in report["targets"]:
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
    print(f"results written to {args.json}")
    bad = [r["name"] for r in results if r["non_200"]]
    if bad:
        print(f"scenarios with non-200 answers (their numbers do not count): {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
