"""The guides in docs/ run: embed.md's API calls, in order, against a real server, and its
signing code in Python and Node.js; every API call and `loacl` command the guides name exists.
(deploy.md's podman commands are scripts/container-check's; see tests/test_container.py.)"""

from __future__ import annotations

import contextlib
import email
import itertools
import json
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest

from loacl.cli import build_parser
from loacl.http.app import create_app
from loacl.settings import Settings, env_name
from tests.live import serve

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDES = sorted(DOCS.glob("*.md"))


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), re.S | re.M)


@dataclass
class Curl:
    method: str
    url: str
    headers: dict[str, str]
    body: Any


def curls(block: str) -> list[Curl]:
    """The curl commands of a shell block (a quoted body may span lines)."""
    words = shlex.split(block.replace("\\\n", " "), comments=True)
    starts = [i for i, word in enumerate(words) if word == "curl"] + [len(words)]
    found = []
    for start, end in itertools.pairwise(starts):
        method, url, headers, body = "GET", "", {}, None
        rest = iter(words[start + 1:end])
        for word in rest:
            if word == "-X":
                method = next(rest)
            elif word == "-H":
                name, _, value = next(rest).partition(":")
                headers[name] = value.strip()
            elif word == "-d":
                body = json.loads(next(rest))
            elif not word.startswith("-"):
                url = word
        found.append(Curl(method, url, headers, body))
    return found


def outbox_token(folder: Path) -> str:
    """The token of the verification mail, once the server has written it whole."""
    deadline = time.monotonic() + 20
    while True:
        for path in folder.glob("*.eml"):
            message = email.message_from_bytes(path.read_bytes(), policy=policy.default)
            assert isinstance(message, EmailMessage)
            with contextlib.suppress(KeyError, LookupError):
                match = re.search(r"Your token:\s+(\S+)", message.get_content())
                if match:
                    return match.group(1)
        assert time.monotonic() < deadline, "no verification mail in the outbox"
        time.sleep(0.05)


@pytest.mark.e2e
def test_embed_guide_runs(settings: Settings) -> None:
    guide = DOCS / "embed.md"
    calls = [c for block in blocks(guide, "sh") for c in curls(block)]
    assert len(calls) == 6
    found: dict[str, str] = {}
    answers = []
    with serve(create_app(settings)) as base:
        for call in calls:
            if "THE_TOKEN_FROM_THE_MAIL" in json.dumps(call.body):
                found["THE_TOKEN_FROM_THE_MAIL"] = outbox_token(settings.data_dir / "outbox")
            text = json.dumps([call.url, call.headers, call.body]).replace("$LOACL", base)
            for name, value in found.items():
                text = re.sub(rf"\$?\b{name}\b", value, text)
            url, headers, body = json.loads(text)
            url = url.replace("https://loacl.example.com", base)
            response = httpx.request(call.method, url, headers=headers, json=body)
            assert response.status_code < 300, (call, response.text)
            answer = response.json()
            answers.append(answer)
            if "access_token" in answer:
                found["TOKEN"] = answer["access_token"]
            elif url.endswith("/assistants"):
                found["ASSISTANT_ID"] = answer["id"]
            elif url.endswith("/widgets"):
                found["WIDGET_ID"] = answer["id"]
                widget = answer
        embed = answers[-1]
        assert f'widgetId": "{widget["id"]}"' in embed["html"]
        assert embed["integrity"].startswith("sha384-")
        assert widget["allowed_origins"] == ["https://shop.example", "https://*.shop.example"]

        # The signing code, in Python and in Node.js, gives the hash LOACL accepts.
        namespace: dict[str, Any] = {}
        [python] = blocks(guide, "python")
        exec(python, namespace)  # the guide's own code
        secret, user = widget["identity_secret"], "customer-1842"
        signed = namespace["user_hash"](secret, user)
        sessions = f"{base}/api/v1/widgets/{widget['id']}/sessions"
        for origin, user_hash, status in [
            ("https://shop.example", signed, 201),
            ("https://eu.shop.example", signed, 201),
            ("https://shop.example", signed.replace(signed[0], "0" if signed[0] != "0" else "1"),
             401),
            ("https://other.example", signed, 403),
        ]:
            response = httpx.post(sessions, headers={"Origin": origin},
                                  json={"user_id": user, "user_hash": user_hash})
            assert response.status_code == status, response.text
        node = shutil.which("node")
        if node is not None:
            [js] = blocks(guide, "js")
            script = js + f"\nconsole.log(userHash({json.dumps(secret)}, {json.dumps(user)}));"
            out = subprocess.run([node, "-e", script], capture_output=True, text=True,
                                 check=True).stdout.strip()
            assert out == signed


def api_calls(text: str) -> set[tuple[str, str]]:
    """(method, path template) of every call a guide names: `GET /api/v1/...` in prose and the
    curl commands of its shell blocks."""
    named = {(m.lower(), p) for m, p in re.findall(r"`(GET|POST|PUT|DELETE) (/api/v1/[^`\s]+)`",
                                                   text)}
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for call in curls(block):
            path = re.sub(r"^(\$LOACL|https?://[^/]+)", "", call.url)
            if path.startswith("/api/v1/"):
                named.add((call.method.lower(), path))
    return {(m, re.sub(r"[A-Z_]+_ID\b", "{id}", p)) for m, p in named}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_guides_name_only_real_api_calls(settings: Settings, guide: Path) -> None:
    from starlette.testclient import TestClient

    with TestClient(create_app(settings)) as client:
        paths = client.get("/api/v1/openapi.json").json()["paths"]
    for method, path in api_calls(guide.read_text()):
        assert path in paths, f"{guide.name}: {path}"
        assert method in paths[path], f"{guide.name}: {method.upper()} {path}"


# Options of `podman run` / `docker run` that take a value.
RUN_VALUES = {"-v", "--volume", "-e", "--env", "-p", "--publish", "--name", "--env-file",
              "--secret", "--network", "--entrypoint", "-u", "--user"}


def loacl_commands(text: str) -> list[list[str]]:
    """The `loacl` commands of a guide's shell blocks: `loacl ...`, `podman exec NAME loacl ...`
    and the image's command in `podman run ... IMAGE ...` (the entrypoint's, a loacl command;
    none is `serve`)."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", line.split(" #", 1)[0]):
                if not re.match(r"\s*(loacl|podman|docker)\s", part):
                    continue  # curl, a quoted body's next line, ...
                words = shlex.split(part)
                if words[:1] == ["loacl"]:
                    commands.append(words[1:])
                elif words[:1] in (["podman"], ["docker"]) and words[1:2] == ["exec"]:
                    named = [w for w in words[2:] if not w.startswith("-")]
                    if named[1:2] == ["loacl"]:
                        commands.append(named[2:])
                elif words[:1] in (["podman"], ["docker"]) and words[1:2] == ["run"]:
                    rest = iter(words[2:])
                    for word in rest:
                        if word in RUN_VALUES:
                            next(rest)
                        elif not word.startswith("-"):
                            commands.append(list(rest) or ["serve"])
                            break
    return commands


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_guides_name_only_real_loacl_commands(guide: Path) -> None:
    parser = build_parser()
    found = loacl_commands(guide.read_text())
    if guide.name == "deploy.md":
        assert ["audit", "verify"] in found and ["migrate", "down", "--to", "6"] in found
    for words in found:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{guide.name}: `loacl {' '.join(words)}` is not a loacl command")


# Named by deploy/Caddyfile and deploy/compose.caddy.yaml, and the page's widget options;
# LOACL_TEST_POSTGRES_URL is the test suite's (tests/pg.py).
NOT_SETTINGS = {"LOACL_DOMAIN", "LOACL_UPSTREAM", "LOACL_WIDGET", "LOACL_TEST_POSTGRES_URL"}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_guides_name_only_real_settings(guide: Path) -> None:
    names = {env_name(key) for key in Settings.model_fields}
    for name in set(re.findall(r"\bLOACL_[A-Z_]+\b", guide.read_text())):
        assert name in names | NOT_SETTINGS, f"{guide.name}: {name} is no setting"
