"""The `meshward` command: `check` catches each hole with a clear message, file:line and exit
code; `render istio` validates against Istio's WasmPlugin CRD and its pluginConfig loads in the
filters; `render envoy` is a configuration the real Envoy runs and enforces; both forms."""
from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness import DIST, REPO, Envoy, plugin, build_config
from test_istio_manifests import crd_schema
from tokens import KeyRing

MESHWARD = REPO / "target" / "release" / "meshward"
EXAMPLE = REPO / "examples" / "crapi" / "policy.yaml"
SPEC = REPO / "tests" / "specs" / "crapi-openapi-spec.json"
ISSUER, AUDIENCE = "https://identity.crapi.example", "crapi"


def meshward(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(MESHWARD), *map(str, args)], capture_output=True, text=True, timeout=60, env=env)


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def write_policy(tmp_path, policy: dict):
    policy = copy.deepcopy(policy)
    policy["openapi"] = str(SPEC)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def stage(policy: dict, kind: str) -> dict:
    return next(s[kind] for s in policy["stages"] if kind in s)


def test_the_example_policy_has_no_holes(keys, monkeypatch):
    r = meshward("check", EXAMPLE)
    assert r.returncode == 0 and "0 error(s)" in r.stdout, r.stdout + r.stderr
    # Without the secret the JWT stage cannot be compiled here, and check says so.
    assert "warning[secret_unavailable]" in r.stdout and "MESHWARD_CRAPI_JWKS" in r.stdout
    env = {"MESHWARD_CRAPI_JWKS": json.dumps(keys.jwks(["hs"])), "PATH": "/usr/bin:/bin"}
    r = meshward("check", EXAMPLE, "--format", "json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == {"findings": [], "errors": 0, "warnings": 0}, r.stdout


def drop_rule(kind, name):
    def mutate(p):
        rules = stage(p, kind)["rules"]
        rules[:] = [r for r in rules if r.get("name") != name]
    return mutate


def add_ownership_rule(p):
    stage(p, "ownership")["rules"].insert(0, {"name": "ghost-route", "match": {"path": "/identity/api/v3/ghost"}, "scopes": ["x"]})


def ownership_workshop_public(p):
    stage(p, "ownership")["rules"].insert(0, {"name": "workshop-open", "match": {"prefix": "/workshop/"}, "public": True})


def jwt_workshop_public(p):
    stage(p, "jwt")["rules"].insert(0, {"match": {"prefix": "/workshop/"}})


def only_read_limits(p):
    stage(p, "ratelimit")["rules"] = [{"name": "reads", "match": {"prefix": "/", "methods": ["GET"]}, "key": ["client_ip"],
                                       "limit": {"requests": 100, "per": "60s"}}]


def only_failure_limits(p):
    # A failure limit on writes counts refusals; it does not limit how often a write is sent.
    stage(p, "ratelimit")["rules"] = [{"name": "write-failures", "match": {"prefix": "/", "methods": ["POST", "PUT", "PATCH", "DELETE"]},
                                       "key": ["client_ip"], "counts": "failures", "limit": {"requests": 5, "per": "60s"}}]


HOLES = [
    # (name, mutation, code, text in the message, file the finding points at, text on that line)
    ("write without ownership", drop_rule("ownership", "vehicle-writes"), "write_without_ownership",
     "POST /identity/api/v2/vehicle/add_vehicle (add_vehicle)", "spec", '"/identity/api/v2/vehicle/add_vehicle"'),
    ("write shadowed by an earlier public ownership rule", ownership_workshop_public, "write_without_ownership",
     "POST /workshop/api/shop/orders (create_order): a write operation that ownership rule `workshop-open` (public)", "spec",
     '"/workshop/api/shop/orders"'),
    ("rule for a route the contract lacks", add_ownership_rule, "route_not_in_contract", "ownership rule `ghost-route`", "policy", "ghost-route"),
    ("provider without audience", lambda p: stage(p, "jwt")["providers"]["crapi"].pop("audiences"), "provider_without_audience", "`crapi`", "policy", "crapi:"),
    ("write without rate limit", only_read_limits, "write_without_rate_limit", "POST /workshop/api/shop/orders (create_order)", "spec", '"/workshop/api/shop/orders"'),
    ("write with only a failure limit", only_failure_limits, "write_without_rate_limit", "POST /workshop/api/shop/orders (create_order)", "spec",
     '"/workshop/api/shop/orders"'),
    ("open operation not declared public", lambda p: p["public"].remove("login"), "no_security_requirement",
     "POST /identity/api/auth/login (login)", "spec", '"/identity/api/auth/login"'),
    ("public operation the contract lacks", lambda p: p["public"].append("ghost_op"), "unknown_public_operation", "ghost_op", "policy", "ghost_op"),
    ("operation no JWT rule covers", lambda p: stage(p, "jwt")["rules"].pop(), "operation_not_covered",
     "GET /workshop/api/shop/orders/all (get_orders)", "spec", '"/workshop/api/shop/orders/all"'),
    ("secured operation let through without a token", jwt_workshop_public, "token_not_required",
     "POST /workshop/api/shop/orders (create_order)", "policy", "prefix: /workshop/"),
    ("stage its module refuses", lambda p: stage(p, "ratelimit")["rules"][0]["limit"].update(requests=0), "invalid_stage",
     "ratelimit stage: rules[0].limit", "policy", "ratelimit:"),
    # Envoy reads a gRPC call's cluster from a serialized GrpcService whose length prefixes must
    # stay one byte (README: cluster names).
    ("gRPC cluster name too long to address", lambda p: stage(p, "ratelimit").update({"global": {"cluster": "c" * 110, "domain": "crapi"}}),
     "invalid_stage", "ratelimit stage: global.cluster: an Envoy cluster called over gRPC has a name of at most 109 bytes", "policy", "ratelimit:"),
]


@pytest.mark.parametrize("mutate,code,text,where,line_has", [h[1:] for h in HOLES], ids=[h[0] for h in HOLES])
def test_check_catches_each_hole(tmp_path, mutate, code, text, where, line_has):
    policy = example()
    mutate(policy)
    path = write_policy(tmp_path, policy)
    r = meshward("check", path, "--format", "json")
    assert r.returncode == 1, r.stdout + r.stderr
    report = json.loads(r.stdout)
    found = [f for f in report["findings"] if f["code"] == code]
    assert found and any(text in f["message"] for f in found), report
    f = next(f for f in found if text in f["message"])
    expected_file = SPEC if where == "spec" else path
    assert f["file"] == str(expected_file) and f["line"], f
    # The line is the one the finding is about.
    line = expected_file.read_text().splitlines()[f["line"] - 1]
    assert line_has in line, (line, f)
    # People get the same finding as file:line: error[code] message.
    human = meshward("check", path)
    assert human.returncode == 1 and f"{expected_file}:{f['line']}: error[{code}]" in human.stdout, human.stdout


def test_check_warns_about_envoy_configs_that_do_not_normalize_paths(tmp_path):
    shipped = REPO / "envoy" / "envoy.yaml"
    r = meshward("check", EXAMPLE, "--envoy", shipped, "--format", "json")
    assert r.returncode == 0 and not [f for f in json.loads(r.stdout)["findings"] if f["code"] == "path_not_normalized"], r.stdout
    lax = tmp_path / "envoy.yaml"
    lax.write_text(shipped.read_text().replace("merge_slashes: true", "merge_slashes: false"))
    r = meshward("check", EXAMPLE, "--envoy", lax)
    assert r.returncode == 0, "a warning does not fail the check"
    assert f"{lax}:" in r.stdout and "warning[path_not_normalized]" in r.stdout and "merge_slashes: true" in r.stdout, r.stdout
    r = meshward("check", EXAMPLE, "--envoy", tmp_path / "missing.yaml")
    assert r.returncode == 2 and "missing.yaml" in r.stderr, r.stderr


@pytest.mark.parametrize("content,message", [
    ("service: crapi\nstages: [{firewall: {}}]\n", "unknown stage `firewall`"),
    ("service: crapi\nstages: []\n", "at least one stage"),
    ("service: Not A Label\nstages: [{ownership: {rules: []}}]\n", "must be a DNS label"),
    ("service: crapi\nstages: [{schema: {}}]\n", "the schema stage needs `openapi`"),
    ("service: [unclosed\n", "not valid YAML"),
    ("service: crapi\nstages:\n  - ratelimit: {rules: [{name: u, match: {prefix: /}, key: [subject], limit: {requests: 1, per: 1s}}]}\n"
     "  - jwt: {providers: {}, rules: []}\n", "stages[0].ratelimit.rules[0]: keys on the principal, but the ratelimit stage runs before the jwt stage"),
])
def test_unusable_policies_exit_2_with_the_reason(tmp_path, content, message):
    path = tmp_path / "policy.yaml"
    path.write_text(content)
    r = meshward("check", path)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_compile_emits_each_module_configuration(tmp_path):
    r = meshward("compile", EXAMPLE, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["meshward.json", "meshward_jwt.json", "meshward_schema.json", "meshward_ownership.json", "meshward_ratelimit.json"])
    bundle = json.loads((tmp_path / "meshward.json").read_text())
    assert [next(iter(s)) for s in bundle["stages"]] == ["jwt", "schema", "ownership", "ratelimit"]
    # The schema stage carries the contract the policy names, compiled: the module never reads
    # the OpenAPI document itself.
    schema = json.loads((tmp_path / "meshward_schema.json").read_text())
    assert "openapi" not in schema and schema["contract"]["version"] == 1
    assert len({op["id"] for op in schema["contract"]["operations"]}) >= 44 and schema["contract"]["schemas"]
    assert bundle["stages"][1]["schema"] == schema


def with_global_limit(policy: dict, limit: dict | None) -> dict:
    rl = stage(policy, "ratelimit")
    rl["global"] = {"cluster": "meshward-fleet", "domain": "crapi"}
    rule = {"name": "fleet-per-user", "match": {"prefix": "/workshop/"}, "key": ["subject", "header:x-api-key"], "scope": "global"}
    if limit:
        rule["limit"] = limit
    rl["rules"].append(rule)
    return policy


def test_compile_writes_the_fleet_engine_limits_and_the_engine_runs_them(tmp_path):
    from fleet import FleetEngine, RedisServer

    path = write_policy(tmp_path, with_global_limit(example(), {"requests": 50, "per": "60s"}))
    out = tmp_path / "out"
    r = meshward("compile", path, "--out", out)
    assert r.returncode == 0, r.stderr
    fleet = yaml.safe_load((out / "meshward-fleet.yaml").read_text())
    assert fleet == {"limits": [{"domain": "crapi", "rule": "fleet-per-user", "key": ["subject", "header.x-api-key"], "requests": 50, "per": "60s"}]}
    redis_server = RedisServer()
    try:
        engine = FleetEngine(redis_server.port, {(l["domain"], l["rule"]): (l["key"], l["requests"], l["per"]) for l in fleet["limits"]})
        assert "(1 global limits" in engine.log() and engine.proc.poll() is None, engine.log()
        engine.stop()
    finally:
        redis_server.stop()
    # Without global rules there is no engine configuration.
    r = meshward("compile", EXAMPLE, "--out", tmp_path / "plain")
    assert not (tmp_path / "plain" / "meshward-fleet.yaml").exists()


@pytest.mark.parametrize("limit,message", [
    (None, 'global rule "fleet-per-user" declares no `limit`'),
    ({"requests": 5, "per": "1.5s"}, "a global limit is `requests` per whole seconds"),
    ({"requests": 5, "per": "60s", "burst": 10}, "without `burst`"),
])
def test_compile_refuses_global_limits_the_engine_cannot_count(tmp_path, limit, message):
    path = write_policy(tmp_path, with_global_limit(example(), limit))
    r = meshward("compile", path, "--out", tmp_path / "out")
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_check_warns_when_a_generic_webhook_scheme_signs_no_replay_key(tmp_path):
    policy = example()
    hmac = {"signature_header": "x-signature", "encoding": "hex", "id_header": "x-delivery-id"}
    policy["stages"].insert(1, {"webhook": {"endpoints": [
        {"name": "partner-unsigned-id", "match": {"path": "/hooks/partner"}, "scheme": "hmac", "hmac": hmac,
         "secrets": [{"inline_string": "0123456789abcdef0123456789abcdef"}]},
        {"name": "partner-body-only", "match": {"path": "/hooks/other"}, "scheme": "hmac", "hmac": {"signature_header": "x-sig", "encoding": "hex"},
         "secrets": [{"inline_string": "0123456789abcdef0123456789abcdef"}]},
        {"name": "partner-signed", "match": {"path": "/hooks/signed"}, "scheme": "hmac", "hmac": {**hmac, "signed_content": "{id}.{body}"},
         "secrets": [{"inline_string": "0123456789abcdef0123456789abcdef"}]},
    ], "unmatched": "allow"}})
    path = write_policy(tmp_path, policy)
    r = meshward("check", path, "--format", "json")
    found = [f for f in json.loads(r.stdout)["findings"] if f["code"] == "replay_key_not_signed"]
    assert [f["severity"] for f in found] == ["warning", "warning"], r.stdout
    assert "x-delivery-id is not in signed_content" in found[0]["message"] and "partner-unsigned-id" in found[0]["message"]
    assert "only the body is signed" in found[1]["message"] and "partner-body-only" in found[1]["message"]
    assert all("partner-signed" not in f["message"] for f in found)


def idempotency_stage(operations: list[dict]) -> dict:
    return {"idempotency": {"operations": operations, "fleet": {"cluster": "meshward-fleet", "namespace": "crapi"}}}


def test_check_and_compile_take_an_idempotency_stage(tmp_path):
    policy = example()
    policy["stages"].insert(1, idempotency_stage([
        {"name": "create-order", "match": {"path": "/workshop/api/shop/orders", "methods": ["POST"]}},
        {"name": "any-method", "match": {"prefix": "/workshop/api/shop/orders"}},
        {"name": "reads-too", "match": {"path": "/workshop/api/shop/orders", "methods": ["POST", "get"]}},
        {"name": "nowhere", "match": {"path": "/no/such/route", "methods": ["POST"]}},
    ]))
    path = write_policy(tmp_path, policy)
    r = meshward("check", path, "--format", "json")
    findings = json.loads(r.stdout)["findings"]
    reads = [f["message"] for f in findings if f["code"] == "idempotency_covers_reads"]
    assert len(reads) == 2 and "\"any-method\" matches every method" in reads[0] and "\"reads-too\" matches GET" in reads[1], reads
    assert any(f["code"] == "route_not_in_contract" and "idempotency rule `nowhere`" in f["message"] for f in findings), findings
    assert not any("create-order" in f["message"] for f in findings)
    # The stage compiles into the bundle and its own module; the engine cluster is rendered.
    r = meshward("render", "envoy", path, "--form", "separate", "--cluster", "meshward-fleet=127.0.0.1:8081")
    assert r.returncode == 0, r.stderr
    rendered = yaml.safe_load(r.stdout)
    assert any(c["name"] == "meshward-fleet" for c in rendered["static_resources"]["clusters"])
    assert "meshward_idempotency.wasm" in r.stdout

    # Refused whole: no engine, or no principal before it.
    policy["stages"][1]["idempotency"].pop("fleet")
    r = meshward("check", write_policy(tmp_path, policy))
    assert r.returncode != 0 and "fleet: idempotency keys live in the fleet engine" in r.stdout + r.stderr, r.stdout + r.stderr
    policy = example()
    policy["stages"].insert(0, idempotency_stage([{"name": "o", "match": {"prefix": "/", "methods": ["POST"]}}]))
    r = meshward("check", write_policy(tmp_path, policy))
    assert r.returncode != 0 and "put a `jwt` stage before it" in r.stderr, r.stderr


def test_check_warns_when_a_failure_limit_runs_after_jwt(tmp_path):
    policy = example()
    guessing = {"name": "token-guessing", "match": {"prefix": "/"}, "key": ["client_ip"], "counts": "failures", "limit": {"requests": 5, "per": "60s"}}
    limits = next(s for s in policy["stages"] if "ratelimit" in s)
    limits["ratelimit"]["rules"].append(guessing)
    r = meshward("check", write_policy(tmp_path, policy), "--format", "json")
    found = [f for f in json.loads(r.stdout)["findings"] if f["code"] == "failure_limit_after_jwt"]
    assert len(found) == 1 and "\"token-guessing\"" in found[0]["message"] and found[0]["severity"] == "warning", found
    # Before the jwt stage (keyed by the caller, not the principal): nothing to say.
    policy["stages"].remove(limits)
    limits["ratelimit"]["rules"] = [guessing]
    policy["stages"].insert(0, limits)
    r = meshward("check", write_policy(tmp_path, policy), "--format", "json")
    assert not [f for f in json.loads(r.stdout)["findings"] if f["code"] == "failure_limit_after_jwt"], r.stdout
    # Counting only the service's 403s after jwt is what it is for: nothing to say either.
    policy["stages"].remove(limits)
    limits["ratelimit"]["rules"] = [{**guessing, "failure_statuses": [403]}]
    policy["stages"].append(limits)
    r = meshward("check", write_policy(tmp_path, policy), "--format", "json")
    assert not [f for f in json.loads(r.stdout)["findings"] if f["code"] == "failure_limit_after_jwt"], r.stdout


def packaged_digests() -> dict:
    """Module name -> image digest, as `meshward package` reports them."""
    out = tempfile.mkdtemp(prefix="meshward-oci-")
    r = meshward("package", "--dist", DIST, "--out", out)
    assert r.returncode == 0, r.stderr
    return {line.split()[0]: line.split()[2].removeprefix("sha256:") for line in r.stdout.splitlines()}


def test_rendered_istio_pins_a_module_served_over_http_by_its_file_digest(tmp_path):
    policy = example()
    policy["modules"] = {"url": "https://modules.example.com/{module}.wasm"}
    r = meshward("render", "istio", write_policy(tmp_path, policy), "--dist", DIST)
    assert r.returncode == 0, r.stderr
    for doc in (d for d in yaml.safe_load_all(r.stdout) if d):
        module = doc["spec"]["url"].rsplit("/", 1)[1]
        assert doc["spec"]["sha256"] == hashlib.sha256((DIST / module).read_bytes()).hexdigest()


@pytest.mark.parametrize("form", ["separate", "bundle"])
def test_rendered_istio_validates_and_loads(upstream, keys, form):
    r = meshward("render", "istio", EXAMPLE, "--form", form, "--dist", DIST)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert len(docs) == (4 if form == "separate" else 1)
    for doc in docs:
        jsonschema.validate(doc, crd_schema())
        spec, filter_name = doc["spec"], doc["metadata"]["labels"]["meshward.io/filter"]
        # The bundle: the smallest edition holding jwt, schema, ownership and ratelimit.
        module = "meshward.openapi" if filter_name == "bundle" else f"meshward_{filter_name}"
        # An oci:// module is pinned by its image digest (what Istio compares), the image
        # `meshward package` builds (tests/test_package.py pushes it through a registry).
        assert spec["sha256"] == packaged_digests()[module]
        assert spec["url"] == f"oci://registry.example.com/meshward/{module}:0.1.0"
        assert spec["failStrategy"] == "FAIL_CLOSE" and spec["selector"]["matchLabels"] == {"app": "crapi"}
        assert spec["phase"] == ("AUTHN" if filter_name in ("jwt", "bundle") else "AUTHZ")
        if filter_name in ("jwt", "bundle"):
            assert spec["vmConfig"]["env"] == [{"name": "MESHWARD_CRAPI_JWKS", "valueFrom": "HOST"}]
    if form == "separate":
        authz = [d["spec"]["priority"] for d in docs if d["spec"]["phase"] == "AUTHZ"]
        assert authz == sorted(authz, reverse=True), "schema, then ownership, then ratelimit"
    # What the sidecar would load: each pluginConfig is accepted by its module in the real Envoy.
    secret = {"MESHWARD_CRAPI_JWKS": json.dumps(keys.jwks(["hs"]))}
    plugins = []
    for doc in docs:
        name = doc["metadata"]["labels"]["meshward.io/filter"]
        module = "meshward.openapi.wasm" if name == "bundle" else None
        plugins.append(plugin(name, doc["spec"]["pluginConfig"], module=module, env=secret))
    with Envoy(build_config(upstream.port, plugins), concurrency=1) as env:
        for p in plugins:
            module = "meshward" if p["name"] == "bundle" else f"meshward_{p['name']}"
            env.wait_for_log(rf"{module}: configuration accepted")
    env.cleanup()


@pytest.mark.parametrize("form", ["separate", "bundle"])
def test_rendered_envoy_config_runs_and_enforces_the_policy(upstream, keys, monkeypatch, form):
    monkeypatch.setenv("MESHWARD_CRAPI_JWKS", json.dumps(keys.jwks(["hs"])))
    r = meshward("render", "envoy", EXAMPLE, "--form", form, "--modules", DIST, "--listen", 0, "--admin", 0,
                 "--upstream", f"127.0.0.1:{upstream.port}")
    assert r.returncode == 0, r.stderr
    config = yaml.safe_load(r.stdout)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert (hcm["normalize_path"], hcm["merge_slashes"], hcm["path_with_escaped_slashes_action"]) == (True, True, "REJECT_REQUEST")
    assert (hcm["use_remote_address"], hcm["xff_num_trusted_hops"]) == (True, 0)
    # Memory freed after compiling the modules goes back to the system, unless told not to.
    assert config["memory_allocator_manager"]["memory_release_interval"] == "1s"
    r = meshward("render", "envoy", EXAMPLE, "--form", form, "--modules", DIST, "--memory-release", "off")
    assert r.returncode == 0 and "memory_allocator_manager" not in yaml.safe_load(r.stdout), r.stderr
    files = [f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] for f in hcm["http_filters"] if "vm_config" in f.get("typed_config", {}).get("config", {})]
    want = ["meshward.openapi.wasm"] if form == "bundle" else [f"meshward_{s}.wasm" for s in ("jwt", "schema", "ownership", "ratelimit")]
    assert [Path(f).name for f in files] == want, files
    with Envoy(config, concurrency=1) as env:
        now = int(time.time())
        token = keys.token("HS256", iss=ISSUER, aud=AUDIENCE, sub="alice", email="alice@example.com", scope="orders:write", exp=now + 300)
        auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        order = json.dumps({"product_id": 1, "quantity": 2}).encode()
        login = json.dumps({"email": "a@b.c", "password": "pw"}).encode()
        assert env.request("/identity/api/auth/login", {"content-type": "application/json"}, "POST", login).reached_upstream
        r = env.request("/workshop/api/shop/orders", {"content-type": "application/json"}, "POST", order)
        assert r.status == 401 and r.reason == "missing_token", r
        assert env.request("/workshop/api/shop/orders", auth, "POST", order).reached_upstream
        mass = json.dumps({"product_id": 1, "quantity": 2, "is_admin": True}).encode()
        r = env.request("/workshop/api/shop/orders", auth, "POST", mass)
        assert r.status == 400 and r.reason == "schema_violation", r
        r = env.request("/workshop/api/shop/products", auth, "POST", json.dumps({"name": "x", "price": "1", "image_url": "u"}).encode())
        assert r.status == 403 and r.reason == "missing_scope", r
        assert env.request("/workshop/api/shop/v9/orders", auth).status == 404
        # Envoy refuses an encoded slash before any filter; dot segments are resolved for all.
        assert env.request("/workshop/api/shop%2Forders", auth, "POST", mass).status == 400
        r = env.request("/workshop/api/x/../shop/orders", auth, "POST", mass)
        assert r.status == 400 and r.reason == "schema_violation", r
    env.cleanup()


def test_render_names_what_is_missing(tmp_path):
    policy = example()
    stage(policy, "jwt")["providers"]["crapi"] = {"issuer": ISSUER, "audiences": [AUDIENCE],
                                                  "remote_jwks": {"http_uri": {"uri": "https://idp/jwks", "cluster": "idp", "timeout": "1s"}}}
    path = write_policy(tmp_path, policy)
    r = meshward("render", "envoy", path)
    assert r.returncode == 2 and "--cluster idp=HOST:PORT" in r.stderr, r.stderr
    r = meshward("render", "istio", path, "--dist", tmp_path)
    assert r.returncode == 2 and "make build" in r.stderr, r.stderr


def test_render_envoy_adds_the_fleet_engine_cluster_once_as_http2(tmp_path):
    policy = with_global_limit(example(), {"requests": 50, "per": "60s"})
    policy["stages"].insert(1, {"webhook": {"unmatched": "allow", "fleet": {"cluster": "meshward-fleet", "namespace": "crapi"}, "endpoints": [
        {"name": "hooks", "match": {"path": "/hooks"}, "scheme": "github", "secrets": [{"inline_string": "0123456789abcdef"}]}]}})
    path = write_policy(tmp_path, policy)
    r = meshward("render", "envoy", path)
    assert r.returncode == 2 and "--cluster meshward-fleet=HOST:PORT" in r.stderr, r.stderr
    r = meshward("render", "envoy", path, "--cluster", "meshward-fleet=meshward-fleet.meshward:8081")
    assert r.returncode == 0, r.stderr
    clusters = [c for c in yaml.safe_load(r.stdout)["static_resources"]["clusters"] if c["name"] == "meshward-fleet"]
    assert len(clusters) == 1 and "http2_protocol_options" in json.dumps(clusters[0]), clusters


class Serve:
    """`meshward serve` in the background, its stderr collected: over gRPC (`xds`, the port read
    back from its log) or through ECDS files (`files`)."""

    def __init__(self, policy, form, transport, tmp_path, *extra, xds_port=0):
        self.transport = transport
        self.directory = tmp_path / "ecds"
        where = ["--xds", f"127.0.0.1:{xds_port}"] if transport == "xds" else ["--dir", str(self.directory)]
        self.proc = subprocess.Popen([str(MESHWARD), "serve", str(policy), *where, "--form", form,
                                      "--modules", str(DIST), "--interval-ms", "100", *map(str, extra)],
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("meshward serve: serving")
        if transport == "xds":
            self.wait_for("xDS listening on")
            self.port = int(next(l for l in self.lines if "xDS listening on" in l).rsplit(":", 1)[1])

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def render_envoy(self, policy, form, upstream) -> dict:
        """The Envoy configuration `render envoy` writes for an Envoy this serve keeps current."""
        where = ["--xds", f"127.0.0.1:{self.port}"] if self.transport == "xds" else ["--ecds", self.directory]
        r = meshward("render", "envoy", policy, "--form", form, "--modules", DIST, "--listen", 0, "--admin", 0,
                     "--upstream", f"127.0.0.1:{upstream.port}", *where)
        assert r.returncode == 0, r.stderr
        return yaml.safe_load(r.stdout)

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while not (found := [line for line in self.lines if text in line]):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"{text!r} not in:\n{''.join(self.lines)}"
            time.sleep(0.05)
        return found[-1]

    def versions(self) -> int:
        """How many versions this serve has pushed (its "Still serving" refusals are not pushes)."""
        return sum(line.startswith("meshward serve: serving") for line in self.lines)

    def version(self) -> str:
        """The version last served."""
        return self.wait_for("meshward serve: serving").split()[3]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def wait_until(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


def ecds_reloads(env: Envoy) -> dict[str, int]:
    """How many configurations each meshward filter of the Envoy took from discovery."""
    stats = env.admin("/stats?filter=extension_config_discovery.http_filter.meshward").body.decode()
    return {m[1]: int(m[2]) for m in re.finditer(r"http_filter\.meshward\.(\w+)\.config_reload: (\d+)", stats)}


def modules_loaded(env: Envoy) -> list[str]:
    """The module files of the meshward filters Envoy runs, from its configuration dump."""
    dump = json.dumps(json.loads(env.admin("/config_dump?include_eds=false").body))
    return sorted(set(re.findall(r'"filename": "[^"]*/(meshward[^"/]*\.wasm)"', dump)))


@pytest.mark.parametrize("transport", ["xds", "files"])
@pytest.mark.parametrize("form", ["separate", "bundle"])
def test_policy_changes_reach_a_running_envoy_without_a_restart(upstream, keys, monkeypatch, tmp_path, form, transport):
    monkeypatch.setenv("MESHWARD_CRAPI_JWKS", json.dumps(keys.jwks(["hs"])))
    policy = example()
    # The background traffic below is one user writing as fast as it can: lift its limit.
    stage(policy, "ratelimit")["rules"][1]["limit"] = {"requests": 1000000, "per": "60s"}
    path = write_policy(tmp_path, policy)
    serve = Serve(path, form, transport, tmp_path)
    try:
        with Envoy(serve.render_envoy(path, form, upstream), concurrency=2) as env:
            pid = env.proc.pid
            token = keys.token("HS256", iss=ISSUER, aud=AUDIENCE, email="alice@example.com", scope="orders:write", exp=int(time.time()) + 600)
            auth = {"authorization": f"Bearer {token}", "content-type": "application/json"}
            order = json.dumps({"product_id": 1, "quantity": 2}).encode()
            dashboard = lambda: env.request("/identity/api/v2/user/dashboard", auth)  # noqa: E731
            assert dashboard().reached_upstream

            # Traffic the change does not touch flows all along: none of it may fail.
            results, stop = [], threading.Event()

            def traffic():
                while not stop.is_set():
                    try:
                        r = env.request("/workshop/api/shop/orders", auth, "POST", order)
                        results.append(True if r.reached_upstream else (r.status, r.reason))
                    except OSError as e:
                        results.append(repr(e))

            workers = [threading.Thread(target=traffic) for _ in range(4)]
            for w in workers:
                w.start()
            try:
                # Reads now need a scope this token lacks.
                stage(policy, "ownership")["rules"][-1]["scopes"] = ["dashboard:read"]
                write_policy(tmp_path, policy)
                started = time.monotonic()
                wait_until(lambda: dashboard().status == 403)
                applied_in = time.monotonic() - started
                r = dashboard()
                assert r.status == 403 and r.reason == "missing_scope", r
                if transport == "xds":
                    # Every Envoy acknowledges what it applied; serve says which version it runs.
                    version = serve.version()
                    serve.wait_for(f"crapi applied {version}")
                    if form == "separate":
                        # Only the filter the change touches was rebuilt.
                        # All of them travel on the one ADS stream; Envoy rebuilds a filter
                        # only when its configuration changed.
                        reloads = ecds_reloads(env)
                        assert reloads == {"jwt": 1, "schema": 1, "ownership": 2, "ratelimit": 1}, reloads

                # A broken policy is refused whole; Envoy keeps the last good one.
                broken = copy.deepcopy(policy)
                stage(broken, "ratelimit")["rules"][0]["limit"]["requests"] = 0
                write_policy(tmp_path, broken)
                serve.wait_for("refused")
                time.sleep(1)
                assert dashboard().status == 403
                # Dropping a stage: separate modules are a fixed filter chain, so serve refuses
                # (re-render Envoy); the bundle is one filter whose stage list may change live.
                limited = lambda: env.request("/workshop/api/shop/orders", auth, "POST", order).header("ratelimit-remaining") is not None  # noqa: E731
                assert limited()
                fewer = copy.deepcopy(policy)
                fewer["stages"] = [s for s in fewer["stages"] if "ratelimit" not in s]
                served = serve.versions()
                write_policy(tmp_path, fewer)
                if form == "separate":
                    serve.wait_for("re-render the Envoy configuration")
                    time.sleep(1)
                    assert limited()
                else:
                    wait_until(lambda: serve.versions() > served)
                    wait_until(lambda: not limited())
                    # Without schema, the smallest bundle holding the stages is another module:
                    # serve pushes the filter with it, Envoy loads it live, no request fails.
                    assert modules_loaded(env) == ["meshward.openapi.wasm"]
                    fewer["stages"] = [s for s in fewer["stages"] if "schema" not in s]
                    write_policy(tmp_path, fewer)
                    mass = json.dumps({"product_id": 1, "quantity": 2, "is_admin": True}).encode()
                    wait_until(lambda: env.request("/workshop/api/shop/orders", auth, "POST", mass).reached_upstream)
                    assert modules_loaded(env) == ["meshward.lite.wasm"]
            finally:
                stop.set()
                for w in workers:
                    w.join()
            assert results and all(x is True for x in results), [x for x in results if x is not True][:5]
            assert env.proc.pid == pid and env.proc.poll() is None, "Envoy was not restarted"
            assert applied_in < 10, applied_in
            assert r.status == 403 and dashboard().status == 403
        env.cleanup()
    finally:
        serve.stop()


def test_envoy_keeps_its_policy_while_serve_is_down_and_refuses_what_it_cannot_run(upstream, keys, monkeypatch, tmp_path):
    """Nothing is lost when the policy server goes away: Envoy keeps enforcing the last policy it
    applied, reconnects to the next serve and takes its policy; a configuration the Envoy cannot
    run (here a module that is not there) is rejected by the Envoy, reported by serve, and the
    running policy stays."""
    monkeypatch.setenv("MESHWARD_CRAPI_JWKS", json.dumps(keys.jwks(["hs"])))
    policy = example()
    path = write_policy(tmp_path, policy)
    serve = Serve(path, "bundle", "xds", tmp_path)
    port = serve.port
    try:
        with Envoy(serve.render_envoy(path, "bundle", upstream)) as env:
            token = keys.token("HS256", iss=ISSUER, aud=AUDIENCE, email="alice@example.com", exp=int(time.time()) + 600)
            auth = {"authorization": f"Bearer {token}"}
            dashboard = lambda: env.request("/identity/api/v2/user/dashboard", auth)  # noqa: E731
            serve.wait_for(f"crapi applied {serve.version()}")
            assert dashboard().reached_upstream
            assert env.request("/identity/api/v2/user/dashboard").reason == "missing_token"

            serve.stop()
            time.sleep(1)
            assert dashboard().reached_upstream
            assert env.request("/identity/api/v2/user/dashboard").reason == "missing_token"

            # The next serve, on the same address, brings a stricter policy.
            stage(policy, "ownership")["rules"][-1]["scopes"] = ["dashboard:read"]
            write_policy(tmp_path, policy)
            serve = Serve(path, "bundle", "xds", tmp_path, xds_port=port)
            serve.wait_for(f"crapi applied {serve.version()}", timeout=40)
            wait_until(lambda: dashboard().reason == "missing_scope")

            # A serve whose modules are not where the Envoy can load them.
            serve.stop()
            stage(policy, "ownership")["rules"][-1]["scopes"] = []
            write_policy(tmp_path, policy)
            serve = Serve(path, "bundle", "xds", tmp_path, "--modules", tmp_path / "nowhere", xds_port=port)
            rejected = serve.wait_for(f"crapi rejected {serve.version()}", timeout=40)
            assert "(meshward.bundle)" in rejected and "keeps its last applied version" in rejected, rejected
            assert dashboard().reason == "missing_scope"
            assert env.request("/identity/api/v2/user/dashboard").reason == "missing_token"
        env.cleanup()
    finally:
        serve.stop()


def test_a_revocation_reaches_a_running_envoy(upstream, keys, monkeypatch, tmp_path):
    """Incident response: revoke one token (jti) and log a user out everywhere (sub, issued
    before now) by editing the policy; serve pushes it, every worker enforces it, no restart."""
    monkeypatch.setenv("MESHWARD_CRAPI_JWKS", json.dumps(keys.jwks(["hs"])))
    policy = example()
    path = write_policy(tmp_path, policy)
    serve = Serve(path, "separate", "xds", tmp_path)
    try:
        with Envoy(serve.render_envoy(path, "separate", upstream), concurrency=2) as env:
            now = int(time.time())
            token = lambda **claims: {"authorization": "Bearer " + keys.token("HS256", iss=ISSUER, aud=AUDIENCE, exp=now + 600, **claims)}  # noqa: E731
            stolen = token(sub="alice", email="alice@example.com", jti="t-stolen")
            bob_before = token(sub="bob", email="bob@example.com", iat=now - 60)
            bob_after = token(sub="bob", email="bob@example.com", iat=now + 1)
            carol = token(sub="carol", email="carol@example.com")
            dashboard = lambda auth: env.request("/identity/api/v2/user/dashboard", auth)  # noqa: E731
            serve.wait_for(f"crapi applied {serve.version()}")
            assert all(dashboard(a).reached_upstream for a in (stolen, bob_before, bob_after, carol))

            stage(policy, "jwt")["providers"]["crapi"]["revoked"] = {
                "token_ids": ["t-stolen"], "subjects": [{"sub": "bob", "issued_before": now}]}
            write_policy(tmp_path, policy)
            wait_until(lambda: dashboard(stolen).reason == "token_revoked")
            serve.wait_for(f"crapi applied {serve.version()}")
            assert ecds_reloads(env) == {"jwt": 2, "schema": 1, "ownership": 1, "ratelimit": 1}, ecds_reloads(env)
            # Every worker: many connections, each request on its own.
            for _ in range(10):
                for auth, reason in ((stolen, "token_revoked"), (bob_before, "token_revoked")):
                    r = dashboard(auth)
                    assert r.status == 401 and r.reason == reason, r
                assert dashboard(bob_after).reached_upstream
                assert dashboard(carol).reached_upstream
        env.cleanup()
    finally:
        serve.stop()


def test_serve_says_what_it_needs(tmp_path):
    r = meshward("serve", EXAMPLE)
    assert r.returncode == 2 and "--xds HOST:PORT" in r.stderr and "--dir DIR" in r.stderr, r.stderr
    r = meshward("serve", EXAMPLE, "--xds", "localhost")
    assert r.returncode == 2 and "is not IP:PORT" in r.stderr, r.stderr
    r = meshward("serve", EXAMPLE, "--xds", "127.0.0.1:0", "--once")
    assert r.returncode == 2 and "needs --dir" in r.stderr, r.stderr
    r = meshward("render", "envoy", EXAMPLE, "--xds", "127.0.0.1:1", "--ecds", tmp_path)
    assert r.returncode == 2 and "'--xds <HOST:PORT>' cannot be used with '--ecds <DIR>'" in r.stderr, r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("service: x\nstages: [{ratelimit: {rules: 3}}]\n")
    r = meshward("serve", broken, "--xds", "127.0.0.1:0")
    assert r.returncode == 2 and "ratelimit" in r.stderr, r.stderr


def test_the_committed_istio_example_is_what_the_policy_renders():
    """istio/rendered/ is `meshward render istio examples/crapi/policy.yaml`: kept in step with
    the policy (module digests aside, which change with every build)."""
    committed = [d for d in yaml.safe_load_all((REPO / "istio" / "rendered" / "crapi-wasmplugins.yaml").read_text()) if d]
    r = meshward("render", "istio", EXAMPLE, "--dist", DIST)
    fresh = [d for d in yaml.safe_load_all(r.stdout) if d]
    for doc in committed + fresh:
        jsonschema.validate(doc, crd_schema())
        doc["spec"].pop("sha256")
    assert committed == fresh, "re-render: meshward render istio examples/crapi/policy.yaml --dist dist > istio/rendered/crapi-wasmplugins.yaml"


def test_the_command_line_explains_itself():
    version = meshward("--version")
    assert version.returncode == 0 and version.stdout.startswith("meshward "), version
    for command in (["check"], ["render", "envoy"], ["rollout", "promote"], ["drift"], ["serve"], ["package"]):
        r = meshward(*command, "--help")
        assert r.returncode == 0 and f"Usage: meshward {' '.join(command)}" in r.stdout, r.stdout
    assert "--apply" in meshward("rollout", "promote", "--help").stdout
    # A wrong flag is named, with the command's usage; exit 2.
    r = meshward("check", EXAMPLE, "--fromat", "json")
    assert r.returncode == 2 and "unexpected argument '--fromat'" in r.stderr and "Usage: meshward check" in r.stderr, r.stderr
    r = meshward("check", EXAMPLE, "--format", "xml")
    assert r.returncode == 2 and "invalid value 'xml' for '--format <FORMAT>'" in r.stderr, r.stderr
    r = meshward("rollout", "status", EXAMPLE)
    assert r.returncode == 2 and "--prometheus <URL>" in r.stderr, r.stderr
    completion = meshward("completions", "bash")
    assert completion.returncode == 0 and "_meshward()" in completion.stdout and "rollout" in completion.stdout, completion.stdout[:200]


def test_render_deploys_the_edition_without_signatures_only_where_envoy_verifies(tmp_path, upstream):
    """Every jwt provider reading Envoy's jwt_authn (`from_native_jwt_authn`): `render` deploys
    meshward.native.wasm, which runs the policy; a provider verifying in wasm gets a module with
    signatures. The native module given a public key refuses the whole configuration."""
    from harness import run_envoy_expecting_failure

    policy = example()
    native = {"issuer": "https://identity.crapi.example", "audiences": ["crapi"], "from_native_jwt_authn": {"payload_in_metadata": "crapi"}}
    stage(policy, "jwt")["providers"]["crapi"] = native
    path = write_policy(tmp_path, policy)
    r = meshward("render", "envoy", path, "--form", "bundle", "--modules", DIST, "--listen", 0, "--admin", 0, "--upstream", f"127.0.0.1:{upstream.port}")
    assert r.returncode == 0, r.stderr
    config = yaml.safe_load(r.stdout)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    files = [Path(f["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]).name for f in hcm["http_filters"] if "vm_config" in f.get("typed_config", {}).get("config", {})]
    assert files == ["meshward.native.wasm"], files
    with Envoy(config, concurrency=1) as env:
        env.wait_for_log(r"meshward: configuration accepted")
        # No jwt_authn in front of it here: no verified payload, so no caller.
        r = env.request("/workshop/api/shop/orders", {"content-type": "application/json"}, "POST", b'{"product_id": 1, "quantity": 2}')
        assert r.status == 401 and r.reason == "missing_token", r
    env.cleanup()
    # A second provider with a key set: a module with signatures again.
    stage(policy, "jwt")["providers"]["partner"] = {"issuer": "https://partner.example", "audiences": ["crapi"], "local_jwks": {"environment_variable": "MESHWARD_CRAPI_JWKS"}}
    r = meshward("render", "istio", write_policy(tmp_path, policy), "--form", "bundle", "--dist", DIST)
    assert r.returncode == 0, r.stderr
    assert [d["spec"]["url"].rsplit("/", 1)[1].split(":")[0] for d in yaml.safe_load_all(r.stdout) if d] == ["meshward.openapi"]
    rsa = {"kty": "RSA", "kid": "k", "n": "x" * 342, "e": "AQAB"}
    jwt = {"providers": {"p": {"issuer": "https://i.example", "audiences": ["a"], "local_jwks": {"inline_string": json.dumps({"keys": [rsa]})}}},
           "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]}
    log = run_envoy_expecting_failure(build_config(upstream.port, [plugin("bundle", {"stages": [{"jwt": jwt}]}, module="meshward.native.wasm")]))
    assert re.search(r"meshward: invalid configuration: stages\[0\]\.jwt\.providers\.p.*kty RSA: this module verifies no public-key signatures", log), log[-2000:]
