"""Hostcalls per request: what each module asks of Envoy for one allowed request of `make bench`'s
GET rows, counted by tests/wasm-profile.mjs (a proxy-wasm host in Node's V8). A hostcall that
returns data costs about 1-2 µs in Envoy (`make bench`'s hostcall rows), so each one is a
budget item: these tests fail when a change adds one.

Counts, not times: the same on every machine.
"""
from __future__ import annotations

import pytest

from harness import DIST, TEST_MODULES
from profile_modules import cases, module_file, run
from tokens import KeyRing

# Per row: the exact hostcalls of one allowed request. None counts it: allowed decisions are added
# up in the VM and written at the next tick (checked below).
EXPECTED = {
    "do-nothing wasm filter (floor)": {},
    "jwt ES256 (meshward)": {
        # The headers once, the clock once, the principal published once, the token removed.
        "proxy_get_header_map_pairs": 1, "proxy_get_current_time_nanoseconds": 1, "proxy_set_property": 1,
        "proxy_remove_header_map_value": 1,
    },
    "ratelimit (meshward, not limited)": {
        # client_ip is the peer address; no principal is read (no rule needs one).
        "proxy_get_header_map_pairs": 1, "proxy_get_property": 1, "proxy_get_current_time_nanoseconds": 1,
        "proxy_get_shared_data": 1, "proxy_set_shared_data": 1, "proxy_replace_header_map_value": 3,
    },
    "ownership after jwt (chain of 3, second module)": {
        "proxy_get_header_map_pairs": 1, "proxy_get_property": 1,
    },
    "ratelimit per subject after jwt (chain of 3, third module)": {
        # The principal from filter state; the peer address is not read (no rule keys on it).
        "proxy_get_header_map_pairs": 1, "proxy_get_property": 1, "proxy_get_current_time_nanoseconds": 1,
        "proxy_get_shared_data": 1, "proxy_set_shared_data": 1, "proxy_replace_header_map_value": 3,
    },
    "bundle jwt+ownership+ratelimit (1 module)": {
        # Three stages, one read of the headers; the principal handed over in memory (never
        # read back from filter state).
        "proxy_get_header_map_pairs": 1, "proxy_get_current_time_nanoseconds": 2, "proxy_set_property": 1,
        "proxy_remove_header_map_value": 1, "proxy_get_shared_data": 1, "proxy_set_shared_data": 1,
        "proxy_replace_header_map_value": 3,
    },
    "bundle jwt+ownership+ratelimit, audit record of every request (1 module)": {
        # The record: the clock, the status and duration, the peer certificate, the record
        # handed to the access log (the producer's number in shared data only once per VM).
        "proxy_get_header_map_pairs": 1, "proxy_get_current_time_nanoseconds": 3, "proxy_set_property": 2,
        "proxy_remove_header_map_value": 1, "proxy_get_shared_data": 1, "proxy_set_shared_data": 1,
        "proxy_replace_header_map_value": 3, "proxy_get_property": 3,
    },
    "east-west: ownership workload rule": {
        # The peer certificate's SPIFFE ID, once; no user is read for a workload-only rule.
        "proxy_get_header_map_pairs": 1, "proxy_get_property": 1,
    },
}

CASES = cases(KeyRing())


def built(module: str):
    """The module `make build` / `make test-modules` built."""
    return module_file(TEST_MODULES if module == "noop" else DIST, module)


@pytest.mark.parametrize("row, module, configuration, headers, state", CASES, ids=[c[0] for c in CASES])
def test_hostcalls_per_allowed_request(row, module, configuration, headers, state):
    result = run(built(module), configuration, headers, requests=50, state=state, profile=False)
    assert result["local_responses"] == 0, result["first_response"]
    assert result["hostcalls"] == EXPECTED[row]
    # Every request is in its stages' allowed counters once the tick wrote them.
    stages = {"noop": [], "jwt": ["jwt"], "ownership": ["ownership"], "ratelimit": ["ratelimit"], "bundle": ["jwt", "ownership", "ratelimit"]}[module]
    for stage in stages:
        allowed = sum(v for k, v in result["counters"].items() if k.startswith(f"meshward_{stage}_allowed_total"))
        assert allowed == result["requests"], (stage, result["counters"])


def test_a_denied_request_is_seen():
    """The counting host answers like Envoy: a request the policy refuses is a failed run."""
    row, module, configuration, headers, state = CASES[1]
    without_token = [h for h in headers if h[0] != "authorization"]
    with pytest.raises(RuntimeError, match="missing_token"):
        run(built(module), configuration, without_token, requests=5, state=state, profile=False)
