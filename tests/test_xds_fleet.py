"""`meshward serve --xds` for a fleet: no change lost across the fault matrix (the open-file
limit, a malformed write, a restart in the middle of a push, an instance lost while another
serves), with simulated proxies (`meshward-xds-sim`) and with real Envoys; and the simulation
checked against what a real Envoy sends."""

from __future__ import annotations

import subprocess
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml

from harness import Envoy
from xds_fleet import DIST, MESHWARD, Serve, Sim, free_port, write_policy

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


@pytest.fixture
def policy(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    write_policy(path, 100)
    return path


def edit(serve: Serve, policy: Path, requests: int) -> str:
    """Writes the policy with this limit; the version serve pushes for it."""
    mark = serve.mark()
    write_policy(policy, requests)
    return serve.serving(mark)[1]


def test_at_the_file_limit_a_change_still_reaches_every_connected_proxy(policy):
    """serve at an open-file limit of 128 holds 64 proxies: the 65th is closed at once (no
    queue, no spinning), and a policy edit is read and pushed to the 64 (before, the edit was
    refused with "Too many open files" and never tried again)."""
    port = free_port()
    serve = Serve(policy, port, files=128)
    held, turned_away = Sim([port], 64), None
    try:
        assert "holds up to 64 proxy connections" in serve.log.text()
        first = serve.serving(0)[1]
        held.version(first)
        turned_away = Sim([port], 20)
        serve.wait("holds its limit of 64 connections: closed a new one")
        cpu = serve.cpu()
        time.sleep(3)
        assert serve.cpu() - cpu < 0.5, "serve spins at its limit"
        version = edit(serve, policy, 200)
        held.version(version)
        assert "Too many open files" not in serve.log.text()
        assert turned_away.open_streams() == 0
    finally:
        for sim in (held, turned_away):
            if sim:
                sim.stop()
        serve.stop()


def test_a_malformed_write_is_not_pushed_and_the_next_good_one_is(policy):
    port = free_port()
    serve = Serve(policy, port)
    sim = Sim([port], 50)
    try:
        sim.version(serve.serving(0)[1])
        mark = serve.mark()
        policy.write_text("service: fleet\nstages:\n  - ratelimit:\n      rules:\n        - name: all\n          match: { prefix: / }\n")
        serve.wait("refused", after=mark)
        policy.write_text("service: fleet\nstages: [\n")
        serve.wait("not valid YAML", after=mark)
        assert not [l for _, l in serve.log.lines[mark:] if l.startswith("meshward serve: serving")]
        version = edit(serve, policy, 300)
        sim.version(version)
    finally:
        sim.stop()
        serve.stop()


def test_a_restart_in_the_middle_of_a_push_loses_nothing(policy):
    """serve killed the moment it starts pushing to 2000 proxies: the proxies keep what they
    have, reconnect to the next serve, and every one ends on the policy, and on a change made
    while serve was down."""
    port = free_port()
    serve = Serve(policy, port)
    sim = Sim([port], 2000)
    try:
        sim.version(serve.serving(0)[1], timeout=120)
        mark = serve.mark()
        write_policy(policy, 400)
        _, pushed = serve.serving(mark)
        serve.kill()
        serve = Serve(policy, port)
        assert serve.serving(0)[1] == pushed
        sim.version(pushed, timeout=120)
        serve.kill()
        write_policy(policy, 500)
        serve = Serve(policy, port)
        sim.version(serve.serving(0)[1], timeout=120)
    finally:
        sim.stop()
        serve.stop()


def test_two_instances_serve_one_fleet(policy):
    """Proxies spread over two serve instances; one is lost; a change made after reaches every
    proxy through the other."""
    ports = [free_port(), free_port()]
    serves = [Serve(policy, p) for p in ports]
    sim = Sim(ports, 200)
    try:
        sim.version(serves[0].serving(0)[1])
        serves[0].kill()
        version = edit(serves[1], policy, 600)
        sim.version(version, timeout=60)
    finally:
        sim.stop()
        for s in serves:
            s.stop()


def render(policy: Path, ports: list[int], upstream) -> dict:
    r = subprocess.run([str(MESHWARD), "render", "envoy", str(policy), "--form", "bundle", "--modules", str(DIST),
                        "--listen", "0", "--admin", "0", "--upstream", f"127.0.0.1:{upstream.port}",
                        *[a for p in ports for a in ("--xds", f"127.0.0.1:{p}")]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def limit(env: Envoy) -> str | None:
    return env.request("/anything").header("ratelimit-limit")


def wait_until(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


def test_real_envoys_keep_their_policy_and_move_to_the_other_instance(policy, upstream):
    """Two real Envoys rendered with both serve instances: each instance in turn is lost; the
    Envoys keep enforcing the last policy, reconnect to the other, and take a change made after."""
    ports = [free_port(), free_port()]
    serves = [Serve(policy, p) for p in ports]
    try:
        with Envoy(render(policy, ports, upstream), concurrency=1) as a, Envoy(render(policy, ports, upstream), concurrency=1) as b:
            current = "100"
            assert limit(a) == limit(b) == current
            # The second round loses the instance every Envoy moved to in the first.
            for lost, requests in ((0, 700), (1, 800)):
                serves[lost].kill()
                time.sleep(0.5)
                assert limit(a) == limit(b) == current
                edit(serves[1 - lost], policy, requests)
                current = str(requests)
                wait_until(lambda: limit(a) == limit(b) == current)
                serves[lost] = Serve(policy, ports[lost])
        a.cleanup()
        b.cleanup()
    finally:
        for s in serves:
            s.stop()


class Recorder:
    """A gRPC proxy in front of serve recording every ADS request as it came (bytes)."""

    def __init__(self, serve_port: int):
        self.requests: list[bytes] = []
        channel = grpc.insecure_channel(f"127.0.0.1:{serve_port}")
        upstream = channel.stream_stream(ADS, request_serializer=None, response_deserializer=None)

        def relay(requests, context):
            def recorded():
                for request in requests:
                    self.requests.append(request)
                    yield request
            yield from upstream(recorded())

        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(relay)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


def fields(message: bytes) -> dict[int, list[bytes | int]]:
    """A protobuf message's top-level fields by number (length-delimited as bytes, varints as ints)."""
    out: dict[int, list] = {}
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = message[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < len(message):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 2:
            n = varint()
            out.setdefault(number, []).append(message[i:i + n])
            i += n
        elif wire == 0:
            out.setdefault(number, []).append(varint())
        else:
            raise AssertionError(f"wire type {wire}")
    return out


def shape(message: bytes) -> dict:
    """What serve reads of a request, and the node's size."""
    f = fields(message)
    text = lambda n: f[n][0].decode() if n in f else ""  # noqa: E731
    node = fields(f[2][0]) if 2 in f else {}
    return {"node": bool(node), "node_fields": sorted(node), "names": sorted(x.decode() for x in f.get(3, [])),
            "type": text(4), "version": text(1), "nonce": text(5), "node_bytes": len(f[2][0]) if 2 in f else 0}


def test_the_simulated_proxy_sends_what_a_real_envoy_sends(policy, upstream):
    """The same conversation recorded from a real Envoy 1.40 and from one simulated proxy: first
    request with the node and the names, then an ACK per version with the nonce and no node."""
    port = free_port()
    serve = Serve(policy, port)
    recorder = Recorder(port)
    try:
        with Envoy(render(policy, [recorder.port], upstream), concurrency=1) as env:
            assert limit(env) == "100"
            edit(serve, policy, 150)
            wait_until(lambda: limit(env) == "150")
            wait_until(lambda: len(recorder.requests) >= 3)
            envoy = [shape(r) for r in recorder.requests]
        env.cleanup()
        recorder.requests.clear()
        sim = Sim([recorder.port], 1)
        try:
            sim.version(edit(serve, policy, 151))
            edit(serve, policy, 152)
            wait_until(lambda: len(recorder.requests) >= 3)
            simulated = [shape(r) for r in recorder.requests]
        finally:
            sim.stop()
        assert envoy[0]["node"] and envoy[0]["names"] == ["meshward.bundle"] and not envoy[0]["nonce"], envoy[0]
        assert all(not r["node"] for r in envoy[1:]), "the node only on the first request"
        for real, sim_ in zip(envoy[:3], simulated[:3]):
            assert {k: v for k, v in real.items() if k in ("node", "names", "type")} == \
                   {k: v for k, v in sim_.items() if k in ("node", "names", "type")}
            assert bool(real["nonce"]) == bool(sim_["nonce"]) and bool(real["version"]) == bool(sim_["version"])
        # The simulated node is as large as Envoy's (its extensions), within a fifth.
        assert 0.8 < simulated[0]["node_bytes"] / envoy[0]["node_bytes"] < 1.25, (simulated[0]["node_bytes"], envoy[0]["node_bytes"])
        assert 9 in envoy[0]["node_fields"], "Envoy sends its extensions"
    finally:
        recorder.stop()
        serve.stop()


def test_an_envoy_rendered_before_ads_still_gets_its_policy(policy, upstream):
    """Envoys rendered before ADS open one ECDS stream per filter (`api_config_source` GRPC):
    serve still serves them."""
    port = free_port()
    serve = Serve(policy, port)
    try:
        config = render(policy, [port], upstream)
        del config["dynamic_resources"]
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        for f in hcm["http_filters"]:
            if "config_discovery" in f:
                f["config_discovery"]["config_source"] = {"resource_api_version": "V3", "api_config_source": {
                    "api_type": "GRPC", "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "meshward_xds"}}]}}
        with Envoy(config, concurrency=1) as env:
            assert limit(env) == "100"
            edit(serve, policy, 900)
            wait_until(lambda: limit(env) == "900")
        env.cleanup()
    finally:
        serve.stop()
