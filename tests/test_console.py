"""The owner console as LOACL serves it: the committed build matches its sources, its first load
fits the size budget, every console route answers with the page, and the pages carry a strict
Content-Security-Policy with no inline script. The console in a browser is in
tests/test_console_browser.py."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from loacl.http.app import create_app
from loacl.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "loacl" / "static" / "console"
BUDGET = 60 * 1024  # the first load: JS + CSS, gzipped


def sources() -> list[str]:
    """What console/build.mjs hashes: console/src/**, the lock file and the widget's parser."""
    found = [path.relative_to(ROOT).as_posix() for path in (ROOT / "console" / "src").rglob("*")
             if path.is_file()]
    return sorted([*found, "console/package-lock.json", "widget/src/markdown.js"],
                  key=lambda name: name.encode())


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in sources():
        data = (ROOT / name).read_bytes()
        digest.update(f"{name}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def first_load(page: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/console/assets/[^"]+)"', page)


# -- the built files ------------------------------------------------------------------------------


def test_the_build_matches_its_sources() -> None:
    banner = (BUILT / "index.html").read_text(encoding="utf-8").split("\n", 1)[0]
    match = re.search(r"sha256:([0-9a-f]{16}) ", banner)
    assert match, banner
    assert match.group(1) == source_hash()[:16], (
        "console/src changed: run console/build.sh and commit loacl/static/console/"
    )


def test_the_build_ships_only_what_the_pages_name() -> None:
    named = set()
    for page in ("index.html", "preview.html"):
        named |= {url.rsplit("/", 1)[1] for url in first_load((BUILT / page).read_text())}
    shipped = {path.name for path in (BUILT / "assets").iterdir()}
    assert shipped == named | {"THIRD_PARTY.txt"}


def test_the_first_load_fits_the_budget(client: TestClient) -> None:
    page = client.get("/console/").text
    urls = first_load(page)
    assert sorted(url.rsplit(".", 1)[1] for url in urls) == ["css", "js"]
    sizes = {}
    for url in urls:
        response = client.get(url, headers={"Accept-Encoding": "gzip"})
        assert response.headers["content-encoding"] == "gzip"
        sizes[url] = int(response.headers["content-length"])
    total = sum(sizes.values())
    print(f"\nconsole first load: {total} bytes gzipped (budget {BUDGET}): {sizes}")
    assert total <= BUDGET


def test_the_console_never_parses_text_as_html() -> None:
    for path in (ROOT / "console" / "src").rglob("*.ts*"):
        source = path.read_text(encoding="utf-8")
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "dangerouslySetInnerHTML",
                     "document.write", "eval(", "new Function"):
            assert sink not in source, (path, sink)


def test_every_language_has_every_string() -> None:
    table = (ROOT / "console" / "src" / "strings.ts").read_text(encoding="utf-8")
    keys = {}
    for name in ("en", "fr", "ar"):
        block = re.split(rf"^const {name}[^{{]*\{{", table, flags=re.M)[1].split("\n};")[0]
        keys[name] = set(re.findall(r"^\s+(\w+):", block, re.M))
    assert keys["en"] and keys["fr"] == keys["en"] and keys["ar"] == keys["en"]


# -- serving --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/console/", "/console/login", "/console/verify?token=abc", "/console/reset?token=abc",
    "/console/widgets/w_123", "/console/conversations/c/1", "/console/anything/else",
])
def test_every_console_route_is_the_page(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == (BUILT / "index.html").read_bytes()
    assert response.headers["cache-control"] == "no-cache"


def test_the_bare_path_redirects(client: TestClient) -> None:
    response = client.get("/console", follow_redirects=False)
    assert response.status_code == 308
    assert response.headers["location"] == "/console/"


def test_the_page_has_a_strict_policy_and_no_inline_script(client: TestClient) -> None:
    response = client.get("/console/")
    csp = dict(part.strip().split(" ", 1) for part in
               response.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"
    assert csp["style-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["frame-src"] == "'self'"
    assert csp["base-uri"] == "'none'"
    assert csp["connect-src"] == "'self' ws://testserver"
    assert "unsafe" not in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    page = response.text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="/console/assets/' in attrs and not body.strip()
                           for attrs, body in scripts)
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son\w+=", page)  # no inline event handlers


def test_the_preview_may_be_framed_by_the_console_only(client: TestClient) -> None:
    response = client.get("/console/preview.html")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe" not in csp
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert "<script src=\"/console/assets/preview-" in response.text


def test_assets_are_cached_for_good(client: TestClient) -> None:
    [script] = [url for url in first_load(client.get("/console/").text) if url.endswith(".js")]
    response = client.get(script, headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "access-control-allow-origin" not in response.headers
    assert response.content == (BUILT / script.removeprefix("/console/")).read_bytes()
    with client.stream("GET", script, headers={"Accept-Encoding": "gzip"}) as streamed:
        raw = b"".join(streamed.iter_raw())
    assert gzip.decompress(raw) == response.content
    for missing in ("/console/assets/nope.js", "/console/assets/index.html",
                    "/console/assets/THIRD_PARTY.TXT"):
        refused = client.get(missing)
        assert refused.status_code == 404, missing
        assert refused.json()["code"] == "not_found"


def test_the_home_page_links_to_the_console(client: TestClient) -> None:
    assert 'href="/console/"' in client.get("/").text
