"""The drill of ``scripts/container-check``: LOACL's image run again and again on named volumes,
as compose.yaml runs it, with host networking (see container_check's docstring for the steps).
"""

from __future__ import annotations

import email
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from scripts.compose import Service
from scripts.podman_env import CheckError, Podman

ROOT = Path(__file__).resolve().parent.parent
CADDYFILE = ROOT / "deploy" / "Caddyfile"
APIDOCS_MANIFEST = ROOT / "loacl" / "static" / "apidocs" / "manifest.json"
HEALTHY_WITHIN = 10.0
# A start on an empty volume restores and checks the database first (integrity, audit).
RESTORE_HEALTHY_WITHIN = 20.0
STOP_WITHIN = 10.0
ORIGIN = "https://shop.example"
EMAIL_ADDRESS = "owner@example.com"
PASSWORD = "a long passphrase for the container check"


@dataclass
class Timings:
    rows: list[tuple[str, float]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"--- {name}", flush=True)
        started = time.monotonic()
        yield
        seconds = time.monotonic() - started
        self.rows.append((name, seconds))
        print(f"    {name}: {seconds:.1f} s", flush=True)

    def figure(self, name: str, value: str) -> None:
        self.figures.append((name, value))
        print(f"    {name}: {value}", flush=True)

    def report(self) -> None:
        print("\ncontainer-check summary")
        for name, value in self.figures:
            print(f"  {name:<40} {value}")
        for name, seconds in self.rows:
            print(f"  {name:<40} {seconds:7.1f} s")
        print(f"  {'total':<40} {sum(s for _, s in self.rows):7.1f} s")

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Api:
    base: str
    token: str | None = None
    context: ssl.SSLContext | None = None

    def __call__(
        self, method: str, path: str, body: Any = None, *, expect: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode()
        if status != expect:
            raise CheckError(f"{method} {path}: {status}, expected {expect}: {text[:500]}")
        return json.loads(text) if text else None


@dataclass
class Drill:
    """One image, run again and again on named volumes, as compose.yaml runs it."""

    podman: Podman
    image: str
    service: Service
    timings: Timings
    work: Path
    port: int = field(default_factory=free_port)
    prefix: str = field(default_factory=lambda: f"loacl-check-{os.getpid()}")

    @property
    def api(self) -> Api:
        return Api(f"http://127.0.0.1:{self.port}")

    def volume(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def start(self, name: str, *, replica: bool, within: float = HEALTHY_WITHIN) -> float:
        """Start a container on host networking; seconds until its health check passes."""
        env = dict(self.service.environment)
        if not replica:
            env.pop("LOACL_REPLICA_URL", None)
        # Host networking (so the host's firewall is left alone): loopback and a free port.
        env |= {"LOACL_HOST": "127.0.0.1", "LOACL_PORT": str(self.port)}
        # Settings from a file readable by its owner only, and the key as a podman secret, as
        # docs/deploy.md runs them: neither on podman's command line.
        jwt_key = env.pop("JWT_SECRET_KEY")
        secret = f"{self.prefix}-jwt"
        if self.podman("secret", "inspect", secret, check=False).returncode != 0:
            key_file = self.work / "jwt_secret_key"
            key_file.touch(mode=0o600)
            key_file.write_text(jwt_key)
            self.podman("secret", "create", secret, str(key_file))
        env_file = self.work / f"{name}.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        args = ["run", "-d", "--name", name, "--network", "host", "--env-file", str(env_file),
                "--secret", f"{secret},type=env,target=JWT_SECRET_KEY",
                # Nothing runs health checks on a timer here (no systemd): they are polled.
                "--health-interval", "disable"]
        for volume, target in self.service.volumes:
            if volume == "replica" and not replica:
                continue
            args += ["-v", f"{self.volume(volume)}:{target}"]
        started = time.monotonic()
        self.podman(*args, self.image)
        return self.wait_healthy(name, started, within)

    def wait_healthy(self, name: str, started: float, within: float = HEALTHY_WITHIN) -> float:
        """Seconds from ``started`` until the image's health check passes. /readyz is watched
        over HTTP (a `podman healthcheck run` takes about half a second here, which would
        blur the figure), then the health check itself must pass."""
        checked = 0.0
        while True:
            try:
                with urllib.request.urlopen(f"{self.api.base}/readyz", timeout=1) as answer:
                    ready = answer.status == 200
            except OSError:
                ready = False
            if ready and self.podman("healthcheck", "run", name, check=False).returncode == 0:
                return time.monotonic() - started
            if time.monotonic() - checked > 1:
                checked = time.monotonic()
                state = self.podman("inspect", "--format", "{{.State.Status}}", name).stdout
                if state.strip() not in ("running", "created", "configured"):
                    raise CheckError(f"{name} is {state.strip()} before it was healthy:\n"
                                     + self.logs(name))
            if time.monotonic() - started > within:
                raise CheckError(f"{name} not healthy within {within} s:\n" + self.logs(name))
            time.sleep(0.05)

    def stop(self, name: str) -> float:
        """Stop with the image's stop signal (SIGTERM); it must exit 0 well within the grace."""
        started = time.monotonic()
        self.podman("stop", "--time", str(int(STOP_WITHIN) + 5), name)
        seconds = time.monotonic() - started
        code = self.podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        if code != "0" or seconds > STOP_WITHIN:
            raise CheckError(f"{name} stopped in {seconds:.1f} s with exit code {code}:\n"
                             + self.logs(name))
        return seconds

    def logs(self, name: str, lines: int | None = 40) -> str:
        tail = ["--tail", str(lines)] if lines else []
        result = self.podman("logs", *tail, name, check=False)
        return result.stdout + result.stderr if lines is None else \
            (result.stdout + result.stderr)[-4000:]

    def exec(self, name: str, *command: str) -> str:
        return self.podman("exec", name, *command).stdout

    def once(self, *command: str, data: str = "data", replica: bool = False,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        """A loacl command in a one-off container on a data volume (and the replica's), with
        no network."""
        args = ["run", "--rm", "--network", "none", "-v", f"{self.volume(data)}:/data"]
        if replica:
            targets = dict(self.service.volumes)
            args += ["-v", f"{self.volume('replica')}:{targets['replica']}",
                     "-e", f"LOACL_REPLICA_URL={self.service.environment['LOACL_REPLICA_URL']}"]
        return self.podman(*args, self.image, *command, check=check)

    def replica_check(self) -> dict[str, Any]:
        """/readyz's replica entry once Litestream has shipped everything (it runs the server,
        so the server supervises none)."""
        deadline = time.monotonic() + 15
        while True:
            replica = self.api("GET", "/readyz")["checks"]["replica"]
            if replica["ok"] and replica.get("lag_seconds") == 0 and not replica["supervised"]:
                return dict(replica)
            if time.monotonic() > deadline:
                raise CheckError(f"the replica did not catch up: {replica}")
            time.sleep(0.2)

    def outbox_token(self, name: str) -> str:
        """The verification token from the mail the server wrote to /data/outbox."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = self.podman("exec", name, "sh", "-c", "cat /data/outbox/*.eml",
                                check=False)
            if found.returncode == 0 and found.stdout:
                message = email.message_from_string(found.stdout, policy=policy.default)
                assert isinstance(message, EmailMessage)
                match = re.search(r"Your token:\s+(\S+)", message.get_content())
                if match:
                    return match.group(1)
            time.sleep(0.2)
        raise CheckError(f"no verification mail in /data/outbox:\n{self.logs(name)}")

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.exec(name, "loacl", "events", "tail", "--since", "0", "--json", "--deltas")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def audit(self, name: str) -> str:
        result = self.podman("exec", name, "loacl", "audit", "verify", check=False)
        if result.returncode != 0:
            raise CheckError(f"audit verify failed in {name}:\n{result.stdout}{result.stderr}")
        return result.stdout.strip().splitlines()[-1]


def indented(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


@dataclass
class Owned:
    assistant_id: str
    widget_ids: list[str]


def sign_up_and_create(drill: Drill, name: str) -> tuple[Api, Owned]:
    api = drill.api
    api("POST", "/api/v1/auth/register", {"email": EMAIL_ADDRESS, "password": PASSWORD},
        expect=202)
    api("POST", "/api/v1/auth/verify-email", {"token": drill.outbox_token(name)})
    tokens = api("POST", "/api/v1/auth/login", {"email": EMAIL_ADDRESS, "password": PASSWORD})
    api.token = tokens["access_token"]
    assistant = api("POST", "/api/v1/assistants",
                    {"name": "Container check", "instructions": "Answer briefly."}, expect=201)
    widget = api("POST", "/api/v1/widgets", {
        "name": "Shop", "assistant_id": assistant["id"], "allowed_origins": [ORIGIN],
    }, expect=201)
    embed = api("GET", f"/api/v1/widgets/{widget['id']}/embed-code")
    if widget["id"] not in json.dumps(embed):
        raise CheckError(f"the embed code does not name the widget: {embed}")
    chat(drill, widget["id"])
    return api, Owned(assistant["id"], [widget["id"]])


def through_caddy(drill: Drill, widget_id: str) -> None:
    """deploy/Caddyfile in front of the running container, as deploy/compose.caddy.yaml runs it:
    TLS (Caddy's own CA, for localhost), the API, and a reply streamed over wss://."""
    home = drill.work / "caddy"
    home.mkdir()
    http_port, https_port = free_port(), free_port()
    (home / "Caddyfile").write_text(
        "{\n\tadmin off\n\tskip_install_trust\n"
        f"\thttp_port {http_port}\n\thttps_port {https_port}\n}}\n"
        f"import {CADDYFILE}\n"
    )
    env = {**os.environ, "XDG_DATA_HOME": str(home / "data"),
           "XDG_CONFIG_HOME": str(home / "config"), "LOACL_DOMAIN": "localhost",
           "LOACL_UPSTREAM": f"127.0.0.1:{drill.port}"}
    with (home / "caddy.log").open("wb") as log:
        caddy = subprocess.Popen(
            ["caddy", "run", "--config", str(home / "Caddyfile"), "--adapter", "caddyfile"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        root = home / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        api = Api(f"https://localhost:{https_port}")
        deadline = time.monotonic() + 15
        while True:
            try:
                api.context = ssl.create_default_context(cafile=str(root))
                api("GET", "/readyz")
                break
            except (OSError, CheckError) as exc:
                if caddy.poll() is not None or time.monotonic() > deadline:
                    raise CheckError(f"Caddy did not serve LOACL: {exc}\n"
                                     + (home / "caddy.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        session = api("POST", f"/api/v1/widgets/{widget_id}/sessions", {},
                      headers={"Origin": ORIGIN}, expect=201)
        url = (f"wss://localhost:{https_port}/api/v1/widgets/{widget_id}/stream"
               f"?token={session['visitor_token']}")
        with connect(url, ssl=api.context, additional_headers={"Origin": ORIGIN},
                     open_timeout=10) as socket_:
            frames = [json.loads(socket_.recv(timeout=10))]
            socket_.send(json.dumps({"type": "message", "text": "And through TLS?",
                                     "client_message_id": "caddy-1"}))
            while frames[-1]["type"] not in ("done", "error"):
                frames.append(json.loads(socket_.recv(timeout=30)))
        types = [f["type"] for f in frames]
        text = "".join(f["text"] for f in frames if f["type"] == "delta")
        if types[0] != "ready" or frames[-1].get("status") != "completed" or not text:
            raise CheckError(f"the reply through Caddy did not complete: {frames[-3:]}")
        print(f"    wss through Caddy: {types.count('delta')} deltas, {len(text)} characters")
    finally:
        caddy.terminate()
        caddy.wait(timeout=10)


def chat(drill: Drill, widget_id: str) -> None:
    """A visitor on the allowed origin asks and gets the demo provider's answer."""
    visitor = drill.api
    session = visitor("POST", f"/api/v1/widgets/{widget_id}/sessions", {},
                      headers={"Origin": ORIGIN}, expect=201)
    visitor.token = session["visitor_token"]
    result = visitor("POST", f"/api/v1/widgets/{widget_id}/messages",
                     {"text": "Do you ship abroad?"}, headers={"Origin": ORIGIN}, expect=201)
    if result["reply"]["status"] != "completed":
        raise CheckError(f"the reply did not complete: {result['reply']}")


def api_reference(base: str) -> str:
    """``/docs/try`` and every file it loads, from the package as the image installed it (a
    wheel: only what its package data ships): each file's bytes have the SHA-256 its URL
    names, and the vendored ones the SHA-256 the repository's manifest records."""
    def get(path: str) -> bytes:
        try:
            with urllib.request.urlopen(base + path, timeout=30) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            raise CheckError(f"GET {path}: {exc.code}") from None

    page = get("/docs/try").decode()
    urls = re.findall(r"(?:src|href)='(/docs/assets/[^']+)'", page)
    recorded = json.loads(APIDOCS_MANIFEST.read_bytes())["files"]
    total = 0
    for url in urls:
        body = get(url)
        digest = hashlib.sha256(body).hexdigest()
        name = url.rsplit("/", 1)[-1]
        if not digest.startswith(url.split("/")[3]) or (
                name in recorded and recorded[name]["sha256"] != digest):
            raise CheckError(f"{url}: the image serves other bytes (sha256 {digest})")
        total += len(body)
    if not {"swagger-ui-bundle.js", "swagger-ui.css"} <= {u.rsplit("/", 1)[-1] for u in urls}:
        raise CheckError(f"/docs/try does not load Swagger UI: {urls}")
    return f"/docs/try: {len(urls)} files, {total:,} bytes, as the manifest records"


def find(api: Api, owned: Owned) -> None:
    api("GET", f"/api/v1/assistants/{owned.assistant_id}")
    listed = {w["id"] for w in api("GET", "/api/v1/widgets")["data"]}
    missing = set(owned.widget_ids) - listed
    if missing:
        raise CheckError(f"widgets missing after the restart: {sorted(missing)}")

def run_drill(drill: Drill) -> None:
    timings = drill.timings
    first = f"{drill.prefix}-1"
    with timings.step("start, healthy"):
        seconds = drill.start(first, replica=False)
        timings.figure("time to healthy (first start)", f"{seconds:.1f} s")
    with timings.step("sign-up, assistant, widget, chat"):
        api, owned = sign_up_and_create(drill, first)
    with timings.step("the interactive API reference, from the wheel"):
        print("    " + api_reference(drill.api.base))
    with timings.step("TLS through Caddy"):
        through_caddy(drill, owned.widget_ids[0])
    with timings.step("restart, find them"):
        drill.podman("restart", "--time", "15", first)
        drill.wait_healthy(first, time.monotonic())
        find(api, owned)
    with timings.step("backup, copy; stopped: restore, migrate down"):
        print("    " + drill.exec(first, "loacl", "backup", "/data/backup.db").strip())
        copy = drill.work / "backup.db"
        drill.podman("cp", f"{first}:/data/backup.db", str(copy))
        if not copy.read_bytes().startswith(b"SQLite format 3\0"):
            raise CheckError("podman cp did not copy the backup out")
        lost = api("POST", "/api/v1/widgets", {
            "name": "Made after the backup", "assistant_id": owned.assistant_id,
        }, expect=201)
        drill.stop(first)
        drill.podman("rm", first)
        # The backup lacks the newest events: restore says so and wants --force.
        refused = drill.once("restore", "/data/backup.db", check=False)
        said = [line for line in refused.stderr.splitlines() if "[events_would_be_lost]" in line]
        if refused.returncode == 0 or not said:
            raise CheckError(f"restore of an older backup was not refused:\n{refused.stderr}")
        print("    " + said[0])
        print(indented(drill.once("restore", "/data/backup.db", "--force").stdout))
        # A rollback: the newest migration reverted while the server is stopped (the next
        # start applies it again, as an upgrade does).
        print(indented(drill.once("migrate", "down").stdout))
        status = drill.once("migrate", "status").stdout
        if "pending" not in status:
            raise CheckError(f"migrate down left nothing pending:\n{status}")

    replicated = f"{drill.prefix}-2"
    with timings.step("run under Litestream, file replica"):
        drill.start(replicated, replica=True)
        if '"migrate.applied"' not in drill.logs(replicated, lines=None):
            raise CheckError("the start after migrate down applied no migration")
        find(api, owned)
        api("GET", f"/api/v1/widgets/{lost['id']}", expect=404)  # restored away
        widget = api("POST", "/api/v1/widgets", {
            "name": "Blog", "assistant_id": owned.assistant_id, "allowed_origins": [ORIGIN],
        }, expect=201)
        owned.widget_ids.append(widget["id"])
        chat(drill, widget["id"])
        replica = drill.replica_check()
        print(f"    /readyz replica: {json.dumps(replica)}")
        print(indented(drill.exec(replicated, "loacl", "replica", "status")))
        before = drill.events(replicated)
        verified = drill.audit(replicated)
        if not verified.startswith(f"ok: {len(before)} events"):
            raise CheckError(f"events tail shows {len(before)} events, audit: {verified}")
        print(f"    {verified}")
    with timings.step("restore drill beside the live server"):
        print("    " + drill.once("restore", "--from-replica", data="drill", replica=True)
              .stdout.strip().splitlines()[0])
        beside = drill.once("audit", "verify", data="drill").stdout.strip().splitlines()[-1]
        if beside != verified:
            raise CheckError(f"the drill restored {beside!r}, the server has {verified!r}")
        print(f"    {beside}")
        drill.podman("volume", "rm", drill.volume("drill"))
    with timings.step("stop under Litestream"):
        seconds = drill.stop(replicated)
        timings.figure("stop under Litestream (SIGTERM)", f"{seconds:.1f} s, exit 0")
        drill.podman("rm", replicated)

    restored = f"{drill.prefix}-3"
    with timings.step("restore drill: new data volume"):
        drill.podman("volume", "rm", drill.volume("data"))
        seconds = drill.start(restored, replica=True, within=RESTORE_HEALTHY_WITHIN)
        timings.figure("restore from the replica to healthy", f"{seconds:.1f} s")
        restore_line = drill.podman("logs", restored).stdout.splitlines()[0]
        if not restore_line.startswith("restored "):
            raise CheckError(f"the new container did not restore: {restore_line}")
        print("    " + restore_line)
        after = drill.events(restored)
        if after[: len(before)] != before:
            lost = len([e for e in before if e not in after])
            raise CheckError(f"{lost} of {len(before)} events not restored as they were")
        print(f"    {len(before)} of {len(before)} events restored; {drill.audit(restored)}")
        find(api, owned)
    with timings.step("stop with SIGTERM"):
        timings.figure("final stop (SIGTERM)", f"{drill.stop(restored):.1f} s, exit 0")
