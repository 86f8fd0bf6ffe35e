"""The fleet-state engine and its Redis, as the tests start them: `meshward-fleet` (built by
`make cli`; Limitador on Redis behind Envoy's RLS v3, and the webhook seen-set) and Debian's
`redis-server`, both on loopback, stopped after; and what the tests of other servers they start
share (free ports, waiting for readiness)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import redis
import yaml

REPO = Path(__file__).resolve().parent.parent
FLEET = REPO / "target" / "release" / "meshward-fleet"


def wait_until_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    """Polls `url` until it answers 200; raises if `proc` exits or `timeout` passes (the caller
    stops it)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start")
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """redis-server from the distribution (installed by `make system-deps`), loopback only.
    With `durable`, every write is in an fsynced append-only file in its own directory, so
    `restart()` brings the same data back (a Redis that lost its counters would hide double
    counting)."""

    def __init__(self, durable: bool = False, port: int | None = None):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server is missing: run `make system-deps`")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="meshward-redis-")
        self.durable = durable
        self.proc = None
        self.start()

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir, *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Stopped and started with nothing: what a Redis without persistence comes back as."""
        self.stop()
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        self.start()


class FleetEngine:
    """`meshward-fleet` with the given global limits ({(domain, rule): (key parts, requests,
    per)}), on a free port, its stderr kept for the test to read."""

    def __init__(self, redis_port: int, limits: dict | None = None, port: int = 0, args: tuple = ()):
        if not FLEET.exists():
            raise FileNotFoundError(f"{FLEET} is missing: run `make cli`")
        config = {
            "redis": f"redis://127.0.0.1:{redis_port}",
            "limits": [
                {"domain": domain, "rule": rule, "key": key, "requests": requests, "per": per}
                for (domain, rule), (key, requests, per) in (limits or {}).items()
            ],
        }
        self.config = Path(tempfile.mkstemp(prefix="meshward-fleet-", suffix=".yaml")[1])
        self.config.write_text(yaml.safe_dump(config))
        self.args = args
        self.lines: list[str] = []
        self.port = port
        self.start()

    def start(self) -> None:
        """Starts the engine (again: on the port it had)."""
        self.proc = subprocess.Popen(
            [str(FLEET), "--config", str(self.config), "--listen", f"127.0.0.1:{self.port}", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        first = ""
        while "listening on" not in first:
            line = self.proc.stderr.readline()
            if not line:
                self.proc.kill()
                raise RuntimeError(f"meshward-fleet did not start: {first}{self.proc.stderr.read()}")
            first += line
        self.port = int(first.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
        self.lines.append(first)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        """SIGKILL: calls in flight die with it."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: its port still accepts, nothing answers (an unreachable engine, as a
        dropped port looks to a caller with a deadline)."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.config.unlink(missing_ok=True)
