"""`make profile`: where a request's time goes inside each module of `make bench`'s GET rows,
outside Envoy. Each module runs under tests/wasm-profile.mjs (a proxy-wasm host in Node's V8)
with the bench scenario's configuration and request; printed per module: hostcalls per request
(by name), microseconds per request spent in the module, and its functions with the most
self time (shares of the module's time).

    python tests/profile_modules.py [--modules DIR] [--only REGEX] [--requests N] [--top K] [--json FILE]

`--modules` defaults to target/profile/wasm32-wasip1/release (built with the name section, so
the profile names functions); `dist/` works too, without names.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import BILLING, NOOP, OWNERSHIP, OWNERSHIP_WORKLOAD, RATELIMIT, RATELIMIT_ANON, audited, meshward_jwt  # noqa: E402
from harness import REPO, bundle  # noqa: E402
from tokens import AUDIENCE, ISSUER, KeyRing  # noqa: E402

PRINCIPAL = "meshward.principal"  # the filter-state key meshward_core::PRINCIPAL_PROPERTY

PROFILE_MODULES = REPO / "target" / "profile" / "wasm32-wasip1" / "release"
# Built module file names, in dist/ and in a cargo target directory.
FILE = {
    "noop": ("meshward_noop.wasm", "meshward_noop_test_filter.wasm"),
    "jwt": ("meshward_jwt.wasm", "meshward_jwt_filter.wasm"),
    "ownership": ("meshward_ownership.wasm", "meshward_ownership_filter.wasm"),
    "ratelimit": ("meshward_ratelimit.wasm", "meshward_ratelimit_filter.wasm"),
    "bundle": ("meshward.wasm", "meshward_bundle_filter.wasm"),
}


def module_file(directory: Path, name: str) -> Path:
    for candidate in FILE[name]:
        if (directory / candidate).is_file():
            return directory / candidate
    raise FileNotFoundError(f"no {name} module in {directory} (run `make profile`, or `make build test-modules` and pass --modules)")


def principal(claims: dict) -> str:
    """The principal as meshward's JWT filter publishes it in filter state."""
    return json.dumps({"provider": "main", "issuer": claims["iss"], "subject": claims["sub"], "audiences": [claims["aud"]],
                       "scopes": claims["scope"].split(), "tenant": None, "claims": claims})


def cases(keys: KeyRing) -> list[tuple[str, str, object, list, dict]]:
    """(row, module, configuration, request headers, filter state): the GET rows of `make bench`,
    and the modules after the JWT one in the three-module chain."""
    token = keys.token("ES256", scope="orders:read", exp=int(time.time()) + 3600)
    get = [[":method", "GET"], [":path", "/tenants/acme/orders/42"], [":authority", "127.0.0.1"], [":scheme", "http"],
           ["user-agent", "wrk"], ["x-forwarded-proto", "http"], ["x-request-id", "9b2c0d9e-5d0a-4c55-8a0c-0f6f3f4f2b1a"]]
    auth = get + [["authorization", f"Bearer {token}"]]
    jwt = meshward_jwt(keys, ["es256"])
    three = [jwt, OWNERSHIP, RATELIMIT]
    now = int(time.time())
    state = {PRINCIPAL: principal({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "tenant": "acme", "scope": "orders:read", "iat": now, "exp": now + 3600})}
    return [
        ("do-nothing wasm filter (floor)", "noop", NOOP["config"], get, {}),
        ("jwt ES256 (meshward)", "jwt", jwt["config"], auth, {}),
        ("ratelimit (meshward, not limited)", "ratelimit", RATELIMIT_ANON["config"], get, {}),
        ("ownership after jwt (chain of 3, second module)", "ownership", OWNERSHIP["config"], get, state),
        ("ratelimit per subject after jwt (chain of 3, third module)", "ratelimit", RATELIMIT["config"], get, state),
        ("bundle jwt+ownership+ratelimit (1 module)", "bundle", bundle(three)["config"], auth, {}),
        ("bundle jwt+ownership+ratelimit, audit record of every request (1 module)", "bundle", audited(bundle(three))["config"], auth, {}),
        # Envoy's connection property for the verified peer certificate (path segments joined by NUL).
        ("east-west: ownership workload rule", "ownership", OWNERSHIP_WORKLOAD["config"], get, {"connection\u0000uri_san_peer_certificate": BILLING}),
    ]


def run(module: Path, configuration, headers: list, requests: int, state: dict, top: int = 25, profile: bool = True) -> dict:
    """One module under tests/wasm-profile.mjs; raises RuntimeError when the run fails (a
    configuration refused, a request denied)."""
    with tempfile.TemporaryDirectory(prefix="meshward-profile-") as work:
        spec = {"module": str(module), "configuration": configuration, "headers": headers,
                "properties": state, "requests": requests, "profile": profile, "top": top}
        path = Path(work) / "spec.json"
        path.write_text(json.dumps(spec))
        done = subprocess.run(["node", str(REPO / "tests" / "wasm-profile.mjs"), str(path)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the profile run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description="meshward per-request profile")
    ap.add_argument("--modules", default=str(PROFILE_MODULES))
    ap.add_argument("--only")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--json")
    args = ap.parse_args()
    keys = KeyRing()
    results = []
    for row, module, configuration, headers, state in cases(keys):
        if args.only and not re.search(args.only, row):
            continue
        try:
            result = run(module_file(Path(args.modules), module), configuration, headers, args.requests, state, top=args.top)
        except RuntimeError as e:
            print(f"{row}: {e}", file=sys.stderr)
            return 1
        results.append(dict(result, row=row))
        print(f"\n## {row}: {result['module_micros_per_request']} µs per request in the module "
              f"({result['micros_per_request']} µs with this host), {result['hostcalls_per_request']} hostcalls")
        print("   hostcalls: " + ", ".join(f"{k.removeprefix('proxy_')} {v}" for k, v in result["hostcalls"].items()))
        for name, percent in result["self_time_percent"]:
            print(f"   {percent:5.1f}%  {name}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
