"""The OpenAI test server, driven by the real ``openai`` SDK over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.responses import (
    FunctionToolParam,
    ResponseFunctionToolCall,
    ResponseStreamEvent,
)

from loacl.openai_testserver import (
    Cut,
    ErrorEvent,
    Failed,
    FunctionCall,
    HttpError,
    OpenAITestServer,
    SearchResult,
    Stall,
    default_reply,
    parse_args,
    running,
    split_deltas,
)

MODEL = "gpt-fake-1"
KEY = "test"
REPLY = "Scripted replies arrive in many small pieces, and they join up again exactly."
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def server() -> OpenAITestServer:
    return OpenAITestServer()


@pytest.fixture
def root(server: OpenAITestServer) -> Iterator[str]:
    with running(server) as url:
        yield url


@pytest.fixture
def base_url(root: str) -> str:
    return f"{root}/v1"


@pytest.fixture
def client(base_url: str) -> Iterator[OpenAI]:
    # No retries unless a test asks: each scripted turn then maps to one request. The timeout
    # only bounds a broken test; no assertion depends on it.
    with OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=10) as sync_client:
        yield sync_client


@pytest.fixture
async def aclient(base_url: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=base_url, api_key=KEY, max_retries=0, timeout=10
    ) as async_client:
        yield async_client


async def _events(client: AsyncOpenAI, **kwargs: Any) -> list[ResponseStreamEvent]:
    stream = await client.responses.create(model=MODEL, input="hi", stream=True, **kwargs)
    return [event async for event in stream]


async def _collect_until_error(client: AsyncOpenAI, into: list[ResponseStreamEvent]) -> None:
    """Iterate a stream into ``into``, so a test can inspect what came before an exception."""
    stream = await client.responses.create(model=MODEL, input="hi", stream=True)
    async for event in stream:
        into.append(event)


def _deltas(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# ---- reply text


@pytest.mark.parametrize(
    "text", ["", "a", "Hello there", "  leading", "trailing  ", "a\nb\n\n", "x" * 40 + " y"]
)
def test_split_deltas_join_back_to_the_text(text: str) -> None:
    pieces = split_deltas(text)
    assert "".join(pieces) == text
    assert all(len(piece.strip()) <= 6 for piece in pieces)


def test_default_reply_echoes_or_mentions_the_user_text() -> None:
    assert default_reply("echo:Hi there") == "Hi there"
    sentence = default_reply("What are your opening hours?", ["menu.pdf"])
    assert "What are your opening hours?" in sentence
    assert "menu.pdf" in sentence


# ---- Responses API


def test_responses_json_reply_and_recorded_request(
    client: OpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY)
    response = client.responses.create(
        model=MODEL,
        input="hi",
        instructions="Be brief.",
        store=False,
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=64,
        tools=[],
    )
    assert response.output_text == REPLY
    assert response.status == "completed"
    assert response.instructions == "Be brief."
    assert response.usage is not None
    assert response.usage.output_tokens == len(split_deltas(REPLY))
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response._request_id is not None and response._request_id.startswith("req_")
    [sent] = server.requests_to("responses")
    assert sent.json["store"] is False
    assert sent.json["instructions"] == "Be brief."
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert server.pending == []


async def test_responses_stream_sends_the_full_event_sequence(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY)
    events = await _events(aclient)
    deltas = len(split_deltas(REPLY))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert deltas > 5
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert _deltas(events) == REPLY
    created, completed = events[0], events[-1]
    assert created.type == "response.created"
    assert completed.type == "response.completed"
    assert completed.response.output_text == REPLY
    assert completed.response.usage is not None
    assert completed.response.id == created.response.id


async def test_responses_stream_helper_gives_the_final_response(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    # A per-turn token delay exercises the pacing path; the outcome must not change.
    server.script(REPLY, token_delay=0.001)
    async with aclient.responses.stream(model=MODEL, input="hi") as stream:
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        final = await stream.get_final_response()
    assert text == REPLY
    assert final.output_text == REPLY


def test_history_and_files_are_accepted_and_recorded(
    client: OpenAI, server: OpenAITestServer
) -> None:
    uploaded = client.files.create(
        file=("menu.pdf", b"%PDF-1.4 menu", "application/pdf"), purpose="user_data"
    )
    history: Any = [
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Hi! How can I help?"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_file", "file_id": uploaded.id},
                {"type": "input_text", "text": "What is on the menu?"},
            ],
        },
    ]
    response = client.responses.create(model=MODEL, input=history, store=False)
    assert response.output_text == default_reply("What is on the menu?", ["menu.pdf"])
    assert server.requests_to("responses")[0].json["input"] == history


def test_echo_prefix_answers_the_text(client: OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="echo:Hi there")
    assert response.output_text == "Hi there"


def test_max_output_tokens_ends_incomplete(client: OpenAI, server: OpenAITestServer) -> None:
    server.script("word " * 40)
    response = client.responses.create(model=MODEL, input="hi", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "".join(split_deltas("word " * 40)[:16])


def test_invalid_requests_are_refused_like_the_real_api(client: OpenAI) -> None:
    wrong_part: Any = [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]
    with pytest.raises(openai.BadRequestError) as bad_part:
        client.responses.create(model=MODEL, input=wrong_part)
    assert bad_part.value.param == "input[0].content[0]"
    assert bad_part.value.code == "invalid_value"

    with pytest.raises(openai.BadRequestError) as bad_model:
        client.responses.create(model="no-such-model", input="hi")
    assert bad_model.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as too_few:
        client.responses.create(model=MODEL, input="hi", max_output_tokens=5)
    assert too_few.value.code == "integer_below_min_value"


# ---- Chat Completions


async def test_chat_stream_ends_with_finish_reason_usage_and_done(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY)
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(split_deltas(REPLY))


def test_chat_stream_is_chunked_sse_ending_in_done(root: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "echo:a b"}], "stream": True}
    with (
        httpx.Client(base_url=root, headers={"authorization": f"Bearer {KEY}"}, timeout=10) as raw,
        raw.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        frames = [line for line in response.iter_lines() if line]
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("req_")
    assert frames[-1] == "data: [DONE]"
    assert all(frame.startswith("data: ") for frame in frames)


def test_chat_json_reply(client: OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "echo:plain answer"}]
    )
    assert completion.choices[0].message.content == "plain answer"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None


def test_scripts_can_target_one_endpoint(client: OpenAI, server: OpenAITestServer) -> None:
    server.script("for chat only", endpoint="chat")
    server.script(faults=[HttpError(status=503)], endpoint="models")
    assert client.responses.create(model=MODEL, input="echo:default").output_text == "default"
    with pytest.raises(openai.InternalServerError):
        client.models.retrieve(MODEL)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert chat.choices[0].message.content == "for chat only"
    assert server.pending == []


# ---- models, files, auth


def test_models_known_unknown_and_list(client: OpenAI) -> None:
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    assert model.object == "model"
    assert client.models.retrieve("gpt-fake-retiring").shutdown_date == "2026-12-31"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-nope")
    assert missing.value.code == "model_not_found"
    assert MODEL in [m.id for m in client.models.list()]


def test_files_are_kept_in_memory(client: OpenAI, server: OpenAITestServer) -> None:
    data = b"name,price\ncoffee,3\n"
    created = client.files.create(file=("prices.csv", data, "text/csv"), purpose="assistants")
    assert created.id.startswith("file-")
    assert created.bytes == len(data)
    assert server.file_bytes(created.id) == data
    assert client.files.retrieve(created.id).filename == "prices.csv"
    assert client.files.content(created.id).read() == data
    assert server.requests_to("files")[0].form == {"purpose": "assistants", "file": "prices.csv"}
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-missing")


def test_missing_key_gets_the_real_error_object(root: str) -> None:
    response = httpx.post(f"{root}/v1/responses", json={"model": MODEL, "input": "hi"})
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_a_configured_key_is_enforced() -> None:
    server = OpenAITestServer(api_key="sk-right-key")
    with (
        running(server) as root,
        OpenAI(base_url=f"{root}/v1", api_key="sk-wrong-key", max_retries=0, timeout=10) as wrong,
    ):
        with pytest.raises(openai.AuthenticationError) as refused:
            wrong.models.retrieve(MODEL)
        assert refused.value.code == "invalid_api_key"
        right = wrong.with_options(api_key="sk-right-key")
        assert right.models.retrieve(MODEL).id == MODEL


def test_unknown_route_answers_an_error_object(root: str) -> None:
    response = httpx.get(f"{root}/v1/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (GET /v1/nowhere)"


# ---- HTTP faults


@pytest.mark.parametrize("delay", [{"retry_after": 0.01}, {"retry_after_ms": 10}])
def test_429_is_retried_after_the_server_delay(
    client: OpenAI, server: OpenAITestServer, delay: dict[str, Any]
) -> None:
    server.script(faults=[HttpError(status=429, **delay)])
    server.script("after the retry")
    response = client.with_options(max_retries=2).responses.create(model=MODEL, input="hi")
    assert response.output_text == "after the retry"
    sent = server.requests_to("responses")
    assert [r.headers["x-stainless-retry-count"] for r in sent] == ["0", "1"]


def test_429_error_object_and_headers(root: str, server: OpenAITestServer) -> None:
    server.script(
        faults=[HttpError(status=429, retry_after=1, retry_after_ms=250, should_retry=True)]
    )
    response = httpx.post(
        f"{root}/v1/responses",
        json={"model": MODEL, "input": "hi"},
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.headers["retry-after-ms"] == "250"
    assert response.headers["x-should-retry"] == "true"
    assert response.json() == {
        "error": {
            "message": "Rate limit reached for requests. Please try again later.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_x_should_retry_false_stops_sdk_retries(client: OpenAI, server: OpenAITestServer) -> None:
    server.script(faults=[HttpError(status=429, retry_after=0.01, should_retry=False)])
    with pytest.raises(openai.RateLimitError) as limited:
        client.with_options(max_retries=2).responses.create(model=MODEL, input="hi")
    assert limited.value.code == "rate_limit_exceeded"
    assert len(server.requests_to("responses")) == 1


def test_500_raises_internal_server_error(client: OpenAI, server: OpenAITestServer) -> None:
    server.script(faults=[HttpError(status=500)])
    with pytest.raises(openai.InternalServerError) as failed:
        client.responses.create(model=MODEL, input="hi")
    assert failed.value.status_code == 500
    assert failed.value.type == "server_error"
    assert failed.value.request_id is not None


def test_stall_before_the_first_byte_times_out(client: OpenAI, server: OpenAITestServer) -> None:
    server.script(faults=[Stall(seconds=30)])
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.5).responses.create(model=MODEL, input="hi")
    assert len(server.requests_to("responses")) == 1


def test_cut_json_body_is_a_connection_error(client: OpenAI, server: OpenAITestServer) -> None:
    server.script(faults=[Cut()])
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model=MODEL, input="hi")


# ---- faults inside a stream


async def test_stall_between_deltas_times_out(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY, [Stall(seconds=30, after_deltas=2)])
    received: list[ResponseStreamEvent] = []
    with pytest.raises(openai.APITimeoutError):
        await _collect_until_error(aclient.with_options(timeout=3), received)
    assert _deltas(received) == "".join(split_deltas(REPLY)[:2])


async def test_cut_stream_raises_connection_error(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY, [Cut(after_deltas=3)])
    received: list[ResponseStreamEvent] = []
    # Chunked framing makes the drop visible: the SDK raises instead of ending quietly.
    with pytest.raises(openai.APIConnectionError) as dropped:
        await _collect_until_error(aclient, received)
    assert "incomplete chunked read" in str(dropped.value.__cause__)
    assert _deltas(received) == "".join(split_deltas(REPLY)[:3])
    assert "response.completed" not in [e.type for e in received]


async def test_cut_chat_stream_raises_connection_error(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY, [Cut(after_deltas=2)])
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIConnectionError):
        async for _chunk in stream:
            pass


async def test_nested_error_event_raises_api_error(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(
        REPLY,
        [ErrorEvent(after_deltas=1, nested=True, code="rate_limit_exceeded", message="Slow down.")],
    )
    received: list[ResponseStreamEvent] = []
    with pytest.raises(openai.APIError) as raised:
        await _collect_until_error(aclient, received)
    assert not isinstance(raised.value, openai.APIStatusError)
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.message == "Slow down."
    assert _deltas(received) == split_deltas(REPLY)[0]


async def test_flat_error_event_is_yielded_not_raised(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY, [ErrorEvent(after_deltas=2, code="server_error", message="Oops.")])
    events = await _events(aclient)
    last = events[-1]
    assert last.type == "error"
    assert (last.code, last.message) == ("server_error", "Oops.")
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_chat_error_chunk_raises_api_error(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(REPLY, [ErrorEvent(after_deltas=1, code="server_error")])
    stream = await aclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        async for _chunk in stream:
            pass
    assert raised.value.code == "server_error"


async def test_response_failed_event(aclient: AsyncOpenAI, server: OpenAITestServer) -> None:
    server.script(REPLY, [Failed(after_deltas=1, code="server_error", message="Model broke.")])
    events = await _events(aclient)
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.message == "Model broke."

    server.script(REPLY, [Failed(after_deltas=1)])
    async with aclient.responses.stream(model=MODEL, input="hi") as stream:
        types = [event.type async for event in stream]
        # The helper iterates quietly but has no final response to give.
        with pytest.raises(RuntimeError):
            await stream.get_final_response()
    assert types[-1] == "response.failed"


async def test_closing_the_server_ends_a_stalled_stream() -> None:
    server = OpenAITestServer()
    with ExitStack() as stack:
        root = stack.enter_context(running(server))
        server.script(REPLY, [Stall(seconds=120, after_deltas=1)])
        async with AsyncOpenAI(
            base_url=f"{root}/v1", api_key=KEY, max_retries=0, timeout=60
        ) as client:
            stream = await client.responses.create(model=MODEL, input="hi", stream=True)
            opened = [await stream.__anext__() for _ in range(5)]
            # Shutting down must not wait out the stall: the bounded join in running() would
            # raise if it did.
            await asyncio.wait_for(asyncio.to_thread(stack.close), timeout=30)
            rest = [event.type async for event in stream]
    assert opened[-1].type == "response.output_text.delta"
    assert "response.completed" not in rest


# ---- admin API and CLI


def test_admin_api_scripts_and_reports_over_http(root: str, client: OpenAI) -> None:
    with httpx.Client(base_url=root, timeout=10) as admin:
        queued = admin.post(
            "/_admin/script",
            json={
                "endpoint": "responses",
                "faults": [{"kind": "http_error", "status": 429, "retry_after": 0.01}],
            },
        )
        assert queued.json() == {"queued": 1}
        admin.post("/_admin/script", json={"reply_text": "scripted over HTTP"})
        response = client.with_options(max_retries=1).responses.create(
            model=MODEL, input="hi", store=False
        )
        assert response.output_text == "scripted over HTTP"

        recorded = admin.get("/_admin/requests").json()["data"]
        assert [r["path"] for r in recorded] == ["/v1/responses", "/v1/responses"]
        assert recorded[0]["json"]["store"] is False
        assert admin.get("/_admin/requests", params={"endpoint": "chat"}).json()["data"] == []

        bad = admin.post("/_admin/script", json={"faults": [{"kind": "meteor"}]})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "body"

        assert admin.post("/_admin/config", json={"token_delay": 0.002}).json() == {
            "token_delay": 0.002
        }
        assert admin.post("/_admin/reset").json() == {"ok": True}
        assert admin.get("/_admin/requests").json()["data"] == []


def test_cli_defaults() -> None:
    args = parse_args([])
    assert (args.host, args.port, args.token_delay, args.api_key) == ("127.0.0.1", 8089, 0.0, None)


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError("the test server printed no URL")
    return process.stdout.readline().strip()


def test_cli_prints_its_url_and_serves() -> None:
    command = [sys.executable, "-m", "loacl.openai_testserver", "--port", "0"]
    with subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            root = _first_line(process, timeout=30)
            with OpenAI(base_url=f"{root}/v1", api_key=KEY, timeout=10) as client:
                reply = client.responses.create(model=MODEL, input="echo:from a subprocess")
            assert reply.output_text == "from a subprocess"
        finally:
            process.terminate()
            _, log = process.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert process.returncode == -signal.SIGTERM
    assert "Finished server process" in log


# -- scripted function calls ------------------------------------------------------------------

CALLS = [FunctionCall(name="lookup", arguments='{"order": "A-1", "note": "Ünïcode"}',
                      call_id="call_a"),
         FunctionCall(name="weather", arguments='{"city": "Oslo"}')]
FUNCTION: FunctionToolParam = {"type": "function", "name": "lookup",
                               "parameters": {"type": "object"}, "strict": False}


def test_responses_stream_scripted_function_calls(client: OpenAI, server: OpenAITestServer
                                                  ) -> None:
    server.script("Checking.", calls=CALLS)
    with client.responses.stream(model=MODEL, input="hi", tools=[FUNCTION]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    assert kinds.count("response.function_call_arguments.done") == 2
    message, *rest = final.output
    assert message.type == "message" and final.output_text == "Checking."
    calls = [c for c in rest if isinstance(c, ResponseFunctionToolCall)]
    assert [c.name for c in calls] == ["lookup", "weather"]
    assert calls[0].call_id == "call_a"
    assert calls[0].arguments == CALLS[0].arguments
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(pieces) > 2 and "".join(pieces) == CALLS[0].arguments + CALLS[1].arguments


def test_responses_answer_function_outputs_and_check_their_calls(
    client: OpenAI, server: OpenAITestServer
) -> None:
    history: list[Any] = [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "call_a", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": '{"ok":true}'},
    ]
    answer = client.responses.create(model=MODEL, input=history, tools=[FUNCTION])
    assert answer.output_text == 'The tool answered: {"ok":true}'
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        client.responses.create(model=MODEL, input=[history[0], history[2]])


def test_chat_completions_stream_scripted_tool_calls(client: OpenAI, server: OpenAITestServer
                                                     ) -> None:
    server.script(calls=CALLS, endpoint="chat")
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    calls: dict[int, dict[str, str]] = {}
    reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            reasons.append(choice.finish_reason)
            for piece in choice.delta.tool_calls or []:
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] = piece.id or call["id"]
                if piece.function is not None:
                    call["name"] = piece.function.name or call["name"]
                    call["arguments"] += piece.function.arguments or ""
    assert reasons[-1] == "tool_calls"
    assert calls[0] == {"id": "call_a", "name": "lookup", "arguments": CALLS[0].arguments}
    assert calls[1]["name"] == "weather" and calls[1]["arguments"] == '{"city": "Oslo"}'
    follow_up = client.chat.completions.create(model=MODEL, messages=[
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_a", "type": "function",
             "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "42"},
    ])
    assert follow_up.choices[0].message.content == "The tool answered: 42"
    with pytest.raises(openai.BadRequestError, match="role 'tool'"):
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "hi"},
            {"role": "tool", "tool_call_id": "call_z", "content": "42"}])


async def test_a_cut_among_the_arguments_drops_the_stream(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.script(calls=CALLS[:1], faults=[Cut(after_deltas=2)])
    seen: list[ResponseStreamEvent] = []
    with pytest.raises(openai.APIConnectionError):
        await _collect_until_error(aclient, seen)
    kinds = [e.type for e in seen]
    assert kinds.count("response.function_call_arguments.delta") == 2
    assert "response.completed" not in kinds


def test_calls_can_be_scripted_over_http(client: OpenAI, root: str) -> None:
    queued = httpx.post(f"{root}/_admin/script", json={
        "calls": [{"name": "lookup", "arguments": "{}", "call_id": "call_h"}]})
    assert queued.json() == {"queued": 1}
    answer = client.responses.create(model=MODEL, input="hi")
    assert [(o.type, getattr(o, "call_id", None)) for o in answer.output] == [
        ("function_call", "call_h")]


# ---- vector stores and file_search

POLICY = (b"Refund policy\n\nCustomers may return any product within 30 days of delivery.\n\n"
          b"Shipping\n\nParcels leave Leeds every weekday.")


def test_files_are_listed_and_deleted(client: OpenAI, server: OpenAITestServer) -> None:
    created = client.files.create(file=("a.txt", b"alpha", "text/plain"), purpose="assistants")
    assert [f.id for f in client.files.list()] == [created.id]
    deleted = client.files.delete(created.id)
    assert deleted.deleted and deleted.id == created.id
    assert created.id not in server.file_ids
    with pytest.raises(openai.NotFoundError):
        client.files.delete(created.id)


def test_a_vector_store_file_moves_from_in_progress_to_completed(
    client: OpenAI, server: OpenAITestServer
) -> None:
    server.processing_reads = 2
    store = client.vector_stores.create(name="Shop", metadata={"k": "v"})
    assert store.id.startswith("vs_") and store.name == "Shop"
    assert store.file_counts.total == 0 and store.metadata == {"k": "v"}
    uploaded = client.files.create(file=("policy.txt", POLICY, "text/plain"),
                                   purpose="assistants")
    added = client.vector_stores.files.create(store.id, file_id=uploaded.id,
                                              attributes={"doc": "d1"})
    assert added.status == "in_progress" and added.vector_store_id == store.id
    assert added.attributes == {"doc": "d1"} and added.last_error is None
    seen = [client.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id).status
            for _ in range(3)]
    assert seen == ["in_progress", "completed", "completed"]
    assert client.vector_stores.retrieve(store.id).file_counts.completed == 1
    listed = client.vector_stores.files.list(store.id)
    assert [f.id for f in listed] == [uploaded.id]
    gone = client.vector_stores.files.delete(uploaded.id, vector_store_id=store.id)
    assert gone.deleted
    assert server.store_files(store.id) == []
    assert uploaded.id in server.file_ids  # the file itself stays until deleted
    assert client.vector_stores.delete(store.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(store.id)
    assert {r.endpoint for r in server.requests} >= {"files", "vector_stores"}


def test_a_scripted_failure_ends_the_file_failed_with_its_reason(
    client: OpenAI, server: OpenAITestServer
) -> None:
    server.processing_reads = 0
    server.file_failures["scan.pdf"] = ("unsupported_file", "The file has no text.")
    store = client.vector_stores.create(name="Shop")
    uploaded = client.files.create(file=("scan.pdf", b"%PDF-1.4", "application/pdf"),
                                   purpose="assistants")
    added = client.vector_stores.files.create(store.id, file_id=uploaded.id)
    assert added.status == "failed"
    assert added.last_error is not None and added.last_error.code == "unsupported_file"
    assert added.last_error.message == "The file has no text."
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.create(store.id, file_id="file-missing")


def test_vector_store_calls_take_scripted_http_faults(
    client: OpenAI, server: OpenAITestServer
) -> None:
    server.script(faults=[HttpError(status=503)], endpoint="vector_stores")
    with pytest.raises(openai.InternalServerError):
        client.vector_stores.create(name="Shop")
    assert client.vector_stores.create(name="Shop").name == "Shop"


async def test_file_search_streams_a_call_then_a_cited_answer(
    aclient: AsyncOpenAI, server: OpenAITestServer
) -> None:
    server.processing_reads = 0  # read at once
    store = await aclient.vector_stores.create(name="Shop")
    uploaded = await aclient.files.create(file=("policy.txt", POLICY, "text/plain"),
                                          purpose="assistants")
    await aclient.vector_stores.files.create(store.id, file_id=uploaded.id)
    server.script("You have 30 days.")
    tools: Any = [{"type": "file_search", "vector_store_ids": [store.id]}]
    async with aclient.responses.stream(
        model=MODEL, input="How many days to return a product?", tools=tools,
        include=["file_search_call.results"],
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds.index("response.file_search_call.completed") \
        < kinds.index("response.output_text.delta")
    assert "response.output_text.annotation.added" in kinds
    search, message = final.output
    assert search.type == "file_search_call" and search.status == "completed"
    assert search.results is not None
    assert search.results[0].file_id == uploaded.id
    assert "within 30 days" in (search.results[0].text or "")
    assert message.type == "message"
    part = message.content[0]
    assert part.type == "output_text" and part.text == "You have 30 days."
    (note,) = part.annotations
    assert note.type == "file_citation" and note.file_id == uploaded.id
    assert note.filename == "policy.txt"


def test_scripted_search_results_and_no_results_without_include(
    client: OpenAI, server: OpenAITestServer
) -> None:
    store = client.vector_stores.create(name="Shop")
    uploaded = client.files.create(file=("policy.txt", POLICY, "text/plain"),
                                   purpose="assistants")
    client.vector_stores.files.create(store.id, file_id=uploaded.id)
    client.vector_stores.files.retrieve(uploaded.id, vector_store_id=store.id)  # completed
    server.script("Leeds.", file_search=[SearchResult(filename="policy.txt", text="Leeds!")])
    answer = client.responses.create(
        model=MODEL, input="Where from?",
        tools=[{"type": "file_search", "vector_store_ids": [store.id]}])
    search, message = answer.output
    assert search.type == "file_search_call" and search.results is None
    assert message.type == "message" and message.content[0].type == "output_text"
    (note,) = message.content[0].annotations
    assert note.type == "file_citation" and note.file_id == uploaded.id
