"""Negative testing of the schema filter with a generator nobody here wrote: schemathesis builds
requests for every crAPI write operation from the contract (negative mode: bodies that break it;
positive mode: bodies that keep it) and sends them through the real Envoy.

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

import jsonschema
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import DataGenerationMethod, GenerationConfig
from schemathesis.specs.openapi.converter import to_json_schema_recursive

from harness import REPO, Envoy, build_config, plugin

CRAPI = json.loads((REPO / "tests" / "specs" / "crapi-openapi-spec.json").read_text())
NEGATIVE_EXAMPLES = 25
POSITIVE_EXAMPLES = 10


def write_operations() -> list[tuple[str, str]]:
    ops = []
    for path, item in CRAPI["paths"].items():
        for method in ("post", "put", "patch"):
            content = item.get(method, {}).get("requestBody", {}).get("content", {})
            if "application/json" in content:
                ops.append((path, method.upper()))
    return ops


WRITE_OPERATIONS = write_operations()
# Schemathesis 3.39 cannot make a negative case here (its only path parameter is an
# unconstrained string, which it will not negate); the positive run still covers it.
NO_NEGATIVE_CASES = {("/community/api/v2/community/posts/{postId}/comment", "POST")}


def oracle(path: str, method: str) -> jsonschema.protocols.Validator:
    """The request body schema as schemathesis reads it, as a Draft 4 validator (OpenAPI 3.0's
    schema dialect), with formats checked."""
    converted = to_json_schema_recursive(json.loads(json.dumps(CRAPI)), nullable_name="nullable")
    schema = converted["paths"][path][method.lower()]["requestBody"]["content"]["application/json"]["schema"]
    root = {**schema, "components": converted["components"]}
    return jsonschema.Draft4Validator(root, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def envoy(upstream):
    with Envoy(build_config(upstream.port, [plugin("schema", {"openapi": CRAPI, "reject_unknown_properties": False})]), concurrency=1) as env:
        yield env
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
    an encoded separator, or a control character."""
    decoded = unquote(value)
    return decoded in (".", "..") or any(c in decoded for c in "/\\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded)


def describe(case) -> str:
    return f"path {case.path_parameters!r} query {case.query!r} headers {case.headers!r} body {case.body!r}"


def run(strategy, examples: int, check) -> None:
    @given(strategy)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def each(case):
        check(case)

    each()


def test_the_run_covers_the_crapi_write_operations():
    assert len(WRITE_OPERATIONS) >= 20, WRITE_OPERATIONS
    assert NO_NEGATIVE_CASES <= set(WRITE_OPERATIONS)


@pytest.mark.parametrize("path,method", WRITE_OPERATIONS, ids=[f"{m} {p}" for p, m in WRITE_OPERATIONS])
def test_generated_bodies_through_envoy(envoy, path, method):
    # Credentials are the JWT filter's business; generated ones hold control characters that
    # Envoy's HTTP codec refuses before any filter runs.
    schema = schemathesis.from_dict(
        CRAPI,
        data_generation_methods=[DataGenerationMethod.negative, DataGenerationMethod.positive],
        generation_config=GenerationConfig(with_security_parameters=False),
    )
    operation = schema[path][method]
    validator = oracle(path, method)
    body_required = CRAPI["paths"][path][method.lower()]["requestBody"].get("required", False)
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
        assert reached_upstream(response), f"a conforming request was refused ({response.status_code} {response.text[:300]}): {describe(case)}"

    if (path, method) not in NO_NEGATIVE_CASES:
        run(operation.as_strategy(data_generation_method=DataGenerationMethod.negative), NEGATIVE_EXAMPLES, negative)
        # The run means something only if it produced non-conforming bodies.
        assert broken, "schemathesis generated no non-conforming body"
    run(operation.as_strategy(data_generation_method=DataGenerationMethod.positive), POSITIVE_EXAMPLES, positive)
