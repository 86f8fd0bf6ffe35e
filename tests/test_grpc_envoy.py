"""gRPC through the real Envoy (HTTP/2 both ways): real grpcio servers behind it, real grpcio
clients in front, in both forms. A call meshward refuses gets a real gRPC answer, trailers-only,
with the status the reason means (UNAUTHENTICATED, RESOURCE_EXHAUSTED, ...), never Envoy's
mapping of an HTTP status (where a 400 would read INTERNAL). The gRPC stage enforces the
service's descriptor set (`tests/protos/orders.proto`, compiled here by protoc): offered methods
only, per-method scopes and tenant fields, messages that decode with no undeclared field or enum
value."""
from __future__ import annotations

import base64
import importlib
import json
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_tools import protoc as grpc_protoc

from harness import FORMS, REPO, Envoy, as_deployed, build_config, plugin, static_cluster
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


# -- the gRPC stage: the service's contract is its descriptor set -------------------------------

PROTO_DIR = Path(__file__).resolve().parent / "protos"
DESCRIPTORS = REPO / "crates" / "grpc" / "tests" / "orders.pb"


def compile_protos(out: Path, name: str, *also: str, imports: tuple[str, ...] = ()) -> tuple[list, bytes]:
    """`tests/protos/<name>.proto` (and `also`) compiled by protoc (grpcio-tools): its Python
    stubs (and `imports`) imported from `out`, and its descriptor set (imports included)."""
    well_known = Path(grpc_protoc.__file__).parent / "_proto"
    code = grpc_protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", "--include_imports",
                             f"--descriptor_set_out={out / f'{name}.pb'}", *(str(PROTO_DIR / p) for p in (f"{name}.proto", *also))])
    assert code == 0
    sys.path.insert(0, str(out))
    try:
        modules = [importlib.import_module(m) for m in (f"{name}_pb2", f"{name}_pb2_grpc", *imports)]
    finally:
        sys.path.remove(str(out))
    return modules, (out / f"{name}.pb").read_bytes()


@pytest.fixture(scope="module")
def orders_proto(tmp_path_factory):
    """The orders service: Python stubs and the descriptor set."""
    (pb2, pb2_grpc), descriptors = compile_protos(tmp_path_factory.mktemp("orders-proto"), "orders")
    return pb2, pb2_grpc, descriptors


def test_the_unit_tests_descriptor_set_is_the_proto_compiled(orders_proto):
    assert DESCRIPTORS.read_bytes() == orders_proto[2], "regenerate crates/grpc/tests/orders.pb from tests/protos/orders.proto"


class OrdersServer:
    """demo.orders.Orders served by grpcio: answers say which tenant and order they were for."""

    def __init__(self, pb2, pb2_grpc):
        outer = self

        class Orders(pb2_grpc.OrdersServicer):
            def GetOrder(self, request, context):
                return pb2.Order(tenant_id=request.tenant_id, order_id=request.order_id, status=pb2.OPEN)

            def CreateOrder(self, request, context):
                outer.created.append(request)
                return pb2.Order(tenant_id=request.tenant_id, order_id="new", status=request.status, item=request.item)

            def DeleteOrder(self, request, context):
                return pb2.Order(tenant_id=request.tenant_id, order_id=request.order_id, status=pb2.CLOSED)

            def WatchOrders(self, request, context):
                for n in range(3):
                    yield pb2.Order(tenant_id=request.tenant_id, order_id=str(n))

            def Upload(self, request_iterator, context):
                count = 0
                for item in request_iterator:
                    outer.uploaded.append(item)
                    count += 1
                return pb2.Order(order_id=str(count))

            def Chat(self, request_iterator, context):
                for item in request_iterator:
                    outer.uploaded.append(item)
                    yield pb2.Order(order_id=item.sku)

        self.created = []
        # Every streamed Item the service received, as it arrived.
        self.uploaded = []
        # A handler per call in flight: streams hold theirs while the client sends.
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        pb2_grpc.add_OrdersServicer_to_server(Orders(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


def grpc_stage(descriptors: bytes) -> dict:
    return {"descriptor_set": base64.b64encode(descriptors).decode(), "max_message_bytes": 1024, "services": {"demo.orders.Orders": {"methods": {
        "GetOrder": {"scopes": ["orders:read"], "owner": [{"field": "tenant_id", "claim": "tenant"}]},
        "CreateOrder": {"scopes": ["orders:write"], "owner": [{"field": "tenant_id", "claim": "tenant"}]},
        "WatchOrders": {"public": True},
        "Upload": {"scopes": ["orders:write"]},
        "Chat": {"scopes": ["orders:write"]},
    }}}}


@pytest.fixture(scope="module", params=FORMS)
def orders(request, orders_proto, keys):
    pb2, pb2_grpc, descriptors = orders_proto
    server = OrdersServer(pb2, pb2_grpc)
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/demo.orders.Orders/WatchOrders"}},
                    {"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]
    config = grpc_upstream(build_config(server.port, as_deployed(request.param, [plugin("jwt", jwt), plugin("grpc", grpc_stage(descriptors))])), server.port)
    try:
        with Envoy(config, concurrency=1) as env:
            channel = grpc.insecure_channel(f"127.0.0.1:{env.port}")
            yield env, pb2_grpc.OrdersStub(channel), pb2, server, channel
            channel.close()
        env.cleanup()
    finally:
        server.stop()


def caller(keys, scope="orders:read orders:write", tenant="acme"):
    return list(bearer(keys.token("ES256", scope=scope, tenant=tenant)).items())


def refusal(call) -> tuple:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    err = caught.value
    return err.code(), dict(err.trailing_metadata()).get("meshward-reason")


def raw(channel, method: str, payload: bytes, metadata, compression=None):
    """A call with bytes the typed stubs would never send."""
    return channel.unary_unary(f"/demo.orders.Orders/{method}")(payload, timeout=10, metadata=metadata, compression=compression)


def test_offered_methods_pass_with_their_requirements(orders, keys):
    env, stub, pb2, _, _ = orders
    answer = stub.GetOrder(pb2.GetOrderRequest(tenant_id="acme", order_id="7"), metadata=caller(keys), timeout=10)
    assert (answer.tenant_id, answer.order_id) == ("acme", "7")
    created = stub.CreateOrder(pb2.CreateOrderRequest(tenant_id="acme", item=pb2.Item(sku="brake", quantity=2), status=pb2.OPEN),
                               metadata=caller(keys), timeout=10, compression=grpc.Compression.Gzip)
    assert created.item.sku == "brake", "a gzip-compressed message is read and passes"
    streamed = list(stub.WatchOrders(pb2.GetOrderRequest(tenant_id="acme"), timeout=10))
    assert [o.order_id for o in streamed] == ["0", "1", "2"], "server streaming, public"
    assert env.counter_reaches("meshward_grpc_allowed_total.route.demo_orders_Orders-GetOrder", 1) >= 1


def test_who_may_call_what(orders, keys):
    _, stub, pb2, _, _ = orders
    get = lambda md, tenant="acme": stub.GetOrder(pb2.GetOrderRequest(tenant_id=tenant, order_id="7"), metadata=md, timeout=10)  # noqa: E731
    assert refusal(lambda: get(caller(keys), tenant="globex")) == (grpc.StatusCode.PERMISSION_DENIED, "tenant_boundary")
    env = orders[0]
    assert env.counter("meshward_grpc_denied_total.route.demo_orders_Orders-GetOrder.reason.tenant_boundary") >= 1
    assert refusal(lambda: get(caller(keys, scope="orders:write"))) == (grpc.StatusCode.PERMISSION_DENIED, "missing_scope")
    assert refusal(lambda: stub.DeleteOrder(pb2.GetOrderRequest(tenant_id="acme"), metadata=caller(keys), timeout=10)) == \
        (grpc.StatusCode.UNIMPLEMENTED, "method_not_allowed")
    assert refusal(lambda: stub.Upload(iter([pb2.Item(sku="a")]), metadata=caller(keys, scope="orders:read"), timeout=10)) == \
        (grpc.StatusCode.PERMISSION_DENIED, "missing_scope")


def test_messages_outside_the_contract_never_reach_the_service(orders, keys):
    _, _, pb2, server, channel = orders
    before = len(server.created)
    valid = pb2.CreateOrderRequest(tenant_id="acme", item=pb2.Item(sku="a", quantity=1)).SerializeToString()
    md = caller(keys)
    rows = [
        ("a field the type does not declare", valid + b"\x48\x01", None, grpc.StatusCode.INVALID_ARGUMENT, "unknown_field"),
        ("the same, compressed", valid + b"\x48\x01", grpc.Compression.Gzip, grpc.StatusCode.INVALID_ARGUMENT, "unknown_field"),
        ("an undeclared enum value", valid + b"\x18\x07", None, grpc.StatusCode.INVALID_ARGUMENT, "invalid_enum"),
        ("not protobuf", b"\xff\xff\xff\xff", None, grpc.StatusCode.INVALID_ARGUMENT, "invalid_message"),
        ("too large", pb2.CreateOrderRequest(tenant_id="acme", item=pb2.Item(sku="x" * 1500)).SerializeToString(), None,
         grpc.StatusCode.RESOURCE_EXHAUSTED, "message_too_large"),
    ]
    for name, payload, compression, code, reason in rows:
        got = refusal(lambda: raw(channel, "CreateOrder", payload, md, compression))
        assert got[0] == code and (reason is None or got[1] == reason), (name, got)
    assert len(server.created) == before, "nothing refused reached the service"
    # A tenant in the message that is not the caller's.
    other = pb2.CreateOrderRequest(tenant_id="globex", item=pb2.Item(sku="a")).SerializeToString()
    assert refusal(lambda: raw(channel, "CreateOrder", other, md)) == (grpc.StatusCode.PERMISSION_DENIED, "tenant_boundary")


def h2_exchange(port: int, headers: list[tuple[str, str]], data: list[bytes], end_stream: bool, timeout: float = 5.0) -> dict:
    """One HTTP/2 stream by hand (what no gRPC library sends): the headers, then `data` frames,
    left open unless `end_stream`; the answer's headers and trailers, merged, once the stream
    ends. An answer that does not come within `timeout` fails the test."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers, end_stream=not data and end_stream)
        for i, part in enumerate(data):
            conn.send_data(stream, part, end_stream=end_stream and i == len(data) - 1)
        sock.sendall(conn.data_to_send())
        answer: dict = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            received = sock.recv(65536)
            assert received, f"the connection closed before the stream ended: {answer}"
            for event in conn.receive_data(received):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    answer.update(dict(event.headers))
                if isinstance(event, h2.events.StreamReset):
                    return {**answer, "reset": event.error_code}
                if isinstance(event, h2.events.StreamEnded):
                    return answer
            sock.sendall(conn.data_to_send())
        raise AssertionError(f"no answer within {timeout} s: {answer}")


def call_headers(env: Envoy, keys, method: str, rpc: str) -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "http"), (":authority", f"127.0.0.1:{env.port}"), (":path", f"/demo.orders.Orders/{rpc}"),
            ("content-type", "application/grpc"), ("te", "trailers"), *caller(keys)]


def grpc_frame(message: bytes, announced: int | None = None) -> bytes:
    return b"\0" + (len(message) if announced is None else announced).to_bytes(4, "big") + message


def test_grpc_is_post_only(orders, keys):
    """A call by any other method is refused as a gRPC answer before the service sees it, over
    HTTP/2 as gRPC travels and over HTTP/1.1."""
    env, _, pb2, server, _ = orders
    before = len(server.created)
    message = grpc_frame(pb2.CreateOrderRequest(tenant_id="acme", item=pb2.Item(sku="a", quantity=1)).SerializeToString())
    for method in ("GET", "PUT", "DELETE"):
        answer = h2_exchange(env.port, call_headers(env, keys, method, "CreateOrder"), [] if method == "GET" else [message], end_stream=True)
        assert (answer.get(":status"), answer.get("grpc-status"), answer.get("meshward-reason")) == ("200", "12", "not_post"), (method, answer)
    r = env.request("/demo.orders.Orders/CreateOrder", {**dict(caller(keys)), "content-type": "application/grpc"}, method="PUT", body=message)
    assert (r.status, r.header("grpc-status"), r.header("meshward-reason")) == (200, "12", "not_post"), r
    assert len(server.created) == before, "nothing reached the service"
    answer = h2_exchange(env.port, call_headers(env, keys, "POST", "CreateOrder"), [message], end_stream=True)
    assert answer.get("grpc-status") == "0", answer


def test_a_unary_call_is_answered_from_its_length_prefix(orders, keys):
    """A sender that announces a message over `max_message_bytes`, or more than one message,
    and then goes quiet is answered at once (not held until Envoy's idle timeout)."""
    env, _, pb2, server, _ = orders
    before = len(server.created)
    valid = grpc_frame(pb2.CreateOrderRequest(tenant_id="acme", item=pb2.Item(sku="a", quantity=1)).SerializeToString())
    rows = [
        ("a length over the limit, nothing after it", [grpc_frame(b"", announced=1 << 20)], "8", "message_too_large"),
        ("over the limit, its first bytes sent", [grpc_frame(b"\x0a\x04acme", announced=1025)], "8", "message_too_large"),
        ("a whole message, then a second one begun", [valid, grpc_frame(b"", announced=3)], "3", "malformed_frame"),
    ]
    for name, data, status, reason in rows:
        started = time.monotonic()
        answer = h2_exchange(env.port, call_headers(env, keys, "POST", "CreateOrder"), data, end_stream=False, timeout=5)
        assert (answer.get("grpc-status"), answer.get("meshward-reason")) == (status, reason), (name, answer)
        assert time.monotonic() - started < 2, (name, "answered while the sender is still quiet")
    assert len(server.created) == before, "nothing reached the service"
    answer = h2_exchange(env.port, call_headers(env, keys, "POST", "CreateOrder"), [valid[:3], valid[3:]], end_stream=True)
    assert answer.get("grpc-status") == "0", ("a message sent in pieces passes", answer)


def test_a_plain_http_request_is_not_a_call(orders, keys):
    env, *_ = orders
    r = env.request("/demo.orders.Orders/GetOrder", {**bearer(keys.token("ES256", scope="orders:read")), "content-type": "application/json"},
                    method="POST", body=b"{}")
    assert r.status == 415 and r.reason == "not_grpc", r


def test_the_policy_names_a_descriptor_file(tmp_path):
    from test_cli import meshward

    (tmp_path / "orders.pb").write_bytes(DESCRIPTORS.read_bytes())
    policy = tmp_path / "policy.yaml"
    stage = {"descriptor_set_file": "orders.pb", "services": {"demo.orders.Orders": {"methods": {"WatchOrders": {"public": True}}}}}
    policy.write_text(json.dumps({"service": "orders", "stages": [{"grpc": stage}]}))
    r = meshward("compile", policy)
    assert r.returncode == 0, r.stderr
    compiled = json.loads(r.stdout)["meshward_grpc"]
    assert base64.b64decode(compiled["descriptor_set"]) == DESCRIPTORS.read_bytes() and "descriptor_set_file" not in compiled
    stage["services"]["demo.orders.Orders"]["methods"] = {"Nope": {}}
    policy.write_text(json.dumps({"service": "orders", "stages": [{"grpc": stage}]}))
    r = meshward("check", policy)
    assert r.returncode == 1 and "invalid_stage" in r.stdout and "is not a method" in r.stdout, r.stdout


def wait_for(condition, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_client_stream_is_checked_message_by_message(orders, keys):
    """Each streamed message goes on to the service as soon as it is checked (the client waits
    for the service to have one before sending the next: a filter holding the stream would
    stall it); a message outside the contract ends the stream, and never reaches the service."""
    _, stub, pb2, server, channel = orders
    waited = []

    def items(*messages: bytes):
        for i, message in enumerate(messages):
            seen = len(server.uploaded)
            yield message
            if i + 1 < len(messages):
                waited.append(wait_for(lambda: len(server.uploaded) > seen))

    upload = channel.stream_unary("/demo.orders.Orders/Upload")
    ok = [pb2.Item(sku=s, quantity=1).SerializeToString() for s in ("a", "b", "c")]
    before = len(server.uploaded)
    answer = pb2.Order.FromString(upload(items(*ok), metadata=caller(keys), timeout=10))
    assert answer.order_id == "3" and waited == [True, True], (answer, waited)
    assert [i.sku for i in server.uploaded[before:]] == ["a", "b", "c"]

    unknown_field = pb2.Item(sku="x").SerializeToString() + b"\xf8\x01\x01"  # field #31
    oversized = pb2.Item(sku="x" * 1500).SerializeToString()  # over max_message_bytes (1024)
    for bad, code, reason in [(unknown_field, grpc.StatusCode.INVALID_ARGUMENT, "unknown_field"),
                              (b"\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "invalid_message"),
                              (oversized, grpc.StatusCode.RESOURCE_EXHAUSTED, "message_too_large")]:
        before, waited[:] = len(server.uploaded), []
        with pytest.raises(grpc.RpcError) as caught:
            upload(items(ok[0], bad, ok[1]), metadata=caller(keys), timeout=10)
        err = caught.value
        assert err.code() == code and dict(err.trailing_metadata())["meshward-reason"] == reason, err
        assert waited[0], "the first message reached the service before the stream ended"
        time.sleep(0.2)
        assert [i.sku for i in server.uploaded[before:]] == ["a"], "nothing from the refused message on"
    assert orders[0].counter("meshward_grpc_denied_total.route.demo_orders_Orders-Upload.reason.unknown_field") >= 1


def test_a_bidirectional_stream_is_checked_too(orders, keys):
    """Messages flow both ways; a bad one after the answers have begun ends the stream (Envoy
    can no longer send a status: it resets it) and never reaches the service."""
    _, _, pb2, server, channel = orders
    chat = channel.stream_stream("/demo.orders.Orders/Chat")
    ok = [pb2.Item(sku=s, quantity=1).SerializeToString() for s in ("a", "b")]
    replies = [pb2.Order.FromString(r).order_id for r in chat(iter(ok), metadata=caller(keys), timeout=10)]
    assert replies == ["a", "b"]

    before = len(server.uploaded)

    def conversation():
        yield ok[0]
        assert wait_for(lambda: len(server.uploaded) > before), "the first message reached the service"
        yield pb2.Item(sku="x").SerializeToString() + b"\xf8\x01\x01"  # field #31
        yield ok[1]

    answers = chat(conversation(), metadata=caller(keys), timeout=10)
    with pytest.raises(grpc.RpcError) as caught:
        for _ in answers:
            pass
    assert caught.value.code() != grpc.StatusCode.OK
    time.sleep(0.2)
    assert [i.sku for i in server.uploaded[before:]] == ["a"], "nothing from the refused message on"
    assert orders[0].counter("meshward_grpc_denied_total.route.demo_orders_Orders-Chat.reason.unknown_field") >= 1


# -- the service's own field rules: protovalidate annotations in the descriptor set -------------

ACCOUNT_DESCRIPTORS = REPO / "crates" / "grpc" / "tests" / "accounts.pb"


@pytest.fixture(scope="module")
def accounts_proto(tmp_path_factory):
    """The accounts service, with protovalidate's `validate.proto` compiled too (as
    `buf.validate.validate_pb2`, which the protovalidate library imports): stubs, the library,
    the descriptor set."""
    out = tmp_path_factory.mktemp("accounts-proto")
    (pb2, pb2_grpc, protovalidate), descriptors = compile_protos(out, "accounts", "buf/validate/validate.proto", imports=("protovalidate",))
    return pb2, pb2_grpc, protovalidate, descriptors


def test_the_unit_tests_rules_descriptor_set_is_the_proto_compiled(accounts_proto):
    assert ACCOUNT_DESCRIPTORS.read_bytes() == accounts_proto[3], "regenerate crates/grpc/tests/accounts.pb from tests/protos/accounts.proto"


class AccountsServer:
    """demo.accounts.Accounts served by grpcio; `created` lists the requests that reached it."""

    def __init__(self, pb2, pb2_grpc):
        outer = self

        class Accounts(pb2_grpc.AccountsServicer):
            def CreateAccount(self, request, context):
                outer.created.append(request)
                return pb2.Account(name=request.name)

        self.created = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        pb2_grpc.add_AccountsServicer_to_server(Accounts(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self):
        self.server.stop(0)


@pytest.fixture(scope="module", params=FORMS)
def accounts(request, accounts_proto):
    pb2, pb2_grpc, _, descriptors = accounts_proto
    server = AccountsServer(pb2, pb2_grpc)
    stage = {"descriptor_set": base64.b64encode(descriptors).decode(), "services": {"demo.accounts.Accounts": {"methods": {"CreateAccount": {"public": True}}}}}
    config = grpc_upstream(build_config(server.port, as_deployed(request.param, [plugin("grpc", stage)])), server.port)
    try:
        with Envoy(config, concurrency=1) as env:
            channel = grpc.insecure_channel(f"127.0.0.1:{env.port}")
            yield env, pb2_grpc.AccountsStub(channel), server
            channel.close()
        env.cleanup()
    finally:
        server.stop()


def test_field_rules_hold_as_protovalidate_reads_them(accounts, accounts_proto):
    """Each request, decided by meshward in front of the service and by protovalidate (the
    library services run) on the same message: the two agree, field by field."""
    pb2, _, protovalidate, _ = accounts_proto
    env, stub, server = accounts

    def request(**changes):
        fields = {"name": "Ada", "age": 36, "plan": pb2.PRO, "address": pb2.Address(country="DE", city="Berlin"), "email": "ada@example.com"}
        fields.update(changes)
        return pb2.CreateAccountRequest(**{k: v for k, v in fields.items() if v is not None})

    rows = [
        request(),
        request(name=""),
        request(name="Ádá Lovelace!"),
        request(name="Ádá Lovelacé"),
        request(age=17),
        request(age=150),
        request(age=151),
        request(plan=None),
        request(plan=7),
        request(address=None),
        request(address=pb2.Address(country="de")),
        request(address=pb2.Address(country="DEU")),
        request(tags=["a", "b"]),
        request(tags=["a", "b", "c", "d"]),
        request(tags=["a", "a"]),
        request(tags=["a", "much-too-long"]),
        request(nickname="Al"),
        request(nickname="Alan"),
        request(referrer_id="123"),
        request(referrer_id="6f1c2d3e-4b5a-4c6d-8e9f-0a1b2c3d4e5f"),
        request(balance=-0.5),
        request(balance=float("inf")),
        request(balance=float("nan")),
        request(limits={"daily": 5}),
        request(limits={"hourly": 5}),
        request(limits={"daily": 0}),
        request(limits={"daily": 1, "monthly": 2}),
        request(email=None),
        request(email=None, phone="+4930"),
        request(email=None, phone="030"),
        request(email="no-at-sign"),
        request(previous=[pb2.Address(country="FR"), pb2.Address(country="fr")]),
        request(score=50),
        request(score=101),
        request(score=5),
    ]
    refusals = 0
    for message in rows:
        violations = protovalidate.collect_violations(message)
        before = len(server.created)
        try:
            stub.CreateAccount(message, timeout=10)
            passed = True
        except grpc.RpcError as err:
            passed = False
            # An undeclared enum number is refused before any rule (`invalid_enum`).
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and dict(err.trailing_metadata())["meshward-reason"] in ("rule_violation", "invalid_enum"), err
            field = violations[0].proto.field.elements[-1].field_name if violations and violations[0].proto.field.elements else ""
            assert field and field in err.details(), (message, err.details(), violations[0].proto)
            refusals += 1
        assert passed == (not violations), (message, [v.proto.rule_id for v in violations], passed)
        assert len(server.created) == before + (1 if passed else 0)
    assert 10 < refusals < len(rows), refusals


def test_rules_meshward_does_not_implement_refuse_the_policy(tmp_path, accounts_proto):
    from test_cli import meshward

    (tmp_path / "accounts.pb").write_bytes(accounts_proto[3])
    policy = tmp_path / "policy.yaml"
    stage = {"descriptor_set_file": "accounts.pb", "services": {"demo.accounts.Accounts": {"methods": {"UpdateProfile": {"public": True}}}}}
    policy.write_text(json.dumps({"service": "accounts", "stages": [{"grpc": stage}]}))
    r = meshward("check", policy)
    assert r.returncode == 1 and "`email` is not implemented" in r.stdout, r.stdout
    policy.write_text(json.dumps({"service": "accounts", "stages": [{"grpc": {**stage, "field_rules": "enforce_known"}}]}))
    r = meshward("check", policy)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shadow_mode_counts_rule_violations_and_lets_calls_through(accounts_proto):
    pb2, pb2_grpc, _, descriptors = accounts_proto
    server = AccountsServer(pb2, pb2_grpc)
    stage = {"mode": "shadow", "descriptor_set": base64.b64encode(descriptors).decode(),
             "services": {"demo.accounts.Accounts": {"methods": {"CreateAccount": {"public": True}}}}}
    config = grpc_upstream(build_config(server.port, [plugin("grpc", stage)]), server.port)
    try:
        with Envoy(config, concurrency=1) as env, grpc.insecure_channel(f"127.0.0.1:{env.port}") as channel:
            too_young = pb2.CreateAccountRequest(name="Ada", age=12, plan=pb2.PRO, address=pb2.Address(country="DE"), email="a@b")
            assert pb2_grpc.AccountsStub(channel).CreateAccount(too_young, timeout=10).name == "Ada"
            assert len(server.created) == 1
            assert env.counter("meshward_grpc_shadow_denied_total.route.demo_accounts_Accounts-CreateAccount.reason.rule_violation") == 1
        env.cleanup()
    finally:
        server.stop()
