"""Every meshward module refuses a bad configuration whole, in the real Envoy, with a log line
naming the problem: an unknown field, a wrong type, an empty or non-JSON configuration, and a
huge one. (JWT has its own, longer table in test_jwt_bad_config.py. The schema module loads the
contract `meshward compile` made: its rows break that; bad specs are refused by compile, in
test_schema_envoy.py and crates/schema/tests/contract.rs.)"""
from __future__ import annotations

import json
import re

import pytest

from harness import Envoy, build_config, module_config, plugin, run_envoy_expecting_failure

CRAPI_MINI = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"},
              "paths": {"/orders": {"post": {"operationId": "create_order", "responses": {"200": {"description": "ok"}}}}}}

# A configuration each module accepts, to break one way at a time.
GOOD = {
    "webhook": {"endpoints": [{"name": "hooks", "match": {"prefix": "/hooks"}, "scheme": "github", "secrets": [{"inline_string": "s3cret-s3cret-s3cret"}]}]},
    "ownership": {"rules": [{"name": "orders", "match": {"prefix": "/orders"}, "scopes": ["orders:read"]}]},
    "ratelimit": {"rules": [{"name": "ip", "match": {"prefix": "/"}, "key": ["client_ip"], "limit": {"requests": 5, "per": "1s"}}]},
    # As the module loads it: compiled.
    "schema": module_config("schema", {"openapi": CRAPI_MINI}),
}

# (case, change to the good configuration, what the log line must say)
CASES = {
    "webhook": [
        ("unknown field", lambda c: c["endpoints"][0].update(secret="x"), r"endpoints\[0\]\.secret: unknown field"),
        ("wrong type", lambda c: c["endpoints"][0].update(secrets="s3cret"), r"endpoints\[0\]\.secrets: invalid type"),
        ("fleet without namespace", lambda c: c.update(fleet={"cluster": "fleet"}), r"fleet: missing field `namespace`"),
        ("status range", lambda c: c["endpoints"][0].update(accepted_statuses=["2xx"]), r"endpoints\[0\]\.accepted_statuses\[0\]: \"2xx\" is not a status"),
    ],
    "ownership": [
        ("unknown field", lambda c: c["rules"][0].update(scope=["x"]), r"rules\[0\]\.scope: unknown field"),
        ("wrong type", lambda c: c["rules"][0].update(scopes="orders:read"), r"rules\[0\]\.scopes: invalid type"),
    ],
    "ratelimit": [
        ("unknown field", lambda c: c["rules"][0].update(limits={}), r"rules\[0\]\.limits: unknown field"),
        ("wrong type", lambda c: c["rules"][0]["limit"].update(requests="five"), r"rules\[0\]\.limit\.requests: invalid type"),
        ("huge bound", lambda c: c.update(max_keys=10**12), r"max_keys"),
        ("global burst", lambda c: c.update(**{"global": {"cluster": "rls", "domain": "d"}}) or c["rules"][0].update(scope="global", limit={"requests": 5, "per": "1s", "burst": 9}),
         r"rules\[0\]\.limit: a global limit is `requests` per whole seconds"),
        ("own 429 counted as a failure", lambda c: c["rules"][0].update(counts="failures", failure_statuses=[401, 429]),
         r"rules\[0\]\.failure_statuses: 429 is not a failure to count"),
    ],
    "schema": [
        ("unknown field", lambda c: c.update(reject_unknown=True), r"reject_unknown: unknown field"),
        ("wrong type", lambda c: c["contract"].update(max_depth="deep"), r"contract\.max_depth: invalid type"),
        ("another contract version", lambda c: c["contract"].update(version=2), r"contract\.version: 2 is not this module's contract version 1"),
        ("a schema past the table", lambda c: c["contract"]["schemas"].append({"$ref": 10**6}),
         r"contract: schemas\[\d+\] names schema 1000000, past the table"),
        ("an uncompiled document", lambda c: c.pop("contract") and c.update(openapi=CRAPI_MINI),
         r"openapi: this module runs compiled contracts: `meshward compile`"),
    ],
}

PARAMS = [(name, *case) for name, cases in CASES.items() for case in cases]


def assert_refused(upstream, name: str, config, pattern: str, in_bundle: bool) -> None:
    # The module gets exactly this configuration (nothing compiled on the way).
    p = plugin(name, config, compile=False)
    if in_bundle:
        p = plugin("bundle", {"stages": [{name: config}]}, module="meshward.wasm", compile=False)
        pattern = rf"stages\[0\]\.{name}\.{pattern}" if not pattern.startswith("max_keys") and "OpenAPI" not in pattern else pattern
    log = run_envoy_expecting_failure(build_config(upstream.port, [p]))
    module = "meshward" if in_bundle else f"meshward_{name}"
    assert f"{module}: invalid configuration" in log, log[-3000:]
    assert re.search(pattern, log), (pattern, log[-3000:])


@pytest.mark.parametrize("name,case,change,pattern", PARAMS, ids=[f"{p[0]}-{p[1]}" for p in PARAMS])
@pytest.mark.parametrize("in_bundle", [False, True], ids=["module", "bundle"])
def test_bad_config_is_refused_whole_with_the_reason(upstream, name, case, change, pattern, in_bundle):
    config = json.loads(json.dumps(GOOD[name]))
    change(config)
    assert_refused(upstream, name, config, pattern, in_bundle)


@pytest.mark.parametrize("name", list(GOOD))
def test_empty_non_json_and_huge_configs_are_refused(upstream, name):
    for text in ["", "{", "[]", "null"]:
        log = run_envoy_expecting_failure(build_config(upstream.port, [plugin(name, text)]))
        assert f"meshward_{name}: invalid configuration" in log, (name, text)
    # 4 MiB of configuration: refused with the field that is wrong, and Envoy does not hang or crash.
    huge = json.loads(json.dumps(GOOD[name]))
    huge["padding"] = "x" * (4 * 1024 * 1024)
    log = run_envoy_expecting_failure(build_config(upstream.port, [plugin(name, huge)]), timeout=60)
    assert f"meshward_{name}: invalid configuration" in log and "padding: unknown field" in log, log[-2000:]


def test_a_secret_in_the_wrong_place_is_not_logged(upstream):
    """serde quotes the value it did not expect; meshward's refusal names the field, never the
    value, so a secret pasted into the wrong field does not end up in Envoy's log."""
    secret = "whsec_do-not-log-this-0123456789"
    config = {"endpoints": [{"name": "hooks", "match": {"prefix": "/hooks"}, "scheme": "standard_webhooks", "secrets": secret}]}
    log = run_envoy_expecting_failure(build_config(upstream.port, [plugin("webhook", config)]))
    assert re.search(r"meshward_webhook: invalid configuration: endpoints\[0\]\.secrets: invalid type: string \"…\"", log), log[-2000:]
    assert "do-not-log-this" not in log


@pytest.mark.parametrize("edition,held,missing", [
    ("meshward.lite.wasm", ["webhook", "ownership", "ratelimit"], "schema"),
    ("meshward.openapi.wasm", ["webhook", "schema", "ownership", "ratelimit"], "grpc"),
])
def test_a_bundle_edition_runs_its_stages_and_refuses_one_it_was_built_without(upstream, edition, held, missing):
    """`meshward render` deploys the smallest edition holding a policy's stages; given a stage
    it was built without (a policy changed under a rendered Envoy), it refuses the whole
    configuration, naming the stage and what it holds."""
    stages = [{name: GOOD[name]} for name in held]
    with Envoy(build_config(upstream.port, [plugin("bundle", {"stages": stages}, module=edition)])) as env:
        env.wait_for_log(r"meshward: configuration accepted")
    env.cleanup()
    config = {"stages": [*stages, {missing: {}}]}
    log = run_envoy_expecting_failure(build_config(upstream.port, [plugin("bundle", config, module=edition, compile=False)]))
    assert re.search(rf"meshward: invalid configuration: stages\[{len(held)}\]\.{missing}: the `{missing}` stage is not built into this module "
                     rf"\(it holds jwt, webhook, idempotency, {'schema, ' if 'schema' in held else ''}ownership, ratelimit\)", log), log[-3000:]
