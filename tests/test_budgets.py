"""Budgets (issue 14): a widget's tokens and estimated cost per UTC day and month, checked before
the provider is called; the owner's mails at 80% and 100%; ``GET /api/v1/usage``; and the demo
widget (finding 5), off when a real key is set unless turned on, and always under a budget.

End to end on a real uvicorn server, the real ``openai`` SDK streaming from LOACL's OpenAI test
server (whose token counts are what the budgets add up), real WebSocket clients, mails in the
outbox, the log read with plain sqlite3.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from loacl.domain.widgets import WidgetBudget
from loacl.http.app import create_app
from loacl.openai_testserver import OpenAITestServer
from loacl.services.budgets import (
    BudgetMail,
    Budgets,
    Limits,
    cost_of,
    limits_of,
    period_end,
    price_of,
)
from loacl.services.demo import DEMO_OWNER, demo_enabled
from loacl.services.keys import keyring_for
from loacl.services.mail import Mailer
from loacl.settings import ModelPrice, Settings
from loacl.store import codec
from loacl.store.eventstore import EventStore
from loacl.store.projections import default_projections
from loacl.store.usage import UsageRow
from tests.live import serve
from tests.test_chat import (
    MODEL,
    ORIGIN,
    WAIT,
    Site,
    Visitor,
    audit_ok,
    chat_settings,
    live,
    log_of,
    replay_matches,
    wait_until,
)

GOLDEN = Path(__file__).parent / "golden"
QUESTION = "echo:the same question, so every reply costs the same tokens"
NOON = datetime(2030, 5, 17, 12, 0, tzinfo=UTC)


# -- the pieces ----------------------------------------------------------------------------------


def test_a_widget_budget_falls_back_to_the_servers_and_zero_means_none() -> None:
    settings = Settings(budget_daily_tokens=100, budget_monthly_tokens=2000,
                        budget_daily_cost=1.5, budget_monthly_cost=0)
    assert limits_of(WidgetBudget(), settings) == Limits(100, 2000, 1.5, 0)
    own = WidgetBudget(daily_tokens=0, monthly_tokens=50, monthly_cost=3)
    assert limits_of(own, settings) == Limits(0, 50, 1.5, 3)


def test_prices_cover_dated_snapshots_and_unknown_models_cost_nothing_known() -> None:
    prices = Settings().model_prices
    assert price_of("gpt-4.1-mini-2025-04-14", prices) == prices["gpt-4.1-mini"]
    assert price_of("gpt-4o-mini", prices) == ModelPrice(input=0.15, output=0.60)
    assert price_of("llama3", prices) is None
    row = UsageRow("w", "2030-05-17", "a", "gpt-4o-mini", 2, 0, 1_000_000, 500_000)
    assert cost_of(row, prices) == pytest.approx(0.15 + 0.30)
    assert cost_of(UsageRow("w", "2030-05-17", "a", "llama3", 1, 0, 10, 10), prices) is None


def test_periods_end_at_midnight_and_on_the_first_utc() -> None:
    assert period_end("day", date(2030, 12, 31)) == datetime(2031, 1, 1, tzinfo=UTC)
    assert period_end("month", date(2030, 2, 28)) == datetime(2030, 3, 1, tzinfo=UTC)
    assert period_end("month", date(2030, 1, 31)) == datetime(2030, 2, 1, tzinfo=UTC)
    assert period_end("month", date(2030, 12, 1)) == datetime(2031, 1, 1, tzinfo=UTC)


def test_a_widget_of_before_budgets_keeps_the_servers_defaults() -> None:
    """widget.created v1, still in every log, decodes with the default budget."""
    for kind in ("widget.created", "widget.updated"):
        old = codec.decode_payload(kind, 1, (GOLDEN / f"{kind}.v1.json").read_bytes())
        assert old.definition.budget == WidgetBudget()  # type: ignore[attr-defined]


# -- a LOACL with an owner, a widget and its budget ------------------------------------------


def make_widget(site: Site, budget: dict[str, Any], name: str = "Shop") -> str:
    assistant = site.http.post("/api/v1/assistants", headers=site.owner,
                               json={"name": "Helper", "provider": "openai", "model": MODEL})
    assert assistant.status_code == 201, assistant.text
    widget = site.http.post("/api/v1/widgets", headers=site.owner, json={
        "name": name, "assistant_id": assistant.json()["id"], "allowed_origins": [ORIGIN],
        "limits": {"messages_per_minute": 600}, "budget": budget,
    })
    assert widget.status_code == 201, widget.text
    assert widget.json()["budget"] == {"daily_tokens": None, "monthly_tokens": None,
                                       "daily_cost": None, "monthly_cost": None} | budget
    return str(widget.json()["id"])


def ask(site: Site, visitor: Visitor, text: str = QUESTION) -> httpx.Response:
    return site.post(visitor, text)


def tokens_of(response: httpx.Response) -> int:
    assert response.status_code == 201, response.text
    usage = response.json()["reply"]["usage"]
    return int(usage["input_tokens"] + usage["output_tokens"])


def mails(settings: Settings) -> list[Message]:
    folder = settings.data_dir / "outbox"
    found = [message_from_bytes(p.read_bytes(), policy=policy.default)
             for p in sorted(folder.glob("*.eml"))]
    return [m for m in found if "budget" in str(m["Subject"])]


def usage_of(site: Site, headers: dict[str, str] | None = None, **params: str) -> dict[str, Any]:
    response = site.http.get("/api/v1/usage", params=params, headers=headers or site.owner)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def budget_frame(site: Site, widget_id: str, visitor: Visitor) -> dict[str, Any]:
    """What a visitor's socket is told when it asks: the error frame, or the ack."""
    token = visitor.headers["Authorization"].removeprefix("Bearer ")
    url = f"{site.url.replace('http://', 'ws://', 1)}/api/v1/widgets/{widget_id}/stream"
    async with connect(f"{url}?token={token}", origin=Origin(ORIGIN), open_timeout=WAIT) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), WAIT))["type"] == "ready"
        await ws.send(json.dumps({"type": "message", "text": QUESTION,
                                  "client_message_id": "c1"}))
        while True:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            if frame["type"] in ("error", "ack"):
                return frame


@contextlib.contextmanager
def at(settings: Settings, moment: list[datetime]) -> Iterator[Site]:
    """LOACL whose clock reads ``moment[0]`` (the test moves it)."""
    app = create_app(settings, clock=lambda: moment[0])
    with serve(app) as url, httpx.Client(base_url=url, timeout=WAIT) as http:
        yield Site(url, http, app, settings)


# -- budget exhaustion, end to end ---------------------------------------------------------------


async def test_a_used_up_budget_refuses_before_the_provider_and_the_owner_hears_of_it(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, root)
    # A fixed clock: the day cannot turn (and the budget start again) while the test runs.
    moment = [NOON]
    today = NOON.date().isoformat()
    with at(settings, moment) as site:
        site.register()
        # One reply, to learn what such a reply costs in tokens: the budget is 2.5 of them.
        probe = make_widget(site, {"daily_tokens": 0, "monthly_tokens": 0, "daily_cost": 0,
                                   "monthly_cost": 0}, name="Probe")
        each = tokens_of(ask(site, site.visitor(probe)))
        budget = 5 * each // 2  # 2 replies: 80% or a little more; 3: over
        widget_id = make_widget(site, {"daily_tokens": budget})

        spent = [tokens_of(ask(site, site.visitor(widget_id))) for _ in range(2)]
        assert spent == [each, each]
        # 80%: the owner hears once, and visitors are still answered.
        wait_until(lambda: len(mails(settings)) == 1, "the 80% mail")
        tokens_of(ask(site, site.visitor(widget_id)))  # 120%: the last that started under it
        wait_until(lambda: len(mails(settings)) == 2, "the 100% mail")

        before = log_of(settings)
        calls = len(server.requests)
        visitor = site.visitor(widget_id)
        refused = ask(site, visitor)
        assert refused.status_code == 429, refused.text
        problem = refused.json()
        assert problem["code"] == "budget_exhausted"
        assert problem["retry_after"] == int(refused.headers["Retry-After"]) == 12 * 3600
        # Over the socket, the widget gets the same stable code to translate.
        frame = await budget_frame(site, widget_id, visitor)
        assert frame["type"] == "error" and frame["code"] == "budget_exhausted", frame
        assert frame["client_message_id"] == "c1" and frame["retry_after"] >= 1
        # Refused whole: the new session is the only thing written, no message, no half reply.
        after = log_of(settings)
        assert [r.type for r in after[len(before):]] == ["conversation.started"]
        assert len(server.requests) == calls  # and the provider was never asked

        # The mails: to the owner, once each, with stable ids.
        first, second = sorted(mails(settings), key=lambda m: str(m["Subject"]))
        assert first["To"] == second["To"] == "owner@example.com"
        assert "used 80%" in str(first["Subject"]) and "Shop" in str(first["Subject"])
        assert "used up" in str(second["Subject"])
        assert second["Message-ID"] == f"<budget.{widget_id}.{today}.100@loacl>"
        body = second.get_payload(decode=True)
        assert isinstance(body, bytes)
        assert f"{3 * each:,} of {budget:,} tokens" in body.decode()
        assert "GET /api/v1/usage" in body.decode()

        # The usage API shows what the budget counted, and the estimated cost.
        by_widget = {row["widget_id"]: row for row in usage_of(site, group_by="widget")["data"]}
        row = by_widget[widget_id]
        assert row["name"] == "Shop" and row["models"] == [MODEL]
        assert row["replies_completed"] == 3 and row["replies_failed"] == 0
        assert row["total_tokens"] == 3 * each
        price = settings.model_prices[MODEL]
        expected = (row["input_tokens"] * price.input + row["output_tokens"] * price.output) / 1e6
        assert row["estimated_cost"] == pytest.approx(expected, abs=1e-6)
        assert row["unpriced_tokens"] == 0
        assert by_widget[probe]["total_tokens"] == each
        by_day = usage_of(site)
        assert [r["day"] for r in by_day["data"]] == [today]
        assert by_day["total"]["total_tokens"] == 4 * each
        assert by_day["group_by"] == "day" and by_day["currency"] == "USD"
        assert by_day["to"] == today
        by_assistant = usage_of(site, group_by="assistant", widget_id=widget_id)["data"]
        assert [(r["name"], r["total_tokens"]) for r in by_assistant] == [("Helper", 3 * each)]

        # More refusals send no more mail.
        assert ask(site, site.visitor(widget_id)).status_code == 429
    # After a restart: still used up, and the subscriber goes on from its checkpoint.
    with at(settings, moment) as site:
        assert ask(site, site.visitor(widget_id)).json()["code"] == "budget_exhausted"
    assert len(mails(settings)) == 2
    audit_ok(settings)
    replay_matches(settings)


@pytest.mark.parametrize(
    ("budget", "start", "later"),
    [
        pytest.param({"daily_tokens": 1}, datetime(2030, 5, 17, 23, 59, tzinfo=UTC),
                     datetime(2030, 5, 18, 0, 0, 1, tzinfo=UTC), id="a-day"),
        pytest.param({"daily_tokens": 0, "monthly_tokens": 1},
                     datetime(2030, 5, 31, 23, 58, tzinfo=UTC),
                     datetime(2030, 6, 1, 0, 0, 1, tzinfo=UTC), id="a-month"),
        pytest.param({"daily_cost": 1e-9}, datetime(2030, 5, 17, 23, 59, tzinfo=UTC),
                     datetime(2030, 5, 18, 0, 0, 1, tzinfo=UTC), id="a-days-cost"),
    ],
)
def test_a_budget_starts_again_with_its_period(
    root: str, tmp_path: Path, budget: dict[str, Any], start: datetime, later: datetime
) -> None:
    moment = [start]
    settings = chat_settings(tmp_path, root)
    with at(settings, moment) as site:
        site.register()
        widget_id = make_widget(site, budget)
        visitor = site.visitor(widget_id)
        assert ask(site, visitor).status_code == 201
        refused = ask(site, visitor)
        assert refused.json()["code"] == "budget_exhausted"
        assert refused.json()["retry_after"] == int((period_end(
            "month" if "monthly_tokens" in budget else "day", start.date()
        ) - start).total_seconds())
        moment[0] = later
        assert ask(site, visitor).status_code == 201


def test_a_model_without_a_price_is_held_by_token_budgets_only(
    root: str, tmp_path: Path
) -> None:
    # The operator's price table lists another model only.
    prices = {"gpt-4.1": ModelPrice(input=2, output=8)}
    settings = chat_settings(tmp_path, root, model_prices=prices)
    with live(settings) as site:
        site.register()
        widget_id = make_widget(site, {"daily_cost": 1e-9})
        visitor = site.visitor(widget_id)
        assert [ask(site, visitor).status_code for _ in range(2)] == [201, 201]
        row = usage_of(site, group_by="widget")["data"][0]
        assert row["estimated_cost"] == 0 and row["unpriced_tokens"] == row["total_tokens"] > 0


def test_usage_is_the_owners_own_and_its_range_is_checked(root: str, tmp_path: Path) -> None:
    settings = chat_settings(tmp_path, root)
    with live(settings) as site:
        other = site.register("other@example.com")
        theirs = make_widget(site, {})
        assert ask(site, site.visitor(theirs)).status_code == 201
        site.register()
        mine = make_widget(site, {})
        assert usage_of(site)["data"] == []  # the other owner's reply is not mine
        assert usage_of(site, headers=other)["total"]["replies_completed"] == 1
        for params, field in [({"from": "2030-13-01"}, "from"), ({"to": "yesterday"}, "to"),
                              ({"from": "2030-05-02", "to": "2030-05-01"}, "from"),
                              ({"from": "2028-01-01", "to": "2030-01-01"}, "from"),
                              ({"group_by": "model"}, "group_by")]:
            response = site.http.get("/api/v1/usage", params=params, headers=site.owner)
            assert response.status_code == 422, (params, response.text)
            assert response.json()["errors"][0]["field"] == field
        gone = site.http.get("/api/v1/usage", params={"widget_id": theirs}, headers=site.owner)
        assert gone.status_code == 404
        assert site.http.get("/api/v1/usage").status_code == 401
        january = site.http.get("/api/v1/usage", headers=site.owner, params={
            "widget_id": mine, "from": "2030-01-01", "to": "2030-01-31"})
        assert january.json() == {
            "from": "2030-01-01", "to": "2030-01-31", "group_by": "day", "currency": "USD",
            "data": [], "total": {"replies_completed": 0, "replies_failed": 0,
                                  "input_tokens": 0, "output_tokens": 0, "total_tokens": 0,
                                  "estimated_cost": 0, "unpriced_tokens": 0, "models": [],
                                  "feedback_up": 0, "feedback_down": 0}}


# -- the demo widget (finding 5) ---------------------------------------------------------------


def demo_rows(settings: Settings) -> list[tuple[str, Any]]:
    conn = sqlite3.connect(settings.database_path)
    try:
        return conn.execute(
            "SELECT widget_id, definition FROM widgets WHERE owner_id = ?", (DEMO_OWNER,)
        ).fetchall()
    finally:
        conn.close()


def test_the_demo_is_off_with_a_real_key_unless_turned_on(root: str, tmp_path: Path) -> None:
    """Finding 5: once OPENAI_API_KEY was set, the demo answered anyone at the operator's cost."""
    without_key = chat_settings(tmp_path, None, demo_widget=None)
    with_key = chat_settings(tmp_path, root, demo_widget=None)
    assert demo_enabled(without_key) and not demo_enabled(with_key)
    assert demo_enabled(with_key.model_copy(update={"demo_widget": True}))

    with live(without_key) as site:  # a new install tries the demo
        page = site.http.get("/")
        demo_id = site.app.state.demo.widget_id
        assert demo_id and demo_id in page.text
        own = {"Origin": site.url}
        token = site.http.post(f"/api/v1/widgets/{demo_id}/sessions", json={},
                               headers=own).json()["visitor_token"]
    [(_, definition)] = demo_rows(without_key)
    assert json.loads(definition)["budget"]["daily_tokens"] == without_key.demo_daily_tokens

    with live(with_key) as site:  # then the operator sets a key
        page = site.http.get("/")
        assert demo_id not in page.text and "LOACL_DEMO_WIDGET=true" in page.text
        assert site.app.state.demo.widget_id is None
        # The token handed out before no longer reaches the widget.
        refused = site.http.post(
            f"/api/v1/widgets/{demo_id}/messages", json={"text": "hello"},
            headers={"Origin": site.url, "Authorization": f"Bearer {token}"},
        )
        assert refused.status_code == 404 and refused.json()["code"] == "widget_not_found"
        assert site.http.post(f"/api/v1/widgets/{demo_id}/sessions", json={},
                              headers={"Origin": site.url}).status_code == 404
    [(_, definition)] = demo_rows(with_key)
    assert json.loads(definition)["enabled"] is False
    count = len(log_of(with_key))
    with live(with_key):  # a restart writes nothing more
        pass
    assert len(log_of(with_key)) == count
    # The operator turns it on on purpose: the same widget, enabled, still under its budget.
    turned_on = with_key.model_copy(update={"demo_widget": True})
    with live(turned_on) as site:
        assert site.app.state.demo.widget_id == demo_id
        assert demo_id in site.http.get("/").text  # which also allows this port's origin
        assert site.http.get(f"/api/v1/widgets/{demo_id}/config",
                             headers={"Origin": site.url}).status_code == 200
    [(_, definition)] = demo_rows(turned_on)
    assert json.loads(definition)["enabled"] is True
    assert json.loads(definition)["budget"]["monthly_tokens"] == turned_on.demo_monthly_tokens


def test_a_demo_turned_on_with_a_key_stays_under_its_small_budget(
    root: str, tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, root, demo_widget=True, demo_daily_tokens=1,
                             budget_daily_tokens=0, budget_monthly_tokens=0)
    with live(settings) as site:
        demo_id = site.app.state.demo.widget_id
        assert demo_id
        site.http.get("/")  # the home page allows this server's own origin
        own = {"Origin": site.url}
        session = site.http.post(f"/api/v1/widgets/{demo_id}/sessions", json={}, headers=own)
        assert session.status_code == 201, session.text
        visitor = {**own, "Authorization": f"Bearer {session.json()['visitor_token']}"}
        path = f"/api/v1/widgets/{demo_id}/messages"
        first = site.http.post(path, json={"text": "echo:hi"}, headers=visitor)
        assert first.status_code == 201, first.text
        refused = site.http.post(path, json={"text": "echo:again"}, headers=visitor)
        assert refused.status_code == 429 and refused.json()["code"] == "budget_exhausted"
    kinds = [r.type for r in log_of(settings)]
    assert kinds.count("message.posted") == 1


# -- the owner's mail: once per period and threshold -------------------------------------------


async def test_the_mail_is_sent_once_per_period_and_threshold(
    root: str, tmp_path: Path
) -> None:
    settings = chat_settings(tmp_path, root, budget_warn_percent=50)
    with at(settings, [NOON]) as site:
        site.register()
        probe = make_widget(site, {"daily_tokens": 0}, name="Probe")
        each = tokens_of(ask(site, site.visitor(probe)))
        # One reply takes the widget from 0 to past 100%: one mail, the 100% one, and the 50%
        # one is never sent afterwards.
        widget_id = make_widget(site, {"daily_tokens": each - 1, "monthly_tokens": 100 * each})
        tokens_of(ask(site, site.visitor(widget_id)))
        wait_until(lambda: len(mails(settings)) == 1, "the mail")
    conn = sqlite3.connect(settings.database_path)
    try:
        sent = conn.execute("SELECT period, threshold FROM budget_alerts WHERE widget_id = ?",
                            (widget_id,)).fetchall()
    finally:
        conn.close()
    today = NOON.date().isoformat()
    assert sorted(sent) == [(today, 50), (today, 100)]
    [mail] = mails(settings)
    assert "used up its daily budget" in str(mail["Subject"])
    # Handed the same replies again (a crash before the checkpoint moved), it sends nothing.
    async with EventStore(
        settings.database_path, default_projections(), keyring=keyring_for(settings)
    ) as store:
        handler = BudgetMail(Budgets(store, settings), Mailer.from_settings(settings))
        await handler.handle(await store.read_all())
    assert len(mails(settings)) == 1
