"""The subscribers every LOACL server runs, in one list: a new one (webhooks, mail
notifications, retention) is added here."""

from __future__ import annotations

from loacl.store import usage
from loacl.store.subscriptions import Subscriber


def default_subscribers() -> list[Subscriber]:
    return [usage.subscriber]
