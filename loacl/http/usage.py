"""``GET /api/v1/usage``: an owner's replies, tokens and estimated cost, per UTC day, widget or
assistant."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from loacl.domain.workspaces import ADMIN
from loacl.http.auth import current_member
from loacl.http.common import widgets
from loacl.http.routing import Endpoint, Param
from loacl.services import usage
from loacl.services.usage import UsageLine

DATE = {"type": "string", "format": "date"}
DESCRIPTION = (
    "Usage of your widgets from `from` to `to` (UTC days, both included; default: the 30 days "
    "to today), up to the last reply that ended. `group_by` is `day` (default), `widget` or "
    "`assistant`; `widget_id` keeps one widget. Each entry of `data` has its key (`day`, "
    "`widget_id` or `assistant_id`, with `name` for the last two), `replies_completed`, "
    "`replies_failed`, `input_tokens`, `output_tokens`, `total_tokens`, `estimated_cost` (US "
    "dollars, from the server's model_prices) and `unpriced_tokens` (tokens of models without "
    "a price, not in the cost), `feedback_up` and `feedback_down` (visitors' ratings of "
    "replies, by the day each was given). Days and groups with neither replies nor ratings are "
    "left out; `total` sums them. A deleted widget's usage is no longer shown."
)


def _line(line: UsageLine, key: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if key is not None:
        body[key] = line.key
        if key != "day":
            body["name"] = line.name
    body.update({
        "replies_completed": line.replies_completed, "replies_failed": line.replies_failed,
        "input_tokens": line.input_tokens, "output_tokens": line.output_tokens,
        "total_tokens": line.input_tokens + line.output_tokens,
        "estimated_cost": round(line.estimated_cost, 6),
        "unpriced_tokens": line.unpriced_tokens, "models": sorted(line.models),
        "feedback_up": line.feedback_up, "feedback_down": line.feedback_down,
    })
    return body


async def get_usage(request: Request) -> Response:
    owner = await current_member(request, ADMIN)
    params = request.query_params
    widget_id = params.get("widget_id") or None
    if widget_id is not None:
        await widgets(request).get(owner.workspace_id, widget_id)  # 404 unless it is theirs
    today = request.app.state.clock().astimezone(UTC).date()
    since, until = usage.period(params.get("from"), params.get("to"), today)
    group_by = params.get("group_by", "day")
    found = await usage.report(
        request.app.state.store, request.app.state.settings, owner.workspace_id, since=since,
        until=until, group_by=group_by, widget_id=widget_id,
    )
    key = {"day": "day", "widget": "widget_id", "assistant": "assistant_id"}[found.group_by]
    return JSONResponse({
        "from": found.since.isoformat(), "to": found.until.isoformat(),
        "group_by": found.group_by, "currency": "USD",
        "data": [_line(line, key) for line in found.lines],
        "total": _line(found.total, None),
    }, headers={"Cache-Control": "no-store"})


endpoints = [
    Endpoint("get", "/api/v1/usage", get_usage,
             "Replies, tokens and estimated cost of your widgets", "usage", auth="owner",
             role=ADMIN, description=DESCRIPTION, codes=("not_found",),
             query=(Param("from", "first UTC day, YYYY-MM-DD (default: 29 days before to)",
                          DATE),
                    Param("to", "last UTC day, YYYY-MM-DD (default: today)", DATE),
                    Param("group_by", "day (default), widget or assistant",
                          {"type": "string", "enum": ["day", "widget", "assistant"]}),
                    Param("widget_id", "only this widget of yours")),
             returns="Usage"),
]
