"""Workspaces, members, roles and invites on a real uvicorn, with invites mailed through a real
SMTP server: every endpoint, each role (owner, admin, agent, a member of another workspace)
answers as the roles say; an invite is single use and makes or links an account; removing a
member cuts their access at once, an open owner stream included; the last owner stays; and
the workspace and member events replay to the same read tables."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from websockets.asyncio.client import connect
from websockets.typing import Origin

from loacl.services.keys import keyring_for
from loacl.settings import Settings
from loacl.store import audit
from loacl.store import replay as replay_module
from loacl.store.projections import default_projections
from tests.test_chat import PASSWORD, Site, chat_settings, live
from tests.test_mail import Collector, smtp_server  # noqa: F401 (a fixture)
from tests.test_owner_stream import closed_with, opened

pytestmark = pytest.mark.e2e

WAIT = 30.0  # a bound on each wait, not a measurement


def invite_token(collector: Collector, address: str, after: int = 0) -> str:
    """The token in the link of the latest invite mailed to ``address`` (from message
    ``after`` on)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        for message in reversed(collector.messages[after:]):
            if message["To"] == address and "invited you" in str(message["Subject"]):
                body = message.get_content()
                match = re.search(r"/console/invite\?token=(\S+)", body)
                assert match, body
                return unquote(match.group(1))
        time.sleep(0.02)
    raise AssertionError(f"no invite mailed to {address}")


@dataclass
class Team:
    site: Site
    mail: Collector
    workspace: str  # the owner's (personal) workspace
    owner: dict[str, str]
    admin: dict[str, str]
    agent: dict[str, str]
    other: dict[str, str]  # a member of another workspace only
    ids: dict[str, str]

    def headers(self, role: str) -> dict[str, str]:
        found: dict[str, str] = getattr(self, role)
        return found


def account_id(site: Site, headers: dict[str, str]) -> str:
    found: str = site.http.get("/api/v1/auth/me", headers=headers).json()["id"]
    return found


def invite_and_join(site: Site, mail: Collector, owner: dict[str, str], workspace: str,
                    email: str, role: str) -> dict[str, str]:
    """``email`` (an account already) invited as ``role``, accepting as itself, then acting
    in the workspace."""
    before = len(mail.messages)
    made = site.http.post(f"/api/v1/workspaces/{workspace}/invites",
                          json={"email": email, "role": role}, headers=owner)
    assert made.status_code == 201, made.text
    login = site.login(email)
    accepted = site.http.post("/api/v1/invites/accept",
                              json={"token": invite_token(mail, email, before)}, headers=login)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() == {"workspace_id": workspace}
    switched = site.http.post(f"/api/v1/workspaces/{workspace}/switch", headers=login)
    assert switched.status_code == 200, switched.text
    assert switched.json()["workspace_id"] == workspace
    return {"Authorization": f"Bearer {switched.json()['access_token']}"}


@pytest.fixture
def team(tmp_path: Path, smtp_server: tuple[Collector, int]) -> Iterator[Team]:  # noqa: F811
    mail, port = smtp_server
    settings = chat_settings(tmp_path, None, smtp_host="127.0.0.1", smtp_port=port,
                             smtp_security="none", mail_from="loacl@localhost")
    with live(settings) as site:
        for email in ("admin@example.com", "agent@example.com", "other@example.com"):
            site.register(email)
        owner = site.register("owner@example.com")
        workspace = account_id(site, owner)
        widget_id = site.widget("demo", "demo")
        visitor = site.visitor(widget_id)
        assert site.post(visitor, "Where is my parcel?").status_code == 201
        assistant_id = site.http.get(f"/api/v1/widgets/{widget_id}",
                                     headers=owner).json()["assistant_id"]
        admin = invite_and_join(site, mail, owner, workspace, "admin@example.com", "admin")
        agent = invite_and_join(site, mail, owner, workspace, "agent@example.com", "agent")
        other = site.login("other@example.com")
        ids = {"ws": workspace, "widget": widget_id, "assistant": assistant_id,
               "conversation": visitor.conversation_id,
               "agent_id": account_id(site, agent), "admin_id": account_id(site, admin)}
        yield Team(site, mail, workspace, owner, admin, agent, other, ids)


ROLES = ("owner", "admin", "agent", "other")
# method, path, body, and the status for owner, admin, agent, and another workspace's member.
# Requests that would change what a later row reads come last or change nothing.
Expected = tuple[int | None, int | None, int | None, int | None]  # None: not asked
TABLE: list[tuple[str, str, dict[str, Any] | None, Expected]] = [
    ("get", "/api/v1/assistants", None, (200, 200, 403, 200)),
    ("get", "/api/v1/assistants/{assistant}", None, (200, 200, 403, 404)),
    ("patch", "/api/v1/assistants/{assistant}", {"instructions": "Be brief."},
     (200, 200, 403, 404)),
    ("get", "/api/v1/widgets", None, (200, 200, 403, 200)),
    ("get", "/api/v1/widgets/{widget}", None, (200, 200, 403, 404)),
    ("patch", "/api/v1/widgets/{widget}", {"name": "Shop"}, (200, 200, 403, 404)),
    ("get", "/api/v1/widgets/{widget}/embed-code", None, (200, 200, 403, 404)),
    ("get", "/api/v1/widgets/{widget}/conversations", None, (200, 200, 200, 404)),
    ("get", "/api/v1/conversations", None, (200, 200, 200, 200)),
    ("get", "/api/v1/conversations/{conversation}", None, (200, 200, 200, 404)),
    ("get", "/api/v1/conversations/{conversation}/messages", None, (200, 200, 200, 404)),
    ("get", "/api/v1/conversations/{conversation}/export", None, (200, 200, 200, 404)),
    ("get", "/api/v1/widgets/{widget}/messages?conversation_id={conversation}", None,
     (200, 200, 200, 404)),
    ("get", "/api/v1/assistants/{assistant}/knowledge", None, (200, 200, 403, 404)),
    ("get", "/api/v1/assistants/{assistant}/knowledge-store", None, (200, 200, 403, 404)),
    ("get", "/api/v1/webhooks", None, (200, 200, 403, 200)),
    ("get", "/api/v1/usage", None, (200, 200, 403, 200)),
    ("get", "/api/v1/owner/stream", None, (426, 426, 426, 426)),
    ("get", "/api/v1/workspaces/{ws}", None, (200, 200, 200, 404)),
    ("get", "/api/v1/workspaces/{ws}/members", None, (200, 200, 200, 404)),
    ("get", "/api/v1/workspaces/{ws}/invites", None, (200, 403, 403, 404)),
    ("patch", "/api/v1/workspaces/{ws}", {"name": "Shop team"}, (200, 200, 403, 404)),
    ("post", "/api/v1/workspaces/{ws}/invites", {"email": "new@example.com"},
     (201, 403, 403, 404)),
    ("patch", "/api/v1/workspaces/{ws}/members/{agent_id}", {"role": "agent"},
     (200, 403, 403, 404)),
    # (An agent removing themselves is leaving: test_a_member_may_leave.)
    ("delete", "/api/v1/workspaces/{ws}/members/{agent_id}", None, (None, 403, None, 404)),
    ("delete", "/api/v1/workspaces/{ws}", None, (409, 403, 403, 404)),
    ("delete", "/api/v1/conversations/{conversation}", None, (None, None, 403, 404)),
    ("delete", "/api/v1/widgets/{widget}", None, (None, None, 403, 404)),
    ("post", "/api/v1/assistants", {"name": "Another", "provider": "demo"},
     (201, 201, 403, 201)),
]


def test_every_endpoint_answers_each_role_as_the_roles_say(team: Team) -> None:
    site = team.site
    failures = []
    for method, template, body, expected in TABLE:
        path = template.format(**team.ids)
        for role, status in zip(ROLES, expected, strict=True):
            if status is None:
                continue  # would change what the other rows read
            answer = site.http.request(method, path, json=body, headers=team.headers(role))
            if answer.status_code != status:
                failures.append(f"{method.upper()} {path} as {role}: {answer.status_code} "
                                f"(expected {status}) {answer.text[:160]}")
            elif status == 403:
                assert answer.json()["code"] == "insufficient_role"
            elif status == 404:
                assert answer.json()["code"] == "not_found"
    assert not failures, "\n".join(failures)
    # Another workspace's lists hold nothing of this one.
    assert site.http.get("/api/v1/conversations", headers=team.other).json()["data"] == []


def test_an_admin_keeps_the_workspaces_knowledge_and_an_agent_cannot(team: Team) -> None:
    """Knowledge belongs to the workspace's assistant: its admins upload and list it, not only
    the account whose workspace it is."""
    site = team.site
    base = f"/api/v1/assistants/{team.ids['assistant']}/knowledge"
    files = {"file": ("faq.txt", b"Parcels leave every weekday at noon.", "text/plain")}
    made = site.http.post(base, files=files, headers=team.admin)
    assert made.status_code == 202, made.text
    listed = site.http.get(base, headers=team.owner).json()["data"]
    assert [d["filename"] for d in listed] == ["faq.txt"]
    refused = site.http.post(base, files=files, headers=team.agent)
    assert (refused.status_code, refused.json()["code"]) == (403, "insufficient_role")
    elsewhere = site.http.post(base, files=files, headers=team.other)
    assert (elsewhere.status_code, elsewhere.json()["code"]) == (404, "not_found")


def test_members_list_and_workspaces_of_each_account(team: Team) -> None:
    site = team.site
    members = site.http.get(f"/api/v1/workspaces/{team.workspace}/members",
                            headers=team.agent).json()["data"]
    assert {(m["email"], m["role"]) for m in members} == {
        ("owner@example.com", "owner"), ("admin@example.com", "admin"),
        ("agent@example.com", "agent")}
    assert {m["display_name"] for m in members} == {"owner", "admin", "agent"}
    mine = site.http.get("/api/v1/workspaces", headers=team.agent).json()["data"]
    assert [(w["id"], w["role"]) for w in mine] == [
        (team.ids["agent_id"], "owner"), (team.workspace, "agent")]
    assert mine[1]["name"] == "owner's workspace" and mine[1]["personal"]


def test_the_last_owner_can_neither_leave_nor_be_demoted(team: Team) -> None:
    site = team.site
    me = account_id(site, team.owner)
    base = f"/api/v1/workspaces/{team.workspace}/members/{me}"
    for answer in (site.http.patch(base, json={"role": "admin"}, headers=team.owner),
                   site.http.delete(base, headers=team.owner)):
        assert answer.status_code == 409 and answer.json()["code"] == "last_owner"
    # Another owner first: then the first may step down.
    promoted = site.http.patch(
        f"/api/v1/workspaces/{team.workspace}/members/{team.ids['admin_id']}",
        json={"role": "owner"}, headers=team.owner)
    assert promoted.status_code == 200 and promoted.json()["role"] == "owner"
    stepped = site.http.patch(base, json={"role": "admin"}, headers=team.owner)
    assert stepped.status_code == 200 and stepped.json()["role"] == "admin"
    refused = site.http.get(f"/api/v1/workspaces/{team.workspace}/invites", headers=team.owner)
    assert refused.status_code == 403 and refused.json()["code"] == "insufficient_role"


def test_a_member_may_leave(team: Team) -> None:
    site = team.site
    left = site.http.delete(
        f"/api/v1/workspaces/{team.workspace}/members/{team.ids['agent_id']}",
        headers=team.agent)
    assert left.status_code == 204
    mine = site.http.get("/api/v1/workspaces", headers=team.agent).json()["data"]
    assert [w["id"] for w in mine] == [team.ids["agent_id"]]
    # The console's refresh asks for the workspace it was in: it gets the personal one.
    login = site.http.post("/api/v1/auth/login", json={"email": "agent@example.com",
                                                       "password": PASSWORD}).json()
    refreshed = site.http.post("/api/v1/auth/refresh-token", json={
        "refresh_token": login["refresh_token"], "workspace_id": team.workspace})
    assert refreshed.status_code == 200
    assert refreshed.json()["workspace_id"] == team.ids["agent_id"]


def test_an_invite_makes_an_account_once(team: Team) -> None:
    site = team.site
    before = len(team.mail.messages)
    made = site.http.post(f"/api/v1/workspaces/{team.workspace}/invites",
                          json={"email": "Newcomer@Example.com", "role": "agent"},
                          headers=team.owner)
    assert made.status_code == 201, made.text
    token = invite_token(team.mail, "Newcomer@example.com", before)
    listed = site.http.get(f"/api/v1/workspaces/{team.workspace}/invites",
                           headers=team.owner).json()["data"]
    assert [i["email"] for i in listed] == ["Newcomer@example.com"]
    accepted = site.http.post("/api/v1/invites/accept",
                              json={"token": token, "password": PASSWORD, "name": "Nina"})
    assert accepted.status_code == 200, accepted.text
    body = accepted.json()
    assert body["workspace_id"] == team.workspace and body["refresh_token"]
    nina = {"Authorization": f"Bearer {body['access_token']}"}
    me = site.http.get("/api/v1/auth/me", headers=nina).json()
    assert (me["display_name"], me["email_verified"]) == ("Nina", True)
    assert site.http.get("/api/v1/conversations", headers=nina).json()["data"]
    assert site.http.get("/api/v1/widgets", headers=nina).status_code == 403
    again = site.http.post("/api/v1/invites/accept", json={"token": token, "password": PASSWORD})
    assert again.status_code == 400 and again.json()["code"] == "invalid_invite"
    assert site.http.get(f"/api/v1/workspaces/{team.workspace}/invites",
                         headers=team.owner).json()["data"] == []


def test_an_invite_accepted_by_the_console_sets_the_refresh_cookie_as_login_does(
    team: Team,
) -> None:
    site = team.site
    before = len(team.mail.messages)
    site.http.post(f"/api/v1/workspaces/{team.workspace}/invites",
                   json={"email": "cookie@example.com", "role": "agent"}, headers=team.owner)
    token = invite_token(team.mail, "cookie@example.com", before)
    body = {"token": token, "password": PASSWORD, "session": "cookie"}
    # Another site's page may not start it (the cookie would be set for it).
    refused = site.http.post("/api/v1/invites/accept", json=body,
                             headers={"Sec-Fetch-Site": "cross-site"})
    assert (refused.status_code, refused.json()["code"]) == (403, "cross_site_request")
    accepted = site.http.post("/api/v1/invites/accept", json=body,
                              headers={"Sec-Fetch-Site": "same-origin"})
    assert accepted.status_code == 200, accepted.text
    assert "refresh_token" not in accepted.json()
    assert accepted.json()["workspace_id"] == team.workspace
    (set_cookie,) = accepted.headers.get_list("set-cookie")
    found = re.match(r"loacl_refresh=([^;]+);", set_cookie)
    assert found, set_cookie
    assert all(flag in set_cookie.lower() for flag in ("httponly", "secure", "samesite=strict",
                                                        "path=/api/v1/auth"))
    # The cookie alone gives a new access token in the workspace joined (what a reload does).
    # httpx keeps no Secure cookie for plain http: it is carried by hand, as the browser does.
    renewed = site.http.post("/api/v1/auth/refresh-token",
                             json={"workspace_id": team.workspace},
                             headers={"Sec-Fetch-Site": "same-origin",
                                      "Cookie": f"loacl_refresh={found.group(1)}"})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["workspace_id"] == team.workspace
    me = site.http.get("/api/v1/auth/me", headers={
        "Authorization": f"Bearer {renewed.json()['access_token']}"})
    assert me.json()["email"] == "cookie@example.com"


def test_an_invite_for_an_address_with_an_account_asks_to_log_in(team: Team) -> None:
    site = team.site
    before = len(team.mail.messages)
    site.http.post(f"/api/v1/workspaces/{team.workspace}/invites",
                   json={"email": "other@example.com"}, headers=team.owner)
    token = invite_token(team.mail, "other@example.com", before)
    refused = site.http.post("/api/v1/invites/accept",
                             json={"token": token, "password": PASSWORD})
    assert refused.status_code == 409 and refused.json()["code"] == "account_exists"
    joined = site.http.post("/api/v1/invites/accept", json={"token": token},
                            headers=team.other)
    assert joined.status_code == 200


def test_a_revoked_invite_is_refused(team: Team) -> None:
    site = team.site
    before = len(team.mail.messages)
    made = site.http.post(f"/api/v1/workspaces/{team.workspace}/invites",
                          json={"email": "late@example.com"}, headers=team.owner).json()
    token = invite_token(team.mail, "late@example.com", before)
    gone = site.http.delete(f"/api/v1/workspaces/{team.workspace}/invites/{made['id']}",
                            headers=team.owner)
    assert gone.status_code == 204
    refused = site.http.post("/api/v1/invites/accept",
                             json={"token": token, "password": PASSWORD})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_invite"


async def test_removing_a_member_cuts_their_access_at_once(team: Team) -> None:
    site = team.site
    ws = await opened(site, team.agent)
    removed = await asyncio.to_thread(
        site.http.delete, f"/api/v1/workspaces/{team.workspace}/members/{team.ids['agent_id']}",
        headers=team.owner)
    assert removed.status_code == 204, removed.text
    assert await closed_with(ws) == 4401
    refused = await asyncio.to_thread(site.http.get, "/api/v1/conversations",
                                      headers=team.agent)
    assert refused.status_code == 403 and refused.json()["code"] == "not_a_member"
    hidden = await asyncio.to_thread(
        site.http.get, f"/api/v1/conversations/{team.ids['conversation']}",
        headers=team.agent)
    assert hidden.status_code == 403
    # A new socket is refused too.
    async with connect(site.url.replace("http://", "ws://") + "/api/v1/owner/stream",
                       origin=Origin(site.url)) as again:
        token = team.agent["Authorization"].removeprefix("Bearer ")
        await again.send(json.dumps({"type": "auth", "token": token}))
        assert await closed_with(again) == 4401


def test_member_changes_are_delivered_to_the_workspaces_webhooks(team: Team) -> None:
    site = team.site
    made = site.http.post("/api/v1/webhooks", json={
        "url": "https://hooks.example.com/loacl", "event_types": ["member.changed"]},
        headers=team.admin)
    assert made.status_code == 201, made.text
    site.http.patch(f"/api/v1/workspaces/{team.workspace}/members/{team.ids['agent_id']}",
                    json={"role": "admin"}, headers=team.owner)
    site.http.delete(f"/api/v1/workspaces/{team.workspace}/members/{team.ids['agent_id']}",
                     headers=team.agent)
    deadline = time.monotonic() + WAIT
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(found) < 2:
        conn = sqlite3.connect(site.settings.database_path)
        try:
            found = [json.loads(p) for (p,) in conn.execute(
                "SELECT payload FROM webhook_deliveries WHERE webhook_id = ? "
                "AND event_type = 'member.changed' ORDER BY delivery_id",
                (made.json()["id"],))]
        finally:
            conn.close()
        time.sleep(0.05)
    assert [(p["type"], p["data"]) for p in found] == [
        ("member.changed", {"workspace_id": team.workspace, "account_id": team.ids["agent_id"],
                            "change": "role_changed", "role": "admin", "reason": None}),
        ("member.changed", {"workspace_id": team.workspace, "account_id": team.ids["agent_id"],
                            "change": "removed", "role": None, "reason": "left"}),
    ]


def test_member_changes_replay_to_the_same_tables(team: Team) -> None:
    site = team.site
    site.http.patch(f"/api/v1/workspaces/{team.workspace}/members/{team.ids['agent_id']}",
                    json={"role": "admin"}, headers=team.owner)
    site.http.delete(f"/api/v1/workspaces/{team.workspace}/members/{team.ids['admin_id']}",
                     headers=team.owner)
    made = site.http.post("/api/v1/workspaces", json={"name": "Second"}, headers=team.other)
    assert made.status_code == 201
    site.http.delete(f"/api/v1/workspaces/{made.json()['id']}", headers=team.other)
    site.http.patch("/api/v1/auth/me", json={"name": "Olga"}, headers=team.other)
    assert_replay_equals_live(site.settings)


def assert_replay_equals_live(settings: Settings, skip: tuple[str, ...] = ()) -> None:
    projections = default_projections()
    tables = [table for table in projections.tables if table not in skip]
    conn = sqlite3.connect(settings.database_path, isolation_level=None)
    try:
        live_tables = replay_module.dump_tables(conn, tables)
        assert live_tables["workspace_members"]
        replay_module.replay(conn, projections, keys=keyring_for(settings).attach(conn))
        assert replay_module.dump_tables(conn, tables) == live_tables
        assert audit.verify(conn).ok
    finally:
        conn.close()


# -- a database written before workspaces ------------------------------------------------------
# tests/data/pre_workspaces holds a database (schema 13) and its master key, written through the
# API by LOACL as it was before workspaces (commit 7718ad5): two owners, an assistant, a widget,
# a visitor's conversation with the demo's reply, a webhook endpoint.
PRE = Path(__file__).parent / "data" / "pre_workspaces"
OLD_TABLES = ("users", "assistants", "widgets", "conversations", "messages", "webhooks",
              "sessions")


def rows(database: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(database)
    try:
        return sorted(conn.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)
    finally:
        conn.close()


def test_a_database_from_before_workspaces_migrates_whole(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    for name in ("loacl.db", "master_key"):
        (data / name).write_bytes((PRE / name).read_bytes())
        (data / name).chmod(0o600)
    database = data / "loacl.db"
    before = {table: rows(database, table) for table in OLD_TABLES}
    assert before["widgets"] and before["messages"]
    # The hash parameters the file was written with: a login rehashes none.
    settings = chat_settings(tmp_path, None, database_url=f"sqlite:///{database}",
                             data_dir=data, argon2_memory_kib=8)
    with live(settings) as site:
        owner = site.login("old@example.com")
        me = account_id(site, owner)
        mine = site.http.get("/api/v1/workspaces", headers=owner).json()["data"]
        assert [(w["id"], w["role"], w["personal"]) for w in mine] == [(me, "owner", True)]
        assert mine[0]["name"] == "Old Owner's workspace"
        widgets = site.http.get("/api/v1/widgets", headers=owner).json()["data"]
        assert [w["name"] for w in widgets] == ["Old site"]
        inbox = site.http.get("/api/v1/conversations", headers=owner).json()["data"]
        assert len(inbox) == 1
        transcript = site.http.get(f"/api/v1/conversations/{inbox[0]['id']}/messages",
                                   headers=owner).json()["data"]
        assert transcript[0]["text"] == "Hello from before workspaces"
        second = site.login("second@example.com")
        assert site.http.get(f"/api/v1/widgets/{widgets[0]['id']}",
                             headers=second).status_code == 404
        for table in OLD_TABLES:
            if table not in ("sessions", "widgets"):  # the logins above started sessions
                # Later migrations add columns (the handoff's state, a message's author): the
                # columns there were keep their values.
                width = len(before[table][0]) if before[table] else 0
                assert [r[:width] for r in rows(database, table)] == before[table], table
        # Widget rows from before widget events v4 gain office_hours (null), as a replay
        # writes them (migration 0016); nothing else of them changes.
        index = [d[0] for d in sqlite3.connect(database).execute(
            "SELECT * FROM widgets LIMIT 0").description].index("definition")
        now = rows(database, "widgets")
        assert len(now) == len(before["widgets"]) == 2  # the demo's and the old owner's
        for widget_row, old_widget in zip(now, before["widgets"], strict=True):
            assert json.loads(widget_row[index]) == {**json.loads(old_widget[index]),
                                                     "office_hours": None}
            assert widget_row[:index] + widget_row[index + 1:len(old_widget)] == (
                old_widget[:index] + old_widget[index + 1:])
        members = rows(database, "workspace_members")
        assert sorted((m[0], m[1], m[2]) for m in members) == sorted(
            (u[0], u[0], "owner") for u in before["users"])
        # The old owner invites someone into the migrated workspace: new events on old ones.
        made = site.http.post(f"/api/v1/workspaces/{me}/invites",
                              json={"email": "second@example.com", "role": "agent"},
                              headers=owner)
        assert made.status_code == 201
        assert_replay_equals_live(settings)
