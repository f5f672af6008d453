"""Read compose.yaml's ``loacl`` service: what scripts/container-check runs and what
tests/test_container.py holds against the Containerfile."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# ${NAME}, ${NAME:-default} and ${NAME:?message}, as compose reads them; the values come from
# the caller's mapping only, never from the environment of whoever runs the check.
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


class ComposeError(Exception):
    """A ${NAME:?message} variable has no value."""


@dataclass(frozen=True)
class Service:
    image: str
    environment: dict[str, str]
    volumes: list[tuple[str, str]]  # (named volume, path in the container)
    ports: list[str]
    raw: dict[str, Any]


def interpolate(value: str, given: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if given.get(name):
            return given[name]
        if kind == "?":
            raise ComposeError(f"{name}: {rest}")
        return rest or ""

    return _VARIABLE.sub(one, value)


def load_service(path: Path, given: Mapping[str, str], name: str = "loacl") -> Service:
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
        environment={k: interpolate(str(v), given) for k, v in environment.items()},
        volumes=volumes,
        ports=[str(p) for p in raw.get("ports") or []],
        raw=raw,
    )
