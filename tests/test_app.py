from __future__ import annotations

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from loacl.domain.errors import LoaclError
from loacl.http.app import create_app
from loacl.settings import Settings


def test_healthz_and_readyz(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["x-request-id"]
        ready = client.get("/readyz", headers={"X-Request-ID": "abc-123"})
        assert ready.status_code == 200
        assert ready.headers["x-request-id"] == "abc-123"
        assert ready.json()["status"] == "ready"


def _app_with_routes(settings: Settings) -> TestClient:
    async def boom(request: object) -> None:
        raise RuntimeError("secret internals /etc/passwd")

    async def refused(request: object) -> None:
        raise LoaclError("email_taken", "an account with this e-mail address exists")

    app = create_app(settings)
    app.router.routes.extend([Route("/boom", boom), Route("/refused", refused)])
    return TestClient(app, raise_server_exceptions=False)


def test_errors_are_problem_json(settings: Settings) -> None:
    with _app_with_routes(settings) as client:
        missing = client.get("/nowhere")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.json()["code"] == "not_found"

        refused = client.get("/refused")
        assert refused.status_code == 409
        body = refused.json()
        assert body["code"] == "email_taken"
        assert body["request_id"] == refused.headers["x-request-id"]

        boom = client.get("/boom", headers={"X-Request-ID": "req-1"})
        assert boom.status_code == 500
        assert boom.json()["code"] == "internal_error"
        assert "passwd" not in boom.text and "RuntimeError" not in boom.text
        assert boom.headers["x-request-id"] == "req-1"


def test_insane_request_id_is_replaced(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        response = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
        assert response.headers["x-request-id"] != "bad id\twith spaces"
        assert len(response.headers["x-request-id"]) == 32


def test_second_server_on_same_database_refuses(settings: Settings) -> None:
    with TestClient(create_app(settings)):
        with pytest.raises(LoaclError) as caught, TestClient(create_app(settings)):
            pass
        assert caught.value.code == "database_in_use"


def test_schema_out_of_date_without_auto_migrate(settings: Settings) -> None:
    manual = settings.model_copy(update={"auto_migrate": False})
    with pytest.raises(LoaclError) as caught, TestClient(create_app(manual)):
        pass
    assert caught.value.code == "schema_out_of_date"
