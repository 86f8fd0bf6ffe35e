"""A rate-limit service speaking Envoy's RLS v3 gRPC protocol, with Redis as the shared store:
fixed windows counted with one atomic Lua script, so any number of these servers (one per
Envoy here) share the same limits. Descriptors are `rule=<name>, <key parts>...`; limits are
configured per rule name."""
from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
import redis
from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent / "rls"
UNITS = {"second": (1, 1), "minute": (60, 2), "hour": (3600, 3), "day": (86400, 4)}

_INCR = """
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return n
"""


def _compile():
    out = Path(tempfile.mkdtemp(prefix="meshward-rls-"))
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", str(PROTO_DIR / "rls.proto")])
    if rc != 0:
        raise RuntimeError("protoc failed on tests/rls/rls.proto")
    sys.path.insert(0, str(out))
    return importlib.import_module("rls_pb2"), importlib.import_module("rls_pb2_grpc")


pb, pb_grpc = _compile()


class RateLimitService(pb_grpc.RateLimitServiceServicer):
    def __init__(self, redis_port: int, limits: dict[str, tuple[int, str]]):
        self.redis = redis.Redis(host="127.0.0.1", port=redis_port)
        self.incr = self.redis.register_script(_INCR)
        self.limits = limits
        self.calls = 0

    def ShouldRateLimit(self, request, context):
        self.calls += 1
        hits = request.hits_addend or 1
        now = time.time()
        response = pb.RateLimitResponse(overall_code=pb.RateLimitResponse.OK)
        for descriptor in request.descriptors:
            entries = [(e.key, e.value) for e in descriptor.entries]
            rule = dict(entries).get("rule")
            if rule not in self.limits:
                response.statuses.add(code=pb.RateLimitResponse.OK)
                continue
            limit, unit = self.limits[rule]
            seconds, unit_code = UNITS[unit]
            window = int(now // seconds)
            key = "rls:" + request.domain + ":" + "|".join(f"{k}={v}" for k, v in entries) + f":{window}"
            used = int(self.incr(keys=[key], args=[hits, seconds]))
            over = used > limit
            status = response.statuses.add(
                code=pb.RateLimitResponse.OVER_LIMIT if over else pb.RateLimitResponse.OK,
                limit_remaining=max(0, limit - used),
            )
            status.current_limit.requests_per_unit = limit
            status.current_limit.unit = unit_code
            status.duration_until_reset.seconds = int((window + 1) * seconds - now) + 1
            if over:
                response.overall_code = pb.RateLimitResponse.OVER_LIMIT
        return response


class RlsServer:
    def __init__(self, redis_port: int, limits: dict[str, tuple[int, str]]):
        self.service = RateLimitService(redis_port, limits)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_RateLimitServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server from the distribution (installed by `make system-deps`), loopback only,
    no persistence; stopped on exit."""

    def __init__(self):
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is missing: run `make system-deps`")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
