from __future__ import annotations

from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from loacl.http.app import create_app
from loacl.http.errors import STATUS
from loacl.http.openapi import OPS, build_spec
from loacl.settings import Settings


def test_every_api_route_is_described_and_nothing_else(settings: Settings) -> None:
    app = create_app(settings)
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute) and route.path.startswith("/api/v1/"):
            served.add(("get", route.path))
        elif isinstance(route, Route) and route.path.startswith("/api/v1/"):
            for method in route.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    served.add((method.lower(), route.path))
    served.discard(("get", "/api/v1/openapi.json"))
    described = {(op.method, op.path) for op in OPS}
    assert served == described


def test_spec_shape_and_refs_resolve() -> None:
    spec = build_spec("http://example.test")
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
    for op in OPS:
        for code in op.codes:
            assert code in STATUS, code
    register = spec["paths"]["/api/v1/auth/register"]["post"]
    assert "409" in register["responses"]
    assert "email_taken" in register["responses"]["409"]["description"]


def test_served_json_and_docs_page(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        spec = client.get("/api/v1/openapi.json")
        assert spec.status_code == 200
        assert spec.json()["servers"] == [{"url": "http://testserver"}]
        docs = client.get("/docs")
        assert docs.status_code == 200
        assert "/api/v1/widgets/{id}/messages" in docs.text
        assert "<script" not in docs.text  # self-contained, nothing loaded from elsewhere
