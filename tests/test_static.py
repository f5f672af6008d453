"""The widget script as LOACL serves it (caching, versions, gzip, integrity, size budget), the
home page, and the demo assistant and widget made at start-up."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from loacl.http.app import create_app
from loacl.http.static import accepts_gzip, own_origins, widget_extra, widget_script
from loacl.services.demo import DEMO_OWNER
from loacl.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "loacl" / "static" / "widget.js"
BUILT_EXTRA = ROOT / "loacl" / "static" / "widget-extra.js"
SOURCES = ROOT / "widget" / "src"
# The gzipped first file as served (what every visitor loads): BUDGET is the hard cap, GOAL where
# it should get to. The second file loads only when a visitor attaches a file, fills in the
# pre-chat form or comments on a rating.
BUDGET = 15 * 1024
GOAL = 12 * 1024
EXTRA_BUDGET = 4 * 1024


def source_hash() -> str:
    """The hash whose first 16 hex digits widget/build.mjs writes in the banner: each file of
    widget/src/, by name, as "src/<name>\\n<length in bytes>\\n<bytes>"."""
    digest = hashlib.sha256()
    for path in sorted(SOURCES.iterdir(), key=lambda item: item.name.encode()):
        data = path.read_bytes()
        digest.update(f"src/{path.name}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with the home page's demo on (as in production)."""
    return settings.model_copy(update={"demo_widget": True})


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def event_types(settings: Settings) -> list[str]:
    conn = sqlite3.connect(settings.database_path)
    try:
        return [row[0] for row in conn.execute("SELECT type FROM events ORDER BY seq")]
    finally:
        conn.close()


# -- the built file -------------------------------------------------------------------------------


@pytest.mark.parametrize("built", [BUILT, BUILT_EXTRA], ids=lambda p: p.name)
def test_the_built_script_matches_its_source(built: Path) -> None:
    banner = built.read_text(encoding="utf-8").split("\n", 1)[0]
    match = re.search(r"sha256:([0-9a-f]{16}) ", banner)
    assert match, banner
    assert match.group(1) == source_hash()[:16], (
        f"widget/src changed: run widget/build.sh and commit loacl/static/{built.name}"
    )


def test_the_gzipped_scripts_fit_the_size_budget(client: TestClient) -> None:
    response = client.get("/widget.js", headers={"Accept-Encoding": "gzip"})
    sent = int(response.headers["content-length"])
    extra = client.get(f"/widget/extra.{widget_extra().version}.js",
                       headers={"Accept-Encoding": "gzip"})
    extra_sent = int(extra.headers["content-length"])
    print(f"\nwidget.js (first load): {len(response.content)} bytes, {sent} bytes gzipped "
          f"(hard cap {BUDGET}, goal {GOAL}); widget-extra.js (on demand): "
          f"{len(extra.content)} bytes, {extra_sent} bytes gzipped (budget {EXTRA_BUDGET})")
    assert response.headers["content-encoding"] == "gzip"
    assert extra.headers["content-encoding"] == "gzip"
    assert sent <= BUDGET
    assert extra_sent <= EXTRA_BUDGET


def test_the_first_file_names_the_second_with_its_integrity(client: TestClient) -> None:
    """widget.js loads the second file from its immutable URL, and only with the hash of the
    bytes the server sends there."""
    extra = widget_extra()
    script = BUILT.read_text(encoding="utf-8")
    assert f"/widget/extra.{extra.version}.js" in script
    assert f'"{extra.integrity}"' in script
    response = client.get(f"/widget/extra.{extra.version}.js")
    assert response.status_code == 200
    assert response.content == BUILT_EXTRA.read_bytes()
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["access-control-allow-origin"] == "*"  # integrity needs CORS
    digest = base64.b64encode(hashlib.sha384(response.content).digest()).decode()
    assert extra.integrity == f"sha384-{digest}"
    assert client.get("/widget/extra.0123456789abcdef.js").status_code == 404


def test_the_script_never_parses_model_text_as_html() -> None:
    source = "".join(path.read_text(encoding="utf-8") for path in sorted(SOURCES.iterdir()))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", "setAttribute(\"style\""):
        assert sink not in source, sink


# -- serving it -----------------------------------------------------------------------------------


def test_widget_js_is_cached_briefly_and_revalidated(client: TestClient) -> None:
    item = widget_script()
    plain = client.get("/widget.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200
    assert plain.content == BUILT.read_bytes()
    assert plain.headers["content-type"] == "text/javascript; charset=utf-8"
    assert plain.headers["cache-control"] == "public, max-age=300"
    assert plain.headers["etag"] == item.etag
    assert "content-encoding" not in plain.headers
    assert plain.headers["vary"] == "Accept-Encoding"
    assert plain.headers["access-control-allow-origin"] == "*"
    assert plain.headers["x-content-type-options"] == "nosniff"

    again = client.get("/widget.js", headers={"If-None-Match": item.etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == item.etag
    weak = client.get("/widget.js", headers={"If-None-Match": f'"other", W/{item.etag}'})
    assert weak.status_code == 304
    stale = client.get("/widget.js", headers={"If-None-Match": '"other"'})
    assert stale.status_code == 200


def test_widget_js_is_gzipped_when_accepted(client: TestClient) -> None:
    # httpx decodes gzip itself; the raw stream shows what was sent.
    with client.stream("GET", "/widget.js", headers={"Accept-Encoding": "gzip"}) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(raw) == BUILT.read_bytes()


@pytest.mark.parametrize(
    ("header", "expected"),
    [("gzip", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False), ("GZIP; q=0.000", False),
     ("*", True), ("identity", False), ("", False), ("deflate, br", False)],
)
def test_accept_encoding(header: str, expected: bool) -> None:
    from starlette.requests import Request

    request = Request({"type": "http", "headers": [(b"accept-encoding", header.encode())]})
    assert accepts_gzip(request) is expected


def test_the_versioned_url_is_cacheable_for_good(client: TestClient) -> None:
    item = widget_script()
    for url in (f"/widget/{item.version}.js", f"/widget.js?v={item.version}"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.content == BUILT.read_bytes()
    other = client.get("/widget.js?v=0000")
    assert other.headers["cache-control"] == "public, max-age=300"
    old = client.get("/widget/0123456789abcdef.js", follow_redirects=False)
    assert old.status_code == 307
    assert old.headers["location"] == "/widget.js"
    assert old.headers["cache-control"] == "no-cache"
    missing = client.get("/widget/nope.txt")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"


def test_the_manifest_gives_the_integrity_hash(client: TestClient) -> None:
    body = client.get("/widget.json").json()
    data = BUILT.read_bytes()
    digest = base64.b64encode(hashlib.sha384(data).digest()).decode()
    assert body["integrity"] == f"sha384-{digest}"
    assert body["version"] == hashlib.sha256(data).hexdigest()[:16]
    assert body["script_url"] == "http://testserver/widget.js"
    assert body["versioned_url"] == f"http://testserver/widget/{body['version']}.js"
    assert body["bytes"] == len(data)
    assert body["gzip_bytes"] == len(gzip.compress(data, 9, mtime=0))


# -- the home page and its demo -----------------------------------------------------------------


def test_the_home_page_embeds_the_demo_widget(client: TestClient, settings: Settings) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page = response.text
    assert 'href="/docs"' in page and 'href="/api/v1/openapi.json"' in page
    assert 'href="/console/"' in page
    item = widget_script()
    match = re.search(r'<script src="([^"]+)" integrity="([^"]+)" crossorigin="anonymous" '
                      r'data-widget-id="([0-9a-f]+)" async></script>', page)
    assert match, page
    assert match.group(1) == f"/widget/{item.version}.js"
    assert match.group(2) == item.integrity
    widget_id = match.group(3)
    # The page's own origin may embed it; others may not.
    own = client.get(f"/api/v1/widgets/{widget_id}/config",
                     headers={"Origin": "http://testserver"})
    assert own.status_code == 200
    assert own.json()["settings"]["title"] == "LOACL demo"
    other = client.get(f"/api/v1/widgets/{widget_id}/config",
                       headers={"Origin": "https://evil.example"})
    assert other.status_code == 403
    assert other.json()["code"] == "origin_not_allowed"


def test_a_made_up_host_allows_no_origin(client: TestClient, settings: Settings) -> None:
    before = event_types(settings)
    response = client.get("/", headers={"Host": "evil.example"})
    assert "<script src=\"/widget/" not in response.text
    assert "LOACL_PUBLIC_URL" in response.text
    assert event_types(settings) == before
    widget_id = client.app.state.demo.widget_id  # type: ignore[attr-defined]
    refused = client.get(f"/api/v1/widgets/{widget_id}/config",
                         headers={"Origin": "http://evil.example"})
    assert refused.status_code == 403


def test_a_same_origin_get_without_origin_is_the_servers_own(
    client: TestClient,
) -> None:
    client.get("/")
    widget_id = client.app.state.demo.widget_id  # type: ignore[attr-defined]
    url = f"/api/v1/widgets/{widget_id}/config"
    assert client.get(url, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert client.get(url, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.get(url).status_code == 403


def _scope(host: str, server: tuple[str, int] | None, scheme: str = "http") -> dict[str, Any]:
    return {"type": "http", "scheme": scheme, "server": server, "path": "/",
            "headers": [(b"host", host.encode())] if host else []}


@pytest.mark.parametrize(
    ("host", "server", "scheme", "expected"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000), "http", ["http://127.0.0.1:8000"]),
        ("localhost:8000", ("127.0.0.1", 8000), "http", ["http://localhost:8000"]),
        ("LOCALHOST:8000", ("127.0.0.1", 8000), "http", ["http://localhost:8000"]),
        ("192.168.1.5:8000", ("192.168.1.5", 8000), "http", ["http://192.168.1.5:8000"]),
        ("localhost:8000", ("192.168.1.5", 8000), "http", []),
        ("evil.example:8000", ("127.0.0.1", 8000), "http", []),
        ("127.0.0.1:9000", ("127.0.0.1", 8000), "http", []),
        ("127.0.0.1", ("127.0.0.1", 8000), "http", []),
        ("", ("127.0.0.1", 8000), "http", []),
        ("127.0.0.1:8000", None, "http", []),
        ("127.0.0.1:bad", ("127.0.0.1", 8000), "http", []),
        ("[::1]:8000", ("::1", 8000), "http", []),
        ("example.com", ("example.com", 443), "https", ["https://example.com"]),
    ],
)
def test_own_origins(
    settings: Settings, host: str, server: tuple[str, int] | None, scheme: str,
    expected: list[str],
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request

    app = Starlette()
    app.state.settings = settings
    request = Request({**_scope(host, server, scheme), "app": app})
    assert own_origins(request) == expected
    app.state.settings = settings.model_copy(update={"public_url": "https://chat.example.com/x"})
    assert own_origins(request) == ["https://chat.example.com"]


def test_the_demo_is_made_once_and_kept_across_restarts(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        first = client.app.state.demo.widget_id  # type: ignore[attr-defined]
        client.get("/")  # allows http://testserver: one update
    types = event_types(settings)
    assert types == ["assistant.created", "widget.created", "widget.updated"]
    for _ in range(2):
        with TestClient(create_app(settings)) as client:
            assert client.app.state.demo.widget_id == first  # type: ignore[attr-defined]
            client.get("/")
        assert event_types(settings) == types  # the log does not grow on every start
    conn = sqlite3.connect(settings.database_path)
    try:
        owners = conn.execute("SELECT owner_id FROM widgets").fetchall()
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
    finally:
        conn.close()
    assert owners == [(DEMO_OWNER,)]
    assert users == 0  # the demo owner is no account: nobody can log in as it


def test_the_demo_follows_the_configuration(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        client.get("/")
    keyed = settings.model_copy(update={
        "openai_api_key": "sk-test", "public_url": "https://chat.example.com",
    })
    with TestClient(create_app(keyed)) as client:
        widget_id = client.app.state.demo.widget_id  # type: ignore[attr-defined]
        page = client.get("/").text
        assert "answers come from OpenAI" in page
        assert 'src="https://chat.example.com/widget.js"' in page
        assert client.get(f"/api/v1/widgets/{widget_id}/config",
                          headers={"Origin": "https://chat.example.com"}).status_code == 200
        assert client.get(f"/api/v1/widgets/{widget_id}/config",
                          headers={"Origin": "http://testserver"}).status_code == 403
    types = event_types(settings)
    assert types[3:] == ["assistant.updated", "widget.updated"]
    conn = sqlite3.connect(settings.database_path)
    try:
        provider = conn.execute("SELECT json_extract(definition, '$.provider') FROM assistants")
        assert provider.fetchall() == [("openai",)]
    finally:
        conn.close()


def test_without_the_demo_the_home_page_says_so(settings: Settings) -> None:
    quiet = settings.model_copy(update={"demo_widget": False})
    with TestClient(create_app(quiet)) as client:
        page = client.get("/").text
    assert "<script src=\"/widget/" not in page
    assert "LOACL_DEMO_WIDGET" in page
    assert event_types(quiet) == []


def test_demo_origins_keep_the_newest_few(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        demo = client.app.state.demo  # type: ignore[attr-defined]
        portal = client.portal
        assert portal is not None
        origins = [f"http://127.0.0.1:{8000 + n}" for n in range(12)]
        for origin in origins:
            assert portal.call(demo.allow, [origin]) is True
        widget = portal.call(demo.widgets.get, DEMO_OWNER, demo.widget_id)
        assert list(widget.definition.allowed_origins) == origins[::-1][:8]
        assert portal.call(demo.allow, []) is False
