"""`meshward serve --xds` at fleet size: N simulated proxies (`meshward-xds-sim`, one ADS stream
each, speaking what a rendered Envoy speaks) subscribed to one serve; the policy edited a few
times; how long from serve taking each change to the last proxy having it, serve's CPU per push
and its memory per proxy, and what a restart costs while every proxy reconnects.

    python tests/xds_fleet.py --proxies 10000      (`make fleet-sim`)

The same processes drive tests/test_xds_fleet.py (fewer proxies, the fault matrix)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MESHWARD = REPO / "target" / "release" / "meshward"
SIM = REPO / "target" / "release" / "meshward-xds-sim"
DIST = REPO / "dist"
TICKS = os.sysconf("SC_CLK_TCK")

# A policy whose stages all sit in one bundle filter, edited by its limit.
POLICY = {
    "service": "fleet",
    "stages": [{"ratelimit": {"rules": [
        {"name": "all", "match": {"prefix": "/"}, "key": ["client_ip"], "limit": {"requests": 100, "per": "1s"}}]}}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_policy(path: Path, requests: int) -> None:
    """The policy with this limit, written in place (serve reads it once it stays as it is)."""
    policy = json.loads(json.dumps(POLICY))
    policy["stages"][0]["ratelimit"]["rules"][0]["limit"]["requests"] = requests
    path.write_text(yaml.safe_dump(policy))


class Lines:
    """A process's output lines as they come, each with the CLOCK_MONOTONIC second it was read."""

    def __init__(self, stream):
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.lines.append((time.monotonic(), line))

    def wait(self, match, timeout: float, after: int = 0, alive=None) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while True:
            for at, line in self.lines[after:]:
                if match(line):
                    return at, line
            if alive is not None and not alive():
                raise AssertionError("the process ended:\n" + self.text())
            if time.monotonic() > deadline:
                raise AssertionError("not within the time:\n" + self.text()[-4000:])
            time.sleep(0.02)

    def text(self) -> str:
        return "".join(line for _, line in self.lines)


class Serve:
    """`meshward serve --xds` on `port`, optionally with a lower open-file limit."""

    def __init__(self, policy: Path, port: int, *, files: int | None = None, interval_ms: int = 100):
        def limit():
            if files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

        self.proc = subprocess.Popen(
            [str(MESHWARD), "serve", str(policy), "--xds", f"127.0.0.1:{port}", "--form", "bundle",
             "--modules", str(DIST), "--interval-ms", str(interval_ms)],
            stderr=subprocess.PIPE, text=True, preexec_fn=limit)
        self.log = Lines(self.proc.stderr)
        self.wait("xDS listening on")

    def wait(self, text: str, timeout: float = 30, after: int = 0) -> tuple[float, str]:
        return self.log.wait(lambda line: text in line, timeout, after, alive=lambda: self.proc.poll() is None)

    def mark(self) -> int:
        return len(self.log.lines)

    def serving(self, after: int, timeout: float = 30) -> tuple[float, str]:
        """When serve pushed its next version, and which."""
        at, line = self.wait("meshward serve: serving", timeout, after)
        return at, line.split()[3]

    def cpu(self) -> float:
        """CPU seconds used so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(l for l in status.splitlines() if l.startswith("VmRSS:")).split()[1])

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Sim:
    """`meshward-xds-sim`: `proxies` simulated proxies on the serve instances at `ports`."""

    def __init__(self, ports: list[int], proxies: int, resources: str = "meshward.bundle"):
        self.proxies = proxies
        args = [str(SIM), "--proxies", str(proxies), "--resources", resources]
        for port in ports:
            args += ["--xds", f"127.0.0.1:{port}"]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events = Lines(self.proc.stdout)
        self.errors = Lines(self.proc.stderr)

    def version(self, version: str, timeout: float = 60) -> dict:
        """The sim's report once every proxy has `version`."""
        _, line = self.events.wait(lambda l: json.loads(l).get("version") == version, timeout,
                                   alive=lambda: self.proc.poll() is None)
        return json.loads(line)

    def open_streams(self) -> int:
        events = [json.loads(l) for _, l in self.events.lines]
        return next((e["open"] for e in reversed(events) if e["event"] == "streams"), 0)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


def measure(proxies: int, pushes: int, workdir: Path) -> dict:
    """One run: connect every proxy, push `pushes` changes, restart serve with a change made while
    it was down. Times in seconds, memory in KB."""
    policy = workdir / "policy.yaml"
    write_policy(policy, 100)
    port = free_port()
    serve = Serve(policy, port)
    base_rss = serve.rss_kb()
    _, first = serve.serving(0)
    sim = Sim([port], proxies)
    try:
        started = time.monotonic()
        sim.version(first, timeout=120)
        connect_s = time.monotonic() - started
        time.sleep(2)
        connected_rss = serve.rss_kb()
        rows = []
        for push in range(1, pushes + 1):
            mark, cpu = serve.mark(), serve.cpu()
            written = time.monotonic()
            write_policy(policy, 100 + push)
            served_at, version = serve.serving(mark)
            report = sim.version(version)
            rows.append({"write_to_last": report["last"] - written, "serve_to_p99": report["p99"] - served_at,
                         "serve_to_last": report["last"] - served_at, "cpu": serve.cpu() - cpu})
            time.sleep(1)
        pushed_rss = serve.rss_kb()
        # A restart: the fleet reconnects to a new serve, which has a change made meanwhile.
        serve.kill()
        write_policy(policy, 100 + pushes + 1)
        restarted = time.monotonic()
        serve = Serve(policy, port)
        _, version = serve.serving(0)
        report = sim.version(version, timeout=180)
        restart = {"to_last": report["last"] - restarted, "cpu": serve.cpu()}
        return {"proxies": proxies, "connect_s": connect_s, "base_rss_kb": base_rss, "connected_rss_kb": connected_rss,
                "pushed_rss_kb": pushed_rss, "pushes": rows, "restart": restart}
    finally:
        sim.stop()
        serve.stop()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p * len(ordered) + 0.5)) - 1))]


def table(result: dict) -> str:
    pushes = result["pushes"]
    per_proxy = (result["pushed_rss_kb"] - result["base_rss_kb"]) * 1024 / result["proxies"]
    return "\n".join([
        "| proxies | serving → p99 proxy (max of pushes) | serving → last proxy | write → last proxy | serve CPU per push | serve RSS | per proxy | restart: CPU / to last proxy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['proxies']} | {max(p['serve_to_p99'] for p in pushes):.2f} s | {max(p['serve_to_last'] for p in pushes):.2f} s"
        f" | {max(p['write_to_last'] for p in pushes):.2f} s | {sum(p['cpu'] for p in pushes) / len(pushes) * 1000:.0f} ms"
        f" | {result['pushed_rss_kb'] / 1024:.0f} MB | {per_proxy / 1024:.1f} KB"
        f" | {result['restart']['cpu']:.2f} s / {result['restart']['to_last']:.2f} s |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxies", type=int, default=10000)
    parser.add_argument("--pushes", type=int, default=3)
    args = parser.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory() as workdir:
        result = measure(args.proxies, args.pushes, Path(workdir))
    print(json.dumps(result))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
