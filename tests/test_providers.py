"""The providers, each driven with the real ``openai`` SDK over real HTTP against LOACL's own
OpenAI-compatible test server: what they send (instructions, history, store=false, tools, files)
and how every fault the server can inject becomes the code a visitor is told."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from loacl.domain.assistants import AssistantDefinition, ToolDefinition, handoff_tool
from loacl.domain.errors import LoaclError
from loacl.openai_testserver import (
    Cut,
    Endpoint,
    ErrorEvent,
    Failed,
    Fault,
    HttpError,
    Incomplete,
    OpenAITestServer,
    Stall,
    running,
    split_deltas,
)
from loacl.providers import client_for, provider_for
from loacl.providers.base import (
    Attachment,
    Provider,
    ProviderError,
    ReplyRequest,
    ReplyResult,
    Turn,
    trim_history,
)
from loacl.providers.demo import DemoProvider
from loacl.settings import Settings
from tests.live import OPEN_LIMITS

REPLY = "Scripted replies arrive in many small pieces, and they join up again exactly."
PIECES = split_deltas(REPLY)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def configured(tmp_path: Path, root: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'loacl.db'}",
        "data_dir": tmp_path / "data",
        "openai_api_key": "test",
        "openai_base_url": f"{root}/v1",
        # Generous: only the stall tests wait for it, and they set their own.
        "provider_read_timeout": 5.0,
        "provider_max_retries": 0,
        **OPEN_LIMITS,
    }
    return Settings(**(values | overrides))


def assistant(provider: str, **fields: Any) -> AssistantDefinition:
    return AssistantDefinition(
        name="Helper", provider=provider, model=fields.pop("model", "gpt-4o-mini"), **fields
    )


@dataclass
class Outcome:
    deltas: list[str] = field(default_factory=list)
    result: ReplyResult = field(default_factory=ReplyResult)
    error: ProviderError | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)


async def collect(provider: Provider, request: ReplyRequest) -> Outcome:
    outcome = Outcome()
    try:
        async for delta in provider.stream(request, outcome.result):
            outcome.deltas.append(delta)
    except ProviderError as exc:
        outcome.error = exc
    finally:
        await provider.aclose()
    return outcome


def ask(provider: str, text: str = "hello", **fields: Any) -> ReplyRequest:
    return ReplyRequest(assistant(provider, **fields), [Turn("user", text)])


BOTH = pytest.mark.parametrize("name", ["openai", "chat_completions"])
ENDPOINT: dict[str, Endpoint] = {"openai": "responses", "chat_completions": "chat"}

# -- what goes over the wire ------------------------------------------------------------------


async def test_responses_sends_instructions_history_and_store_false(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    server.script(REPLY)
    provider = provider_for(configured(tmp_path, root), "openai")
    request = ReplyRequest(
        assistant("openai", instructions="Answer in French.", temperature=0.3, top_p=0.9,
                  max_output_tokens=500),
        [Turn("user", "first question"), Turn("assistant", "first answer"),
         Turn("user", "second question")],
    )
    outcome = await collect(provider, request)
    assert outcome.error is None
    assert outcome.deltas == PIECES  # streamed piece by piece, not at the end
    sent = server.requests_to("responses")
    assert len(sent) == 1
    body = sent[0].json
    assert body["model"] == "gpt-4o-mini"
    assert body["stream"] is True
    assert body["store"] is False
    assert body["instructions"] == "Answer in French."
    assert (body["temperature"], body["top_p"], body["max_output_tokens"]) == (0.3, 0.9, 500)
    assert "tools" not in body
    assert "previous_response_id" not in body and "conversation" not in body
    assert body["input"] == [
        {"role": "user", "content": [{"type": "input_text", "text": "first question"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "first answer"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "second question"}]},
    ]
    assert sent[0].headers["authorization"] == "Bearer test"
    assert outcome.result.request_id is not None
    assert outcome.result.request_id.startswith("resp_")
    assert outcome.result.output_tokens == len(PIECES)
    assert outcome.result.input_tokens > 0


async def test_responses_store_follows_the_setting(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    provider = provider_for(configured(tmp_path, root, openai_store=True), "openai")
    outcome = await collect(provider, ask("openai"))
    assert outcome.error is None
    assert server.requests_to("responses")[0].json["store"] is True


async def test_responses_file_search_carries_the_vector_stores(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    provider = provider_for(configured(tmp_path, root), "openai")
    outcome = await collect(
        provider, ask("openai", vector_store_ids=("vs_products", "vs_faq"))
    )
    assert outcome.error is None
    assert server.requests_to("responses")[0].json["tools"] == [
        {"type": "file_search", "vector_store_ids": ["vs_products", "vs_faq"]}
    ]


async def test_chat_completions_sends_system_history_and_options(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    server.script(REPLY)
    settings = configured(tmp_path, root, openai_base_url=None,
                          chat_completions_base_url=f"{root}/v1", openai_api_key=None)
    provider = provider_for(settings, "chat_completions")
    request = ReplyRequest(
        assistant("chat_completions", instructions="Be brief.", temperature=0.2,
                  max_output_tokens=300),
        [Turn("user", "q1"), Turn("assistant", "a1"), Turn("user", "q2")],
    )
    outcome = await collect(provider, request)
    assert outcome.error is None
    assert outcome.deltas == PIECES
    sent = server.requests_to("chat")
    assert len(sent) == 1 and not server.requests_to("responses")
    body = sent[0].json
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["max_tokens"]) == (0.2, 300)
    # A local server needs no key, but the SDK insists on sending one.
    assert sent[0].headers["authorization"] == "Bearer not-needed"
    assert outcome.result.request_id is not None
    assert outcome.result.request_id.startswith("chatcmpl-")
    assert outcome.result.output_tokens == len(PIECES)


async def test_openai_base_url_serves_chat_completions_too(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    provider = provider_for(configured(tmp_path, root), "chat_completions")
    outcome = await collect(provider, ask("chat_completions", "echo:pong"))
    assert (outcome.error, outcome.text) == (None, "pong")
    assert server.requests_to("chat")[0].headers["authorization"] == "Bearer test"


def test_providers_without_their_configuration_say_what_is_missing(tmp_path: Path) -> None:
    bare = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", data_dir=tmp_path)
    with pytest.raises(LoaclError, match="OPENAI_API_KEY") as no_key:
        client_for(bare, "openai")
    assert no_key.value.code == "provider_unavailable"
    with pytest.raises(LoaclError, match="CHAT_COMPLETIONS_BASE_URL") as no_url:
        client_for(bare, "chat_completions")
    assert no_url.value.code == "provider_unavailable"
    assert isinstance(provider_for(bare, "demo"), DemoProvider)


async def test_history_is_trimmed_to_the_budget_oldest_first(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    turns = [
        Turn("user" if i % 2 == 0 else "assistant", f"turn {i:02d} " + "x" * 290)
        for i in range(11)
    ]
    kept = trim_history(turns, 1000)
    # Three turns of 298 characters fit 1000; the newest is always kept and the history opens
    # with the visitor, so the dangling answer before it goes too.
    assert [t.text[:7] for t in kept] == ["turn 08", "turn 09", "turn 10"]
    assert trim_history(turns[-1:], 10) == turns[-1:]
    provider = provider_for(configured(tmp_path, root), "openai")
    outcome = await collect(provider, ReplyRequest(assistant("openai"), kept))
    assert outcome.error is None
    sent = server.requests_to("responses")[0].json["input"]
    assert [item["content"][0]["text"][:7] for item in sent] == ["turn 08", "turn 09", "turn 10"]
    assert sent[0]["role"] == "user"


def test_trimming_counts_inlined_text_files() -> None:
    big = Attachment("f1", "notes.txt", "txt", "text/plain", b"y" * 990)
    pdf = Attachment("f2", "a.pdf", "pdf", "application/pdf", PDF * 100)
    turns = [Turn("user", "old"), Turn("assistant", "answer"), Turn("user", "new", (big,))]
    assert trim_history(turns, 1000) == turns[2:]
    # A PDF goes as a file, not as text: it does not use the budget.
    turns = [Turn("user", "old"), Turn("assistant", "answer"), Turn("user", "new", (pdf,))]
    assert trim_history(turns, 1000) == turns


async def test_responses_uploads_a_file_once_and_sends_it_as_input_file(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    settings = configured(tmp_path, root)
    attachment = Attachment("F1", "manual.pdf", "pdf", "application/pdf", PDF)
    first = await collect(
        provider_for(settings, "openai"),
        ReplyRequest(assistant("openai"), [Turn("user", "read this", (attachment,))]),
    )
    assert first.error is None
    uploads = server.requests_to("files")
    assert len(uploads) == 1
    assert uploads[0].form == {"file": "manual.pdf", "purpose": "user_data"}
    provider_file_id = first.result.uploaded["F1"]
    assert server.file_bytes(provider_file_id) == PDF
    content = server.requests_to("responses")[0].json["input"][0]["content"]
    assert content == [
        {"type": "input_file", "file_id": provider_file_id},
        {"type": "input_text", "text": "read this"},
    ]
    assert first.text.endswith("Attached: manual.pdf.")  # the server found the file

    # The next turn knows the provider's id (from file.sent_to_provider) and uploads nothing.
    known = Attachment("F1", "manual.pdf", "pdf", "application/pdf", PDF, provider_file_id)
    second = await collect(
        provider_for(settings, "openai"),
        ReplyRequest(assistant("openai"), [
            Turn("user", "read this", (known,)), Turn("assistant", first.text),
            Turn("user", "and again"),
        ]),
    )
    assert second.error is None and second.result.uploaded == {}
    assert len(server.requests_to("files")) == 1
    assert server.requests_to("responses")[1].json["input"][0]["content"][0] == {
        "type": "input_file", "file_id": provider_file_id,
    }


async def test_chat_completions_inlines_text_files_and_refuses_others(
    server: OpenAITestServer, root: str, tmp_path: Path
) -> None:
    settings = configured(tmp_path, root)
    notes = Attachment("F1", "notes.txt", "txt", "text/plain", "Ünïcode notes\n".encode())
    outcome = await collect(
        provider_for(settings, "chat_completions"),
        ReplyRequest(assistant("chat_completions"), [Turn("user", "summarise", (notes,))]),
    )
    assert outcome.error is None
    assert server.requests_to("chat")[0].json["messages"] == [
        {"role": "user", "content": "summarise\n\n--- notes.txt ---\nÜnïcode notes\n"}
    ]
    pdf = Attachment("F2", "a.pdf", "pdf", "application/pdf", PDF)
    refused = await collect(
        provider_for(settings, "chat_completions"),
        ReplyRequest(assistant("chat_completions"), [Turn("user", "read", (pdf,))]),
    )
    assert refused.error is not None
    assert refused.error.code == "unsupported_file_for_provider"
    assert "a.pdf" in refused.error.message
    assert len(server.requests_to("chat")) == 1  # nothing was sent
    assert not server.requests_to("files")


async def test_demo_streams_a_labelled_answer_that_says_how_to_set_a_key() -> None:
    outcome = await collect(DemoProvider(0), ask("demo", "What are your hours?", model="demo"))
    assert outcome.error is None
    assert len(outcome.deltas) > 10  # streamed, piece by piece
    assert outcome.text.startswith("**Demo answer.**")
    assert "OPENAI_API_KEY" in outcome.text and "What are your hours?" in outcome.text
    assert outcome.result.request_id == "demo"


async def test_the_demo_tells_http_tools_and_the_handoff_apart() -> None:
    """An HTTP tool is POSTed to its URL by a real model; asking for a person is not."""
    order = ToolDefinition(type="http", name="order_status", url="https://shop.example/o")
    cases = [
        ((order,), ("`order_status`", "POSTs them signed", None)),
        ((handoff_tool(),), (None, None, "hand the conversation to a person")),
        ((order, handoff_tool()), ("`order_status`", "POSTs them signed",
                                   "hand the conversation to a person")),
    ]
    for tools, wanted in cases:
        request = replace(ask("demo", "hi", model="demo"), tools=tools)
        text = (await collect(DemoProvider(0), request)).text
        for part in wanted:
            if part is not None:
                assert part in text, (tools, text)
        if wanted[0] is None:
            assert "request_human" not in text and "POSTs" not in text, text


# -- faults -------------------------------------------------------------------------------------


# A provider sends the reply's request once and says whether asking again may work; the chat
# service retries (tests/test_chat.py, tests/test_stream.py), telling the visitor.

ONE_ATTEMPT: list[tuple[str, list[Fault], str, float | None, bool]] = [
    # id, faults, code, retry_after, retryable
    ("429-retry-after", [HttpError(status=429, retry_after=0.05)], "provider_rate_limited",
     0.05, True),
    ("429-retry-after-ms", [HttpError(status=429, retry_after_ms=250)], "provider_rate_limited",
     0.25, True),
    ("429-should-not-retry", [HttpError(status=429, should_retry=False)],
     "provider_rate_limited", None, False),
    ("500", [HttpError(status=500)], "provider_unavailable", None, True),
    ("503-retry-after", [HttpError(status=503, retry_after=2)], "provider_unavailable", 2,
     True),
    ("408", [HttpError(status=408)], "provider_unavailable", None, True),
    ("500-should-not-retry", [HttpError(status=500, should_retry=False)],
     "provider_unavailable", None, False),
    ("400", [HttpError(status=400, message="Bad thing.")], "provider_error", None, False),
]


@BOTH
@pytest.mark.parametrize(("faults", "code", "retry_after", "retryable"),
                         [case[1:] for case in ONE_ATTEMPT], ids=[c[0] for c in ONE_ATTEMPT])
async def test_a_refused_attempt_is_sent_once_and_says_whether_to_retry(
    server: OpenAITestServer, root: str, tmp_path: Path, name: str, faults: list[Fault],
    code: str, retry_after: float | None, retryable: bool,
) -> None:
    server.script(faults=faults)
    server.script(REPLY)  # not asked for: the provider itself does not retry
    provider = provider_for(configured(tmp_path, root, provider_max_retries=2), name)
    outcome = await collect(provider, ask(name))
    assert outcome.error is not None
    assert (outcome.error.code, outcome.error.retry_after, outcome.error.retryable) == (
        code, retry_after, retryable)
    assert outcome.deltas == []
    assert len(server.requests_to(ENDPOINT[name])) == 1
    assert len(server.pending) == 1


@BOTH
async def test_a_refused_request_is_provider_error_and_not_retried(
    server: OpenAITestServer, root: str, tmp_path: Path, name: str
) -> None:
    provider = provider_for(configured(tmp_path, root, provider_max_retries=2), name)
    outcome = await collect(provider, ask(name, model="no-such-model"))
    assert outcome.error is not None and outcome.error.code == "provider_error"
    assert "no-such-model" in outcome.error.message
    assert len(server.requests_to(ENDPOINT[name])) == 1


STREAM_FAULTS: list[tuple[str, Fault, str]] = [
    ("stall", Stall(seconds=30, after_deltas=3), "provider_unavailable"),
    ("cut", Cut(after_deltas=3), "provider_unavailable"),
    ("error-event", ErrorEvent(after_deltas=3), "provider_error"),
    ("error-event-nested", ErrorEvent(after_deltas=3, nested=True), "provider_error"),
    ("error-event-rate-limit",
     ErrorEvent(after_deltas=3, code="rate_limit_exceeded", message="Slow down."),
     "provider_rate_limited"),
    ("error-event-nested-rate-limit",
     ErrorEvent(after_deltas=3, code="rate_limit_exceeded", message="Slow down.", nested=True),
     "provider_rate_limited"),
    ("failed", Failed(after_deltas=3), "provider_error"),
    # Incomplete for a reason other than the output limit: a failure.
    ("incomplete-filtered", Incomplete(after_deltas=3, reason="content_filter"),
     "provider_error"),
]


@pytest.mark.parametrize(("fault", "code"), [(f, c) for _, f, c in STREAM_FAULTS],
                         ids=[i for i, _, _ in STREAM_FAULTS])
async def test_responses_stream_faults_keep_the_partial_text(
    server: OpenAITestServer, root: str, tmp_path: Path, fault: Fault, code: str
) -> None:
    server.script(REPLY, [fault])
    provider = provider_for(
        configured(tmp_path, root, provider_max_retries=2, provider_read_timeout=2), "openai"
    )
    outcome = await collect(provider, ask("openai"))
    assert outcome.error is not None, outcome.text
    assert outcome.error.code == code, outcome.error.message
    assert outcome.deltas == PIECES[:3]
    # A stream that has begun is never retried: the visitor already saw part of it.
    assert len(server.requests_to("responses")) == 1
    if isinstance(fault, ErrorEvent | Failed) and code == "provider_error":
        assert fault.message in outcome.error.message


CHAT_FAULTS: list[tuple[str, Fault, str]] = [
    ("stall", Stall(seconds=30, after_deltas=3), "provider_unavailable"),
    ("cut", Cut(after_deltas=3), "provider_unavailable"),
    ("error-chunk", ErrorEvent(after_deltas=3), "provider_error"),
    ("error-chunk-rate-limit",
     ErrorEvent(after_deltas=3, code="rate_limit_exceeded", message="Slow down."),
     "provider_rate_limited"),
    ("failed", Failed(after_deltas=3), "provider_error"),
]


@pytest.mark.parametrize(("fault", "code"), [(f, c) for _, f, c in CHAT_FAULTS],
                         ids=[i for i, _, _ in CHAT_FAULTS])
async def test_chat_completions_stream_faults_keep_the_partial_text(
    server: OpenAITestServer, root: str, tmp_path: Path, fault: Fault, code: str
) -> None:
    server.script(REPLY, [fault])
    provider = provider_for(
        configured(tmp_path, root, provider_max_retries=2, provider_read_timeout=2),
        "chat_completions",
    )
    outcome = await collect(provider, ask("chat_completions"))
    assert outcome.error is not None, outcome.text
    assert outcome.error.code == code, outcome.error.message
    assert outcome.deltas == PIECES[:3]
    assert len(server.requests_to("chat")) == 1


@BOTH
async def test_an_answer_cut_at_the_output_limit_ends_well_and_says_why(
    server: OpenAITestServer, root: str, tmp_path: Path, name: str
) -> None:
    # Responses: response.incomplete (max_output_tokens); Chat Completions: finish "length".
    server.script(REPLY, [Incomplete(after_deltas=3)])
    provider = provider_for(configured(tmp_path, root), name)
    outcome = await collect(provider, ask(name))
    assert outcome.error is None
    assert outcome.deltas == PIECES[:3]
    assert outcome.result.stop_reason == "max_output_tokens"


@BOTH
async def test_a_stall_before_the_first_byte_is_provider_unavailable(
    server: OpenAITestServer, root: str, tmp_path: Path, name: str
) -> None:
    server.script(faults=[Stall(seconds=30)])
    provider = provider_for(
        configured(tmp_path, root, provider_max_retries=1, provider_read_timeout=0.5), name
    )
    outcome = await collect(provider, ask(name))
    assert outcome.error is not None and outcome.error.code == "provider_unavailable"
    assert outcome.error.retryable  # nothing was shown: the chat service asks again
    assert outcome.deltas == []
    assert len(server.requests_to(ENDPOINT[name])) == 1


@BOTH
async def test_a_cut_before_any_text_is_provider_unavailable(
    server: OpenAITestServer, root: str, tmp_path: Path, name: str
) -> None:
    server.script(REPLY, [Cut(after_deltas=0)])
    provider = provider_for(configured(tmp_path, root), name)
    outcome = await collect(provider, ask(name))
    assert outcome.error is not None and outcome.error.code == "provider_unavailable"
    assert outcome.deltas == []


async def test_a_server_that_is_gone_is_provider_unavailable(tmp_path: Path) -> None:
    server = OpenAITestServer()
    with running(server) as url:
        pass  # the port is closed again
    provider = provider_for(configured(tmp_path, url), "openai")
    outcome = await collect(provider, ask("openai"))
    assert outcome.error is not None and outcome.error.code == "provider_unavailable"
