"""The policy channel over mTLS: `meshward serve --xds` with a server certificate, a client CA
and the SPIFFE IDs it serves; real Envoys rendered with `render envoy --xds-cert ...`. Certificates
are made here (a CA, SPIFFE URI SANs as Istio issues them). A proxy with an allowed SPIFFE ID
gets the policy and enforces it; one with another ID, a certificate from another CA, or no
certificate at all gets nothing, and neither does a proxy expecting another server identity."""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import DIST, Envoy, EnvoyFailedToStart
from test_cli import Serve, meshward, wait_until

TRUST = "spiffe://meshward.test"
SERVER_ID = f"{TRUST}/ns/meshward/sa/meshward-serve"
POLICY = {"service": "orders", "stages": [{"ownership": {"unmatched": "deny", "rules": [
    {"name": "health", "match": {"path": "/health"}, "public": True},
    {"name": "orders", "match": {"prefix": "/orders"}, "scopes": ["orders:read"]}]}}]}


class Issuer:
    """A CA that issues end-entity certificates with one SPIFFE ID each."""

    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.name = subject
        self.cert = self._build(subject, self.key.public_key(), [x509.BasicConstraints(ca=True, path_length=0)],
                                extra_critical=[x509.KeyUsage(False, False, False, False, False, True, True, False, False)])

    def _build(self, subject, public_key, critical, extra_critical=(), extensions=()):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name if hasattr(self, "cert") else subject)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1)))
        for ext in [*critical, *extra_critical]:
            builder = builder.add_extension(ext, critical=True)
        for ext in extensions:
            builder = builder.add_extension(ext, critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue(self, directory, name: str, spiffe_id: str | list[str], usage) -> tuple[str, str]:
        """`spiffe_id`: one (an X.509-SVID), or several URI SANs (a certificate that is not one)."""
        key = ec.generate_private_key(ec.SECP256R1())
        ids = [spiffe_id] if isinstance(spiffe_id, str) else spiffe_id
        sans = [*(x509.UniformResourceIdentifier(i) for i in ids), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = self._build(x509.Name([]), key.public_key(), [x509.BasicConstraints(ca=False, path_length=None)],
                           extra_critical=[x509.SubjectAlternativeName(sans)], extensions=[x509.ExtendedKeyUsage([usage])])
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return str(cert_path), str(key_path)

    def write(self, path) -> str:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    mesh, rogue = Issuer("meshward test CA"), Issuer("rogue CA")
    server = ExtendedKeyUsageOID.SERVER_AUTH
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    return {
        "issuer": mesh,
        "ca": mesh.write(d / "ca.pem"),
        "serve": mesh.issue(d, "serve", SERVER_ID, server),
        "impostor-serve": mesh.issue(d, "impostor-serve", f"{TRUST}/ns/other/sa/other", server),
        "orders": mesh.issue(d, "orders", f"{TRUST}/ns/orders/sa/orders", client),
        "other": mesh.issue(d, "other", f"{TRUST}/ns/other/sa/other", client),
        "rogue": rogue.issue(d, "rogue", f"{TRUST}/ns/orders/sa/orders", client),
    }


def start_serve(pki, tmp_path, server="serve"):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(POLICY))
    cert, key = pki[server]
    return path, Serve(path, "separate", "xds", tmp_path, "--tls-cert", cert, "--tls-key", key, "--client-ca", pki["ca"],
                       "--allow-client", f"{TRUST}/ns/orders/")


def envoy_config(serve, policy, upstream, client=None, ca=None, server_id=SERVER_ID) -> dict:
    tls = [] if client is None else ["--xds-cert", client[0], "--xds-key", client[1], "--xds-ca", ca, "--xds-server-id", server_id]
    r = meshward("render", "envoy", policy, "--modules", DIST, "--listen", 0, "--admin", 0, "--upstream", f"127.0.0.1:{upstream.port}",
                 "--xds", f"127.0.0.1:{serve.port}", *tls)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def gets_nothing(config: dict) -> dict:
    """Starts an Envoy that should never receive its filter configuration: its listener stays
    warming, so it never becomes ready. Returns its `meshward_xds` cluster's counters."""
    env = Envoy(config, concurrency=1, start_timeout=6)
    stop, env.stop = env.stop, lambda: None  # keep it running to read what it tried
    try:
        with pytest.raises(EnvoyFailedToStart):
            env.start()
        text = env.admin("/stats?filter=^cluster.meshward_xds.").body.decode()
        return {k.strip(): int(v) for k, _, v in (line.partition(": ") for line in text.splitlines()) if v.strip().isdigit()}
    finally:
        stop()
        env.cleanup()


def test_a_proxy_with_an_allowed_spiffe_id_gets_the_policy_over_mtls(pki, upstream, tmp_path):
    policy, serve = start_serve(pki, tmp_path)
    try:
        serve.wait_for("xDS over mTLS, for proxies whose SPIFFE ID is spiffe://meshward.test/ns/orders/")
        with Envoy(envoy_config(serve, policy, upstream, pki["orders"], pki["ca"]), concurrency=1) as env:
            assert env.request("/health").reached_upstream
            refused = env.request("/orders/1")
            assert refused.status == 401 and refused.reason == "missing_principal", refused
            serve.wait_for("orders applied")
        env.cleanup()
    finally:
        serve.stop()


@pytest.mark.parametrize("client", ["other", "rogue", None], ids=["another SPIFFE ID", "another CA", "no certificate"])
def test_a_proxy_without_an_allowed_identity_gets_nothing(pki, upstream, tmp_path, client):
    policy, serve = start_serve(pki, tmp_path)
    try:
        config = envoy_config(serve, policy, upstream, pki[client] if client else None, pki["ca"])
        stats = gets_nothing(config)
        assert stats["cluster.meshward_xds.upstream_cx_total"] >= 1, stats  # it did try
        assert not any("applied" in line for line in serve.lines), serve.lines
        refused = [line for line in serve.lines if "refused 127.0.0.1:" in line]
        if client == "other":
            # The handshake succeeded (same CA); serve refused the SPIFFE ID and says so.
            assert refused and f"{TRUST}/ns/other/sa/other" in refused[0], serve.lines
        else:
            # The TLS handshake refused it: no stream ever reached serve.
            assert not refused, serve.lines
    finally:
        serve.stop()


def test_a_proxy_refuses_a_server_with_another_identity(pki, upstream, tmp_path):
    # serve's certificate is from the mesh CA, but names another workload than the proxy expects.
    policy, serve = start_serve(pki, tmp_path, server="impostor-serve")
    try:
        stats = gets_nothing(envoy_config(serve, policy, upstream, pki["orders"], pki["ca"]))
        assert stats["cluster.meshward_xds.ssl.fail_verify_san"] >= 1, stats
        assert not any("applied" in line or "refused" in line for line in serve.lines), serve.lines
    finally:
        serve.stop()


def test_tls_flags_come_together():
    r = meshward("serve", "p.yaml", "--xds", "127.0.0.1:0", "--tls-cert", "c.pem")
    assert r.returncode == 2 and "--tls-key <FILE>" in r.stderr, r.stderr
    r = meshward("serve", "p.yaml", "--xds", "127.0.0.1:0", "--tls-cert", "c", "--tls-key", "k", "--client-ca", "a", "--allow-client", "orders")
    assert r.returncode == 2 and "is not a SPIFFE ID" in r.stderr, r.stderr
    r = meshward("render", "envoy", "p.yaml", "--xds-cert", "c.pem")
    assert r.returncode == 2 and "--xds <HOST:PORT>" in r.stderr, r.stderr


def served_certificate(port: int, client) -> x509.Certificate:
    """The certificate serve presents now (a TLS handshake as a proxy would make it)."""
    import socket
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(*client)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_a_rotated_server_certificate_is_served_without_a_restart(pki, upstream, tmp_path):
    policy, serve = start_serve(pki, tmp_path)
    cert_path, key_path = pki["serve"]
    original = (open(cert_path, "rb").read(), open(key_path, "rb").read())
    try:
        first = served_certificate(serve.port, pki["orders"])
        # The issuer rotates serve's certificate in place (same SPIFFE ID, new key): renamed in.
        new_cert, new_key = pki["issuer"].issue(tmp_path, "serve-rotated", SERVER_ID, ExtendedKeyUsageOID.SERVER_AUTH)
        for new, old in ((new_key, key_path), (new_cert, cert_path)):
            shutil.copy(new, old + ".tmp")
            os.replace(old + ".tmp", old)
        serve.wait_for("the TLS certificate, key or client CA changed")
        wait_until(lambda: sum("xDS listening on" in line for line in serve.lines) >= 2)
        second = served_certificate(serve.port, pki["orders"])
        assert second.serial_number != first.serial_number and second == x509.load_pem_x509_certificate(open(new_cert, "rb").read())
        # A proxy connecting now verifies the new certificate and gets the policy.
        with Envoy(envoy_config(serve, policy, upstream, pki["orders"], pki["ca"]), concurrency=1) as env:
            assert env.request("/orders/1").reason == "missing_principal"
        env.cleanup()
        # A broken rotation (a key that is not PEM) keeps the running certificate.
        open(key_path, "w").write("not a key")
        serve.wait_for("refused the new TLS files")
        assert served_certificate(serve.port, pki["orders"]).serial_number == second.serial_number
    finally:
        serve.stop()
        open(cert_path, "wb").write(original[0])
        open(key_path, "wb").write(original[1])
