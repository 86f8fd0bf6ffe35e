"""`make demo`: the real Envoy with meshward_jwt.wasm and the configuration in envoy/envoy.yaml,
a local echo upstream, and a scripted set of requests printed as a table.

    python tests/demo.py           run the demo
    python tests/demo.py --token   print a valid demo token (for the docker-compose setup)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from echo_upstream import echo_server  # noqa: E402
from harness import ENVOY_YAML, REPO, Envoy, build_config, plugin  # noqa: E402

DEMO_KEY = REPO / "envoy" / "demo" / "demo-signing-key.pem"


def demo_plugin_config() -> str:
    """The JWT filter configuration exactly as envoy/envoy.yaml has it."""
    cfg = yaml.safe_load(ENVOY_YAML.read_text())
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]


def sign(key=None, kid="demo-es256", alg="ES256", **overrides) -> str:
    now = int(time.time())
    claims = {"iss": "https://issuer.meshward.demo", "aud": "orders-api", "sub": "alice", "tenant": "acme", "iat": now, "exp": now + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key if key is not None else DEMO_KEY.read_bytes(), algorithm=alg, headers={"kid": kid})


def scenarios():
    now = int(time.time())
    intruder = ec.generate_private_key(ec.SECP256R1())
    none_token = jwt.encode({"iss": "https://issuer.meshward.demo", "aud": "orders-api", "sub": "alice", "exp": now + 600}, None, algorithm="none")
    # (request, path, headers, expected status)
    return [
        ("health check, no token (public route)", "/healthz", {}, 200),
        ("valid token", "/orders/42", {"authorization": "Bearer " + sign()}, 200),
        ("valid token + spoofed x-jwt-sub: admin", "/orders/42", {"authorization": "Bearer " + sign(), "x-jwt-sub": "admin"}, 200),
        ("missing token", "/orders/42", {}, 401),
        ("expired token", "/orders/42", {"authorization": "Bearer " + sign(exp=now - 3600, iat=now - 7200)}, 401),
        ("token not valid yet", "/orders/42", {"authorization": "Bearer " + sign(nbf=now + 3600)}, 401),
        ("wrong audience", "/orders/42", {"authorization": "Bearer " + sign(aud="payments-api")}, 403),
        ("wrong issuer", "/orders/42", {"authorization": "Bearer " + sign(iss="https://evil.example")}, 401),
        ("bad signature (other key, same kid)", "/orders/42", {"authorization": "Bearer " + sign(key=intruder)}, 401),
        ("alg: none", "/orders/42", {"authorization": "Bearer " + none_token}, 401),
        ("unknown kid", "/orders/42", {"authorization": "Bearer " + sign(kid="retired")}, 401),
        ("malformed token", "/orders/42", {"authorization": "Bearer not.a.jwt"}, 401),
    ]


def describe(r) -> str:
    if r.reached_upstream:
        seen = r.upstream_headers()
        return f"reached upstream as sub={seen.get('x-jwt-sub', ['-'])[0]} tenant={seen.get('x-jwt-tenant', ['-'])[0]}"
    return r.reason or r.body[:60].decode(errors="replace")


def main() -> int:
    parser = argparse.ArgumentParser(description="meshward JWT demo")
    parser.add_argument("--token", action="store_true", help="print a valid demo token and exit")
    args = parser.parse_args()
    if args.token:
        print(sign())
        return 0

    upstream = echo_server()
    env = Envoy(build_config(upstream.port, [plugin("jwt", demo_plugin_config())]))
    try:
        env.start()
        print(f"Envoy {env.port} (admin {env.admin_port}) -> meshward_jwt.wasm (V8) -> echo upstream {upstream.port}\n")
        rows = [(name, path, env.request(path, headers), want) for name, path, headers, want in scenarios()]
        width = max(len(name) for name, *_ in rows)
        print(f"{'request':<{width}}  {'path':<11} status  result")
        print(f"{'-' * width}  {'-' * 11} ------  {'-' * 44}")
        unexpected = []
        for name, path, r, want in rows:
            # A 200 only counts when the echo upstream really answered it.
            ok = r.status == want and (want != 200 or r.reached_upstream)
            if not ok:
                unexpected.append(name)
            flag = "" if ok else f"   <-- UNEXPECTED, wanted {want}"
            print(f"{name:<{width}}  {path:<11} {r.status:<6}  {describe(r)}{flag}")
        stats = [line for line in env.prometheus().splitlines() if line.startswith("meshward_jwt")]
        print("\nmetrics (/stats/prometheus):")
        for line in stats:
            print("  " + line)
        if unexpected:
            print(f"\n{len(unexpected)} unexpected answer(s): {', '.join(unexpected)}")
            return 1
        return 0
    finally:
        env.stop()
        env.cleanup()
        upstream.stop()


if __name__ == "__main__":
    sys.exit(main())
