"""Negative testing of the schema filter with a generator nobody here wrote: schemathesis builds
requests for every JSON write operation of both contracts (crAPI, and Swagger's Petstore from
YAML) from the contract (negative mode: bodies that break it; positive mode: bodies that keep
it) and sends them through the real Envoy.

The oracle is independent of meshward too: the body schema as schemathesis converts it
(OpenAPI → JSON Schema), checked by the Python `jsonschema` package. Every body the oracle
finds non-conforming must be refused before the upstream; every positive case must arrive.

The filter runs with `reject_unknown_properties: false` here, so it enforces the contract as
written (the generators add undeclared properties freely); closing objects against mass
assignment is covered by test_schema_envoy.py.
"""
from __future__ import annotations

import json
from urllib.parse import unquote

import yaml

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import DataGenerationMethod, GenerationConfig
from schemathesis.specs.openapi.converter import to_json_schema_recursive

from harness import REPO, Envoy, build_config, plugin

SPECS = {
    "crapi": json.loads((REPO / "tests" / "specs" / "crapi-openapi-spec.json").read_text()),
    "petstore": yaml.safe_load((REPO / "tests" / "specs" / "petstore-openapi.yaml").read_text()),
}
NEGATIVE_EXAMPLES = 25
POSITIVE_EXAMPLES = 10


INTEGER_FORMATS = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}


def with_integer_bounds(node):
    """OpenAPI's `format: int32` / `int64` mean a signed integer of that size (meshward enforces
    it); the generator ignores formats it does not know, so the bounds are spelled out for it
    and for the oracle."""
    if isinstance(node, dict):
        bounds = INTEGER_FORMATS.get(node.get("format")) if node.get("type") == "integer" else None
        if bounds:
            node.setdefault("minimum", bounds[0])
            node.setdefault("maximum", bounds[1])
        for v in node.values():
            with_integer_bounds(v)
    elif isinstance(node, list):
        for v in node:
            with_integer_bounds(v)
    return node


def json_only(spec: dict) -> dict:
    """The contract as the generator sees it: JSON bodies only. Petstore also declares XML
    (which meshward refuses unless an operation opts in) and form bodies, whose serialisation
    by the generator is not what an OpenAPI form encoding says; forms are covered by
    crates/schema/tests/contract.rs and test_request_forms_envoy.py."""
    spec = with_integer_bounds(json.loads(json.dumps(spec)))
    for item in spec["paths"].values():
        for op in item.values():
            content = op.get("requestBody", {}).get("content", {}) if isinstance(op, dict) else {}
            for media in [m for m in content if m != "application/json"]:
                del content[media]
    return spec


def write_operations() -> list[tuple[str, str, str]]:
    ops = []
    for name, spec in SPECS.items():
        for path, item in spec["paths"].items():
            for method in ("post", "put", "patch"):
                content = item.get(method, {}).get("requestBody", {}).get("content", {})
                if "application/json" in content:
                    ops.append((name, path, method.upper()))
    return ops


WRITE_OPERATIONS = write_operations()
# Schemathesis 3.39 cannot make a negative case here (the only path parameter is an
# unconstrained string, which it will not negate, and the body has no required member);
# the positive run still covers them.
NO_NEGATIVE_CASES = {
    ("crapi", "/community/api/v2/community/posts/{postId}/comment", "POST"),
    ("petstore", "/user/{username}", "PUT"),
}


def oracle(spec: dict, path: str, method: str) -> jsonschema.protocols.Validator:
    """The request body schema as schemathesis reads it, as a Draft 4 validator (OpenAPI 3.0's
    schema dialect), with formats checked."""
    converted = to_json_schema_recursive(with_integer_bounds(json.loads(json.dumps(spec))), nullable_name="nullable")
    schema = converted["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    root = {**schema, "components": converted["components"]}
    return jsonschema.Draft4Validator(root, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def envoys(upstream):
    """One Envoy per contract, each with the whole contract (XML and forms included)."""
    started = {}
    try:
        for name, spec in SPECS.items():
            env = Envoy(build_config(upstream.port, [plugin("schema", {"openapi": spec, "reject_unknown_properties": False})]), concurrency=1)
            env.start()
            started[name] = env
        yield started
    finally:
        for env in started.values():
            env.stop()
            env.cleanup()


def send(env, case) -> requests.Response:
    return case.call(base_url=f"http://127.0.0.1:{env.port}", timeout=10)


def reached_upstream(response: requests.Response) -> bool:
    try:
        return response.status_code == 200 and "method" in response.json()
    except ValueError:
        return False


def ambiguous_segment(value: str) -> bool:
    """Path parameter values meshward refuses on purpose whatever the contract says (core's
    canonical_path): a dot segment (`.`, `%2E`: path traversal as RFC 3986 and Envoy read it),
    an encoded separator, or a control character. (A `;` is refused only raw; the generator
    percent-encodes it.)"""
    decoded = unquote(value)
    return decoded in (".", "..") or any(c in decoded for c in "/\\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded)


def leaves(value):
    """Every scalar in a JSON value."""
    if isinstance(value, dict):
        for v in value.values():
            yield from leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v)
    else:
        yield value


def ecma_pattern_differs(response: requests.Response, body) -> bool:
    """A `pattern` refusal of a string with non-ASCII characters: JSON Schema patterns are
    ECMA-262 regexes, where `\\d` and `\\w` are ASCII only; the generator matches them with
    Python's `re`, where `\\d` also takes `٠` (Arabic-Indic zero). meshward follows the
    specification (and Python's `int("٠")` is 0: refusing it closes a differential)."""
    try:
        refusal = response.json()
    except ValueError:
        return False
    return refusal.get("keyword") == "pattern" and any(isinstance(s, str) and not s.isascii() for s in leaves(body))


def describe(case) -> str:
    return f"path {case.path_parameters!r} query {case.query!r} headers {case.headers!r} body {case.body!r}"


def run(strategy, examples: int, check) -> None:
    @given(strategy)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def each(case):
        check(case)

    each()


def test_the_run_covers_the_write_operations_of_both_contracts():
    counts = {name: sum(1 for n, _, _ in WRITE_OPERATIONS if n == name) for name in SPECS}
    assert counts["crapi"] >= 20 and counts["petstore"] >= 5, counts
    assert NO_NEGATIVE_CASES <= set(WRITE_OPERATIONS)


@pytest.mark.parametrize("contract,path,method", WRITE_OPERATIONS, ids=[f"{c} {m} {p}" for c, p, m in WRITE_OPERATIONS])
def test_generated_bodies_through_envoy(envoys, contract, path, method):
    spec, envoy = SPECS[contract], envoys[contract]
    # Credentials are the JWT filter's business; generated ones hold control characters that
    # Envoy's HTTP codec refuses before any filter runs.
    schema = schemathesis.from_dict(
        json_only(spec),
        data_generation_methods=[DataGenerationMethod.negative, DataGenerationMethod.positive],
        generation_config=GenerationConfig(with_security_parameters=False),
    )
    operation = schema[path][method]
    validator = oracle(spec, path, method)
    body_required = spec["paths"][path][method.lower()]["requestBody"].get("required", False)
    broken = []

    def negative(case):
        absent = isinstance(case.body, schemathesis.types.NotSet)
        body_conforms = not body_required if absent else validator.is_valid(case.body)
        response = send(envoy, case)
        if not body_conforms:
            broken.append(case.body)
            assert not reached_upstream(response), f"a non-conforming body reached the upstream: {describe(case)}"

    def positive(case):
        response = send(envoy, case)
        if any(ambiguous_segment(str(v)) for v in (case.path_parameters or {}).values()):
            assert not reached_upstream(response), describe(case)
            return
        if ecma_pattern_differs(response, case.body):
            return
        if any(type(n) is int and not -2**63 <= n < 2**64 for n in leaves(case.body)):
            # No 64-bit reader holds it: refused as ambiguous whatever the schema says.
            assert response.status_code == 400 and response.json()["reason"] == "ambiguous_json", describe(case)
            return
        assert reached_upstream(response), f"a conforming request was refused ({response.status_code} {response.text[:300]}): {describe(case)}"

    if (contract, path, method) not in NO_NEGATIVE_CASES:
        run(operation.as_strategy(data_generation_method=DataGenerationMethod.negative), NEGATIVE_EXAMPLES, negative)
        # The run means something only if it produced non-conforming bodies.
        assert broken, "schemathesis generated no non-conforming body"
    run(operation.as_strategy(data_generation_method=DataGenerationMethod.positive), POSITIVE_EXAMPLES, positive)
