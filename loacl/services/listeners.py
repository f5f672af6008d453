"""Callbacks kept by key (a conversation, or None for every one): each added with ``listen``,
which returns what takes it away again (a socket calls it when it closes)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable | None)
L = TypeVar("L")


class Listeners(Generic[K, L]):
    def __init__(self) -> None:
        self._by_key: dict[K, set[L]] = {}

    def listen(self, key: K, listener: L) -> Callable[[], None]:
        self._by_key.setdefault(key, set()).add(listener)

        def stop() -> None:
            found = self._by_key.get(key)
            if found is not None:
                found.discard(listener)
                if not found:
                    del self._by_key[key]

        return stop

    def of(self, key: K) -> list[L]:
        """The listeners of ``key`` now (a copy: one may stop while they are told)."""
        return list(self._by_key.get(key, ()))

    def __contains__(self, key: object) -> bool:
        return key in self._by_key
