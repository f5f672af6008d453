"""A private podman for ``scripts/container-check``: its own storage, run and lock files in one
temporary folder, and a Debian base image made locally when no registry can be reached.

What these machines need (each found by trying): ``runc``, because ``crun`` fails on a host with
mixed cgroup v1/v2 mounts; ``default_ulimits`` no higher than what podman's own processes may
set, because podman's defaults are refused without CAP_SYS_RESOURCE; ``lock_type = "file"`` and a
private ``tmp_dir``, so that parallel runs on one machine do not share podman's lock files.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SUITE = "bookworm"

# What the official "slim" Debian images leave out (as debuerreotype makes them), applied to the
# debootstrapped tree so that the local base is the same size and shape.
SLIM_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
"""
SLIM_APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
"""


class CheckError(Exception):
    """A step of the check failed; the message says which and why."""


def debian_mirror(sources: Iterable[tuple[str, str]], suite: str = SUITE) -> str | None:
    """The archive URI apt uses for ``suite`` itself (not -updates or -security), from
    ``(file name, text)`` pairs of apt's source lists, one-line (``.list``) or deb822
    (``.sources``) format."""
    for name, text in sources:
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                if suite in fields.get("suites", "").split() and fields.get("uris"):
                    return fields["uris"].split()[0]
        elif name.endswith(".list"):
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                    return words[1]
    return None


def apt_sources(root: Path = Path("/etc/apt")) -> list[tuple[str, str]]:
    """apt's source lists as ``(file name, text)``, in the order apt reads them."""
    files = [root / "sources.list"] if (root / "sources.list").is_file() else []
    parts = root / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    return [(p.name, p.read_text()) for p in files]


def ulimits(nofile_hard: int, nproc_hard: int, pid_max: int) -> list[str]:
    """Container ulimits this host accepts: its hard limits. Podman runs its monitor with the
    process limit capped at ``kernel.pid_max``, so a container may not ask for more than that."""
    nproc = min(nproc_hard, pid_max)
    return [f"nofile={nofile_hard}:{nofile_hard}", f"nproc={nproc}:{nproc}"]


def host_ulimits() -> list[str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    unlimited = resource.RLIM_INFINITY
    return ulimits(
        nofile if nofile != unlimited else 1 << 20,
        nproc if nproc != unlimited else pid_max,
        pid_max,
    )


def containers_conf(home: Path, limits: Sequence[str]) -> str:
    quoted = ", ".join(f'"{limit}"' for limit in limits)
    return (
        "[containers]\n"
        f"default_ulimits = [{quoted}]\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'tmp_dir = "{home / "tmp"}"\n'
        'lock_type = "file"\n'
    )


def storage_conf(home: Path) -> str:
    return (
        "[storage]\n"
        'driver = "overlay"\n'
        f'graphroot = "{home / "storage"}"\n'
        f'runroot = "{home / "run"}"\n'
    )


@dataclass
class Podman:
    """podman run with the private configuration in ``home``."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, home: Path) -> Podman:
        for sub in ("tmp", "storage", "run"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        (home / "containers.conf").write_text(containers_conf(home, host_ulimits()))
        (home / "storage.conf").write_text(storage_conf(home))
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(home / "containers.conf")
        env["CONTAINERS_STORAGE_CONF"] = str(home / "storage.conf")
        return cls(home, env)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise CheckError(
                f"podman {' '.join(args[:3])} ... exited {result.returncode}:\n"
                + (result.stderr or result.stdout)[-3000:]
            )
        return result

    def reset(self) -> None:
        """Remove every container, image and volume, and unmount the private storage."""
        self("system", "reset", "--force", check=False, timeout=120)


def make_base_image(podman: Podman, tag: str, work: Path, cache: Path | None) -> None:
    """A Debian ``bookworm`` image like the official slim one, from the mirror apt uses:
    ``debootstrap --variant=minbase``, trimmed as the slim images are, then ``podman import``.
    With ``cache``, the trimmed tree's tarball is kept there and reused."""
    tarball = (cache or work) / f"debian-{SUITE}-minbase.tar"
    if not tarball.exists():
        mirror = debian_mirror(apt_sources())
        if mirror is None:
            raise CheckError(f"no Debian {SUITE} archive in apt's sources (/etc/apt)")
        root = work / "rootfs"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(root), mirror],
            capture_output=True, text=True, timeout=900,
        )
        if result.returncode != 0:
            raise CheckError("debootstrap failed:\n" + (result.stdout + result.stderr)[-3000:])
        slim(root)
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True
        )
        partial.rename(tarball)
        shutil.rmtree(root)
    podman("import", "--change", 'CMD ["bash"]', str(tarball), tag)


def slim(root: Path) -> None:
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*", "var/log/*", "usr/share/man/*", "usr/share/info/*",
                    "usr/share/locale/*", "usr/share/lintian/*"):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    for path in (root / "usr/share/doc").rglob("*"):
        if not path.is_dir() and path.name != "copyright":
            path.unlink()
    (root / "etc/dpkg/dpkg.cfg.d/slim").write_text(SLIM_DPKG_EXCLUDES)
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(SLIM_APT_CLEAN)
