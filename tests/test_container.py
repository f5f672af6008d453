"""The container's files without a container engine: the Containerfile lints clean, compose.yaml
names what the image provides, the health check and the check's own pieces work. Building and
running the image is scripts/container-check's job (run by .ci/run)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loacl.http.app import create_app
from loacl.settings import Settings, env_name
from scripts.compose import ComposeError, interpolate, load_service
from scripts.container_check import hadolint_ignores_explained, image_problems
from scripts.podman_env import containers_conf, debian_mirror, ulimits
from tests.live import serve

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "Containerfile"
HEALTHCHECK = ROOT / "container" / "healthcheck.py"


def instructions(name: str) -> list[str]:
    """Arguments of every ``name`` instruction of the Containerfile, continuation lines joined
    (comment lines dropped first, as the builders do)."""
    lines = [line for line in CONTAINERFILE.read_text().splitlines()
             if not line.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines) + "\n")
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.split(None, 1)[:1] == [name]]


def image_env() -> dict[str, str]:
    [block] = instructions("ENV")
    return dict(re.findall(r"(\w+)=(\S+)", block))


def test_containerfile_lints_clean() -> None:
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [tool, "--no-color", "--failure-threshold", "style", str(CONTAINERFILE)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert hadolint_ignores_explained(CONTAINERFILE.read_text()) == []


def test_an_ignore_without_a_reason_is_found() -> None:
    text = "FROM x\n# hadolint ignore=DL3008\nRUN apt-get install -y a\n" \
           "# pinning would break\n# hadolint ignore=DL3008\nRUN apt-get install -y b\n"
    assert hadolint_ignores_explained(text) == [2]


def test_containerfile_promises() -> None:
    assert instructions("VOLUME") == ['["/data"]']
    assert instructions("EXPOSE") == ["8000"]
    assert instructions("STOPSIGNAL") == ["SIGTERM"]
    assert instructions("USER") == ["10001:10001"]
    assert instructions("ENTRYPOINT") == ['["loacl-entrypoint"]']
    assert instructions("CMD") == ['["serve"]']
    [health] = instructions("HEALTHCHECK")
    assert health.endswith('CMD ["loacl-healthcheck"]')
    assert instructions("ARG")[0].startswith("BASE=docker.io/library/debian:bookworm-slim")
    # Every ENV name is a setting LOACL reads (or Python's own).
    names = {env_name(key) for key in Settings.model_fields}
    for key in image_env():
        assert key in names or key in ("PATH", "PYTHONUNBUFFERED"), key
    assert image_env()["LOACL_HOST"] == "0.0.0.0"
    assert image_env()["DATABASE_URL"] == "sqlite:////data/loacl.db"


def test_compose_runs_what_the_image_provides() -> None:
    master = base64.b64encode(b"m" * 32).decode()
    with pytest.raises(ComposeError, match="JWT_SECRET_KEY"):
        load_service(ROOT / "compose.yaml", {"LOACL_MASTER_KEY": master})
    with pytest.raises(ComposeError, match="LOACL_MASTER_KEY"):
        load_service(ROOT / "compose.yaml", {"JWT_SECRET_KEY": "k" * 48})
    service = load_service(ROOT / "compose.yaml",
                           {"JWT_SECRET_KEY": "k" * 48, "LOACL_MASTER_KEY": master})
    assert service.environment["JWT_SECRET_KEY"] == "k" * 48
    assert service.environment["LOACL_MASTER_KEY"] == master
    names = {env_name(key) for key in Settings.model_fields}
    for key in service.environment:
        assert key in names, f"compose.yaml sets {key}, which LOACL does not read"
    targets = dict(service.volumes)
    assert targets["data"] == "/data"
    # The file replica lives on the second volume, on a folder the image gives its user.
    replica = service.environment["LOACL_REPLICA_URL"]
    assert replica == f"file://{targets['replica']}"
    assert f"mkdir /data {targets['replica']}" in " ".join(instructions("RUN"))
    assert [p.rsplit(":", 1)[1] for p in service.ports] == instructions("EXPOSE")
    # Longer than LOACL's own bound on a shutdown, so Litestream gets its last sync in.
    grace = int(service.raw["stop_grace_period"].rstrip("s"))
    assert grace > Settings().shutdown_seconds


def test_interpolation_takes_defaults_not_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-of-the-person-running-the-check")
    assert interpolate("${OPENAI_API_KEY:-}", {}) == ""
    assert interpolate("${LOACL_PUBLIC_URL:-http://localhost:8000}", {}) == "http://localhost:8000"
    assert interpolate("${LOACL_PUBLIC_URL:-http://x}", {"LOACL_PUBLIC_URL": "https://y"}) \
        == "https://y"
    assert interpolate("a ${X} b", {}) == "a  b"
    with pytest.raises(ComposeError, match="X: say why"):
        interpolate("${X:?say why}", {"X": ""})


@pytest.mark.e2e
@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1", ""])
def test_healthcheck_asks_readyz_on_loacl_port(settings: Settings, host: str) -> None:
    with serve(create_app(settings)) as base:
        port = base.rsplit(":", 1)[1]
        env = {**os.environ, "LOACL_PORT": port, "LOACL_HOST": host}
        ok = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env,
                            capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    stopped = subprocess.run([sys.executable, str(HEALTHCHECK)], env=env,
                             capture_output=True, text=True)
    assert stopped.returncode == 1
    assert f":{port}/readyz" in stopped.stderr


def test_debian_mirror_from_either_sources_format() -> None:
    deb822 = (
        "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.test/debian-security\nSuites: bookworm-security\n"
    )
    assert debian_mirror([("debian.sources", deb822)]) == "http://mirror.test/debian"
    disabled = "Enabled: no\nTypes: deb\nURIs: http://off.test/debian\nSuites: bookworm\n\n"
    assert debian_mirror([("a.sources", disabled + deb822)]) == "http://mirror.test/debian"
    one_line = (
        "# deb http://commented.test/debian bookworm main\n"
        "deb-src http://src.test/debian bookworm main\n"
        "deb http://security.test/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.test/debian bookworm main\n"
    )
    assert debian_mirror([("sources.list", one_line)]) == "http://one.test/debian"
    assert debian_mirror([("other.list", "deb http://x.test/ubuntu jammy main\n")]) is None
    assert debian_mirror([("x.list.disabled", one_line)]) is None


def test_podman_ulimits_stay_within_the_hosts_limits(tmp_path: Path) -> None:
    assert ulimits(20000, 96363, 32768) == ["nofile=20000:20000", "nproc=32768:32768"]
    assert ulimits(1024, 4000, 32768) == ["nofile=1024:1024", "nproc=4000:4000"]
    conf = containers_conf(tmp_path, ["nofile=1:1"])
    assert 'runtime = "runc"' in conf and 'lock_type = "file"' in conf
    assert f'tmp_dir = "{tmp_path / "tmp"}"' in conf


def test_image_problems_name_what_is_missing() -> None:
    good = {
        "User": "10001:10001", "Volumes": {"/data": {}}, "ExposedPorts": {"8000/tcp": {}},
        "Healthcheck": {"Test": ["CMD", "loacl-healthcheck"]}, "StopSignal": "SIGTERM",
        "Entrypoint": ["loacl-entrypoint"], "Cmd": ["serve"],
        "Env": ["LOACL_HOST=0.0.0.0", "LOACL_PORT=8000", "LOACL_DATA_DIR=/data",
                "DATABASE_URL=sqlite:////data/loacl.db"],
    }
    assert image_problems(good) == []
    oci = {**good, "Healthcheck": None, "User": "", "Env": [*good["Env"], "JWT_SECRET_KEY=x"]}
    problems = " | ".join(image_problems(oci))
    assert "HEALTHCHECK" in problems and "non-root" in problems and "JWT_SECRET_KEY" in problems


def test_caddy_override_and_the_guide_show_the_shipped_caddyfile() -> None:
    caddyfile = ROOT / "deploy" / "Caddyfile"
    shipped = [line for line in caddyfile.read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    [shown] = re.findall(r"^```caddy\n(.*?)^```", (ROOT / "docs" / "deploy.md").read_text(),
                         re.S | re.M)
    assert shown.splitlines() == shipped
    given = {"LOACL_DOMAIN": "chat.example.com"}
    proxied = load_service(ROOT / "deploy" / "compose.caddy.yaml", given)
    names = {env_name(key) for key in Settings.model_fields}
    assert set(proxied.environment) <= names
    assert proxied.environment["LOACL_PUBLIC_URL"] == "https://chat.example.com"
    caddy = load_service(ROOT / "deploy" / "compose.caddy.yaml", given, name="caddy")
    # Paths in an override file are relative to the first file's folder, the repository's.
    assert ("./deploy/Caddyfile", "/etc/caddy/Caddyfile") in caddy.volumes
    with pytest.raises(ComposeError, match="LOACL_DOMAIN"):
        load_service(ROOT / "deploy" / "compose.caddy.yaml", {})
