"""gRPC through the real Envoy (HTTP/2 both ways): a real grpcio server behind it, a real grpcio
client in front. A call meshward refuses gets a real gRPC answer, trailers-only, with the status
the reason means (UNAUTHENTICATED, RESOURCE_EXHAUSTED, ...), never Envoy's mapping of an HTTP
status (where a 400 would read INTERNAL), in both forms."""
from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from harness import FORMS, Envoy, as_deployed, build_config, plugin, static_cluster
from test_jwt_envoy import jwt_config
from tokens import bearer


class EchoServer:
    """A grpcio server answering `/demo.Echo/Say` with the request's bytes."""

    def __init__(self):
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.method_handlers_generic_handler("demo.Echo", {"Say": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


@pytest.fixture(scope="module")
def echo():
    server = EchoServer()
    yield server
    server.stop()


def grpc_upstream(config: dict, port: int) -> dict:
    config["static_resources"]["clusters"][0] = static_cluster("upstream", port, http2=True)
    return config


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, echo, keys):
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    ratelimit = {"rules": [{"name": "per-caller", "match": {"prefix": "/"}, "key": ["subject"], "limit": {"requests": 2, "per": "60s"}}]}
    config = grpc_upstream(build_config(echo.port, as_deployed(request.param, [plugin("jwt", jwt), plugin("ratelimit", ratelimit)])), echo.port)
    with Envoy(config, concurrency=1) as env:
        yield env
    env.cleanup()


def say(env: Envoy, payload: bytes, metadata=()):
    with grpc.insecure_channel(f"127.0.0.1:{env.port}") as channel:
        return channel.unary_unary("/demo.Echo/Say")(payload, timeout=10, metadata=list(metadata))


def refused(env: Envoy, payload: bytes, metadata=()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        say(env, payload, metadata)
    return caught.value


def test_denials_are_grpc_answers(envoy, keys):
    err = refused(envoy, b"hi")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
    assert err.details() == "a bearer token is required", err.details()
    trailers = dict(err.trailing_metadata())
    assert trailers["meshward-reason"] == "missing_token" and trailers["www-authenticate"] == 'Bearer realm="meshward"', trailers
    bad = refused(envoy, b"hi", bearer("not.a.token").items())
    assert bad.code() == grpc.StatusCode.UNAUTHENTICATED and dict(bad.trailing_metadata())["meshward-reason"] == "malformed_token"


def test_a_spent_budget_is_resource_exhausted(envoy, keys):
    token = list(bearer(keys.token("ES256", sub="grpc-caller")).items())
    assert say(envoy, b"one", token) == b"one"
    assert say(envoy, b"two", token) == b"two"
    err = refused(envoy, b"three", token)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    trailers = dict(err.trailing_metadata())
    assert trailers["meshward-reason"] == "rate_limited" and int(trailers["retry-after"]) > 0, trailers
