"""What the reply loop tells whoever watches it (metrics): a reply started, its first token
came, it ended. The default watches nothing; ``loacl.telemetry.metrics`` counts."""

from __future__ import annotations


class ReplyObserver:
    """Every method is called on the event loop and must return at once."""

    def started(self, provider: str) -> None:
        """A reply was asked of ``provider``."""

    def first_token(self, provider: str, seconds: float) -> None:
        """The provider's first piece of text came ``seconds`` after the reply started."""

    def ended(
        self, provider: str, widget_id: str, model: str, outcome: str, reason: str,
        input_tokens: int, output_tokens: int,
    ) -> None:
        """The reply ended: ``outcome`` completed, failed or interrupted; ``reason`` the
        failure's code (``""`` when it completed)."""


NO_OBSERVER = ReplyObserver()
