"""Envoy refuses a bad meshward_jwt configuration whole, with a log line naming the problem."""
from __future__ import annotations

import json

import pytest

from harness import build_config, plugin, run_envoy_expecting_failure
from tokens import AUDIENCE, ISSUER, KeyRing


def good(keys: KeyRing) -> dict:
    return {
        "providers": {"main": {"issuer": ISSUER, "audiences": [AUDIENCE], "local_jwks": {"inline_string": json.dumps(keys.jwks(["rsa"]))}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}],
    }


def mutate(keys, change):
    cfg = good(keys)
    change(cfg)
    return cfg


CASES = {
    "unknown field": (lambda c: c["providers"]["main"].update(isuer="x"), r"providers\.main\.isuer: unknown field `isuer`"),
    "no issuer": (lambda c: c["providers"]["main"].pop("issuer"), r"providers\.main\.issuer: is required"),
    "no audiences": (lambda c: c["providers"]["main"].pop("audiences"), r"providers\.main\.audiences: at least one audience is required"),
    "bad jwks": (lambda c: c["providers"]["main"].update(local_jwks={"inline_string": '{"keys":[{"kty":"RSA","n":"AQAB"}]}'}), r"providers\.main\.local_jwks: keys\[0\]: missing `e`"),
    "jwks not json": (lambda c: c["providers"]["main"].update(local_jwks={"inline_string": "not json"}), r"providers\.main\.local_jwks: JWKS is not a JSON object"),
    "bad uri": (lambda c: c["providers"]["main"].update(local_jwks=None, remote_jwks={"http_uri": {"uri": "ftp://idp", "cluster": "jwks"}}), r"remote_jwks\.http_uri\.uri: \"ftp://idp\" is not an http"),
    "unknown provider": (lambda c: c["rules"][0].update(requires={"provider_name": "nope"}), r"rules\[0\]\.requires\.provider_name: no provider named \"nope\""),
    "wrong type": (lambda c: c["providers"]["main"].update(audiences="orders-api"), r"providers\.main\.audiences: invalid type"),
    "bad mode": (lambda c: c.update(mode="audit"), r"mode: unknown variant `audit`"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_config_is_refused_with_a_reason(upstream, keys, name):
    change, pattern = CASES[name]
    cfg = mutate(keys, change)
    if cfg["providers"]["main"].get("local_jwks", "x") is None:
        del cfg["providers"]["main"]["local_jwks"]
    log = run_envoy_expecting_failure(build_config(upstream.port, [plugin("jwt", cfg)]))
    assert "meshward_jwt: invalid configuration" in log
    import re

    assert re.search(pattern, log), log[-3000:]


def test_empty_and_non_json_configs_are_refused(upstream):
    for text in ["", "{", "[]"]:
        log = run_envoy_expecting_failure(build_config(upstream.port, [plugin("jwt", text)]))
        assert "meshward_jwt: invalid configuration" in log, text
