"""A VM's first seconds: each scenario's Envoy measured from the moment it is ready and again from
the moment a configuration is pushed to it, every request timed (h2load over HTTP/1.1 with its
per-request log), so the tail of the first seconds is seen second by second beside the warm one.
The bench's scenarios and Envoy settings (one worker on its own core, the load on the other);
every HTTP filter delivered by ECDS (files), so a push is what `meshward serve --dir` does: the
files replaced, each filter's configuration changed (a meshward plugin's configuration text, a
native filter's stat prefix) and built anew by Envoy. One scenario's Envoy runs at a time.

    python tests/first_seconds.py [--seconds 10] [--warm 5] [--rounds 3] [--only REGEX]

Per scenario and start (just started, right after a push): p50 / p99 / p99.9 over the first
`--seconds`, p99 of each second, the second from which every second's p99 stays within 1.5x of
the warm p99 ("settles"), the warm p99 (the `--warm` seconds after the start), and the CPU
Envoy's threads other than the worker used in each second (what shares the worker's core)."""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import LOAD_CPUS, MEASURED_CPUS, Scenario, pin, scenarios, upstream_config  # noqa: E402
from harness import Envoy, build_config  # noqa: E402
from tokens import KeyRing  # noqa: E402

ROWS = ("plain envoy", "native chain jwt_authn+rbac+local_ratelimit", "jwt_authn ES256 (native)", "do-nothing wasm filter (floor)",
        "three do-nothing wasm filters (floor of 3 modules)", "jwt ES256 (meshward)", "bundle jwt+ownership+ratelimit (1 module)",
        "chain jwt+ownership+ratelimit (3 modules)")
FLOOR = "do-nothing wasm filter (floor)"
FLOOR3 = "three do-nothing wasm filters (floor of 3 modules)"
# Rows measured again without `memory_allocator_manager` (envoy/envoy.yaml and `render` set it:
# Envoy's allocator gives back the pages compiling freed, from a background thread that, ~3 s
# after start, scans them once on whatever core is free, here the worker's).
WITHOUT_RELEASE = ("do-nothing wasm filter (floor)", "bundle jwt+ownership+ratelimit (1 module)")
NO_RELEASE = ", no memory_allocator_manager"
# Each meshward row, the native row it replaces and its do-nothing floor (as many VMs).
COMPARED = {"jwt ES256 (meshward)": ("jwt_authn ES256 (native)", FLOOR),
            "bundle jwt+ownership+ratelimit (1 module)": ("native chain jwt_authn+rbac+local_ratelimit", FLOOR),
            "chain jwt+ownership+ratelimit (3 modules)": ("native chain jwt_authn+rbac+local_ratelimit", FLOOR3)}


def timed_requests(port: int, path: str, headers: dict, seconds: int, connections: int, log: Path) -> list[tuple[float, float]]:
    """(seconds since the load started, latency ms) of every request answered 200."""
    cmd = ["taskset", "-c", ",".join(map(str, sorted(LOAD_CPUS))), "h2load", "--h1", "-t1", f"-c{connections}", "-m1", f"-D{seconds}",
           f"--log-file={log}", *[f"-H{k}: {v}" for k, v in headers.items()], f"http://127.0.0.1:{port}{path}"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
    rows = [line.split("\t") for line in log.read_text().splitlines() if line]
    start = min(int(r[0]) for r in rows)
    failed = sum(r[1] != "200" for r in rows)
    if failed:
        raise RuntimeError(f"{failed} answers were not 200")
    return [((int(r[0]) - start) / 1e6, int(r[2]) / 1e3) for r in rows]


TICKS = os.sysconf("SC_CLK_TCK")
ECDS_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"


def changed(typed_config: dict, push: int) -> dict:
    """The same filter configuration, written differently: Envoy sees a new one and builds it."""
    c = copy.deepcopy(typed_config)
    kind = c["@type"].rsplit(".", 1)[-1]
    if kind == "Wasm":
        c["config"]["configuration"]["value"] += " " * push
    elif kind in ("JwtAuthentication", "LocalRateLimit"):
        c["stat_prefix"] = f"push{push}" if kind == "JwtAuthentication" else f"{c['stat_prefix']}_{push}"
    elif kind == "RBAC":
        c["shadow_rules_stat_prefix"] = f"push{push}_"
    else:
        raise ValueError(f"no way to push a changed {kind}")
    return c


class Pushable:
    """A scenario's Envoy with every HTTP filter but the router taken from an ECDS file."""

    def __init__(self, sc: Scenario, upstream: Envoy, work: Path, release: bool = True):
        self.sc = sc
        self.dir = Path(tempfile.mkdtemp(dir=work))
        # The watched directory holds the ECDS files only: any file written there makes Envoy
        # read them all again.
        self.ecds = self.dir / "ecds"
        self.ecds.mkdir()
        cfg = build_config(upstream.port, sc.plugins, native_filters=sc.native)
        hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        self.filters = []
        for i, f in enumerate(hcm["http_filters"][:-1]):
            name = f"f{i}"
            self.filters.append((name, f["typed_config"]))
            hcm["http_filters"][i] = {"name": name, "config_discovery": {"type_urls": [f["typed_config"]["@type"]], "config_source": {
                "resource_api_version": "V3",
                "path_config_source": {"path": str(self.ecds / f"{name}.json"), "watched_directory": {"path": str(self.ecds)}}}}}
        self.write(0)
        cfg["node"] = {"id": "first-seconds", "cluster": "first-seconds"}  # ECDS needs a node
        if not release:
            del cfg["memory_allocator_manager"]
        self.env = Envoy(cfg, concurrency=1)
        self.env.start()
        pin(self.env.proc.pid, MEASURED_CPUS)
        self.port = self.env.port
        probe = self.env.request(sc.path, sc.headers)
        if probe.status != 200:
            self.stop()
            raise RuntimeError(f"{sc.name}: probe answered {probe.status} {probe.body[:200]!r}")

    def write(self, push: int):
        for name, typed_config in self.filters:
            resource = {"@type": ECDS_TYPE, "name": name, "typed_config": changed(typed_config, push) if push else typed_config}
            tmp = self.dir / f"{name}.json.tmp"
            tmp.write_text(json.dumps({"version_info": str(push), "resources": [resource]}))
            tmp.rename(self.ecds / f"{name}.json")

    def push(self, push: int):
        """A new configuration for every filter; returns once Envoy has taken them all."""
        stats = lambda: self.env.admin("/stats?filter=extension_config_discovery").body.decode()  # noqa: E731
        self.write(push)
        deadline = time.monotonic() + 10
        while sum(f"version_text: \"{push}\"" in line for line in stats().splitlines()) < len(self.filters):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.sc.name}: push {push} not taken:\n{stats()}")
            time.sleep(0.005)

    def stop(self):
        self.env.stop()
        self.env.cleanup()


def other_threads_ms(pid: int) -> dict[str, int]:
    """CPU ms used so far by each of the process's threads but its workers, by thread name."""
    out = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if not name.startswith("wrk:worker"):
            out[name] += (int(fields[11]) + int(fields[12])) * 1000 // TICKS
    return out


def loaded(one: Pushable, seconds: int, connections: int, log: Path) -> tuple[list[tuple[float, float]], list[dict]]:
    """Timed requests for `seconds`, with what the other threads used in each second."""
    result = {}
    load = threading.Thread(target=lambda: result.update(r=timed_requests(one.port, one.sc.path, one.sc.headers, seconds, connections, log)))
    load.start()
    before, per_second = other_threads_ms(one.env.proc.pid), []
    for _ in range(seconds):
        time.sleep(1)
        now = other_threads_ms(one.env.proc.pid)
        per_second.append({k: v - before.get(k, 0) for k, v in now.items() if v - before.get(k, 0) > 0})
        before = now
    load.join()
    return result["r"], per_second


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def summarize(first: list[tuple[float, float]], warm: list[tuple[float, float]], seconds: int, others: list[dict]) -> dict:
    latencies = [ms for _, ms in first]
    per_second = [pct([ms for t, ms in first if s <= t < s + 1] or [0.0], 0.99) for s in range(seconds)]
    warm_p99 = pct([ms for _, ms in warm], 0.99)
    settles = next((s for s in range(seconds) if all(x <= 1.5 * warm_p99 for x in per_second[s:])), seconds)
    return {"p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99), "p999": pct(latencies, 0.999), "per_second": per_second,
            "settles_s": settles, "warm_p99": warm_p99, "requests": len(latencies), "other_threads_ms": others}


def measure(plan: list[Scenario], seconds: int, warm_seconds: int, rounds: int, connections: int, log=print) -> dict[str, dict[str, list[dict]]]:
    """For each scenario and round: the first seconds after start, and after a push."""
    upstream = Envoy(upstream_config(), concurrency=1)
    upstream.start()
    pin(upstream.proc.pid, LOAD_CPUS)
    work = Path(tempfile.mkdtemp(prefix="meshward-first-seconds-"))
    runs = [(sc, sc.name, True) for sc in plan] + [(sc, sc.name + NO_RELEASE, False) for sc in plan if sc.name in WITHOUT_RELEASE]
    results: dict[str, dict[str, list[dict]]] = {name: {"start": [], "push": []} for _, name, _ in runs}
    try:
        for round_no in range(rounds):
            for sc, name, release in runs:
                one = Pushable(sc, upstream, work, release)
                try:
                    for when in ("start", "push"):
                        if when == "push":
                            one.push(round_no + 1)
                        first, others = loaded(one, seconds, connections, one.dir / f"{when}.log")
                        warm = timed_requests(one.port, sc.path, sc.headers, warm_seconds, connections, one.dir / f"{when}-warm.log")
                        r = summarize(first, warm, seconds, others)
                        r["rss_mib"] = rss_mib(one.env.proc.pid)
                        results[name][when].append(r)
                        busy = " ".join(f"{s}s:{'+'.join(f'{k}={v}' for k, v in o.items())}" for s, o in enumerate(others) if sum(o.values()) >= 20)
                        log(f"  {name:<70} {when:<5} p99 {r['p99']:6.2f} ms  p99.9 {r['p999']:6.2f}  settles {r['settles_s']:>2} s"
                            f"  warm p99 {r['warm_p99']:5.2f}  RSS {r['rss_mib']:.0f} MiB  per second {' '.join(f'{x:.1f}' for x in r['per_second'])}"
                            f"  (round {round_no + 1}){'  other threads (ms): ' + busy if busy else ''}")
                finally:
                    one.stop()
    finally:
        upstream.stop()
        upstream.cleanup()
    return results


def table(results: dict[str, dict[str, list[dict]]], seconds: int) -> list[str]:
    lines = [f"{'scenario':<70} {'when':<6} {'p50':>6} {'p99 first ' + str(seconds) + ' s (rounds)':>26} {'p99.9':>7} {'settles':>8} {'warm p99':>9} {'RSS MiB':>8}"]
    for name, by_when in results.items():
        for when, runs in by_when.items():
            med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
            rounds = " / ".join(format(r["p99"], ".1f") for r in runs)
            lines.append(f"{name:<70} {when:<6} {med('p50'):>6.2f} {rounds:>26} {med('p999'):>7.1f} {med('settles_s'):>6.0f} s {med('warm_p99'):>9.2f} {med('rss_mib'):>8.0f}")
    return lines


def targets(results: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """Issue #39's goals: in the first seconds after start and after a push, each meshward row's
    p99 (median of rounds) within 1.5x of the native row it replaces and of its do-nothing floor
    (as many do-nothing VMs as it has modules)."""
    out = []
    p99 = lambda name, when: statistics.median(r["p99"] for r in results[name][when])  # noqa: E731
    for name, compared in COMPARED.items():
        if name not in results:
            continue
        for when in ("start", "push"):
            for other in compared:
                if other in results:
                    ratio = p99(name, when) / p99(other, when)
                    out.append({"target": f"{name}, first seconds after {when}: p99 <= 1.5x {other}", "measured": f"{ratio:.2f}x", "met": ratio <= 1.5})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--warm", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only", help="regex over the rows")
    args = ap.parse_args()
    plan = [sc for sc in scenarios(KeyRing()) if sc.name in ROWS and (not args.only or re.search(args.only, sc.name))]
    results = measure(plan, args.seconds, args.warm, args.rounds, args.connections, log=lambda line: print(line, flush=True))
    print()
    print("\n".join(table(results, args.seconds)))
    for t in targets(results):
        print(f"  {'met   ' if t['met'] else 'MISSED'} {t['target']}: {t['measured']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
