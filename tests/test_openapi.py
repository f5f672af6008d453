from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from loacl.http import (
    auth,
    chat,
    owner_stream,
    owners,
    stream,
    stream_protocol,
    stream_send,
    visitors,
)
from loacl.http.app import create_app
from loacl.http.errors import STATUS
from loacl.http.openapi import build_spec
from loacl.http.resources import OwnedResource
from loacl.http.routing import Endpoint, Socket, declared
from loacl.http.stream_protocol import CLIENT_FRAMES, CLOSE_MEANINGS, SERVER_FRAMES, Close
from loacl.settings import Settings

STREAM_SOURCES = [Path(stream.__file__), Path(stream_send.__file__)]


@pytest.fixture
def app(settings: Settings) -> Starlette:
    return create_app(settings)


def _spec(app: Starlette) -> dict[str, Any]:
    return build_spec(declared(app.routes), "http://example.test")


def _served(app: Starlette) -> set[tuple[str, str]]:
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            served.add(("get", route.path))
        elif isinstance(route, Route):
            for method in route.methods or ():
                if method != "HEAD":
                    served.add((method.lower(), route.path))
    return served


def test_every_route_is_declared_and_every_api_route_is_in_the_spec(app: Starlette) -> None:
    declarations = declared(app.routes)
    assert len(declarations) == len(app.routes), "a route was added without a declaration"
    # A socket's answer to a plain GET is documented by the socket's own entry.
    sockets = {("get", d.path) for d in declarations if isinstance(d, Socket)}
    undocumented = {(d.method, d.path) for d in declarations if not d.documented} - sockets
    spec_ops = {(method, path) for path, ops in _spec(app)["paths"].items() for method in ops}
    assert _served(app) - undocumented == spec_ops
    # What the spec leaves out is deliberate: pages, assets, probes and CORS preflights.
    api_left_out = {(m, p) for m, p in undocumented if p.startswith("/api/") and m != "options"}
    assert api_left_out == set()


def test_the_spec_is_built_from_the_declarations(app: Starlette) -> None:
    spec = _spec(app)
    for declaration in declared(app.routes):
        if not declaration.documented:
            continue
        op = spec["paths"][declaration.path][declaration.method]
        assert op["summary"] == declaration.summary and op["tags"] == [declaration.tag]
        assert str(declaration.ok) in op["responses"]
        for code in declaration.codes:
            assert code in op["responses"][str(STATUS[code])]["description"], code
        names = {p["name"] for p in op.get("parameters", [])}
        assert {param.name for param in declaration.query} <= names
        if isinstance(declaration, Endpoint) and declaration.body is not None:
            ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/" + declaration.body.__name__)
        if declaration.auth != "none":
            assert op["security"] and "401" in op["responses"]


def _handler_facts(module: ModuleType) -> dict[str, tuple[set[str], set[int]]]:
    """Per handler function in ``module``: the models it passes to ``parse_body`` and the
    literal ``status_code=`` values it answers with."""
    tree = ast.parse(Path(str(module.__file__)).read_text())
    facts: dict[str, tuple[set[str], set[int]]] = {}
    for func in tree.body:
        if not isinstance(func, ast.AsyncFunctionDef):
            continue
        calls = [n for n in ast.walk(func) if isinstance(n, ast.Call)]
        models = {ast.unparse(c.args[1]) for c in calls
                  if ast.unparse(c.func) == "parse_body" and len(c.args) > 1}
        statuses = {k.value.value for c in calls for k in c.keywords
                    if k.arg == "status_code" and isinstance(k.value, ast.Constant)
                    and isinstance(k.value.value, int)}
        facts[func.name] = models, statuses
    return facts


RESOURCE_OK = {"list": 200, "create": 201, "get": 200, "put": 200, "patch": 200,
               "delete": 204}


@pytest.mark.parametrize("module", [auth, chat, owners, visitors], ids=lambda m: m.__name__)
def test_a_declaration_matches_its_handler(module: ModuleType) -> None:
    """The body model and success status in the table are what the handler itself uses."""
    facts = _handler_facts(module)
    for declaration in module.endpoints:
        if not declaration.documented:
            continue
        handler = declaration.handler
        # visitor_endpoint wraps a handler in a closure; the function is in its cell.
        while handler.__name__ == "wrapped" and handler.__closure__:
            handler = handler.__closure__[0].cell_contents
        resource = getattr(handler, "__self__", None)
        if isinstance(resource, OwnedResource):
            # One handler for each kind of owned thing: its body is the resource's own.
            bodies = {"create": resource.body, "put": resource.replacement,
                      "patch": resource.patch_body}
            assert declaration.body is bodies.get(handler.__name__), handler
            assert declaration.ok == RESOURCE_OK[handler.__name__], handler
            continue
        models, statuses = facts[handler.__name__]
        assert models == ({declaration.body.__name__} if declaration.body else set()), handler
        if statuses:
            assert declaration.ok in statuses, handler


def test_declared_codes_are_mapped(app: Starlette) -> None:
    for declaration in declared(app.routes):
        for code in declaration.codes:
            assert code in STATUS, (declaration.path, code)


def test_spec_shape_and_refs_resolve(app: Starlette) -> None:
    spec = _spec(app)
    assert spec["openapi"] == "3.1.0"
    schemas = spec["components"]["schemas"]
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.append(str(value))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[-1] in schemas, ref
    ids = [op["operationId"] for methods in spec["paths"].values() for op in methods.values()]
    assert len(ids) == len(set(ids))
    register = spec["paths"]["/api/v1/auth/register"]["post"]
    # A taken address is answered as a free one is: the spec promises no 409.
    assert "202" in register["responses"] and "409" not in register["responses"]
    assert "rate_limited" in register["responses"]["429"]["description"]
    assert "invalid_json" in register["responses"]["400"]["description"]
    assert sorted(STATUS) == schemas["Problem"]["properties"]["code"]["enum"]


def test_routes_added_without_a_declaration_are_not_described() -> None:
    async def handler(request: Any) -> Any:
        raise AssertionError

    plain = Route("/api/v1/plain", handler)
    declaration = Endpoint("get", "/api/v1/declared", handler, "Declared", "test")
    routes = [plain, declaration.route()]
    assert declared(routes) == [declaration]
    assert list(build_spec(declared(routes))["paths"]) == ["/api/v1/declared"]


# -- the WebSocket ---------------------------------------------------------------------------


def _socket(app: Starlette) -> Socket:
    """The visitors' socket (``stream_protocol``'s)."""
    (socket,) = [d for d in declared(app.routes)
                 if isinstance(d, Socket) and d.path == "/api/v1/widgets/{id}/stream"]
    return socket


def test_the_owner_socket_description_lists_its_frames_and_close_codes(app: Starlette) -> None:
    text = _spec(app)["paths"]["/api/v1/owner/stream"]["get"]["description"]
    for frame in (*owner_stream.CLIENT_FRAMES, *owner_stream.SERVER_FRAMES):
        assert f"`{frame.type}`" in text, frame.type
        for field in frame.fields:
            assert field in text, (frame.type, field)
    for code in owner_stream.CLOSES:
        assert f"- {int(code)}:" in text, code


def test_the_socket_description_lists_every_frame_and_close_code(app: Starlette) -> None:
    op = _spec(app)["paths"][_socket(app).path]["get"]
    text = op["description"]
    assert "101" in op["responses"]
    for frame in (*CLIENT_FRAMES, *SERVER_FRAMES):
        assert f"`{frame.type}`" in text, frame.type
        for field in frame.fields:
            assert field in text, (frame.type, field)
    for code in Close:
        assert f"- {int(code)}:" in text, code
    assert "length" in text  # once missing from the hand-written description


def _constants(namespace: type) -> set[str]:
    return {value for name, value in vars(namespace).items() if name.isupper()}


def test_the_protocol_tables_cover_every_constant() -> None:
    assert {f.type for f in CLIENT_FRAMES} == _constants(stream_protocol.ClientFrame)
    assert {f.type for f in SERVER_FRAMES} == _constants(stream_protocol.ServerFrame)
    assert set(CLOSE_MEANINGS) == set(Close)


def _frame_type_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """String literals in stream.py that name a frame type where a constant belongs: the value
    of a dict's ``"type"`` key, and anything compared with a frame's type."""
    names = _constants(stream_protocol.ClientFrame) | _constants(stream_protocol.ServerFrame)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        values: list[ast.expr] = []
        if isinstance(node, ast.Dict):
            values = [v for k, v in zip(node.keys, node.values, strict=True)
                      if isinstance(k, ast.Constant) and k.value == "type"]
        elif isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                values += side.elts if isinstance(side, ast.Tuple) else [side]
        found += [(v.lineno, v.value) for v in values
                  if isinstance(v, ast.Constant) and v.value in names]
    return found


def _close_code_literals(tree: ast.AST) -> list[int]:
    lines: list[int] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            args = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "code")]
            if name in ("close", "Closing") and any(
                isinstance(n, ast.Constant) and isinstance(n.value, int)
                for arg in args for n in ast.walk(arg)
            ):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("source", STREAM_SOURCES, ids=lambda p: p.name)
def test_stream_sends_and_closes_with_the_protocol_constants(source: Path) -> None:
    tree = ast.parse(source.read_text())
    assert _frame_type_literals(tree) == []
    assert _close_code_literals(tree) == []


def test_the_source_checks_catch_literals() -> None:
    tree = ast.parse(
        'send({"type": "delta"})\nif kind in ("pong", "x"): pass\n'
        'close(4008, "slow")\nws.close(code=1000 if x else Close.IDLE)\n'
    )
    assert sorted(_frame_type_literals(tree)) == [(1, "delta"), (2, "pong")]
    assert sorted(_close_code_literals(tree)) == [3, 4]


# -- served ----------------------------------------------------------------------------------


def test_served_json_and_docs_page(app: Starlette) -> None:
    with TestClient(app) as client:
        spec = client.get("/api/v1/openapi.json")
        assert spec.status_code == 200
        assert spec.json()["servers"] == [{"url": "http://testserver"}]
        assert spec.json()["paths"] == _spec(app)["paths"]
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert "/api/v1/widgets/{id}/messages" in docs.text
        assert "store_error" in docs.text  # the error codes table
        assert "<script" not in docs.text  # self-contained, nothing loaded from elsewhere



def test_the_embed_code_documents_its_html_form(app: Starlette) -> None:
    spec = _spec(app)
    op = spec["paths"]["/api/v1/widgets/{id}/embed-code"]["get"]
    [fmt] = [p for p in op["parameters"] if p["name"] == "format"]
    assert fmt["in"] == "query" and fmt["schema"]["enum"] == ["json", "html"]
    content = op["responses"]["200"]["content"]
    assert content["text/html"]["schema"] == {"type": "string"}
    ref = content["application/json"]["schema"]["$ref"]
    assert "html" in spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["required"]


@pytest.mark.parametrize("kind", ["assistants", "widgets"])
def test_patch_put_and_if_match_are_documented(app: Starlette, kind: str) -> None:
    spec = _spec(app)
    item = spec["paths"][f"/api/v1/{kind}/{{id}}"]
    patch = item["patch"]
    content = patch["requestBody"]["content"]
    assert set(content) == {"application/merge-patch+json", "application/json"}
    ref = content["application/merge-patch+json"]["schema"]["$ref"]
    patch_schema = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert not patch_schema.get("required")  # any field may be left out
    put_ref = item["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    put_schema = spec["components"]["schemas"][put_ref.rsplit("/", 1)[-1]]
    assert set(put_schema["required"]) == set(put_schema["properties"])  # every field
    assert "RFC 7396" in patch["description"]
    for method in ("put", "patch", "delete"):
        [header] = [p for p in item[method]["parameters"] if p["in"] == "header"]
        assert header["name"] == "If-Match" and not header["required"]
        assert "precondition_required" in item[method]["responses"]["428"]["description"]
        assert "version_conflict" in item[method]["responses"]["412"]["description"]
    assert "unsupported_media_type" in patch["responses"]["415"]["description"]
