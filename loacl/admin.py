"""Operator commands that change or list accounts, assistants and widgets (``loacl users``,
``loacl assistants``, ``loacl widgets``). They append through the same event store as the
server, so a running server sees their events too."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loacl.domain import assistants
from loacl.domain.errors import LoaclError
from loacl.domain.events import Metadata
from loacl.providers import check_model
from loacl.services.accounts import Accounts
from loacl.services.keys import keyring_for
from loacl.services.tokens import new_id
from loacl.settings import Settings
from loacl.store import migrations
from loacl.store.eventstore import NO_STREAM, EventStore
from loacl.store.postgres.upstream import PgUpstream
from loacl.store.projections import default_projections
from loacl.store.sqlite import connect
from loacl.store.views import accounts as accounts_view

CLI = Metadata(actor="loacl:cli")


def open_store(settings: Settings) -> EventStore:
    """The store as the server opens it. With a PostgreSQL log, this instance's copy, brought
    level when it opens and written through PostgreSQL (store.postgres.upstream); the copy is
    made when missing."""
    keyring = keyring_for(settings)
    if settings.postgres_url is not None:
        conn = connect(settings.database_path)
        try:
            migrations.up(conn)
        finally:
            conn.close()
        return EventStore(settings.database_path, default_projections(), keyring=keyring,
                          upstream=PgUpstream(settings.postgres_url, keyring))
    if not settings.database_path.exists():
        raise LoaclError(
            "database_not_found", f"no database at {settings.database_path}; run loacl migrate up"
        )
    return EventStore(settings.database_path, default_projections(), keyring=keyring)


async def create_user(
    settings: Settings, email: str, password: str, *, name: str | None, verified: bool
) -> dict[str, Any]:
    async with open_store(settings) as store:
        user = await Accounts.for_operator(store, settings).create_user(
            email, password, name, verified=verified, meta=CLI
        )
    return {"id": user.user_id, "email": user.email, "name": user.name,
            "email_verified": user.email_verified}


async def list_users(settings: Settings) -> list[dict[str, Any]]:
    async with open_store(settings) as store:
        users = await accounts_view.all_users(store)
    return [
        {"id": u.user_id, "email": u.email, "name": u.name, "email_verified": u.email_verified,
         "created_at": u.created_at}
        for u in users
    ]


async def owner_id(settings: Settings, email: str) -> str:
    async with open_store(settings) as store:
        owner = await accounts_view.user_by_email(store, email)
    if owner is None:
        raise LoaclError("not_found", f"no owner with the e-mail address {email}")
    return owner.user_id


async def list_assistants(settings: Settings, owner: str | None) -> list[dict[str, Any]]:
    async with open_store(settings) as store:
        found = await accounts_view.assistants_by_owner(store, owner)
    return [{"id": a.assistant_id, "owner": a.owner_email, "name": a.name,
             "provider": a.provider, "model": a.model, "created_at": a.created_at}
            for a in found]


async def list_widgets(settings: Settings, owner: str | None) -> list[dict[str, Any]]:
    async with open_store(settings) as store:
        found = await accounts_view.widgets_by_owner(store, owner)
    return [{"id": w.widget_id, "owner": w.owner_email, "name": w.name,
             "assistant_id": w.assistant_id, "enabled": w.enabled,
             "allowed_origins": list(w.allowed_origins), "created_at": w.created_at}
            for w in found]


# -- importing assistants exported from OpenAI's former Assistants API ----------------------

@dataclass
class Imported:
    source_id: str
    name: str
    assistant_id: str | None = None
    dropped: list[str] = field(default_factory=list)
    error: str | None = None
    # Function tools carried over as http tools without a URL, disabled until one is set.
    waiting_tools: list[str] = field(default_factory=list)
    # The export's vector stores, kept for OpenAI's file_search (LOACL never deletes them).
    vector_store_ids: list[str] = field(default_factory=list)


_CARRIED = {"id", "object", "created_at", "name", "model", "instructions", "tools",
            "tool_resources", "temperature", "top_p"}


def read_export(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LoaclError("file_not_found", f"no file {path}") from None
    except json.JSONDecodeError as exc:
        raise LoaclError("invalid_json", f"{path} is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # the shape of GET /v1/assistants
    elif isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(a, dict) for a in data):
        raise LoaclError(
            "invalid_export", "expected an assistant object, a list of them, or {\"data\": [...]}"
        )
    return data


def convert(item: dict[str, Any]) -> tuple[assistants.AssistantDefinition, list[str]]:
    """A LOACL definition from one exported assistant, and what could not be carried over."""
    dropped: list[str] = []
    name = str(item.get("name") or item.get("id") or "Imported assistant")[:200]
    model = item.get("model")
    if not isinstance(model, str) or not model:
        raise LoaclError("invalid_export", "it has no model")
    instructions = str(item.get("instructions") or "")
    if len(instructions) > 32_000:
        dropped.append(f"instructions beyond 32,000 characters ({len(instructions)} given)")
        instructions = instructions[:32_000]
    vector_store_ids: list[str] = []
    has_file_search = False
    tools: list[assistants.ToolDefinition] = []
    for tool in item.get("tools") or []:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "file_search":
            has_file_search = True
        elif kind == "function":
            converted = _function_tool(tool.get("function"), len(tools))
            if isinstance(converted, str):
                dropped.append(converted)
            else:
                tools.append(converted)
        else:
            dropped.append(f"{kind} tool (not supported)")
    resources = item.get("tool_resources") or {}
    stores = (resources.get("file_search") or {}).get("vector_store_ids") or []
    if has_file_search:
        vector_store_ids = [s for s in stores if isinstance(s, str) and s.startswith("vs_")][:10]
        if len(vector_store_ids) < len(stores):
            dropped.append("vector store ids beyond the first ten, or malformed")
    elif stores:
        dropped.append("vector stores (file_search was not enabled)")
    if (resources.get("code_interpreter") or {}).get("file_ids"):
        dropped.append("code interpreter files")
    temperature = item.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float)
                                        and 0 <= temperature <= 2):
        dropped.append(f"temperature {temperature!r} (must be 0 to 2)")
        temperature = None
    top_p = item.get("top_p")
    if top_p is not None and not (isinstance(top_p, int | float) and 0 <= top_p <= 1):
        dropped.append(f"top_p {top_p!r} (must be 0 to 1)")
        top_p = None
    for key in sorted(set(item) - _CARRIED):
        if item[key] not in (None, {}, [], ""):
            dropped.append(f"{key} (no LOACL equivalent)")
    definition = assistants.AssistantDefinition(
        name=name, provider="openai", model=model, instructions=instructions,
        temperature=None if temperature is None else float(temperature),
        top_p=None if top_p is None else float(top_p),
        vector_store_ids=tuple(vector_store_ids), tools=tuple(tools),
    )
    return definition, dropped


def _function_tool(fn: Any, index: int) -> assistants.ToolDefinition | str:
    """An exported function tool as an ``http`` tool with no URL, disabled until the owner
    sets one; or why it cannot be carried over."""
    if not isinstance(fn, dict):
        return "a function tool without its function"
    name = fn.get("name")
    parameters = fn.get("parameters") or {"type": "object", "properties": {}}
    tool = assistants.ToolDefinition(
        name=name if isinstance(name, str) else "",
        description=str(fn.get("description") or "")[:1024],
        parameters=parameters if isinstance(parameters, dict) else {}, url="", enabled=False,
    )
    try:
        assistants.checked(assistants.AssistantDefinition(
            name="check", provider="openai", model="check", tools=(tool,)))
    except LoaclError as exc:
        return f"function tool {name!r} ({exc.message.removeprefix('tools[0].')})"
    if index >= assistants.MAX_TOOLS:
        return f"function tool {name!r} (at most {assistants.MAX_TOOLS} tools)"
    return tool


def needs_url(definition: assistants.AssistantDefinition) -> list[str]:
    """The names of tools that wait for the owner to set their URL."""
    return [t.name for t in definition.tools if t.type == "http" and not t.url]


async def import_assistants(
    settings: Settings, path: Path, owner_email: str, *, validate: bool
) -> list[Imported]:
    items = read_export(path)
    owner = await owner_id(settings, owner_email)
    results: list[Imported] = []
    async with open_store(settings) as store:
        for item in items:
            result = Imported(str(item.get("id", "?")), str(item.get("name") or ""))
            results.append(result)
            try:
                definition, result.dropped = convert(item)
                result.name = definition.name
                result.waiting_tools = needs_url(definition)
                result.vector_store_ids = list(definition.vector_store_ids)
                if validate:
                    await check_model(settings, "openai", definition.model)
            except LoaclError as exc:
                result.error = exc.message
                continue
            assistant_id = new_id()
            await store.append(
                assistants.assistant_stream(assistant_id),
                assistants.create_assistant(assistant_id, owner, definition),
                expected_version=NO_STREAM,
                metadata=Metadata(actor="loacl:cli", causation_id=result.source_id),
            )
            result.assistant_id = assistant_id
    return results
