from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import pytest

from loacl import __version__
from loacl.cli import main
from loacl.domain import accounts
from loacl.domain.events import Event, Metadata
from loacl.settings import CONFIG_ENV, ENV_NAMES, Settings, write_master_keys
from loacl.store import eventstore
from loacl.store.eventstore import EventStore
from loacl.store.keys import Keyring, MasterKeys
from loacl.store.projections import default_projections
from tests.test_replay_catalog import MASTER, _live

Cli = Callable[..., tuple[int, str, str]]
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
JSON_KEYS = {"seq", "stream", "version", "type", "payload", "metadata", "recorded_at", "hash"}
WAIT = 30.0  # seconds: the bound on every wait for a subprocess


@pytest.fixture
def clean_env(chdir_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [CONFIG_ENV, *ENV_NAMES.values()]:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("LOACL_"):
            monkeypatch.delenv(name)
    return chdir_tmp


@pytest.fixture
def config(clean_env: Path, db_path: Path) -> Path:
    path = clean_env / "settings.toml"
    path.write_text(
        f'database_url = "sqlite:///{db_path}"\ndata_dir = "{clean_env / "data"}"\n'
    )
    return path


@pytest.fixture
def cli(config: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--config", str(config), *args])
        out, err = capsys.readouterr()
        return code, out, err

    yield run


def append(
    path: Path, *batches: tuple[str, list[Event]], index_lag: int = eventstore.INDEX_LAG
) -> None:
    """Append through the event store, from synchronous code (no expected versions)."""

    async def run() -> None:
        async with EventStore(path, default_projections(), index_lag=index_lag) as store:
            for stream, events in batches:
                await store.append(stream, events)

    asyncio.run(run())


def _register(n: int) -> tuple[str, list[Event]]:
    return f"user-u{n}", accounts.register(f"u{n}", f"u{n}@example.org", None, f"h{n}")


@pytest.fixture(params=[eventstore.INDEX_LAG, 4], ids=["unindexed", "indexed"])
def log(db_path: Path, request: pytest.FixtureRequest) -> Path:
    """25 events: u1..u10 registered, then per n in 1..5: verify un, start sn, refresh sn.
    Either all in the log's tail or, but for the last few, in the stream index."""
    batches = [_register(n) for n in range(1, 11)]
    for n in range(1, 6):
        batches.append((f"user-u{n}", [accounts.EmailVerified(user_id=f"u{n}")]))
        batches.append(
            (f"session-s{n}", accounts.start_session(f"s{n}", f"u{n}", f"t{n}", EXPIRES))
        )
        batches.append((f"session-s{n}", [accounts.SessionRefreshed(
            session_id=f"s{n}", previous_token_hash=f"t{n}", refresh_token_hash=f"t{n}b",
            expires_at=EXPIRES,
        )]))
    append(db_path, *batches, index_lag=request.param)
    return db_path


def rows(path: Path, where: str = "1", params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT seq, stream, version, type, schema_version, payload, metadata, "
            f"recorded_at, hash FROM events WHERE {where} ORDER BY seq", params
        ).fetchall()
    finally:
        conn.close()


def seqs(out: str) -> list[int]:
    return [int(line.split()[0]) for line in out.splitlines()]


# -- events tail ------------------------------------------------------------------------------


def test_tail_shows_the_last_twenty(log: Path, cli: Cli) -> None:
    code, out, err = cli("events", "tail")
    assert (code, err) == (0, "")
    assert seqs(out) == list(range(6, 26))
    first = out.splitlines()[0].split()
    row = rows(log, "seq = 6")[0]
    assert first[:5] == ["6", row[7][:23], "user.registered", "user-u6", "v1"]
    assert out.splitlines()[0].endswith('user_id="u6" email="u6@example.org" name=null '
                                        'password_hash="h6"')


def test_tail_limit(log: Path, cli: Cli) -> None:
    assert seqs(cli("events", "tail", "-n", "5")[1]) == [21, 22, 23, 24, 25]
    assert seqs(cli("events", "tail", "--limit", "40")[1]) == list(range(1, 26))
    assert cli("events", "tail", "-n", "0") == (0, "", "")
    assert cli("events", "tail", "-n", "0", "--type", "user.registered") == (0, "", "")


def test_tail_of_an_empty_log(cli: Cli) -> None:
    assert cli("events", "tail") == (0, "", "")
    assert cli("events", "tail", "--stream", "user-u1", "--json") == (0, "", "")


def test_tail_stream(log: Path, cli: Cli) -> None:
    code, out, _ = cli("events", "tail", "--stream", "session-s2")
    assert code == 0
    assert seqs(out) == [r[0] for r in rows(log, "stream = 'session-s2'")]
    assert len(seqs(out)) == 2
    assert all(" session-s2 " in line for line in out.splitlines())


def test_tail_type(log: Path, cli: Cli) -> None:
    code, out, _ = cli("events", "tail", "--type", "user.registered")
    assert code == 0
    # All ten, though most are older than the last twenty events of the log.
    assert seqs(out) == list(range(1, 11))
    assert seqs(cli("events", "tail", "--type", "user.registered", "-n", "3")[1]) == [8, 9, 10]
    verified = [r[0] for r in rows(log, "type = 'user.email_verified'")]
    assert seqs(cli("events", "tail", "--type", "user.email_verified")[1]) == verified
    assert cli("events", "tail", "--type", "no.such.type") == (0, "", "")


def test_tail_stream_and_type(log: Path, cli: Cli) -> None:
    code, out, _ = cli("events", "tail", "--stream", "user-u3", "--type", "user.email_verified")
    assert code == 0
    assert seqs(out) == [r[0] for r in rows(log, "stream = 'user-u3' AND version = 2")]


def test_tail_since(log: Path, cli: Cli) -> None:
    assert seqs(cli("events", "tail", "--since", "22")[1]) == [23, 24, 25]
    assert seqs(cli("events", "tail", "--since", "0")[1]) == list(range(1, 26))
    assert cli("events", "tail", "--since", "25") == (0, "", "")
    out = cli("events", "tail", "--since", "12", "--type", "session.started")[1]
    assert seqs(out) == [r[0] for r in rows(log, "seq > 12 AND type = 'session.started'")]


def test_tail_json(log: Path, cli: Cli) -> None:
    code, out, _ = cli("events", "tail", "--json", "-n", "4")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 4
    for line, row in zip(lines, rows(log, "seq > 21"), strict=True):
        event = json.loads(line)
        assert set(event) >= JSON_KEYS
        seq, stream, version, type_, schema, payload, metadata, at, hash_ = row
        assert event == {
            "seq": seq, "stream": stream, "version": version, "type": type_,
            "schema_version": schema, "payload": json.loads(payload),
            "metadata": json.loads(metadata), "recorded_at": at, "hash": hash_,
        }
    assert json.loads(lines[-1])["payload"]["refresh_token_hash"] == "t5b"


@pytest.fixture
def chat_log(db_path: Path, clean_env: Path) -> Path:
    """A conversation whose reply streamed as three delta events (sealed, with the master key
    the CLI finds in its data folder), and an owner's change."""
    write_master_keys(Settings(data_dir=clean_env / "data"), [MASTER])
    asyncio.run(_live(db_path, [("assistant", 0, 0), ("widget", 0, 0), ("conversation", 0, 0),
                                ("ask", 0, 4), ("stream", 0, 4), ("stream", 0, 3),
                                ("stream", 0, 5), ("finish", 0, 0)]))

    async def by_owner() -> None:
        async with EventStore(db_path, default_projections()) as store:
            await store.append(*_register(1), metadata=Metadata(actor="user:u1"))

    asyncio.run(by_owner())
    return db_path


def test_tail_folds_a_replys_deltas_into_its_end(chat_log: Path, cli: Cli) -> None:
    code, out, _ = cli("events", "tail")
    assert code == 0
    lines = out.splitlines()
    assert [ln.split()[2] for ln in lines] == [
        "assistant.created", "widget.created", "conversation.started", "message.posted",
        "assistant.started", "assistant.completed", "user.registered"]
    completed = lines[5]
    conn = sqlite3.connect(chat_log)
    keys = Keyring(MasterKeys(lambda: [MASTER])).attach(conn)
    texts = [keys.open(json.loads(r[5])["text"], b"assistant.delta.text")
             for r in rows(chat_log, "type = 'assistant.delta'")]
    conn.close()
    assert completed.endswith(f"[3 deltas, {sum(map(len, texts))} chars]")
    assert 'text="' + "".join(texts)[:20] in completed  # opened for the operator
    assert " by -  message_id=" in completed  # nobody named in its metadata
    assert ' by user:u1  user_id="u1" email="u1@example.org"' in lines[6]
    assert max(map(len, lines)) < 220  # long texts are cut, not printed whole

    code, out, _ = cli("events", "tail", "--deltas")
    assert [ln.split()[2] for ln in out.splitlines()].count("assistant.delta") == 3
    assert "deltas," not in out

    code, out, _ = cli("events", "tail", "--json")
    end = [json.loads(ln) for ln in out.splitlines()][5]
    assert end["deltas"] == {"count": 3, "chars": sum(map(len, texts))}


def test_tail_follow_in_process(
    log: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each poll's sleep runs the next step, and Ctrl-C ends it; bounded by the steps."""
    steps: list[Callable[[], object]] = []
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if not steps:
            raise KeyboardInterrupt
        steps.pop(0)()

    monkeypatch.setattr("loacl.cli.time.sleep", sleep)
    steps[:] = [
        lambda: append(log, _register(11), ("user-u11", [accounts.EmailVerified(user_id="u11")])),
        lambda: None,
        lambda: append(log, _register(12)),
    ]
    code, out, _ = cli("events", "tail", "-f", "-n", "2", "--stream", "user-u11",
                       "--interval", "0.25")
    assert code == 130
    assert polls == [0.25] * 4
    assert seqs(out) == [26, 27]  # an empty start, then the followed stream only

    steps[:] = [lambda: append(log, _register(13))]
    code, out, _ = cli("events", "tail", "-f", "--since", "26", "--json")
    assert code == 130
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [27, 28, 29]


def test_events_of_a_missing_database(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = clean_env / "gone.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    assert main(["events", "tail"]) == 1
    assert "[database_not_found]" in capsys.readouterr().err
    assert not missing.exists()


# -- events show ------------------------------------------------------------------------------


def test_show_human(log: Path, cli: Cli) -> None:
    code, out, _ = cli("events", "show", "13")
    assert code == 0
    row = rows(log, "seq = 13")[0]
    fields = {
        line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
        for line in out.splitlines() if line.startswith(" ") and ": " in line
    }
    assert fields["seq"] == "13"
    assert fields["stream"] == row[1] == "session-s1"
    assert fields["type"] == "session.refreshed"
    assert fields["version"] == "2"
    assert fields["hash"] == row[8]
    assert fields["recorded_at"] == row[7]
    assert '"refresh_token_hash": "t1b"' in out  # the payload, pretty-printed


def test_show_json(log: Path, cli: Cli) -> None:
    code, out, _ = cli("events", "show", "1", "--json")
    assert code == 0
    event = json.loads(out)
    assert set(event) >= JSON_KEYS
    assert event["seq"] == 1
    assert event["payload"] == {
        "user_id": "u1", "email": "u1@example.org", "name": None, "password_hash": "h1"
    }
    assert event["hash"] == rows(log, "seq = 1")[0][8]


@pytest.mark.parametrize("seq", ["26", "0", "-3"])
def test_show_unknown_position(log: Path, cli: Cli, seq: str) -> None:
    code, out, err = cli("events", "show", seq)
    assert code == 1
    assert out == ""
    assert f"no event at position {seq} [event_not_found]" in err


# -- subprocesses: python -m loacl, events tail --follow ---------------------------------------


def _env(db: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if k not in ENV_NAMES.values() and not k.startswith("LOACL_")
    }
    env["DATABASE_URL"] = f"sqlite:///{db}"
    env.update(extra)
    return env


def test_python_dash_m(log: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loacl", "--version"],
        capture_output=True, text=True, timeout=WAIT, cwd=tmp_path, env=_env(log),
    )
    assert (done.returncode, done.stdout) == (0, f"loacl {__version__}\n")
    done = subprocess.run(
        [sys.executable, "-m", "loacl", "audit", "verify"],
        capture_output=True, text=True, timeout=WAIT, cwd=tmp_path, env=_env(log),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 25 events, last hash ")


class Follow:
    """``loacl events tail --follow --json`` in a subprocess, its lines read by a thread."""

    def __init__(self, db: Path, cwd: Path, *args: str, interrupt: bool = True) -> None:
        # Started from a background job, this test run (and so the child) would ignore SIGINT;
        # the child gets the default back, as when a person starts it at a terminal.
        # ``interrupt=False`` keeps it ignored: the background case, stopped with SIGTERM.
        self.stop = signal.SIGINT if interrupt else signal.SIGTERM
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loacl", "events", "tail", "--follow", "--json",
             "--interval", "0.05", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=_env(db),
            preexec_fn=lambda: signal.signal(
                signal.SIGINT, signal.SIG_DFL if interrupt else signal.SIG_IGN
            ),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._pump = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._pump.start()
        self.code: int | None = None
        self.err = ""

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)

    def next(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(self.lines.get(timeout=WAIT))
        return event

    def __enter__(self) -> Follow:
        return self

    def __exit__(self, *exc: object) -> None:
        """Ctrl-C (or SIGTERM), as a user would; a kill if that is not enough."""
        self.proc.send_signal(self.stop)
        try:
            self.code = self.proc.wait(timeout=WAIT)
        finally:
            self.proc.kill()
            self.proc.wait(timeout=WAIT)
            self._pump.join(timeout=WAIT)
            assert self.proc.stdout is not None and self.proc.stderr is not None
            self.err = self.proc.stderr.read()
            self.proc.stdout.close()
            self.proc.stderr.close()


def test_tail_follow(log: Path, tmp_path: Path) -> None:
    with Follow(log, tmp_path, "-n", "3") as follow:
        assert [follow.next()["seq"] for _ in range(3)] == [23, 24, 25]
        append(log, _register(11), _register(12))
        new = [follow.next() for _ in range(2)]
        assert [e["seq"] for e in new] == [26, 27]
        assert [e["stream"] for e in new] == ["user-u11", "user-u12"]
        assert set(new[0]) >= JSON_KEYS
        append(log, ("user-u11", [accounts.EmailVerified(user_id="u11")]))
        assert follow.next()["type"] == "user.email_verified"
    assert follow.code == 130  # Ctrl-C ends it quietly
    assert "Traceback" not in follow.err
    assert follow.lines.empty()


def test_tail_follow_in_the_background_stops_on_sigterm(log: Path, tmp_path: Path) -> None:
    """Started as a background job (SIGINT ignored), it still stops quietly on ``kill``."""
    with Follow(log, tmp_path, "-n", "1", interrupt=False) as follow:
        assert follow.next()["seq"] == 25
        append(log, _register(11))
        assert follow.next()["seq"] == 26
    assert follow.code == 0
    assert "Traceback" not in follow.err
    assert follow.lines.empty()


def test_tail_follow_filtered(log: Path, tmp_path: Path) -> None:
    with Follow(log, tmp_path, "--type", "user.email_verified", "-n", "1") as follow:
        assert follow.next()["seq"] == 23
        append(
            log,
            _register(11),
            ("user-u11", [accounts.EmailVerified(user_id="u11")]),
            _register(12),
            ("user-u12", [accounts.EmailVerified(user_id="u12")]),
        )
        new = [follow.next() for _ in range(2)]
        # In log order, and the registrations between them were left out.
        assert [(e["seq"], e["stream"]) for e in new] == [(27, "user-u11"), (29, "user-u12")]
    assert follow.lines.empty()


def test_tail_follow_from_an_empty_log(db_path: Path, tmp_path: Path) -> None:
    with Follow(db_path, tmp_path) as follow:
        append(db_path, _register(1))
        assert follow.next()["seq"] == 1
        append(db_path, _register(2))
        assert follow.next()["seq"] == 2
    assert follow.lines.empty()
    assert follow.code == 130


# -- settings errors --------------------------------------------------------------------------


def test_bad_environment_value(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAX_UPLOAD_SIZE", "abc")
    assert main(["migrate", "status"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "MAX_UPLOAD_SIZE" in err
    assert "'abc'" in err
    assert err.startswith("loacl: ")


def test_bad_environment_value_in_a_subprocess(db_path: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loacl", "audit", "verify"],
        capture_output=True, text=True, timeout=WAIT, cwd=tmp_path,
        env=_env(db_path, MAX_UPLOAD_SIZE="abc"),
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "MAX_UPLOAD_SIZE" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_unknown_key_in_the_config_file(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = clean_env / "loacl.toml"
    config.write_text('database_url = "sqlite:///x.db"\ndatabase_pth = "oops"\n')
    assert main(["--config", str(config), "migrate", "status"]) == 2
    err = capsys.readouterr().err
    assert "'database_pth'" in err
    assert str(config) in err
    # The default ./loacl.toml is read the same way.
    assert main(["migrate", "status"]) == 2
    assert "'database_pth'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("database_url = ", "not valid TOML"),
        ('port = "eighty"', "port"),
        ('database_url = "mysql://db"', "database_url"),
    ],
)
def test_bad_config_file(
    clean_env: Path, capsys: pytest.CaptureFixture[str], text: str, needle: str
) -> None:
    config = clean_env / "bad.toml"
    config.write_text(text + "\n")
    assert main(["--config", str(config), "events", "tail"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert needle in err


def test_missing_config_file(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(clean_env / "nope.toml"), "replay"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["events", "show", "abc"])
    assert exited.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_every_command_is_in_the_readme() -> None:
    import argparse

    from loacl.cli import build_parser

    lines = (Path(__file__).resolve().parent.parent / "README.md").read_text().splitlines()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        actions: list[str] = []
        for action in parser._actions:
            nested = isinstance(action, argparse._SubParsersAction)
            if (nested or action.dest == "action") and action.choices:
                actions += list(action.choices)
        for verb in actions or [""]:
            assert any(f"loacl {name}" in line and verb in line for line in lines), (
                f"`loacl {name} {verb}` is not documented in README.md"
            )


# -- subscribers and usage --------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = datetime(2020, 1, 1, 23, 59, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _reply(conversation: str, n: int, end: Event) -> list[Event]:
    from loacl.domain.conversations import AssistantStarted, MessagePosted

    return [
        MessagePosted(conversation_id=conversation, message_id=f"m{n}", text="hi"),
        AssistantStarted(conversation_id=conversation, message_id=f"r{n}", reply_to=f"m{n}",
                         assistant_id="a1", provider="demo", model="demo"),
        end,
    ]


def _replies(path: Path) -> None:
    """w1 gets a reply on 2020-01-01 and one on 01-02 (UTC), w2 a failed one on 01-01."""
    from loacl.domain.conversations import AssistantCompleted, AssistantFailed, Usage
    from loacl.domain.widgets import ConversationStarted

    clock = _Clock()

    async def run() -> None:
        async with EventStore(path, default_projections(), clock=clock) as store:
            for c, w in (("c1", "w1"), ("c2", "w2")):
                await store.append(f"conversation-{c}", [
                    ConversationStarted(conversation_id=c, widget_id=w, visitor_id="v")
                ])
            await store.append("conversation-c1", _reply("c1", 1, AssistantCompleted(
                message_id="r1", text="yo", usage=Usage(input_tokens=10, output_tokens=20))))
            await store.append("conversation-c2", _reply("c2", 2, AssistantFailed(
                message_id="r2", code="provider_error", error="503")))
            clock.now = datetime(2020, 1, 2, 0, 1, tzinfo=UTC)
            await store.append("conversation-c1", _reply("c1", 3, AssistantCompleted(
                message_id="r3", text="yo", usage=Usage(input_tokens=1, output_tokens=2))))

    asyncio.run(run())


def _run_subscribers(path: Path) -> None:
    """Run the built-in subscribers until each has caught up with the log."""
    from loacl.store.subscribers import default_subscribers
    from loacl.store.subscriptions import Options, Subscriptions

    async def run() -> None:
        async with EventStore(path, default_projections()) as store:
            head = await store.head()
            subscribers = default_subscribers()
            async with Subscriptions(store, subscribers, Options(checkpoint_interval=0)):
                async with asyncio.timeout(WAIT):
                    while True:
                        rows = await store.query("SELECT min(position), count(*) "
                                                 "FROM subscriber_checkpoints")
                        if tuple(rows[0]) == (head, len(subscribers)):
                            break
                        await asyncio.sleep(0.01)

    asyncio.run(run())


def test_subscribers_status_shows_position_lag_and_last_error(db_path: Path, cli: Cli) -> None:
    _replies(db_path)
    code, out, err = cli("subscribers", "status", "--json")
    assert (code, err) == (0, "")
    (never_run,) = [json.loads(line) for line in out.splitlines()]
    # Registered but never run: at 0, behind by the whole log, and by the age of its first event.
    assert never_run | {"lag_seconds": 0} == {
        "name": "usage", "position": 0, "lag_events": 11, "lag_seconds": 0, "updated_at": None,
        "last_error": None, "error_at": None, "failures": 0,
    }
    assert never_run["lag_seconds"] > 0

    _run_subscribers(db_path)
    code, out, _ = cli("subscribers", "status")
    header, usage = out.splitlines()
    assert header.split() == ["NAME", "POSITION", "LAG_EVENTS", "LAG_SECONDS", "FAILURES",
                              "LAST_ERROR"]
    assert usage.split() == ["usage", "11", "0", "0.0", "0", "-"]


def test_usage_rolls_up_replies_per_widget_and_utc_day(db_path: Path, cli: Cli) -> None:
    _replies(db_path)
    assert cli("usage")[:2] == (0, "(none)\n")  # nothing until the subscriber has run
    _run_subscribers(db_path)
    code, out, _ = cli("usage", "--json")
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"day": "2020-01-01", "widget_id": "w1", "replies_completed": 1, "replies_failed": 0,
         "input_tokens": 10, "output_tokens": 20},
        {"day": "2020-01-01", "widget_id": "w2", "replies_completed": 0, "replies_failed": 1,
         "input_tokens": 0, "output_tokens": 0},
        {"day": "2020-01-02", "widget_id": "w1", "replies_completed": 1, "replies_failed": 0,
         "input_tokens": 1, "output_tokens": 2},
    ]
    code, out, _ = cli("usage", "--widget", "w2")
    assert out.splitlines()[1].split() == ["2020-01-01", "w2", "0", "1", "0", "0"]

    # A reset empties the roll-up; the next run rebuilds the same from the log, once.
    before = cli("usage", "--json")[1]
    assert cli("subscribers", "reset", "usage")[:2] == (
        0, "reset usage: it starts again from position 0\n"
    )
    assert cli("usage")[1] == "(none)\n"
    _run_subscribers(db_path)
    assert cli("usage", "--json")[1] == before


def test_only_a_known_table_subscriber_can_be_reset(db_path: Path, cli: Cli) -> None:
    code, _, err = cli("subscribers", "reset", "webhooks")
    assert code == 1
    assert "[not_resettable]" in err


def test_export_streams_the_log_opened_and_erased_as_placeholders(
    chat_log: Path, cli: Cli, tmp_path: Path
) -> None:
    code, out, err = cli("events", "export", "--since", "0", "--format", "jsonl")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert {*lines[0]} == JSON_KEYS | {"schema_version"}
    posted = next(e for e in lines if e["type"] == "message.posted")
    text = posted["payload"]["text"]
    assert text and "\u0000" not in text  # opened with the master key
    assert err == ""  # not a terminal: no progress lines
    code, later, _ = cli("events", "export", "--since", str(lines[-3]["seq"]))
    assert [json.loads(line)["seq"] for line in later.splitlines()] == [
        e["seq"] for e in lines[-2:]]

    conversation = posted["payload"]["conversation_id"]
    code, _, err = cli("privacy", "erase", "--conversation", conversation)
    assert code == 0, err
    out_file = tmp_path / "export.jsonl"
    code, out, err = cli("events", "export", "--output", str(out_file))
    assert code == 0 and out == ""
    exported = [json.loads(line) for line in out_file.read_text().splitlines()]
    again = next(e for e in exported if e["seq"] == posted["seq"])
    assert again["payload"]["text"] == "[erased]"
    assert [e["hash"] for e in exported[:len(lines)]] == [e["hash"] for e in lines]
    assert exported[-1]["type"] == "privacy.erased"


def test_export_without_the_master_key_says_so(
    chat_log: Path, cli: Cli, clean_env: Path
) -> None:
    (clean_env / "data" / "master_key").unlink()
    code, out, err = cli("events", "export")
    assert code == 0
    assert "no master key at hand" in err
    posted = next(json.loads(line) for line in out.splitlines()
                  if json.loads(line)["type"] == "message.posted")
    assert posted["payload"]["text"] == "<sealed>"


def test_export_shows_progress_on_a_terminal(chat_log: Path, clean_env: Path) -> None:
    """stderr a terminal (a pseudo-terminal here): progress lines there, the log on stdout."""
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "loacl", "events", "export"], stdout=subprocess.PIPE,
            stderr=follower, text=True, timeout=WAIT, cwd=clean_env,
            env=_env(chat_log, LOACL_DATA_DIR=str(clean_env / "data")),
        )
        os.close(follower)
        follower = -1
        shown = b""
        with contextlib.suppress(OSError):  # the terminal's other end gone: all is read
            while chunk := os.read(leader, 4096):
                shown += chunk
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert done.returncode == 0
    total = len(done.stdout.splitlines())
    assert f"exported: {total}/{total} events (100%)" in shown.decode()
