"""Read compose.yaml's ``loacl`` service: what scripts/container-check runs and what
tests/test_container.py holds against the Containerfile."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# ${NAME:-default} and ${NAME-default} give the default, ${NAME} gives "" (as compose does
# when NAME is unset: the check never reads the caller's environment into the container).
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


@dataclass(frozen=True)
class Service:
    image: str
    environment: dict[str, str]
    volumes: list[tuple[str, str]]  # (named volume, path in the container)
    ports: list[str]
    raw: dict[str, Any]


def interpolate(value: str) -> str:
    return _VARIABLE.sub(lambda m: m.group(2) or "", value)


def load_service(path: Path, name: str = "loacl") -> Service:
    document = yaml.safe_load(path.read_text())
    raw = document["services"][name]
    environment = raw.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    volumes = []
    for entry in raw.get("volumes") or []:
        source, target = str(entry).split(":")[:2]
        volumes.append((source, target))
    return Service(
        image=str(raw.get("image", "")),
        environment={k: interpolate(str(v)) for k, v in environment.items()},
        volumes=volumes,
        ports=[str(p) for p in raw.get("ports") or []],
        raw=raw,
    )
