"""The typed reads of accounts, against a real database written through the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest

from loacl.domain.assistants import AssistantDefinition
from loacl.domain.events import Metadata
from loacl.domain.widgets import WidgetDefinition
from loacl.services.accounts import Accounts
from loacl.services.assistants import Assistants
from loacl.services.mail import Mailer
from loacl.services.passwords import Passwords
from loacl.services.tokens import Tokens, token_hash
from loacl.services.widgets import Widgets
from loacl.settings import Settings
from loacl.store.eventstore import EventStore
from loacl.store.projections import default_projections
from loacl.store.views import accounts as view
from loacl.store.views.accounts import OwnedAssistant, UserView

SECRET = "views-test-secret-" + "v" * 40
PASSWORD = "correct horse battery staple"
META = Metadata(actor="test")
NOW = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)


class Sent:
    """A mail transport that keeps what it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    def deliver(self, message: EmailMessage) -> None:
        self.messages.append(message)


@pytest.fixture
async def opened(db_path: Path) -> AsyncIterator[EventStore]:
    async with EventStore(db_path, default_projections(), clock=lambda: NOW) as store:
        yield store


@pytest.fixture
async def accounts(
    opened: EventStore, settings: Settings, tmp_path: Path
) -> AsyncIterator[Accounts]:
    passwords = Passwords(1, 64, 1)
    tokens = Tokens(SECRET, "HS256", 15, lambda: NOW)
    mailer = Mailer(Sent(), "loacl@example.com", tmp_path / "outbox", attempts=1, backoff=0)
    yield Accounts(opened, settings, passwords, tokens, mailer, lambda: NOW)
    await mailer.drain()


async def test_users_by_id_and_by_email(accounts: Accounts, opened: EventStore) -> None:
    email = await accounts.register("Ann@Example.com", PASSWORD, "Ann", "192.0.2.1", "http://x",
                                    META)
    made = await accounts.create_user("bob@example.com", PASSWORD, None, verified=True,
                                      meta=META)

    found = await view.credentials(opened, email)
    assert found is not None
    ann = await view.user_by_id(opened, found.user_id)
    at = "2030-05-06T07:08:09.000000+00:00"
    assert ann == UserView(found.user_id, "Ann@example.com", "Ann", None, at)
    assert ann.email_verified is False
    # The users table compares addresses without case.
    assert await view.user_by_email(opened, "ann@EXAMPLE.com") == ann
    assert made == await view.user_by_email(opened, "bob@example.com")
    assert (made.email_verified, made.email_verified_at) == (True, at)
    assert [u.email for u in await view.all_users(opened)] == [
        "Ann@example.com", "bob@example.com",
    ]
    assert await view.user_by_id(opened, "nobody") is None
    assert await view.user_by_email(opened, "nobody@example.com") is None


async def test_credentials_carry_the_hash_the_password_matches(
    accounts: Accounts, opened: EventStore
) -> None:
    user = await accounts.create_user("c@example.com", PASSWORD, None, verified=False,
                                      meta=META)
    found = await view.credentials(opened, "C@example.com")
    assert found is not None
    assert (found.user_id, found.email) == (user.user_id, "c@example.com")
    assert await accounts.passwords.verify(found.password_hash, PASSWORD)
    assert await view.credentials(opened, "nobody@example.com") is None


async def test_sessions_from_login_to_logout(accounts: Accounts, opened: EventStore) -> None:
    user = await accounts.create_user("s@example.com", PASSWORD, None, verified=True, meta=META)
    pair = await accounts.login("s@example.com", PASSWORD, "127.0.0.1", META)
    principal = await accounts.authenticate(pair.access_token)

    session_id = await view.session_of_refresh_token(opened, token_hash(pair.refresh_token))
    assert session_id == principal.session_id
    assert await view.open_sessions(opened, user.user_id) == [session_id]
    active = await view.session_user(opened, session_id, user.user_id)
    assert active is not None
    assert (active.active, active.email, active.email_verified_at is not None) == (
        True, "s@example.com", True,
    )
    # A session is found only with the user it belongs to.
    assert await view.session_user(opened, session_id, "someone-else") is None

    await accounts.logout(principal, META)
    ended = await view.session_user(opened, session_id, user.user_id)
    assert ended is not None and ended.active is False
    assert await view.open_sessions(opened, user.user_id) == []
    assert await view.session_of_refresh_token(opened, token_hash("never issued")) is None


async def test_what_each_owner_holds(
    accounts: Accounts, opened: EventStore, settings: Settings
) -> None:
    ann = await accounts.create_user("ann@example.com", PASSWORD, None, verified=True,
                                     meta=META)
    bob = await accounts.create_user("bob@example.com", PASSWORD, None, verified=True,
                                     meta=META)
    assistants = Assistants(opened, settings)
    widgets = Widgets(opened, Tokens(SECRET, "HS256", 15, lambda: NOW), SECRET)
    first = await assistants.create(
        ann.user_id, AssistantDefinition(name="First", provider="demo", model="demo"), META
    )
    second = await assistants.create(
        bob.user_id, AssistantDefinition(name="Second", provider="demo", model="demo"), META
    )
    widget = await widgets.create(
        bob.user_id,
        WidgetDefinition(name="Shop", assistant_id=second.assistant_id,
                         allowed_origins=("https://shop.example", "https://www.shop.example")),
        META,
    )

    at = "2030-05-06T07:08:09.000000+00:00"
    assert await view.assistants_by_owner(opened) == [
        OwnedAssistant(first.assistant_id, "ann@example.com", "First", "demo", "demo", at),
        OwnedAssistant(second.assistant_id, "bob@example.com", "Second", "demo", "demo", at),
    ]
    assert [a.name for a in await view.assistants_by_owner(opened, "BOB@example.com")] == [
        "Second"
    ]
    [listed] = await view.widgets_by_owner(opened)
    assert (listed.widget_id, listed.owner_email, listed.name, listed.assistant_id) == (
        widget.widget_id, "bob@example.com", "Shop", second.assistant_id,
    )
    assert listed.enabled is True
    assert listed.allowed_origins == ("https://shop.example", "https://www.shop.example")
    assert await view.widgets_by_owner(opened, "ann@example.com") == []
