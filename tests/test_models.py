"""``GET /api/v1/models`` on a real uvicorn, the real openai SDK listing the project's test
server's models: each configured provider's list, kept a minute, and a provider that cannot be
reached reported beside the others' lists."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loacl.domain.errors import LoaclError
from loacl.openai_testserver import ModelInfo, OpenAITestServer, running
from loacl.services.models import Models
from loacl.settings import Settings
from tests.test_chat import chat_settings, live

pytestmark = pytest.mark.e2e

MODELS = (ModelInfo("gpt-4o-mini"), ModelInfo("org/local-model"), ModelInfo("gpt-5-mini"))


@pytest.fixture
def provider() -> Iterator[tuple[OpenAITestServer, str]]:
    server = OpenAITestServer(api_key="test", models=MODELS)
    with running(server) as url:
        yield server, url


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def listed(settings: Settings) -> dict[str, Any]:
    with live(settings) as site:
        owner = site.register()
        response = site.http.get("/api/v1/models", headers=owner)
        assert response.status_code == 200, response.text
        again = site.http.get("/api/v1/models", headers=owner)
        assert again.json() == response.json()
        assert site.http.get("/api/v1/models").status_code == 401
        body: dict[str, Any] = response.json()
        return body


def test_each_configured_providers_models(
    tmp_path: Path, provider: tuple[OpenAITestServer, str],
) -> None:
    server, root = provider
    body = listed(chat_settings(tmp_path, root))
    expected = sorted(m.id for m in MODELS)
    # OPENAI_BASE_URL serves both the openai and the chat_completions providers.
    assert body["data"] == [
        *({"id": m, "provider": "openai"} for m in expected),
        *({"id": m, "provider": "chat_completions"} for m in expected),
        {"id": "demo", "provider": "demo"},
    ]
    assert body["providers"] == [
        {"name": name, "ok": True, "error": None}
        for name in ("openai", "chat_completions", "demo")]
    # Asked once per provider; the second request was answered from what was kept.
    assert len(server.requests_to("models")) == 2
    assert {r.headers["authorization"] for r in server.requests_to("models")} == {
        "Bearer test"}


def test_an_unreachable_provider_is_reported_and_the_others_listed(
    tmp_path: Path, provider: tuple[OpenAITestServer, str],
) -> None:
    _, root = provider
    settings = chat_settings(tmp_path, root, chat_completions_base_url=closed_port_url())
    body = listed(settings)
    assert {(m["provider"], m["id"]) for m in body["data"]} == {
        *(("openai", m.id) for m in MODELS), ("demo", "demo")}
    down = [p for p in body["providers"] if not p["ok"]]
    assert [p["name"] for p in down] == ["chat_completions"]
    assert "chat_completions" in down[0]["error"]


def test_without_a_key_only_the_demo(tmp_path: Path) -> None:
    body = listed(chat_settings(tmp_path, None))
    assert body == {"data": [{"id": "demo", "provider": "demo"}],
                    "providers": [{"name": "demo", "ok": True, "error": None}]}


async def test_a_list_is_kept_a_minute_and_a_failure_not_at_all(tmp_path: Path) -> None:
    now = [0.0]
    calls: list[str] = []
    failing = [True]

    async def lister(settings: Settings, name: str) -> list[str]:
        calls.append(name)
        if name == "openai" and failing[0]:
            raise LoaclError("provider_unavailable", "down")
        return [f"{name}-model"]

    models = Models(chat_settings(tmp_path, None, openai_api_key="k"), lister=lister,
                    ticks=lambda: now[0])
    down = await models.offered()
    assert [(p.provider, p.models, p.error) for p in down] == [
        ("openai", (), "down"), ("demo", ("demo-model",), None)]
    failing[0] = False
    first = await models.offered()
    assert [p.models for p in first] == [("openai-model",), ("demo-model",)]
    assert calls == ["openai", "demo", "openai"]  # the failure was not kept, the list was
    now[0] = 59.0
    assert await models.offered() == first and len(calls) == 3
    now[0] = 61.0
    await models.offered()
    assert len(calls) == 5
