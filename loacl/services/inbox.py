"""What an owner reads of the conversations of their widgets: the inbox across every widget,
one conversation, its transcript and its files. Another owner's conversation is not found."""

from __future__ import annotations

from loacl.domain.errors import LoaclError
from loacl.store.eventstore import EventStore
from loacl.store.views import Page
from loacl.store.views import conversations as conversation_views
from loacl.store.views import files as file_views
from loacl.store.views import inbox as views
from loacl.store.views.conversations import MessagePage
from loacl.store.views.files import FileView
from loacl.store.views.inbox import InboxFilter, InboxItem


class Inbox:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def page(
        self, owner_id: str, where: InboxFilter, after: int | None, limit: int,
        member_id: str | None = None,
    ) -> Page[InboxItem]:
        return await views.inbox(self.store, owner_id, where, after, limit, member_id)

    async def conversation(
        self, owner_id: str, conversation_id: str, member_id: str | None = None
    ) -> InboxItem:
        found = await views.inbox_item(self.store, conversation_id, member_id)
        if found is None or await views.owner_of(self.store, conversation_id) != owner_id:
            raise LoaclError("not_found", "no such conversation")
        return found

    async def transcript(
        self, owner_id: str, conversation_id: str, *, before: int | None, after: int | None,
        limit: int,
    ) -> tuple[MessagePage, list[FileView]]:
        """A page of messages, as the visitor's transcript pages them, and the files they
        name."""
        await self.conversation(owner_id, conversation_id)
        page = await conversation_views.messages(
            self.store, conversation_id, before=before, after=after, limit=limit
        )
        named = list(dict.fromkeys(f for m in page.items for f in m.file_ids))
        found = await file_views.files(self.store, named) if named else []
        return page, [f for f in found if f.conversation_id == conversation_id]

    async def file(
        self, owner_id: str, conversation_id: str, file_id: str
    ) -> tuple[FileView, bytes]:
        await self.conversation(owner_id, conversation_id)
        found = await file_views.file(self.store, file_id)
        if found is None or found.conversation_id != conversation_id:
            raise LoaclError("not_found", "no such file")
        data = await file_views.blob(self.store, found.sha256)
        if data is None:
            raise LoaclError("not_found", "the file's content is missing (erased)")
        return found, data
