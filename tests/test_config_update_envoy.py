"""A running Envoy gets new meshward policy without a restart (listener update from a file,
as a control plane would push it), and keeps its last good configuration when a bad one
arrives: the update is refused whole, traffic keeps the old policy."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from harness import FORMS, Envoy, as_deployed, build_config, plugin
from test_jwt_envoy import jwt_config
from tokens import bearer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DynamicEnvoy:
    """Envoy whose listener comes from a file (LDS); `push` replaces it atomically."""

    def __init__(self, config: dict, directory: Path):
        self.lds = directory / "lds.json"
        listener = config["static_resources"].pop("listeners")[0]
        self.port = free_port()
        listener["address"]["socket_address"]["port_value"] = self.port
        self.listener = listener
        self._write(listener)
        config["node"] = {"id": "meshward-test", "cluster": "meshward-test"}
        config["dynamic_resources"] = {"lds_config": {"resource_api_version": "V3", "path_config_source": {"path": str(self.lds)}}}
        self.envoy = Envoy(config, concurrency=2)

    def _write(self, listener: dict) -> None:
        tmp = self.lds.with_suffix(".tmp")
        tmp.write_text(json.dumps({"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}))
        os.replace(tmp, self.lds)

    def push(self, plugins: list[dict]) -> None:
        """Replaces the meshward filters of the listener, keeping everything else."""
        listener = json.loads(json.dumps(self.listener))
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        template = build_config(0, plugins)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = template["http_filters"]
        self._write(listener)

    def counter(self, name: str) -> int:
        return self.envoy.counter(name)

    def wait_counter(self, name: str, at_least: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.counter(name) < at_least:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed below {at_least}:\n{self.envoy.log()[-3000:]}")
            time.sleep(0.1)


@pytest.mark.parametrize("form", FORMS)
def test_policy_updates_apply_live_and_bad_ones_are_refused_whole(upstream, keys, form, tmp_path):
    cfg_a = jwt_config(keys)                         # /api requires a token, /public is open
    cfg_b = jwt_config(keys)
    cfg_b["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]  # everything requires one
    bad = jwt_config(keys)
    bad["providers"]["main"]["audiences"] = []       # refused: no audience

    dyn = DynamicEnvoy(build_config(upstream.port, as_deployed(form, [plugin("jwt", cfg_a)])), tmp_path)
    env = dyn.envoy
    with env:
        assert env.request("/public/x").reached_upstream

        # A bad update: refused whole; the running policy is untouched.
        dyn.push(as_deployed(form, [plugin("jwt", bad)]))
        dyn.wait_counter("listener_manager.lds.update_rejected", 1)
        env.wait_for_log(r"invalid configuration: .*audiences: at least one audience is required")
        assert env.request("/public/x").reached_upstream
        assert env.request("/api/x").status == 401
        assert env.request("/api/x", bearer(keys.token("ES256"))).reached_upstream

        # A good update applies without a restart.
        dyn.push(as_deployed(form, [plugin("jwt", cfg_b)]))
        dyn.wait_counter("listener_manager.lds.update_success", 2)
        deadline = time.monotonic() + 10
        while env.request("/public/x").status != 401:
            assert time.monotonic() < deadline, "the new policy did not take effect"
            time.sleep(0.1)
        r = env.request("/public/x")
        assert r.reason == "missing_token"
        assert env.request("/public/x", bearer(keys.token("ES256"))).reached_upstream
    env.cleanup()
