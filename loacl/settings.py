"""Configuration: built-in defaults < ``loacl.toml`` < environment variables.

The only module that reads configuration. Environment names follow the original task list where it
has one (``DATABASE_URL``, ``JWT_SECRET_KEY``, ...) and are ``LOACL_<KEY>`` otherwise.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import os
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loacl.private import private_folder

CONFIG_ENV = "LOACL_CONFIG"
DEFAULT_CONFIG = Path("loacl.toml")

# Keys whose environment name is the task list's, not LOACL_<KEY>.
ENV_NAMES = {
    "database_url": "DATABASE_URL",
    "jwt_secret_key": "JWT_SECRET_KEY",
    "jwt_algorithm": "JWT_ALGORITHM",
    "access_token_expire_minutes": "ACCESS_TOKEN_EXPIRE_MINUTES",
    "openai_api_key": "OPENAI_API_KEY",
    "openai_base_url": "OPENAI_BASE_URL",
    "max_upload_size": "MAX_UPLOAD_SIZE",
    "allowed_file_types": "ALLOWED_FILE_TYPES",
    # OpenTelemetry's own name, as collectors' documentation gives it.
    "otel_exporter_otlp_endpoint": "OTEL_EXPORTER_OTLP_ENDPOINT",
}


# Never echoed in error messages.
SECRET_KEYS = frozenset(
    {"jwt_secret_key", "openai_api_key", "chat_completions_api_key", "smtp_password",
     "master_key", "metrics_token"}
)
MASTER_KEY_FILE = "master_key"


class ModelPrice(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: float = Field(ge=0)
    output: float = Field(ge=0)


# Standard-tier prices of OpenAI's text models, US dollars per 1M tokens, as OpenAI's pricing
# page (developers.openai.com/api/docs/pricing) listed them and price tables dated May to
# November 2026 quote them; checked 2026-12-01. Cached input is billed lower and counted here
# at the full price, so estimates err high. loacl.toml repeats this table to edit.
MODEL_PRICES: dict[str, ModelPrice] = {
    name: ModelPrice(input=i, output=o)
    for name, i, o in [
        ("gpt-5.5", 5.00, 30.00),
        ("gpt-5.4", 2.50, 15.00),
        ("gpt-5.4-mini", 0.75, 4.50),
        ("gpt-5.4-nano", 0.20, 1.25),
        ("gpt-5", 1.25, 10.00),
        ("gpt-5-mini", 0.25, 2.00),
        ("gpt-5-nano", 0.05, 0.40),
        ("gpt-4.1", 2.00, 8.00),
        ("gpt-4.1-mini", 0.40, 1.60),
        ("gpt-4.1-nano", 0.10, 0.40),
        ("gpt-4o", 2.50, 10.00),
        ("gpt-4o-mini", 0.15, 0.60),
    ]
}


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the key and what was expected."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    database_url: str = Field(
        "sqlite:///data/loacl.db",
        description="SQLite database file (sqlite:///relative or sqlite:////absolute path), or "
        "a PostgreSQL log shared by several instances (postgresql://user:password@host/db; "
        "docs/scale-out.md).",
        pattern=r"^(sqlite:///.+|postgres(ql)?://.+)",
    )
    instance_database: Path | None = Field(
        None, description="With a PostgreSQL DATABASE_URL: this instance's own SQLite file, a "
        "copy of the log and its read tables kept level with PostgreSQL (default: "
        "instance.db in data_dir).",
    )
    data_dir: Path = Field(
        Path("data"), description="Folder for the generated JWT secret and the mail outbox."
    )
    host: str = Field("127.0.0.1", description="Address `loacl serve` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `loacl serve` listens on.")
    public_url: str | None = Field(
        None, description="This instance's public base URL, used in embed code and mail links."
    )
    trusted_proxies: list[str] = Field(
        ["127.0.0.1", "::1"],
        description="Addresses or networks (CIDR) of reverse proxies whose `X-Forwarded-For` "
        "and `X-Forwarded-Proto` are believed: the client's address (for rate limits and the "
        "log) and HTTPS (for HSTS) come from them; `*` trusts any peer.",
    )
    allowed_hosts: list[str] = Field(
        [], description="Without `public_url`: `Host` names (`name` or `name:port`) that embed "
        "code and widget URLs may be built from. Any other `Host` is ignored for them in favour "
        "of the address the connection came to.",
    )
    hsts_seconds: int = Field(
        31_536_000, ge=0, description="`max-age` of `Strict-Transport-Security`, sent on "
        "requests that came over HTTPS (directly or through a trusted proxy); 0 sends none.",
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections (HTTP and WebSocket) the server takes; past "
        "it, new requests are answered 503 at once.",
    )
    header_timeout_seconds: float = Field(
        10.0, gt=0, le=600, description="A client must send a request's headers within this "
        "many seconds (of connecting, or of the previous response); else it is disconnected.",
    )
    body_timeout_seconds: float = Field(
        60.0, gt=0, le=3600, description="A client must send a request's whole body within "
        "this many seconds of its headers; else it is disconnected.",
    )
    keep_alive_seconds: int = Field(
        5, ge=1, le=600, description="An idle keep-alive connection is closed after this many "
        "seconds.",
    )
    max_header_bytes: int = Field(
        65_536, ge=4096, le=1_048_576, description="Largest request head (request line and "
        "headers), in bytes; a larger one is refused (431) and the connection closed.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of log lines written."
    )
    log_format: Literal["auto", "json", "text", "console"] = Field(
        "auto",
        description="`json` (one JSON object a line), `text` (readable lines, coloured on a "
        "terminal), or `auto`: text when the log goes to a terminal, JSON otherwise. `console` "
        "is an older name for `text`.",
    )
    auto_migrate: bool = Field(
        True, description="Apply pending database migrations when the server starts."
    )
    min_free_disk_mb: int = Field(
        100, ge=0, description="/readyz answers not ready when the database's filesystem has "
        "less free space than this, in MB."
    )
    integrity_check_minutes: float = Field(
        60, ge=0,
        description="How often a running server checks its database file again (SQLite's quick "
        "check, and the hash chain since the last check); damage is logged and fails `/readyz`. "
        "0 turns it off.",
    )
    jwt_secret_key: str | None = Field(
        None,
        min_length=32,
        description="Key for signing access tokens; generated once into the data folder if unset.",
    )
    master_key: str | None = Field(
        None,
        description="Key that seals the data keys of personal data (32 bytes, base64); several, "
        "comma-separated, while rotating: the first seals, the others still open. Unset: one is "
        "generated once into the data folder (`master_key`, mode 0600). Never in the database.",
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = Field(
        "HS256", description="Algorithm for access tokens."
    )
    access_token_expire_minutes: int = Field(
        30, ge=1, le=24 * 60, description="Lifetime of an access token, in minutes."
    )
    require_if_match: bool = Field(
        False, description="Changes and deletions of assistants and widgets (`PUT`, `PATCH`, "
        "`DELETE`, `rotate-secret`) must send `If-Match` with the ETag read (else 428).",
    )
    require_verified_email: bool = Field(
        True, description="Owners must verify their e-mail before creating assistants or widgets."
    )
    email_token_hours: int = Field(
        24, ge=1, le=24 * 30, description="Lifetime of an e-mail verification link, in hours."
    )
    reset_token_minutes: int = Field(
        60, ge=5, le=24 * 60, description="Lifetime of a password reset link, in minutes."
    )
    login_ip_failures: int = Field(
        20, ge=1, le=10_000, description="Failed logins one client address may make, on any "
        "accounts, per `login_window_minutes`; then it is refused (429).",
    )
    login_account_failures: int = Field(
        5, ge=1, le=1000, description="Failed logins one client address may make on one "
        "account per `login_window_minutes`; then that address (only) is refused on it (429).",
    )
    login_account_alarm: int = Field(
        50, ge=1, le=100_000, description="Failed logins on one account from all addresses per "
        "`login_window_minutes` past which each address gets one try on it; an address with "
        "no failure on it is still heard, so the owner's right password goes through.",
    )
    login_window_minutes: int = Field(
        15, ge=1, le=24 * 60, description="The window the login limits count failures in."
    )
    register_per_ip_hour: int = Field(
        10, ge=1, le=100_000, description="Registrations one client address may ask for per "
        "hour (429 after).",
    )
    reset_per_ip_hour: int = Field(
        10, ge=1, le=100_000, description="Password reset mails one client address may ask "
        "for per hour (429 after).",
    )
    refresh_token_days: int = Field(
        30, ge=1, le=365, description="Lifetime of a login session's refresh token, in days."
    )
    argon2_time_cost: int = Field(3, ge=1, le=20, description="Argon2id passes over memory.")
    argon2_memory_kib: int = Field(
        65536, ge=8, le=4 * 1024 * 1024, description="Argon2id memory per hash, in KiB."
    )
    argon2_parallelism: int = Field(4, ge=1, le=64, description="Argon2id lanes.")
    smtp_host: str | None = Field(
        None, description="SMTP server for mail; unset: mails are written to data/outbox/."
    )
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP port.")
    smtp_security: Literal["starttls", "tls", "none"] = Field(
        "starttls", description="STARTTLS after connecting, TLS from the start, or none."
    )
    smtp_username: str | None = Field(None, description="SMTP login name, if it needs one.")
    smtp_password: str | None = Field(None, description="SMTP password, if it needs one.")
    mail_from: str = Field(
        "LOACL <loacl@localhost>", description="Sender of verification and reset mails."
    )
    openai_api_key: str | None = Field(
        None, description="OpenAI API key; without it assistants answer with the demo provider."
    )
    openai_base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server, instead of OpenAI's."
    )
    chat_completions_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server for the chat_completions provider "
        "(default: OPENAI_BASE_URL).",
    )
    chat_completions_api_key: str | None = Field(
        None, description="Key for the chat_completions server (default: OPENAI_API_KEY)."
    )
    validate_models: bool = Field(
        True, description="Check an assistant's model with its provider when it is saved."
    )
    openai_store: bool = Field(
        False, description="Let OpenAI store responses (store=true); LOACL's log is the history."
    )
    provider_max_retries: int = Field(
        2, ge=0, le=10,
        description="Retries of a reply's request that failed before any text came (a 429, a "
        "5xx, a timeout; a retry-after is honoured while the reply's deadline allows it); "
        "each is told to the visitor as a `retrying` status frame."
    )
    provider_read_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds to wait for the provider's next chunk."
    )
    # A reply holds its slot for the seconds it streams, so a busy shop with 50 visitors asking
    # at once needs about 50; the provider's own rate limits are met with its 429s, retried as
    # it says. The slot guards the process (one carries hundreds of streams, see the streaming
    # benchmark), not the provider bill: that is the per-visitor message rate's job.
    provider_concurrency: int = Field(
        64, ge=1, le=1000, description="Answers one widget may stream at the same time."
    )
    context_chars: int = Field(
        48_000, ge=1000, description="History sent with each turn, in characters (oldest first "
        "dropped)."
    )
    preview_messages_per_minute: int = Field(
        20, ge=1, le=600, description="Messages an owner may send per minute to the console's "
        "preview of an assistant (replies that are not stored, from the provider all the same)."
    )
    max_message_chars: int = Field(
        4000, ge=1, le=100_000, description="Longest message a visitor may send."
    )
    demo_delay: float = Field(
        0.02, ge=0, le=5, description="Seconds between pieces of the demo provider's answer."
    )
    shutdown_seconds: float = Field(
        10.0, gt=0, le=600, description="On SIGTERM, replies in flight end as interrupted, "
        "every visitor gets a final frame, and the server exits within this many seconds."
    )
    reply_deadline_seconds: float = Field(
        120.0, ge=1, le=3600, description="A reply not finished within this many seconds ends "
        "as failed (provider_unavailable)."
    )
    waiting_notice_seconds: float = Field(
        5.0, gt=0, le=600, description="Visitors waiting this long for a reply's first text get "
        "a `waiting` status frame."
    )
    tool_rounds: int = Field(
        5, ge=1, le=50, description="Rounds of tool calls in one reply: after this many the "
        "model is asked to answer without tools, and further calls are not made."
    )
    tool_output_bytes: int = Field(
        65536, ge=256, le=4_194_304, description="The largest answer a tool's endpoint may "
        "give (bytes); a longer one goes to the model as a `too_large` error."
    )
    tools_allow_private_networks: bool = Field(
        False, description="Let tools call loopback, private, link-local and other internal "
        "addresses (refused by default: a tool URL must not reach into the server's network). "
        "Also lets them use plain http. The cloud metadata address stays refused."
    )
    knowledge_max_upload_size: int = Field(
        20 * 1024 * 1024, ge=1, le=1024 * 1024 * 1024, description="Largest knowledge "
        "document an owner may upload (bytes): PDF, Word (.docx), Markdown, HTML or text."
    )
    knowledge_chunk_chars: int = Field(
        1200, ge=200, le=20_000, description="Knowledge documents are cut into passages of "
        "about this many characters, searched and cited one by one."
    )
    knowledge_chunk_overlap: int = Field(
        200, ge=0, le=5_000, description="Characters each passage repeats of the one before, "
        "so that a sentence cut in two is whole in one of them."
    )
    knowledge_results: int = Field(
        5, ge=1, le=50, description="Passages the `file_search` tool gives the model per search."
    )
    knowledge_remote_attempts: int = Field(
        4, ge=1, le=20, description="Knowledge kept at OpenAI: tries of each upload, vector "
        "store change or deletion while OpenAI fails (a 5xx, a timeout, a 429) before the "
        "document is marked failed with the reason."
    )
    knowledge_remote_retry_seconds: float = Field(
        5.0, ge=0, le=600, description="Knowledge kept at OpenAI: the pause before the first "
        "retry, doubled at each next one."
    )
    knowledge_remote_delete_retry_seconds: float = Field(
        60.0, ge=0.01, le=86_400, description="Knowledge kept at OpenAI: a deleted document's "
        "file that OpenAI failed to delete (after every try) is tried again after this long, "
        "the pause doubled at each next failure up to "
        "`knowledge_remote_delete_retry_max_seconds`, and at each start."
    )
    knowledge_remote_delete_retry_max_seconds: float = Field(
        3600.0, ge=0.01, le=86_400, description="Knowledge kept at OpenAI: the longest pause "
        "between two tries of deleting a deleted document's file."
    )
    knowledge_remote_poll_seconds: float = Field(
        2.0, ge=0.01, le=60, description="Knowledge kept at OpenAI: how often a document OpenAI "
        "is still reading is asked about."
    )
    knowledge_remote_timeout_seconds: float = Field(
        900.0, ge=1, le=86_400, description="Knowledge kept at OpenAI: a document still being "
        "read after this long is marked failed."
    )
    embedding_model: str | None = Field(
        None, description="The provider's embedding model (`/v1/embeddings`, such as "
        "`text-embedding-3-small`): with one, knowledge passages are also ranked by meaning "
        "(sqlite-vec), fused with full-text ranking; without one, full-text (BM25) alone."
    )
    # A quarter of a second: at 20 tokens/s a 50 ms window made nearly every token an event of
    # its own, the largest share of the CPU per streamed token. Visitors get every token at
    # once all the same; only a crash can lose what streamed within the last window.
    flush_interval_ms: int = Field(
        250, ge=0, le=5000, description="Streamed text is written to the log once per window."
    )
    ws_coalesce_ms: int = Field(
        5, ge=0, le=1000, description="A streaming WebSocket gets a reply's new text at most "
        "once per window, in one frame; 0 sends each piece as it arrives."
    )
    typing_interval_seconds: float = Field(
        2.0, gt=0, le=600, description="Typing indicators (visitor to team, member to visitor) "
        "are passed on at most once per this many seconds per person and conversation; a "
        "member's `POST .../typing` sooner is refused with 429."
    )
    handoff_mail_minutes: int = Field(
        15, ge=0, le=10_080, description="When a conversation starts waiting for a person, the "
        "members of its workspace get a mail, at most once per conversation per this many "
        "minutes (asking again within them sends none); 0: no such mails."
    )
    handoff_mail_personal: bool = Field(
        False, description="Whether that mail quotes the visitor's last message and the reason "
        "given for the handoff. Off by default: a mail leaves the server for mailboxes that an "
        "erasure cannot reach, so it names the widget and links to the conversation instead."
    )
    ws_ping_seconds: float = Field(
        20.0, gt=0, le=600, description="Seconds between pings on a streaming WebSocket."
    )
    ws_idle_seconds: float = Field(
        300.0, gt=0, le=86_400, description="A WebSocket with no frames from its visitor for this "
        "long (and no reply streaming) is closed."
    )
    # Unset: on only while no OPENAI_API_KEY is configured, so that the demo never answers
    # strangers at the operator's cost unless the operator says so.
    demo_widget: bool | None = Field(
        None, description="Keep a demo assistant and widget for the home page (created at "
        "start-up, embeddable from this server's own origin only); unset: on only while no "
        "OPENAI_API_KEY is set. Always under the demo budgets below."
    )
    # A demo reply is a few hundred tokens: about a hundred replies a day for people trying it,
    # a few cents with a small model.
    demo_daily_tokens: int = Field(
        50_000, ge=1, description="The demo widget's token budget per UTC day."
    )
    demo_monthly_tokens: int = Field(
        500_000, ge=1, description="The demo widget's token budget per UTC month."
    )
    max_upload_size: int = Field(
        5 * 1024 * 1024, ge=1, description="Largest file a visitor may upload, in bytes."
    )
    allowed_file_types: list[Literal["pdf", "txt", "doc", "docx"]] = Field(
        ["pdf", "txt", "doc", "docx"],
        description="File types visitors may upload (JSON list or comma-separated).",
    )
    # -- visitor abuse limits ---------------------------------------------------------------
    # Counted in memory per client address (``client_ip``) and per visitor, across the widgets
    # of this server; a restart forgets them. They damp scripts; the bill itself is guarded by
    # the budgets below, which are counted from the log. 0 turns a limit off.
    #
    # A browser keeps its visitor token for 30 days and reuses it, so a person starts one
    # session; 30 an hour leaves room for an office or school behind one address and stops a
    # script that wants thousands.
    sessions_per_ip_hour: int = Field(
        30, ge=0, description="New anonymous visitor sessions one address may start per hour."
    )
    # Three visitors at the widget's default of 10 a minute, from one address: new sessions no
    # longer multiply what one address may ask.
    messages_per_ip_minute: int = Field(
        30, ge=0, description="Messages one address may send per minute, over all its "
        "sessions (each visitor also has the widget's messages_per_minute)."
    )
    # A long support chat is a few dozen messages.
    messages_per_visitor_day: int = Field(
        200, ge=0, description="Messages one visitor may send per day (24 hours)."
    )
    messages_per_ip_day: int = Field(
        1000, ge=0, description="Messages one address may send per day (24 hours)."
    )
    # A visitor attaches a document or two to a question; uploads stay in the database for
    # good, so a day's worth per address is bounded in count and in bytes.
    uploads_per_visitor_day: int = Field(
        10, ge=0, description="Files one visitor may upload per day (24 hours)."
    )
    upload_bytes_per_visitor_day: int = Field(
        20 * 1024 * 1024, ge=0, description="Bytes one visitor may upload per day."
    )
    uploads_per_ip_day: int = Field(
        50, ge=0, description="Files one address may upload per day (24 hours)."
    )
    upload_bytes_per_ip_day: int = Field(
        100 * 1024 * 1024, ge=0, description="Bytes one address may upload per day."
    )
    # A socket per open tab: eight tabs of one visitor, and a busy office behind one address.
    sockets_per_visitor: int = Field(
        8, ge=0, description="Streaming WebSockets one visitor token may hold open at once."
    )
    sockets_per_ip: int = Field(
        64, ge=0, description="Streaming WebSockets one address may hold open at once."
    )
    # Each conversation has one reply at a time; an address with many sessions could hold
    # many of a widget's provider_concurrency slots and lock everyone else out.
    replies_per_ip: int = Field(
        4, ge=0, description="Replies one address may have streaming at once from one widget "
        "(of its provider_concurrency)."
    )
    # -- budgets ----------------------------------------------------------------------------
    # Per widget, per UTC day and month, enforced before each call to the provider; a widget
    # may set its own. With gpt-4.1-mini, 2 million tokens are about $1-3: room for hundreds
    # of conversations a day, and a cap on what a script can spend.
    budget_daily_tokens: int = Field(
        2_000_000, ge=0, description="Tokens (input and output) a widget may use per UTC day, "
        "unless the widget sets its own; 0: no limit."
    )
    budget_monthly_tokens: int = Field(
        30_000_000, ge=0, description="Tokens a widget may use per UTC month, unless the "
        "widget sets its own; 0: no limit."
    )
    budget_daily_cost: float = Field(
        10.0, ge=0, description="Estimated cost (US dollars, from model_prices) a widget may "
        "reach per UTC day, unless the widget sets its own; 0: no limit."
    )
    budget_monthly_cost: float = Field(
        100.0, ge=0, description="Estimated cost a widget may reach per UTC month, unless the "
        "widget sets its own; 0: no limit."
    )
    budget_warn_percent: int = Field(
        80, ge=1, le=99, description="The owner gets a mail when a budget reaches this share, "
        "and another when it is used up (once per period)."
    )
    model_prices: dict[str, ModelPrice] = Field(
        default_factory=lambda: dict(MODEL_PRICES),
        description="US dollars per million input and output tokens, per model (a dated "
        "snapshot such as gpt-4.1-2025-04-14 uses its model's price); a model not listed "
        "counts toward token budgets only.",
    )

    replica_url: str | None = Field(
        None, description="Where Litestream replicates the database: `file:///folder`, "
        "`s3://bucket/path` (`?endpoint=URL&region=R` for S3-compatible stores), "
        "`gs://bucket/path` or `abs://account@container/path`; credentials only from the "
        "environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...). Unset: no replica.",
    )
    under_litestream: bool = Field(
        False, description="Set (1) when Litestream runs `loacl serve` itself (`litestream "
        "replicate -exec`, as the container does): the server then starts no Litestream of "
        "its own.",
    )

    @field_validator("replica_url")
    @classmethod
    def _replica_url(cls, value: str | None) -> str | None:
        from loacl.store.replica.urls import check_url

        return None if value is None else check_url(value)

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            if entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, a network or *") from None
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return [host.strip().lower() for host in value if host.strip()]

    retention_check_minutes: float = Field(
        10, ge=0, description="How often a running server erases conversations older than "
        "their widget's `retention_days`, a few at a time; 0 turns it off."
    )
    retention_batch: int = Field(
        20, ge=1, le=1000, description="Conversations erased in one step of the retention job; "
        "visitors' writes go between steps."
    )

    metrics_enabled: bool = Field(
        True, description="Count Prometheus metrics (served only as `metrics_token` and "
        "`metrics_listen` say); false: nothing is counted."
    )
    metrics_token: str | None = Field(
        None, min_length=16, description="The bearer token `GET /metrics` wants (at least 16 "
        "characters). Unset: `/metrics` answers 404 on the main address.",
    )
    metrics_listen: str | None = Field(
        None, pattern=r"^[^\s:]*:\d{1,5}$", description="`HOST:PORT` of a separate listener "
        "that serves the metrics to anyone who reaches it, such as `127.0.0.1:9464` (keep it "
        "off public networks). Unset: none.",
    )
    metrics_max_widgets: int = Field(
        500, ge=1, le=100_000, description="Widgets with metrics of their own (tokens, cost); "
        "beyond that they are counted together as `other`, so the label set stays bounded.",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="OpenTelemetry collector (OTLP over HTTP, such as "
        "`http://collector:4318`): spans per request, reply, provider call and commit are "
        "sent there. Unset: no traces, at no cost.",
    )

    outbound_allow_private: bool = Field(
        False, description="Let webhooks reach private, loopback and link-local addresses "
        "(an endpoint on the same network). Off: refused. The cloud metadata address is refused "
        "either way.",
    )
    outbound_allow_http: bool = Field(
        False, description="Let webhooks use plain `http://` URLs. Off: `https://` only.",
    )
    outbound_timeout_seconds: float = Field(
        10, gt=0, le=120, description="How long one webhook delivery may take, connection "
        "and answer together.",
    )
    webhook_retry_hours: float = Field(
        24, gt=0, le=24 * 7, description="How long a webhook delivery is retried (exponential "
        "backoff with jitter) before it is given up.",
    )
    webhook_retry_base_seconds: float = Field(
        5, gt=0, le=3600, description="The first retry's delay; each next one doubles it, up "
        "to an hour.",
    )
    webhook_concurrency: int = Field(
        64, ge=1, le=256, description="Webhook deliveries sent at once (across endpoints; one "
        "at a time per conversation, in order). Deliveries beyond it wait their turn: at 16, "
        "a burst of conversations queued for a second or more.",
    )
    webhook_disable_after: int = Field(
        30, ge=1, le=10_000, description="Failed deliveries in a row after which an endpoint "
        "is disabled and its owner told by mail.",
    )

    @field_validator("master_key")
    @classmethod
    def _master_key(cls, value: str | None) -> str | None:
        if value is not None:
            parse_master_keys(value)
        return value

    @property
    def postgres_url(self) -> str | None:
        """The PostgreSQL log's URL, or None when the log is a SQLite file."""
        return self.database_url if self.database_url.startswith("postgres") else None

    @property
    def database_path(self) -> Path:
        """The SQLite file this instance reads and writes: the log itself, or with a
        PostgreSQL log, this instance's copy of it."""
        from loacl.store.sqlite import database_path

        if self.postgres_url is not None:
            return self.instance_database or self.data_dir / "instance.db"
        return database_path(self.database_url)


def env_name(key: str) -> str:
    return ENV_NAMES.get(key, f"LOACL_{key.upper()}")


def _from_env(key: str, raw: str) -> Any:
    annotation = Settings.model_fields[key].annotation
    if str(annotation).startswith("dict"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise SettingsError(f"{env_name(key)}: expected a JSON object, got {raw!r}") from None
    if str(annotation).startswith("list"):
        raw = raw.strip()
        if raw.startswith("["):
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                raise SettingsError(
                    f"{env_name(key)}: expected a JSON list or comma-separated names, got {raw!r}"
                ) from None
        return [part.strip() for part in raw.split(",") if part.strip()]
    if raw == "" and Settings.model_fields[key].default is None:
        return None
    return raw


def load_settings(
    config: Path | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = config or (Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None)
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise SettingsError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
        for key, value in data.items():
            if key not in Settings.model_fields:
                raise SettingsError(f"{path}: unknown key {key!r}")
            values[key] = value
            sources[key] = f"{key} in {path}"
    for key in Settings.model_fields:
        name = env_name(key)
        if name in env:
            values[key] = _from_env(key, env[name])
            sources[key] = f"environment variable {name}"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = str(error["loc"][0]) if error["loc"] else "?"
            where = sources.get(key, key)
            # A replica URL with user@ may hold a password (refused, and not repeated).
            hidden = key in SECRET_KEYS or (
                key == "replica_url" and "@" in str(error.get("input"))
            )
            shown = "(hidden)" if hidden else repr(error.get("input"))
            problems.append(f"{where}: {error['msg']} (got {shown})")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None


def jwt_secret(settings: Settings) -> str:
    """The configured key, or one generated once and kept in the data folder (mode 0600)."""
    if settings.jwt_secret_key:
        return settings.jwt_secret_key
    path = settings.data_dir / "jwt_secret"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    private_folder(settings.data_dir)
    # Written whole to a private temporary file, then linked into place: a process starting at
    # the same moment sees either no file or the complete key, never an empty one.
    partial = path.with_name(f".jwt_secret.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48) + "\n")
    try:
        os.link(partial, path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        partial.unlink()
    return path.read_text().strip()


def parse_master_keys(text: str) -> list[bytes]:
    """Master keys written as base64 (standard or URL-safe), separated by commas or lines."""
    keys = []
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            key = base64.urlsafe_b64decode(part.replace("+", "-").replace("/", "_") + "==")
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ValueError("a master key is 32 bytes written in base64 (44 characters)")
        keys.append(key)
    if not keys:
        raise ValueError("no master key given")
    return keys


def format_master_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def master_keys(settings: Settings, *, create: bool = True) -> list[bytes]:
    """The master keys, the one that seals first: from ``master_key``, or from the data
    folder's ``master_key`` file, generated once (mode 0600) as the JWT secret is (unless not
    ``create``: a command that only reads makes none)."""
    if settings.master_key:
        return parse_master_keys(settings.master_key)
    path = settings.data_dir / MASTER_KEY_FILE
    try:
        return parse_master_keys(path.read_text())
    except FileNotFoundError:
        if not create:
            raise
    write_master_keys(settings, [secrets.token_bytes(32)], create=True)
    return parse_master_keys(path.read_text())


def write_master_keys(settings: Settings, keys: list[bytes], *, create: bool = False) -> Path:
    """Write the data folder's master key file, whole or not at all (mode 0600). With
    ``create`` an existing file is kept: a process starting at the same moment made it first."""
    private_folder(settings.data_dir)
    path = settings.data_dir / MASTER_KEY_FILE
    partial = path.with_name(f".{MASTER_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("".join(format_master_key(key) + "\n" for key in keys))
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if create:
            # Another process made it first: theirs is kept.
            with contextlib.suppress(FileExistsError):
                os.link(partial, path)
        else:
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def settings_table() -> str:
    """The README's configuration table, generated from the fields above."""
    lines = [
        "| Environment variable | `loacl.toml` key | Default | Meaning |",
        "| --- | --- | --- | --- |",
    ]
    for key, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            default = str(default)
        if isinstance(default, dict):
            shown = "(a table: see `loacl.toml`)"
        else:
            shown = "(unset)" if default is None else f"`{json.dumps(default)}`"
        lines.append(f"| `{env_name(key)}` | `{key}` | {shown} | {field.description} |")
    return "\n".join(lines)
