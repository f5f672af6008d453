"""Audit the installed dependencies for known vulnerabilities with pip-audit (``.ci/run``).

The environment audited is the one this interpreter runs in: the dependency set the tests ran
against, resolved from ``pyproject.toml`` (LOACL itself, installed editable, is left out).
pip-audit asks a vulnerability service about each package: PyPI's JSON API first, then OSV.
When neither can be reached (CI reaches package indexes only, which may not serve the JSON
API), it says so in one clear line and exits 0: an audit that could not run is reported, not
failed. A known vulnerability fails the run (exit 1) and is listed with its fix versions.

    python scripts/audit_dependencies.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

SERVICES = ("pypi", "osv")
TIMEOUT_SECONDS = 15  # per request to the service
RUN_SECONDS = 600  # for a whole pip-audit run


@dataclass
class Audit:
    service: str
    audited: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    vulnerable: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""

    @property
    def reached(self) -> bool:
        """Whether the service answered for at least one package."""
        return not self.error and bool(self.audited)


def read_report(service: str, report: dict[str, Any]) -> Audit:
    """pip-audit's JSON report (``-f json``) as what was audited, skipped and found."""
    audit = Audit(service)
    for dependency in report.get("dependencies", []):
        name = f"{dependency['name']} {dependency.get('version', '')}".strip()
        if "skip_reason" in dependency:
            audit.skipped[name] = dependency["skip_reason"]
            continue
        audit.audited.append(name)
        found = [
            f"{vuln['id']} (fixed in {', '.join(vuln.get('fix_versions') or []) or 'no release'})"
            for vuln in dependency.get("vulns", [])
        ]
        if found:
            audit.vulnerable[name] = found
    return audit


def run_pip_audit(service: str) -> Audit:
    command = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner",
               "off", "--format", "json", "--vulnerability-service", service,
               "--timeout", str(TIMEOUT_SECONDS)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_SECONDS,
                              check=False)
    except subprocess.TimeoutExpired:
        return Audit(service, error=f"no answer within {RUN_SECONDS} s")
    try:
        report = json.loads(done.stdout)
    except ValueError:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return Audit(service, error=lines[-1] if lines else f"exit code {done.returncode}")
    return read_report(service, report)


def summary(audits: list[Audit]) -> tuple[list[str], int]:
    """What to print for the services tried in turn, and the exit code: 1 for a known
    vulnerability, else 0."""
    audit = audits[-1]
    if not audit.reached:
        why = "; ".join(
            f"{tried.service}: {tried.error or f'knew none of {len(tried.skipped)} packages'}"
            for tried in audits)
        return ([f"pip-audit: NOT AUDITED, no vulnerability service could be reached ({why}); "
                 "reported, not failed"], 0)
    lines = [f"pip-audit: {len(audit.audited)} packages audited against {audit.service}, "
             f"{len(audit.skipped)} skipped, {len(audit.vulnerable)} with known vulnerabilities"]
    lines += [f"  skipped {name}: {reason}" for name, reason in sorted(audit.skipped.items())]
    lines += [f"  VULNERABLE {name}: {'; '.join(found)}"
              for name, found in sorted(audit.vulnerable.items())]
    return lines, 1 if audit.vulnerable else 0


def main() -> int:
    audits: list[Audit] = []
    for service in SERVICES:
        audits.append(run_pip_audit(service))
        if audits[-1].reached:
            break
    lines, code = summary(audits)
    print("\n".join(lines))
    return code


if __name__ == "__main__":
    sys.exit(main())
