from __future__ import annotations

from starlette.testclient import TestClient

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
