"""GraphQL through the real Envoy: a real GraphQL server (strawberry, executing every document
it is given) behind it, httpx in front, in both forms. Only persisted operations run (Apollo's
`persistedQuery` hash, a Relay-style id, or the persisted text itself); raw documents, unknown
hashes, text that does not match its hash, oversized batches and JSON two servers read two ways
never reach the server; where raw documents are allowed, depth, alias and introspection limits
hold. With the service's own SDL (printed by strawberry, carrying the cost and scope directives),
operations cost at most `max_cost` (list sizes from their arguments or variables), select only
declared fields, and select scoped fields only for callers whose token grants the scope (a field
under `@include(if: $v)` only when it runs) — over HTTP/1.1, chunked and HTTP/2."""
from __future__ import annotations

import gzip
import hashlib
import json
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import strawberry
from strawberry.schema_directive import Location

from harness import FORMS, Envoy, as_deployed, build_config, plugin
from test_jwt_envoy import jwt_config
from tokens import bearer

BOOK = "query Book($id: ID!) { book(id: $id) { title author { name } } }"
SHELF = "query Shelf { books { title } }"
RENAME = 'mutation Rename { rename(title: "Dune Messiah") }'
PERSISTED = [{"document": BOOK}, {"id": "relay-shelf", "document": SHELF}, {"id": "relay-rename", "document": RENAME}]


# The GraphQL cost directives (Apollo / IBM) and Apollo Federation's @requiresScopes, declared by
# the service: its printed SDL is the contract meshward reads.
@strawberry.schema_directive(locations=[Location.FIELD_DEFINITION, Location.OBJECT], name="requiresScopes")
class RequiresScopes:
    scopes: list[list[str]]


@strawberry.schema_directive(locations=[Location.FIELD_DEFINITION], name="listSize")
class ListSize:
    slicing_arguments: typing.Optional[list[str]] = strawberry.directive_field(name="slicingArguments", default=None)


@strawberry.type
class Reader:
    name: str
    email: str = strawberry.field(directives=[RequiresScopes(scopes=[["readers:pii"], ["admin"]])])


@strawberry.type
class Author:
    name: str

    @strawberry.field
    def books(self) -> list["Book"]:
        return [Book(title="Dune", author=self)]


@strawberry.type
class Book:
    title: str
    author: Author


@strawberry.type
class Query:
    @strawberry.field
    def book(self, id: strawberry.ID) -> Book:
        return Book(title=f"book {id}", author=Author(name="Frank Herbert"))

    @strawberry.field
    def books(self) -> list[Book]:
        return [Book(title="Dune", author=Author(name="Frank Herbert"))]

    @strawberry.field
    def secret(self) -> str:
        return "not for everyone"

    @strawberry.field(directives=[ListSize(slicing_arguments=["first"])])
    def readers(self, first: int = 10) -> list[Reader]:
        return [Reader(name=f"reader {i}", email=f"r{i}@example.com") for i in range(first)]

    # No cost directive: its conventional `first` argument bounds it all the same.
    @strawberry.field
    def authors(self, first: int = 10) -> list[Author]:
        return [Author(name=f"author {i}") for i in range(first)]


@strawberry.type
class Mutation:
    @strawberry.mutation
    def rename(self, title: str) -> str:
        return title


SCHEMA = strawberry.Schema(query=Query, mutation=Mutation)
SDL = SCHEMA.as_str()
READERS = "query Readers($n: Int) { readers(first: $n) { name } }"
# The operations persisted where the schema is given.
WITH_SCHEMA = [*PERSISTED, {"id": "readers", "document": READERS}]


class GraphqlServer:
    """A GraphQL server over HTTP: POST JSON (one operation or a batch), POST application/graphql,
    GET with parameters; it runs whatever document it gets (persisted ones looked up by hash or
    id, as Apollo Server and Relay servers do). `executed` lists the documents it ran."""

    def __init__(self):
        by_key = {}
        for p in WITH_SCHEMA:
            by_key[hashlib.sha256(p["document"].encode()).hexdigest()] = p["document"]
            if "id" in p:
                by_key[p["id"]] = p["document"]
        outer = self
        self.executed: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _run(self, op: dict) -> dict:
                key = (op.get("extensions") or {}).get("persistedQuery", {}).get("sha256Hash") or op.get("id") or op.get("documentId")
                document = op.get("query") or by_key.get(key)
                if document is None:
                    return {"errors": [{"message": "PersistedQueryNotFound"}]}
                outer.executed.append(document)
                result = SCHEMA.execute_sync(document, variable_values=op.get("variables"), operation_name=op.get("operationName"))
                out = {"data": result.data}
                if result.errors:
                    out["errors"] = [{"message": str(e)} for e in result.errors]
                return out

            def _answer(self, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                if "chunked" not in self.headers.get("transfer-encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("content-length", 0)))
                body = b""
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return body

            def do_POST(self):
                raw = self._body()
                # As a service behind a gzip middleware reads it.
                if self.headers.get("content-encoding", "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                if self.headers.get("content-type", "").startswith("application/graphql"):
                    return self._answer(self._run({"query": raw.decode()}))
                request = json.loads(raw)
                self._answer([self._run(op) for op in request] if isinstance(request, list) else self._run(request))

            def do_GET(self):
                params = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                for name in ("extensions", "variables"):
                    if name in params:
                        params[name] = json.loads(params[name])
                self._answer(self._run(params))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def server():
    s = GraphqlServer()
    yield s
    s.stop()


def start(server, form: str, **extra) -> Envoy:
    config = {"persisted": PERSISTED, "max_depth": 4, "max_aliases": 3, "max_batch": 2, **extra}
    return Envoy(build_config(server.port, as_deployed(form, [plugin("graphql", config)])), concurrency=1)


@pytest.fixture(scope="module", params=FORMS)
def envoy(request, server):
    with start(server, request.param) as env:
        yield env
    env.cleanup()


def post(env: Envoy, payload, content_type="application/json", raw: bytes | None = None) -> httpx.Response:
    body = raw if raw is not None else json.dumps(payload).encode()
    return httpx.post(f"http://127.0.0.1:{env.port}/graphql", content=body, headers={"content-type": content_type}, timeout=10)


def sha(document: str) -> str:
    return hashlib.sha256(document.encode()).hexdigest()


def refused(r: httpx.Response, status: int, reason: str) -> bool:
    return r.status_code == status and r.json().get("reason") == reason


def test_persisted_operations_run(envoy, server):
    apollo = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(BOOK)}}, "variables": {"id": "7"}}
    r = post(envoy, apollo)
    assert r.status_code == 200 and r.json()["data"]["book"]["title"] == "book 7", r.text
    assert post(envoy, {**apollo, "query": BOOK}).json()["data"]["book"]["author"]["name"] == "Frank Herbert"
    assert post(envoy, {"query": BOOK, "variables": {"id": "1"}}).status_code == 200, "the persisted text alone"
    assert post(envoy, {"documentId": "relay-shelf"}).json()["data"]["books"][0]["title"] == "Dune"
    assert post(envoy, [apollo, {"id": "relay-shelf"}]).status_code == 200, "a batch within the limit"
    extensions = json.dumps({"persistedQuery": {"version": 1, "sha256Hash": sha(BOOK)}})
    r = httpx.get(f"http://127.0.0.1:{envoy.port}/graphql", params={"extensions": extensions, "variables": '{"id": "3"}'}, timeout=10)
    assert r.status_code == 200 and r.json()["data"]["book"]["title"] == "book 3", r.text
    assert post(envoy, {"id": "relay-rename"}).json()["data"]["rename"] == "Dune Messiah", "a persisted mutation, POSTed"


def test_a_mutation_never_runs_over_get(envoy, server):
    before = len(server.executed)
    r = httpx.get(f"http://127.0.0.1:{envoy.port}/graphql", params={"id": "relay-rename"}, timeout=10)
    assert refused(r, 405, "mutation_over_get"), r.text
    assert len(server.executed) == before


def test_anything_else_never_reaches_the_server(envoy, server):
    before = len(server.executed)
    rows = [
        ("a raw document", {"query": "{ secret }"}, 403, "not_persisted"),
        ("an unknown hash", {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}}, 403, "unknown_persisted_query"),
        ("text under another document's hash", {"query": "{ secret }", "extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(BOOK)}}},
         400, "hash_mismatch"),
        ("text under a persisted id", {"query": "{ secret }", "id": "relay-shelf"}, 400, "hash_mismatch"),
        ("a batch too large", [{"id": "relay-shelf"}] * 3, 400, "batch_too_large"),
        ("a raw document in a batch", [{"id": "relay-shelf"}, {"query": "{ secret }"}], 403, "not_persisted"),
    ]
    for name, payload, status, reason in rows:
        r = post(envoy, payload)
        assert refused(r, status, reason), (name, r.status_code, r.text)
    # Two `query` members: Python's reader (this server) takes the last, others the first.
    twice = ('{"query": "' + BOOK.replace('"', '\\"') + '", "query": "{ secret }"}').encode()
    assert refused(post(envoy, None, raw=twice), 400, "invalid_request")
    assert refused(post(envoy, None, content_type="application/graphql", raw=b"{ secret }"), 403, "not_persisted")
    r = httpx.get(f"http://127.0.0.1:{envoy.port}/graphql", params={"query": "{ secret }"}, timeout=10)
    assert refused(r, 403, "not_persisted"), r.text
    assert refused(post(envoy, None, content_type="text/plain", raw=b"{ secret }"), 415, "not_graphql")
    assert len(server.executed) == before, server.executed[before:]


@pytest.fixture(scope="module")
def open_envoy(server):
    with start(server, "bundle", allow_raw_documents=True) as env:
        yield env
    env.cleanup()


def test_raw_documents_within_limits_where_allowed(open_envoy, server):
    assert post(open_envoy, {"query": "{ books { author { name } } }"}).status_code == 200
    rows = [
        ("too deep", "{ books { author { books { author { name } } } } }", 400, "too_deep"),
        ("too many aliases", "{ a: books { title } b: books { title } c: books { title } d: books { title } }", 400, "too_many_aliases"),
        ("introspection", "{ __schema { types { name } } }", 403, "introspection_disabled"),
        ("not GraphQL", "{ books { ", 400, "invalid_document"),
    ]
    r = httpx.get(f"http://127.0.0.1:{open_envoy.port}/graphql", params={"query": 'mutation { rename(title: "x") }'}, timeout=10)
    assert refused(r, 405, "mutation_over_get"), r.text
    before = len(server.executed)
    for name, document, status, reason in rows:
        r = post(open_envoy, {"query": document})
        assert refused(r, status, reason), (name, r.status_code, r.text)
    assert len(server.executed) == before


def test_directives_are_validated_as_the_server_would(open_envoy, server):
    """A non-repeatable directive given twice at one place is invalid (graphql-core's own
    validation, run here on the server's schema, says the same); thousands of them, or of
    directives the server does not know, never reach it to be read."""
    from graphql import parse, validate

    repeated = "{ books @include(if: true)" + " @include(if: true)" * 3000 + " { title } }"
    unknown = "{ books" + " @slow" * 3000 + " { title } }"
    rows = [("a built-in repeated 3000 times", repeated, "invalid_document"), ("an unknown directive 3000 times", unknown, "too_many_directives")]
    before = len(server.executed)
    for name, document, reason in rows:
        assert validate(SCHEMA._schema, parse(document)), (name, "graphql-core refuses it too")
        r = post(open_envoy, {"query": document})
        assert refused(r, 400, reason), (name, r.status_code, r.text)
    assert len(server.executed) == before
    # Each built-in once, and a few at one place, pass.
    r = post(open_envoy, {"query": "{ books @include(if: true) @skip(if: false) { title } }"})
    assert r.status_code == 200 and r.json()["data"]["books"], r.text


@pytest.fixture(scope="module", params=FORMS)
def schema_envoy(request, server, keys):
    jwt = jwt_config(keys)
    jwt["rules"] = [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [{"provider_name": "main"}, {"allow_missing": {}}]}}}]
    graphql = {"persisted": WITH_SCHEMA, "allow_raw_documents": True, "max_depth": 5, "max_batch": 2,
               "schema": SDL, "max_cost": 50}
    with Envoy(build_config(server.port, as_deployed(request.param, [plugin("jwt", jwt), plugin("graphql", graphql)])), concurrency=1) as env:
        yield env
    env.cleanup()


def test_the_service_sdl_carries_the_directives():
    assert "@listSize(slicingArguments: [\"first\"])" in SDL and "@requiresScopes(scopes: [[\"readers:pii\"], [\"admin\"]])" in SDL, SDL


def test_operations_cost_at_most_max_cost(schema_envoy, server):
    r = post(schema_envoy, {"id": "readers", "variables": {"n": 5}})
    assert r.status_code == 200 and len(r.json()["data"]["readers"]) == 5, r.text
    assert post(schema_envoy, {"query": "{ readers(first: 50) { name } }"}).status_code == 200, "exactly the limit"
    assert post(schema_envoy, {"query": "{ authors(first: 50) { name } }"}).status_code == 200, "by convention, exactly the limit"
    before = len(server.executed)
    rows = [
        ("a variable asks for more", {"id": "readers", "variables": {"n": 500}}, 400, "too_costly"),
        ("a literal asks for more", {"query": "{ readers(first: 51) { name } }"}, 400, "too_costly"),
        ("a batch together", [{"id": "readers", "variables": {"n": 30}}, {"id": "readers", "variables": {"n": 30}}], 400, "too_costly"),
        ("a size that is not a number", {"id": "readers", "variables": {"n": "500"}}, 400, "invalid_request"),
        ("a field the schema does not declare", {"query": "{ readers { password } }"}, 400, "unknown_field"),
        ("a list without @listSize asks for more by `first`", {"query": "{ authors(first: 1000) { name } }"}, 400, "too_costly"),
    ]
    for name, payload, status, reason in rows:
        r = post(schema_envoy, payload)
        assert refused(r, status, reason), (name, r.status_code, r.text)
    r = httpx.get(f"http://127.0.0.1:{schema_envoy.port}/graphql", params={"id": "readers", "variables": '{"n": 500}'}, timeout=10)
    assert refused(r, 400, "too_costly"), r.text
    assert len(server.executed) == before, server.executed[before:]


def chunks(payload: dict):
    body = json.dumps(payload).encode()
    yield body[:10]
    yield body[10:]


def test_scoped_fields_need_the_scope_in_every_form(schema_envoy, server, keys):
    url = f"http://127.0.0.1:{schema_envoy.port}/graphql"
    pii = {"query": "{ readers(first: 2) { name email } }"}
    through_fragment = {"query": "{ readers(first: 2) { ...R } } fragment R on Reader { email }"}
    json_type = {"content-type": "application/json"}
    reader = bearer(keys.token("ES256", scope="readers:read"))
    before = len(server.executed)
    assert refused(post(schema_envoy, pii), 401, "missing_principal")
    with httpx.Client(http2=True, http1=False) as h2:
        for payload in (pii, through_fragment):
            r = h2.post(url, content=json.dumps(payload), headers={**json_type, **reader}, timeout=10)
            assert r.http_version == "HTTP/2" and refused(r, 403, "missing_scope"), r.text
            assert "Reader.email" in r.json()["error"]
    r = httpx.post(url, content=chunks(pii), headers={**json_type, **reader}, timeout=10)
    assert refused(r, 403, "missing_scope"), r.text
    # Compressed: the stage reads the document the service decompresses.
    gzipped = {**json_type, "content-encoding": "gzip"}
    r = httpx.post(url, content=gzip.compress(json.dumps(through_fragment).encode()), headers={**gzipped, **reader}, timeout=10)
    assert refused(r, 403, "missing_scope"), r.text
    assert len(server.executed) == before, server.executed[before:]
    assert post(schema_envoy, {"query": "{ readers(first: 2) { name } }"}).status_code == 200, "unscoped fields need no token"
    # A client asking for the scoped field only when its user may see it (`@include(if: $pii)`).
    conditional = "query R($pii: Boolean!) { readers(first: 2) { name email @include(if: $pii) } }"
    r = post(schema_envoy, {"query": conditional, "variables": {"pii": False}})
    assert r.status_code == 200 and r.json()["data"]["readers"][0] == {"name": "reader 0"}, r.text
    assert refused(post(schema_envoy, {"query": conditional, "variables": {"pii": True}}), 401, "missing_principal")
    for scope in ("readers:pii", "admin"):
        holder = {**json_type, **bearer(keys.token("ES256", scope=f"readers:read {scope}"))}
        r = httpx.post(url, content=chunks(pii), headers=holder, timeout=10)
        assert r.status_code == 200 and r.json()["data"]["readers"][1]["email"] == "r1@example.com", r.text
        with httpx.Client(http2=True, http1=False) as h2:
            assert h2.post(url, content=json.dumps(through_fragment), headers=holder, timeout=10).status_code == 200
        r = httpx.post(url, content=gzip.compress(json.dumps(pii).encode()), headers={**holder, "content-encoding": "gzip"}, timeout=10)
        assert r.status_code == 200 and r.json()["data"]["readers"][1]["email"] == "r1@example.com", r.text


def test_the_policy_names_a_schema_file(tmp_path):
    from test_cli import meshward

    (tmp_path / "schema.graphql").write_text(SDL)
    policy = tmp_path / "policy.yaml"
    stage = {"schema_file": "schema.graphql", "allow_raw_documents": True, "max_cost": 100}
    policy.write_text(json.dumps({"service": "library", "stages": [{"graphql": stage}]}))
    r = meshward("compile", policy)
    assert r.returncode == 0, r.stderr
    compiled = json.loads(r.stdout)["meshward_graphql"]
    assert compiled["schema"] == SDL and "schema_file" not in compiled
    stage["persisted"] = [{"document": "{ readers(first: 500) { name } }"}]
    policy.write_text(json.dumps({"service": "library", "stages": [{"graphql": stage}]}))
    r = meshward("check", policy)
    assert r.returncode == 1 and "cost 500, more than 100" in r.stdout, r.stdout


def test_shadow_mode_counts_what_it_would_refuse(server, keys):
    """`mode: shadow`: what would be refused (an undeclared field, too costly, a scoped field
    without a token) is counted by reason, and the request goes on."""
    config = {"persisted": WITH_SCHEMA, "allow_raw_documents": True, "schema": SDL, "max_cost": 10, "mode": "shadow"}
    rows = [("{ readers { nope } }", "unknown_field"), ("{ readers(first: 11) { name } }", "too_costly"),
            ("{ readers(first: 1) { email } }", "missing_principal")]
    with start(server, "bundle", **config) as env:
        before = len(server.executed)
        for document, _ in rows:
            assert post(env, {"query": document}).status_code == 200, document
        assert len(server.executed) == before + len(rows), "each went on to the server"
        for document, reason in rows:
            assert env.counter(f"meshward_graphql_shadow_denied_total.route.graphql.reason.{reason}") == 1, (document, reason)
    env.cleanup()
