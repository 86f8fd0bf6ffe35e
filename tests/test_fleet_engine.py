"""`meshward-fleet` as an operable service: its command line, the gRPC health service it serves
for readiness (asked with grpcio, as a Kubernetes gRPC probe asks), Redis credentials from a
file, TLS to Redis (Debian's redis-server with a test CA, client certificates required), the warning about a Redis without persistence, and a graceful shutdown: two engines on one
Redis behind one Envoy cluster that health-checks them, one stopped (SIGTERM) while calls are in
flight refuses none of them, and one killed is routed around once Envoy's check has it down."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid

import grpc
import pytest

from fleet import FLEET, FleetEngine, RedisServer, free_port
from harness import Envoy, build_config, http_server, plugin
from test_fleet_faults_envoy import CLUSTER, Service, policy_plugins
from test_webhook_envoy import standard

SERVING, NOT_SERVING = 1, 2


def health(port: int, service: str = "") -> int:
    """grpc.health.v1.Health/Check, encoded by hand (HealthCheckRequest{service},
    HealthCheckResponse{status}): the status number."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda s: s, response_deserializer=lambda b: b)
        name = service.encode()
        answer = check((b"\n" + bytes([len(name)]) + name) if name else b"", timeout=2)
    assert answer[:1] == b"\x08", answer
    return answer[1]


def wait_for(predicate, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def run_engine(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLEET), *args], capture_output=True, text=True, timeout=timeout)


def test_the_command_line_names_what_is_wrong():
    help_text = run_engine("--help").stdout
    for flag in ("--config", "--listen", "--redis", "--redis-password-file", "--redis-ca-file", "--redis-cert-file", "--redis-key-file",
                 "--redis-wait-seconds", "--drain-seconds", "--recovery-seconds"):
        assert flag in help_text
    version = run_engine("--version")
    assert version.returncode == 0 and version.stdout.startswith("meshward-fleet ")
    typo = run_engine("--lsten", "x")
    assert typo.returncode != 0 and "--lsten" in typo.stderr and "--listen" in typo.stderr
    missing = run_engine("--config", "/nonexistent/fleet.yaml")
    assert missing.returncode == 1 and "--config /nonexistent/fleet.yaml" in missing.stderr
    bad_listen = run_engine("--config", "/dev/null", "--listen", "localhost")
    assert bad_listen.returncode != 0 and "--listen" in bad_listen.stderr
    scheme = run_engine("--config", "/dev/null", "--redis", "http://127.0.0.1:6380")
    assert scheme.returncode == 1 and "--redis http://127.0.0.1:6380" in scheme.stderr and "rediss://" in scheme.stderr


def test_health_follows_redis_and_a_missing_append_only_file_is_warned_about():
    volatile = RedisServer()
    engine = FleetEngine(volatile.port)
    try:
        assert "warning: Redis has no append-only file" in engine.log()
        for service in ("", "meshward.fleet.v1.SeenSet", "envoy.service.ratelimit.v3.RateLimitService"):
            assert health(engine.port, service) == SERVING
        volatile.stop()
        wait_for(lambda: health(engine.port) == NOT_SERVING, what="NOT_SERVING with Redis down")
        volatile.start()
        wait_for(lambda: health(engine.port) == SERVING, what="SERVING with Redis back")
        assert "Redis does not answer: NOT_SERVING" in engine.log() and "Redis answers again: SERVING" in engine.log()
    finally:
        engine.stop()
        volatile.stop()
    durable = RedisServer(durable=True)
    engine = FleetEngine(durable.port)
    try:
        assert "warning" not in engine.log(), engine.log()
    finally:
        engine.stop()
        durable.stop()


def test_redis_credentials_come_from_a_file():
    password = uuid.uuid4().hex
    redis_server = RedisServer()
    redis_server.client().config_set("requirepass", password)
    secret = tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False)
    secret.write(password + "\n")
    secret.close()
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(f"redis: redis://127.0.0.1:{redis_server.port}\n")
    config.close()
    try:
        # Without the password: refused at start, saying why (after its start-up retries).
        without = run_engine("--config", config.name, "--listen", "127.0.0.1:0", "--redis-wait-seconds", "1", timeout=30)
        assert without.returncode == 1 and "NOAUTH" in without.stderr, without.stderr
        assert password not in without.stderr
        engine = FleetEngine(redis_server.port, args=("--redis-password-file", secret.name))
        try:
            assert health(engine.port) == SERVING
            assert password not in engine.log()
        finally:
            engine.stop()
        empty = tempfile.NamedTemporaryFile("w", suffix=".secret", delete=False)
        empty.close()
        r = run_engine("--config", config.name, "--redis-password-file", empty.name)
        assert r.returncode == 1 and "--redis-password-file" in r.stderr and "empty" in r.stderr
        os.unlink(empty.name)
    finally:
        os.unlink(secret.name)
        os.unlink(config.name)
        redis_server.stop()


def pki(directory) -> dict:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate it signed, and a
    second CA that signed nothing here (PEM files in `directory`)."""
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    paths = {}

    def write(name: str, data: bytes) -> None:
        paths[name] = os.path.join(directory, name)
        with open(paths[name], "wb") as f:
            f.write(data)

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def ca(name: str):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(ca_key, ca_cert, name: str, usage, san=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("meshward test CA")
    server_key, server_cert = leaf(ca_key, ca_cert, "redis", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = leaf(ca_key, ca_cert, "meshward-fleet", ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other_ca = ca("another CA")
    write("ca.pem", ca_cert.public_bytes(serialization.Encoding.PEM))
    write("other-ca.pem", other_ca.public_bytes(serialization.Encoding.PEM))
    write("server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    write("server.key", key_pem(server_key))
    write("client.pem", client_cert.public_bytes(serialization.Encoding.PEM))
    write("client.key", key_pem(client_key))
    return paths


def test_redis_over_tls_with_certificates_from_files(tmp_path):
    files = pki(str(tmp_path))
    port = free_port()
    redis_tls = subprocess.Popen(
        [shutil.which("redis-server"), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--tls-cert-file", files["server.pem"], "--tls-key-file", files["server.key"],
         "--tls-ca-cert-file", files["ca.pem"], "--tls-auth-clients", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp_path / "fleet.yaml"
    config.write_text("limits: []\n")
    url = f"rediss://127.0.0.1:{port}"
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, what="Redis TLS port")
        engine = FleetEngine(port, args=("--redis", url, "--redis-ca-file", files["ca.pem"],
                                         "--redis-cert-file", files["client.pem"], "--redis-key-file", files["client.key"]))
        try:
            assert health(engine.port) == SERVING
        finally:
            engine.stop()
        # No client certificate: Redis refuses the handshake. A CA that did not sign Redis's
        # certificate: the engine refuses Redis. Both exit saying so (after the start-up retries).
        refused = "cannot reach Redis at rediss://"
        for args, expected in [(("--redis-ca-file", files["ca.pem"]), refused),
                               (("--redis-ca-file", files["other-ca.pem"], "--redis-cert-file", files["client.pem"], "--redis-key-file", files["client.key"]), refused)]:
            r = run_engine("--config", str(config), "--listen", "127.0.0.1:0", "--redis", url, "--redis-wait-seconds", "1", *args, timeout=30)
            assert r.returncode == 1 and expected in r.stderr, r.stderr
        # TLS files with a plain URL, a certificate without its key: refused before connecting.
        plain = run_engine("--config", str(config), "--redis", f"redis://127.0.0.1:{port}", "--redis-ca-file", files["ca.pem"])
        assert plain.returncode == 1 and "rediss://" in plain.stderr
        half = run_engine("--config", str(config), "--redis", url, "--redis-cert-file", files["client.pem"])
        assert half.returncode != 0 and "--redis-key-file" in half.stderr
    finally:
        redis_tls.terminate()
        redis_tls.wait(timeout=10)


def engines_cluster(ports: list[int]) -> dict:
    """The engine's cluster with every engine in it, health-checked over grpc.health.v1 as a
    production cluster should be."""
    return {
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "health_checks": [{"timeout": "0.5s", "interval": "0.2s", "no_traffic_interval": "0.2s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                           "grpc_health_check": {}}],
        "load_assignment": {"cluster_name": CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}} for p in ports]}]},
    }


def test_two_engines_behind_one_health_checked_cluster_drain_and_fail_over():
    redis_server = RedisServer(durable=True)
    engines = [FleetEngine(redis_server.port, port=free_port(), args=("--drain-seconds", "5")) for _ in range(2)]
    service = http_server(Service, runs=__import__("collections").Counter(), during=None)
    webhook = dict(policy_plugins())["webhook"]
    cfg = build_config(service.server_address[1], [plugin("webhook", webhook)], clusters=[engines_cluster([e.port for e in engines])])
    env = Envoy(cfg, concurrency=2)
    env.start()
    try:
        wait_for(lambda: env.counter(f"cluster.{CLUSTER}.health_check.healthy") >= 2, what="both engines healthy")

        def deliver() -> int:
            body = json.dumps({"id": uuid.uuid4().hex}).encode()
            return env.request("/hooks/standard", standard(body), "POST", body).status

        assert [deliver() for _ in range(6)] == [200] * 6
        # Calls in flight when engine 0 is told to stop (Redis paused 0.6 s under them): they
        # finish.
        redis_server.proc.send_signal(signal.SIGSTOP)
        slow = threading.Timer(0.6, lambda: redis_server.proc.send_signal(signal.SIGCONT))
        slow.start()
        in_flight = []
        senders = [threading.Thread(target=lambda: in_flight.append(deliver())) for _ in range(4)]
        for t in senders:
            t.start()
        time.sleep(0.3)
        engines[0].proc.send_signal(signal.SIGTERM)
        for t in senders:
            t.join()
        slow.join()
        assert in_flight == [200] * 4, in_flight
        wait_for(lambda: engines[0].proc.poll() is not None, what="engine 0 to exit after draining")
        assert "SIGTERM: NOT_SERVING" in engines[0].log() and "stopped" in engines[0].log()
        # Engine 0 is gone (Envoy saw NOT_SERVING first); deliveries go on through engine 1.
        assert [deliver() for _ in range(6)] == [200] * 6
        # Engine 0 back, engine 1 killed (no drain): calls to it fail (503 + Retry-After, senders
        # retry) until Envoy's health check has it down; then none.
        engines[0].start()
        wait_for(lambda: health(engines[0].port) == SERVING, what="engine 0 serving again")
        engines[1].kill()
        wait_for(lambda: env.counter(f"cluster.{CLUSTER}.membership_healthy") == 1, what="engine 1 marked down")
        wait_for(lambda: deliver() == 200, what="a delivery through engine 0")
        assert [deliver() for _ in range(6)] == [200] * 6
    finally:
        env.stop()
        env.cleanup()
        for e in engines:
            e.stop()
        redis_server.stop()
        service.shutdown()
