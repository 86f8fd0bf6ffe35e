"""What Envoy does with traffic when a filter's VM fails, under the failure policy meshward ships
(`failure_policy: FAIL_CLOSED` in envoy/envoy.yaml, `failStrategy: FAIL_CLOSE` in istio/).

meshward's filters do not panic; a test-only module (tests/crash-filter) whose VM fails on
demand stands in for "the VM failed anyway" (a bug, an out-of-memory, a host fault).
"""
from __future__ import annotations

import pytest

from harness import TEST_MODULES, Envoy, build_config, plugin, run_envoy_expecting_failure

CRASH = str(TEST_MODULES / "meshward_crash.wasm")


def wasm_config(cfg: dict) -> dict:
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["http_filters"][0]["typed_config"]["config"]


def config(upstream_port: int, policy: str | None) -> dict:
    """The crash module in envoy/envoy.yaml's filter slot; `policy` None keeps the shipped one."""
    cfg = build_config(upstream_port, [plugin("crash", "{}", module=CRASH)])
    if policy is not None:
        wasm_config(cfg)["failure_policy"] = policy
    return cfg


def test_shipped_config_is_fail_closed(upstream):
    assert wasm_config(config(upstream.port, None))["failure_policy"] == "FAIL_CLOSED"


@pytest.mark.parametrize("policy", [None, "FAIL_CLOSED"])
def test_a_failed_vm_lets_nothing_through(upstream, policy):
    with Envoy(config(upstream.port, policy), concurrency=1) as env:
        assert env.request("/orders/1").reached_upstream, "the module works before it fails"
        crashed = env.request("/orders/1", {"x-crash": "1"})
        assert not crashed.reached_upstream and crashed.status >= 500, crashed
        for _ in range(5):
            after = env.request("/orders/1")
            assert after.status == 503 and not after.reached_upstream, after
    env.cleanup()


def test_fail_open_is_what_it_says(upstream):
    """The opposite choice, for the record: with FAIL_OPEN, traffic flows unchecked once the VM
    failed. meshward never ships it."""
    with Envoy(config(upstream.port, "FAIL_OPEN"), concurrency=1) as env:
        env.request("/orders/1", {"x-crash": "1"})
        assert env.request("/orders/1").reached_upstream
    env.cleanup()


def test_a_module_that_does_not_load_keeps_envoy_from_serving(upstream, tmp_path):
    broken = tmp_path / "broken.wasm"
    broken.write_bytes(b"\x00asm\x01\x00\x00\x00 truncated")
    cfg = build_config(upstream.port, [plugin("jwt", "{}", module=str(broken))])
    log = run_envoy_expecting_failure(cfg)
    assert "wasm" in log.lower(), log[-2000:]
