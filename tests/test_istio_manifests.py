"""The Istio manifests in istio/ validate against Istio's WasmPlugin CRD schema, and their
pluginConfig is a configuration the JWT filter accepts (checked by loading it into Envoy)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness import DIST, REPO, Envoy, build_config, plugin, static_cluster

# Istio's CRD, vendored unchanged from shared/istio/ (istio/api, July 2026).
VENDORED_CRD = REPO / "istio" / "testdata" / "wasmplugin-crd.yaml"
MANIFESTS = sorted((REPO / "istio").glob("*.yaml"))


def crd_schema() -> dict:
    crd = yaml.safe_load(VENDORED_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return version["schema"]["openAPIV3Schema"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_wasmplugin_crd(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "extensions.istio.io/v1alpha1" and doc["kind"] == "WasmPlugin"
    jsonschema.validate(doc, crd_schema())
    spec = doc["spec"]
    # jwt and webhook authenticate the caller (AUTHN), so does the bundle whose first stage is
    # jwt; ownership, schema and rate limits authorize (AUTHZ). Never fail open.
    phases = {"jwt": "AUTHN", "webhook": "AUTHN", "bundle": "AUTHN", "ownership": "AUTHZ", "schema": "AUTHZ", "ratelimit": "AUTHZ", "idempotency": "AUTHZ", "grpc": "AUTHZ", "graphql": "AUTHZ"}
    assert spec["phase"] == phases[doc["metadata"]["labels"]["meshward.io/filter"]]
    assert spec["failStrategy"] == "FAIL_CLOSE"


def test_schema_check_can_fail():
    doc = yaml.safe_load(MANIFESTS[0].read_text())
    doc["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, crd_schema())


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_plugin_config_is_accepted_by_the_filter(upstream, keys, path):
    doc = yaml.safe_load(path.read_text())
    spec, name = doc["spec"], doc["metadata"]["labels"]["meshward.io/filter"]
    config = spec["pluginConfig"]
    if name in ("jwt", "bundle"):
        secret = json.dumps(keys.jwks(["hs"]))
    else:
        secret = "whsec_0123456789abcdef0123456789"
    env = {e["name"]: secret for e in spec.get("vmConfig", {}).get("env", [])}
    clusters = []
    for provider in config.get("providers", {}).values():
        if "remote_jwks" in provider:
            clusters.append(static_cluster(provider["remote_jwks"]["http_uri"]["cluster"], upstream.port))
    for grpc in ("global", "fleet"):
        if grpc in config:
            clusters.append(static_cluster(config[grpc]["cluster"], upstream.port, http2=True))
    # The module the manifest names (the bundle: meshward.wasm or one of its editions).
    module = spec["url"].rsplit("/", 1)[1].split(":")[0] + ".wasm"
    log_name = "meshward" if name == "bundle" else f"meshward_{name}"
    with Envoy(build_config(upstream.port, [plugin(name, config, module=module, env=env, compile=False)], clusters=clusters), concurrency=1) as envoy:
        envoy.wait_for_log(rf"{log_name}: configuration accepted")
        if name in ("jwt", "bundle"):
            # Every JWT manifest protects "/" with a provider: no token there is a 401.
            r = envoy.request("/orders")
            assert r.status == 401 and r.reason == "missing_token", r
        elif name == "webhook":
            path = config["endpoints"][0]["match"]["path"]
            r = envoy.request(path, method="POST", body=b"{}")
            assert r.status == 401 and r.reason == "missing_signature", r
        elif name == "schema":
            # The contract refuses a body it does not declare, and passes one it does.
            post = lambda body: envoy.request("/tenants/acme/orders", {"content-type": "application/json"}, method="POST", body=body)  # noqa: E731
            r = post(b'{"product_id": 1, "quantity": 1000}')
            assert r.status == 400, r
            assert post(b'{"product_id": 1, "quantity": 2}').status == 200
        elif name == "idempotency":
            # Every write the manifest names requires a key; reads do not.
            r = envoy.request("/v1/payments", {"content-type": "application/json"}, method="POST", body=b"{}")
            assert r.status == 400 and r.reason == "idempotency_key_missing", r
            assert envoy.request("/v1/payments").status == 200
        elif name == "grpc":
            # The contract is gRPC: a plain HTTP request is not a call, and a gRPC call to a
            # method not offered is UNIMPLEMENTED (trailers-only, grpc-status 12).
            r = envoy.request("/demo.orders.Orders/GetOrder", {"content-type": "application/json"}, method="POST", body=b"{}")
            assert r.status == 415 and r.reason == "not_grpc", r
            r = envoy.request("/demo.orders.Orders/Upload", {"content-type": "application/grpc", "te": "trailers"}, method="POST", body=b"\0\0\0\0\0")
            assert r.status == 200 and r.header("grpc-status") == "12" and r.header("meshward-reason") == "method_not_allowed", (r, r.headers)
        elif name == "graphql":
            # A document outside the allowlist never runs.
            r = envoy.request("/graphql", {"content-type": "application/json"}, method="POST", body=b'{"query": "{ secret }"}')
            assert r.status == 403 and r.reason == "not_persisted", r
        elif name == "ratelimit":
            # Without a principal only the anonymous (client IP) rule applies: 30 per minute.
            statuses = [envoy.request("/").status for _ in range(31)]
            assert statuses.count(200) == 30 and statuses[-1] == 429, statuses
        else:
            # Ownership alone has no principal; the manifest is in shadow mode, so it is
            # counted, not enforced.
            r = envoy.request("/tenants/acme/orders/1")
            assert r.status == 200, r
            assert envoy.counter("meshward_ownership_shadow_denied_total.route.tenant-orders-read.reason.missing_principal") == 1
    envoy.cleanup()


def test_the_schema_manifest_is_its_policy_compiled():
    """The schema module loads compiled contracts only: schema-wasmplugin.yaml carries what
    `meshward compile` makes of testdata/orders-schema-policy.yaml, and stays in step with it."""
    import subprocess

    from harness import MESHWARD

    doc = yaml.safe_load((REPO / "istio" / "schema-wasmplugin.yaml").read_text())
    run = subprocess.run([str(MESHWARD), "compile", str(REPO / "istio" / "testdata" / "orders-schema-policy.yaml")],
                         capture_output=True, text=True, timeout=60, check=True)
    assert doc["spec"]["pluginConfig"] == json.loads(run.stdout)["meshward_schema"], \
        "re-generate istio/schema-wasmplugin.yaml's pluginConfig: meshward compile istio/testdata/orders-schema-policy.yaml"


def test_every_module_has_a_manifest():
    filters = {yaml.safe_load(p.read_text())["metadata"]["labels"]["meshward.io/filter"] for p in MANIFESTS}
    # meshward.wasm and its editions (meshward.<edition>.wasm) are the bundle.
    modules = {"bundle" if p.stem.split(".")[0] == "meshward" else p.stem.removeprefix("meshward_") for p in DIST.glob("*.wasm")}
    assert modules and modules <= filters, modules - filters


def test_the_bootstrap_override_gives_envoy_meshwards_labels_and_leaves_envoys_own(upstream, tmp_path):
    """`meshward render istio-bootstrap`: the ConfigMap Istio merges into a sidecar's bootstrap.
    Loaded into a real Envoy (in place of envoy/envoy.yaml's own tags), meshward's reason, route
    and configuration become labels, and Envoy's own stats keep their names."""
    from test_cli import EXAMPLE, meshward
    r = meshward("render", "istio-bootstrap", EXAMPLE)
    assert r.returncode == 0, r.stderr
    [config_map] = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert (config_map["kind"], config_map["metadata"]["name"], config_map["metadata"]["namespace"]) == ("ConfigMap", "meshward-bootstrap", "crapi")
    override = json.loads(config_map["data"]["custom_bootstrap.json"])
    assert override["memory_allocator_manager"]["memory_release_interval"] == "1s"
    # `--memory-release off` leaves the release out (a flat start), and nothing else.
    r = meshward("render", "istio-bootstrap", EXAMPLE, "--memory-release", "off")
    [flat] = [d for d in yaml.safe_load_all(r.stdout) if d]
    flat = json.loads(flat["data"]["custom_bootstrap.json"])
    assert "memory_allocator_manager" not in flat and flat == {k: v for k, v in override.items() if k != "memory_allocator_manager"}
    config = build_config(upstream.port, [plugin("ownership", {"mode": "shadow", "unmatched": "allow",
                                                               "rules": [{"name": "order-read", "match": {"prefix": "/orders"}, "scopes": ["orders:read"]}]})])
    config.update(override)
    with Envoy(config, concurrency=1) as env:
        assert env.request("/orders/1").reached_upstream
        time.sleep(1.2)  # allowed decisions are written every second
        text = env.prometheus()
        labelled = r'meshward_ownership_shadow_denied_total\{(?=[^}]*route="order-read")(?=[^}]*reason="missing_principal")[^}]*\} 1'
        assert re.search(labelled, text), text
        assert re.search(r'meshward_ownership_config_info\{config="[0-9a-f]{16}"\} 1', text), text
        assert re.search(r"^envoy_http_downstream_rq_total\{", text, re.M), "Envoy's own stats keep their tags"
    env.cleanup()
