from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from loacl.domain.errors import ConflictError, LoaclError
from loacl.http import errors
from loacl.http.app import create_app
from loacl.http.errors import ERRORS, error_table
from loacl.services.replies import REPLY_ERRORS
from loacl.settings import Settings
from scripts.update_readme import render

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "loacl"

# Callables whose argument is an error code, and which argument.
CODE_ARGS = {"LoaclError": 0, "ProviderError": 0, "problem": 1}
ERROR_BASES = {"LoaclError", "ProviderError"}
# Codes that no call in loacl/ names literally, each with where it comes from.
NOT_RAISED_BY_NAME = {
    **{code: "HTTP_CODES: Starlette's HTTPException" for code in errors.HTTP_CODES.values()},
    "http_error": "HTTP_CODES' fallback for any other HTTPException status",
    "interrupted": "written by the conversations projection's SQL for a reply cut short by a "
                   "restart; visitors get it in the stream's error frame",
}
# Code arguments that are not literals: each passes on the code of an error already made.
PASSED_ON = {"error.code", "exc.code", "code"}


def _literals(node: ast.expr) -> set[str]:
    """The codes an expression can be: a literal, or literals behind `a if c else b` / `a or b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _literals(node.body) | _literals(node.orelse)
    if isinstance(node, ast.BoolOp):
        return set().union(*(_literals(value) for value in node.values))
    return set()


def _code_argument(call: ast.Call, in_error_class: bool) -> ast.expr | None:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(
        func, ast.Attribute) else ""
    if in_error_class and name == "__init__":  # super().__init__("code", ...) in a subclass
        position = 0
    elif name in CODE_ARGS:
        position = CODE_ARGS[name]
    else:
        return None
    for keyword in call.keywords:
        if keyword.arg == "code":
            return keyword.value
    return call.args[position] if len(call.args) > position else None


def scan(source: str, *, frames: bool = False) -> tuple[set[str], list[str]]:
    """The error codes a module creates, and its code arguments that are not literals.
    ``frames``: also the ``"code"`` of dict literals (the WebSocket's error frames)."""
    tree = ast.parse(source)
    error_classes = {
        id(node) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
        and any(isinstance(b, ast.Name) and b.id in ERROR_BASES for b in node.bases)
    }
    codes: set[str] = set()
    opaque: list[str] = []

    def visit(node: ast.AST, in_error_class: bool) -> None:
        if isinstance(node, ast.Call):
            arg = _code_argument(node, in_error_class)
            if arg is not None:
                found = _literals(arg)
                codes.update(found)
                if not found:
                    opaque.append(ast.unparse(arg))
        if frames and isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "code":
                    codes.update(_literals(value))
        for child in ast.iter_child_nodes(node):
            visit(child, in_error_class or id(node) in error_classes)

    visit(tree, False)
    return codes, opaque


def _scan_package() -> tuple[dict[str, list[str]], list[str]]:
    raised: dict[str, list[str]] = {}
    opaque: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = str(path.relative_to(ROOT))
        codes, passed = scan(path.read_text(), frames=where.startswith("loacl/http/"))
        for code in codes:
            raised.setdefault(code, []).append(where)
        opaque += [f"{where}: {arg}" for arg in passed]
    return raised, opaque


def test_the_scan_finds_codes_however_they_are_made() -> None:
    source = '''
raise LoaclError("plain", "m")
raise LoaclError(code="keyword", message="m")
ProviderError("a" if x else "b", "m")
problem(503, "direct", "m")
LoaclError(reply["error_code"] or "fallback", "m")
LoaclError(exc.code, "m")
send({"type": "error", "code": "framed"})
class Sub(LoaclError):
    def __init__(self) -> None:
        super().__init__("subclassed", "m")
class Other:
    def __init__(self) -> None:
        super().__init__("not_an_error")
'''
    codes, opaque = scan(source, frames=True)
    assert codes == {"plain", "keyword", "a", "b", "direct", "fallback", "framed", "subclassed"}
    assert opaque == ["exc.code"]


def test_every_raised_code_is_in_the_table() -> None:
    raised, _ = _scan_package()
    assert len(raised) > 40  # the scan works on the real package
    assert ConflictError("s", 1, 2).code in raised
    missing = {code: where for code, where in raised.items() if code not in ERRORS}
    assert missing == {}, "add these to ERRORS in loacl/http/errors.py"


def test_every_code_argument_is_a_literal_or_passes_one_on() -> None:
    _, opaque = _scan_package()
    assert {entry.split(": ", 1)[1] for entry in opaque} <= PASSED_ON, opaque


def test_every_table_entry_is_raised_somewhere() -> None:
    raised, _ = _scan_package()
    never = set(ERRORS) - set(raised) - set(NOT_RAISED_BY_NAME)
    assert never == set(), "remove these from ERRORS, or say in NOT_RAISED_BY_NAME why not"
    assert set(NOT_RAISED_BY_NAME) <= set(ERRORS)
    assert set(REPLY_ERRORS) <= set(ERRORS)


def test_statuses_and_meanings() -> None:
    for code, error in ERRORS.items():
        assert 400 <= error.status < 600, code
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code), code
        assert error.meaning and "|" not in error.meaning, code
    # Faults of the server, its database or its provider never read as a client's mistake.
    for code in ("store_error", "unknown_schema_version", "unknown_event_type", "log_damaged",
                 "internal_error", "migration_failed", "store_unavailable", "store_closed",
                 "database_unavailable", "schema_too_new", "provider_error",
                 "provider_unavailable"):
        assert ERRORS[code].status >= 500, code


def _docstring_by_status() -> dict[int, set[str]]:
    doc = errors.__doc__ or ""
    block = doc.split("And by status::", 1)[1]
    grouped: dict[int, set[str]] = {}
    status = 0
    for line in block.splitlines():
        match = re.match(r"\s+(\d{3}) (.*)", line)
        if match:
            status, line = int(match[1]), match[2]
        grouped.setdefault(status, set()).update(re.findall(r"[a-z][a-z0-9_]+", line))
    grouped.pop(0, None)
    return grouped


def test_the_module_docstring_lists_every_code_under_its_status() -> None:
    expected: dict[int, set[str]] = {}
    for code, error in ERRORS.items():
        expected.setdefault(error.status, set()).add(code)
    assert _docstring_by_status() == expected


def test_the_readme_error_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert error_table() in readme, "run: python scripts/update_readme.py"
    assert render(readme) == readme, "run: python scripts/update_readme.py"


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
def client(settings: Settings) -> TestClient:
    async def fail(request: object) -> None:
        raise LoaclError(request.path_params["code"], "it failed")  # type: ignore[attr-defined]

    app = create_app(settings)
    app.router.routes.append(Route("/fail/{code}", fail))
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(("code", "status"), [
    ("email_taken", 409), ("store_error", 500), ("unknown_schema_version", 500),
    ("database_unavailable", 503), ("provider_error", 502), ("version_conflict", 412),
])
def test_a_code_answers_with_its_status(client: TestClient, code: str, status: int) -> None:
    with client:
        response = client.get(f"/fail/{code}")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def test_an_unmapped_code_is_a_logged_500(client: TestClient) -> None:
    with client, capture_logs() as logs:
        response = client.get("/fail/no_such_code")
    assert response.status_code == 500
    assert response.json()["code"] == "no_such_code"
    assert {"event": "http.unmapped_error_code", "code": "no_such_code",
            "log_level": "error"} in logs
