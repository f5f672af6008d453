"""What docs/deploy.md promises of the image's parts, run as processes on this machine: the
entrypoint restores an empty data folder from the replica and serves under Litestream, and the
proxy setting it names makes the server see the visitor's address."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from scripts.compose import load_service

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "container" / "entrypoint.py"
WAIT = 60.0
PASSWORD = "a long passphrase for the deploy tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Container:
    """The image's entrypoint and environment, as a process on this machine."""

    def __init__(self, folder: Path, **env: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        bin_dir = str(Path(sys.executable).parent)  # loacl and litestream
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
            "LOACL_DATA_DIR": str(folder / "data"),
            "DATABASE_URL": f"sqlite:///{folder / 'data' / 'loacl.db'}",
            "LOACL_PORT": str(self.port),
            "LOACL_LOG_FORMAT": "console",
            "LOACL_REQUIRE_VERIFIED_EMAIL": "false",
            "LOACL_ARGON2_TIME_COST": "1",
            "LOACL_ARGON2_MEMORY_KIB": "64",
            "LOACL_ARGON2_PARALLELISM": "1",
            "JWT_SECRET_KEY": "k" * 48,
            # Kept outside the data folder, as the replica holds only sealed personal data.
            "LOACL_MASTER_KEY": "bWFzdGVyLWtleS1mb3ItdGhlLWRlcGxveS10ZXN0cyE=",
            **env,
        }
        for name in ("LOACL_CONFIG", "LOACL_UNDER_LITESTREAM", "LOACL_TRUSTED_PROXIES"):
            if name not in env:
                self.env.pop(name, None)
        self.process: subprocess.Popen[bytes] | None = None
        self.runs = 0

    @property
    def log(self) -> Path:
        return self.folder / f"run-{self.runs}.log"

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(ENTRYPOINT), *command], cwd=self.folder,
                              env=self.env, capture_output=True, text=True, timeout=WAIT)

    def start(self) -> None:
        self.runs += 1
        with self.log.open("wb") as log:
            # A session of its own: Litestream's child (the server) is killed with it.
            self.process = subprocess.Popen(
                [sys.executable, str(ENTRYPOINT)], cwd=self.folder, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + WAIT
        while True:
            assert self.process.poll() is None, f"it exited:\n{self.log.read_text()}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, f"not ready:\n{self.log.read_text()}"
            time.sleep(0.05)

    def stop(self) -> int:
        """SIGTERM, as the engine sends it; the exit code, after a clean stop."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"it did not stop:\n{self.log.read_text()}") from None
        assert "loacl.stopped" in self.log.read_text(), self.log.read_text()
        return code

    def close(self) -> None:
        """Kill what is left of it, the server under Litestream included."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=WAIT)

    def register(self, email: str, **client: Any) -> None:
        with httpx.Client(**client) as http:
            response = http.post(f"{self.url}/api/v1/auth/register", headers={
                "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
            }, json={"email": email, "password": PASSWORD})
        assert response.status_code == 202, response.text

    def events(self) -> list[dict[str, Any]]:
        done = self.run("events", "tail", "--since", "0", "--json", "--deltas")
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


@pytest.fixture
def container(tmp_path: Path) -> Any:
    made: list[Container] = []

    def make(**env: str) -> Container:
        made.append(Container(tmp_path, **env))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.mark.long
@pytest.mark.e2e
def test_an_empty_data_folder_comes_back_from_the_replica(
    tmp_path: Path, container: Any,
) -> None:
    replica = tmp_path / "replica"
    served = container(LOACL_REPLICA_URL=f"file://{replica}")
    served.start()
    readyz = httpx.get(f"{served.url}/readyz").json()
    # Litestream runs the server (replicate -exec), so the server supervises none itself.
    assert readyz["checks"]["replica"]["supervised"] is False
    # Litestream has taken the database up (its first files are in the replica): what follows
    # reaches the replica by its last sync at the stop, whenever its timer would have.
    deadline = time.monotonic() + WAIT
    while not any(p.is_file() for p in replica.rglob("*")):
        assert time.monotonic() < deadline, "Litestream never wrote to the replica"
        time.sleep(0.05)
    served.register("first@example.com")
    before = served.events()
    assert served.stop() == 0  # Litestream's exit, after the server's and its last sync
    assert "litestream shut down" in served.log.read_text()

    for path in sorted((tmp_path / "data").glob("*"), reverse=True):
        if path.is_file():
            path.unlink()
    served.start()
    first_line = served.log.read_text().splitlines()[0]
    assert first_line.startswith(f"restored {len(before)} events from file://{replica}")
    assert served.events()[: len(before)] == before
    served.register("second@example.com")
    assert served.stop() == 0

    # A data folder that holds events is not restored over, and other commands are loacl's.
    served.start()
    assert not served.log.read_text().startswith("restored")
    assert served.stop() == 0
    verified = served.run("audit", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith(f"ok: {len(before) + 1} ")


@pytest.mark.e2e
@pytest.mark.parametrize("caddy", [False, True], ids=["alone", "as-compose-caddy-sets-it"])
def test_trusted_proxies_lets_the_proxy_name_the_visitor(container: Any, caddy: bool) -> None:
    """deploy/compose.caddy.yaml's LOACL_TRUSTED_PROXIES: without it, a proxy that is not on
    127.0.0.1 is every visitor (the address the rate limits count)."""
    service = load_service(ROOT / "deploy" / "compose.caddy.yaml", {"LOACL_DOMAIN": "x"})
    allowed = service.environment["LOACL_TRUSTED_PROXIES"] if caddy else None
    served = container(**({"LOACL_TRUSTED_PROXIES": allowed} if allowed else {}))
    served.start()
    # The proxy: another loopback address than the 127.0.0.1 uvicorn trusts by default.
    proxy = httpx.HTTPTransport(local_address="127.0.0.2")
    served.register("visitor@example.com", transport=proxy)
    assert served.stop() == 0
    [registered] = [e for e in served.events() if e["type"] == "user.registered"]
    seen = registered["metadata"]["client_ip"]
    assert seen == ("203.0.113.9" if allowed else "127.0.0.2")
