"""East-west calls decided by the calling workload's identity: two real Envoys with mTLS between
them. The callee's sidecar runs jwt + ownership + ratelimit (as separate modules and as the
bundle) behind a TLS listener that verifies client certificates against the mesh CA; the
caller's sidecar presents the certificate of the workload it serves (SPIFFE URI SANs as Istio
issues them, made here). A caller with the wrong SPIFFE ID, a certificate from another CA, no
certificate, or a header claiming an identity is refused; per-namespace quotas count per
namespace."""
from __future__ import annotations

import http.client
import json
import ssl
import time

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from harness import FORMS, Envoy, Response, as_deployed, audit_access_log, build_config, plugin, static_cluster
from test_jwt_envoy import jwt_config
from test_xds_mtls import TRUST, Issuer
from tokens import bearer

BILLING = f"{TRUST}/ns/billing/sa/billing"
ORDERS = f"{TRUST}/ns/orders/sa/orders"
DESK = f"{TRUST}/ns/support/sa/desk"
# The same namespace and service account names in a federated trust domain.
PARTNER = "spiffe://partner.test/ns/billing/sa/billing"
CALLERS = {"billing": BILLING, "orders": ORDERS, "desk": DESK, "partner": PARTNER}


def make_pki(d) -> dict:
    """The mesh CA, a certificate per calling workload (and one from a rogue CA), the callee's."""
    mesh, rogue = Issuer("mesh CA"), Issuer("rogue CA")
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    certs = {name: mesh.issue(d, name, spiffe_id, client) for name, spiffe_id in CALLERS.items()}
    certs["rogue"] = rogue.issue(d, "rogue", BILLING, client)
    # Two URI SANs from the mesh CA: the billing workload's first.
    certs["double"] = mesh.issue(d, "double", [BILLING, ORDERS], client)
    certs["callee"] = mesh.issue(d, "callee", f"{TRUST}/ns/invoices/sa/invoices", ExtendedKeyUsageOID.SERVER_AUTH)
    certs["ca"] = mesh.write(d / "ca.pem")
    return certs


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def callee_plugins(keys) -> list[dict]:
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/internal/"}}, {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    ownership = {"unmatched": "deny", "rules": [
        {"name": "settle", "match": {"template": "/internal/invoices/{id}/settle", "methods": ["POST"]},
         "workloads": [BILLING], "require_user": False},
        {"name": "reports", "match": {"path": "/internal/reports"}, "workloads": [f"{TRUST}/", "spiffe://partner.test/"], "require_user": False},
        # A user's request that crossed a mesh workload: the user's own token decides the tenant.
        {"name": "tenant-orders", "match": {"template": "/tenants/{tenant}/orders"}, "workloads": [f"{TRUST}/"],
         "owner": [{"path_param": "tenant", "claim": "tenant"}]},
        # The support desk acting for an agent: both the workload and the agent's exchanged token.
        {"name": "refund", "match": {"template": "/invoices/{id}/refund", "methods": ["POST"]},
         "workloads": [f"{TRUST}/ns/support/"], "scopes": ["refunds"],
         "claims": [{"claim": "act.sub", "one_of": [DESK]}]},
    ]}
    ratelimit = {"rules": [{"name": "reports-per-namespace", "match": {"path": "/internal/reports"},
                            "key": ["workload.namespace"], "limit": {"requests": 3, "per": "60s"}}]}
    return [plugin("jwt", jwt), plugin("ownership", ownership), plugin("ratelimit", ratelimit)]


def with_tls_listener(config: dict, pki) -> dict:
    """The callee's listener as Istio's STRICT mode sets it up: the mesh CA verifies any client
    certificate; one is asked for, not required, so a caller without one reaches the filters
    (which must refuse it themselves). Like Istio's inbound listeners, its connection manager
    appends the peer certificate's details (URI SANs included) to `x-forwarded-client-cert`."""
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]
    hcm = chain["filters"][0]["typed_config"]
    hcm["forward_client_cert_details"] = "APPEND_FORWARD"
    hcm["set_current_client_cert_details"] = {"subject": True, "uri": True, "dns": True}
    cert, key = pki["callee"]
    chain["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": False,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
            "validation_context": {"trusted_ca": {"filename": pki["ca"]}},
        }}}
    return config


def caller_config(callee_port: int, pki, plugins: list[dict] = ()) -> dict:
    """The calling workloads' sidecar (running `plugins`): plain HTTP in, mTLS out with the
    certificate of the workload named by `x-as` (one cluster per workload)."""
    config = build_config(callee_port, list(plugins))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes, clusters = [], []
    for name in [*CALLERS, "rogue", "double"]:
        cluster = static_cluster(f"as_{name}", callee_port)
        cert, key = pki[name]
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
                "validation_context": {"trusted_ca": {"filename": pki["ca"]}},
            }}}
        clusters.append(cluster)
        routes.append({"match": {"prefix": "/", "headers": [{"name": "x-as", "string_match": {"exact": name}}]},
                       "route": {"cluster": f"as_{name}"}})
    hcm["route_config"]["virtual_hosts"][0]["routes"] = routes
    config["static_resources"]["clusters"] = clusters
    return config


@pytest.fixture(scope="module", params=FORMS)
def mesh(request, upstream, keys, pki):
    plugins = as_deployed(request.param, callee_plugins(keys))
    config = with_tls_listener(build_config(upstream.port, plugins), pki)
    callee = Envoy(config)
    if request.param == "bundle":
        # Every request audited: the record names the calling workload.
        plugins[0]["config"]["audit"] = {"records": "all"}
        config = with_tls_listener(build_config(upstream.port, plugins), pki)
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["access_log"] = [audit_access_log(callee.dir / "audit.log")]
        callee.config = config
    with callee:
        with Envoy(caller_config(callee.port, pki), concurrency=1) as caller:
            yield caller, callee
        caller.cleanup()
    callee.cleanup()


def call(caller: Envoy, who: str, path: str, headers: dict | None = None, method: str = "POST") -> Response:
    return caller.request(path, {"x-as": who, **(headers or {})}, method=method, body=b"{}" if method == "POST" else None)


def direct(callee: Envoy, pki, path: str, headers: dict, method: str = "POST") -> Response:
    """To the callee's listener over TLS without a client certificate."""
    context = ssl.create_default_context(cafile=pki["ca"])
    conn = http.client.HTTPSConnection("127.0.0.1", callee.port, context=context, timeout=10)
    try:
        conn.request(method, path, body=b"{}", headers={"content-type": "application/json", **headers})
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()


def denied(r: Response, status: int, reason: str) -> bool:
    return r.status == status and r.reason == reason and not r.reached_upstream


def agent(keys, **claims) -> dict:
    return bearer(keys.token("ES256", sub="agent7", scope="refunds", **claims))


def test_only_the_named_workload_may_call(mesh):
    caller, callee = mesh
    assert call(caller, "billing", "/internal/invoices/7/settle").reached_upstream
    r = call(caller, "orders", "/internal/invoices/7/settle")
    assert denied(r, 403, "workload_not_allowed"), r
    # The denial's log line names the caller it refused.
    line = callee.wait_for_log(r'meshward_ownership: \{[^\n]*"workload_not_allowed"[^\n]*').group(0)
    assert json.loads(line.split(": ", 1)[1])["workload"] == ORDERS, line


def test_a_certificate_with_two_uri_sans_passes_as_neither(mesh):
    """An X.509-SVID carries one URI SAN. Envoy's connection property holds only the first
    (BILLING here, which may settle); the certificate names no workload at all."""
    caller, callee = mesh
    r = call(caller, "double", "/internal/invoices/7/settle")
    assert denied(r, 403, "missing_workload"), r
    r = call(caller, "double", "/internal/reports", method="GET")
    assert denied(r, 403, "missing_workload"), r


def test_a_certificate_from_another_ca_never_reaches_the_filters(mesh):
    caller, callee = mesh
    r = call(caller, "rogue", "/internal/invoices/7/settle")
    assert r.status == 503 and not r.reached_upstream, r  # the handshake failed
    failures = callee.admin("/stats?filter=ssl.fail_verify_error$").body.decode()
    assert any(int(line.rsplit(": ", 1)[1]) >= 1 for line in failures.splitlines()), failures


@pytest.mark.parametrize("forged", [
    {},
    {"x-forwarded-client-cert": f"By={TRUST}/ns/invoices/sa/invoices;URI={BILLING}"},
    {"x-spiffe-id": BILLING, "x-meshward-workload": BILLING},
], ids=["nothing", "xfcc header", "identity headers"])
def test_no_certificate_is_no_workload_whatever_the_headers_say(mesh, pki, forged):
    _, callee = mesh
    r = direct(callee, pki, "/internal/invoices/7/settle", forged)
    assert denied(r, 403, "missing_workload"), r


def test_identity_headers_from_the_caller_never_reach_the_service(mesh):
    """Headers that look like an identity meshward establishes are the caller's words: removed,
    whatever the rule decides (the request passes as the certificate's workload)."""
    caller, _ = mesh
    forged = {"x-spiffe-id": ORDERS, "x-meshward-workload": ORDERS, "X-Meshward-Principal": "admin"}
    r = call(caller, "billing", "/internal/invoices/7/settle", forged)
    assert r.reached_upstream, r
    seen = r.upstream_headers()
    assert not [h for h in seen if h == "x-spiffe-id" or h.startswith("x-meshward-")], seen


def test_a_workload_acting_for_a_user(mesh, keys, pki):
    caller, callee = mesh
    exchanged = agent(keys, act={"sub": DESK})
    assert call(caller, "desk", "/invoices/7/refund", exchanged).reached_upstream
    # The agent's own token, not exchanged by the desk: the actor is not bound.
    assert denied(call(caller, "desk", "/invoices/7/refund", agent(keys)), 403, "missing_claim")
    # The exchanged token replayed by another workload, or without a certificate.
    assert denied(call(caller, "billing", "/invoices/7/refund", exchanged), 403, "workload_not_allowed")
    assert denied(direct(callee, pki, "/invoices/7/refund", exchanged), 403, "missing_workload")
    # The workload alone, without the user.
    assert denied(call(caller, "desk", "/invoices/7/refund"), 401, "missing_token")


def test_quotas_per_calling_namespace(mesh):
    caller, _ = mesh
    for _ in range(3):
        assert call(caller, "billing", "/internal/reports", method="GET").reached_upstream
    r = call(caller, "billing", "/internal/reports", method="GET")
    assert denied(r, 429, "rate_limited"), r
    # Another namespace has its own budget; so has the same namespace name in another trust
    # domain (keys are qualified: `partner.test/ns/billing`, not `billing`).
    assert call(caller, "orders", "/internal/reports", method="GET").reached_upstream
    assert call(caller, "partner", "/internal/reports", method="GET").reached_upstream
    assert json.loads(r.body)["reason"] == "rate_limited"


@pytest.mark.parametrize("mesh", ["bundle"], indirect=True)  # audit records are made by the bundle
def test_the_audit_record_names_the_calling_workload(mesh):
    caller, callee = mesh
    call(caller, "billing", "/internal/invoices/8/settle")
    call(caller, "orders", "/internal/invoices/9/settle")
    log = callee.dir / "audit.log"
    deadline = time.monotonic() + 10
    wanted = {"/internal/invoices/8/settle": (BILLING, 200, "allowed"), "/internal/invoices/9/settle": (ORDERS, 403, "denied")}
    while time.monotonic() < deadline:
        found = {}
        for line in (log.read_text().splitlines() if log.exists() else []):
            record = json.loads(line)
            if record["path"] in wanted:
                ownership = next(s for s in record["stages"] if s["stage"] == "ownership")
                found[record["path"]] = (record["workload"], record["status"], ownership["decision"])
        if found == wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"{found} != {wanted}")


@pytest.fixture(scope="module")
def hops(mesh, keys, pki):
    """The user's first hop: a sidecar verifying the user's token, forwarding it (or not) to the
    callee over mTLS."""
    _, callee = mesh
    started = []
    try:
        for forward in (True, False):
            jwt = jwt_config(keys)
            jwt["providers"]["main"]["forward"] = forward
            jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
            env = Envoy(caller_config(callee.port, pki, [plugin("jwt", jwt)]), concurrency=1)
            env.start()
            started.append(env)
        yield started[0], started[1], callee
    finally:
        for env in started:
            env.stop()
            env.cleanup()


def test_the_users_token_travels_and_each_hop_verifies_it(hops, keys):
    forwarding, stripping, _ = hops
    alice = bearer(keys.token("ES256", sub="alice", tenant="acme"))
    forged = {"x-jwt-sub": "admin", "x-jwt-tenant": "globex"}
    r = call(forwarding, "billing", "/tenants/acme/orders", {**alice, **forged}, method="GET")
    assert r.reached_upstream, r
    seen = r.upstream_headers()
    # Claim headers are the callee's own, from the token; the caller's copies never arrive.
    assert seen["x-jwt-sub"] == ["alice"] and seen["x-jwt-tenant"] == ["acme"], seen
    # The callee verified the forwarded token itself (its claim headers come from it) and, not
    # forwarding, keeps it from its service.
    assert "authorization" not in seen, seen
    assert denied(call(forwarding, "billing", "/tenants/globex/orders", alice, method="GET"), 403, "tenant_boundary")
    # A first hop that strips the token leaves only headers behind: the next hop trusts none.
    r = call(stripping, "billing", "/tenants/acme/orders", alice, method="GET")
    assert denied(r, 401, "missing_token"), r
