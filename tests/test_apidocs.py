"""The interactive API reference at /docs/try (Swagger UI, vendored from npm) and the plain list
at /docs: the committed files are the ones the manifest and the lockfile name, the wheel ships
them, the pages link to each other under a strict CSP, the assets are cached for good and
gzipped, and in real Chromium the page loads with no request leaving the server and sends a
request with the bearer token entered under Authorize.

Without Chromium the browser test skips locally and fails under CI (``CI=true``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from loacl.http.apidocs import ASSETS
from loacl.http.app import create_app
from loacl.http.csp import policy, style_hash
from loacl.http.static import FOREVER
from loacl.settings import Settings
from tests.live import serve
from tests.test_widget import PASSWORD, TIMEOUT_MS, _launch, _need_chromium, _settings

ROOT = Path(__file__).resolve().parent.parent
VENDORED = ROOT / "loacl" / "static" / "apidocs"
NPM = ROOT / "apidocs"


def manifest() -> dict[str, object]:
    loaded: dict[str, object] = json.loads((VENDORED / "manifest.json").read_bytes())
    return loaded


# -- the vendored files --------------------------------------------------------------------------


def test_the_committed_files_are_the_ones_the_manifest_names() -> None:
    found = manifest()
    files = found["files"]
    assert isinstance(files, dict)
    on_disk = {path.name for path in VENDORED.iterdir()} - {"manifest.json"}
    assert on_disk == set(files), "a file is missing from the manifest, or from the folder"
    for name, recorded in files.items():
        data = (VENDORED / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == recorded["sha256"], name
        assert len(data) == recorded["bytes"], name
    # What the page loads is among them; the licence texts go along.
    served = {file.removeprefix("apidocs/") for file, _ in ASSETS.values()
              if file.startswith("apidocs/")}
    assert served == {"swagger-ui-bundle.js", "swagger-ui.css"}
    assert served | {"LICENSE", "NOTICE"} <= set(files)


def test_the_manifest_names_the_pinned_and_locked_version() -> None:
    found = manifest()
    package = found["package"]
    assert package == "swagger-ui-dist"
    pinned = json.loads((NPM / "package.json").read_bytes())["devDependencies"][package]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"not an exact version: {pinned}"
    locked = json.loads((NPM / "package-lock.json").read_bytes())["packages"]
    assert locked[""]["devDependencies"][package] == pinned
    entry = locked[f"node_modules/{package}"]
    assert found["version"] == entry["version"] == pinned
    assert found["integrity"] == entry["integrity"]
    assert str(found["integrity"]).startswith("sha512-")


def test_the_wheel_ships_every_static_file() -> None:
    """pyproject's package-data globs (setuptools: relative to the package, ``*`` does not
    descend into folders) take in every file under loacl/static/, the vendored ones too."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["loacl"]
    package = ROOT / "loacl"
    shipped = {path for pattern in globs for path in package.glob(pattern) if path.is_file()}
    static = {path for path in (package / "static").rglob("*") if path.is_file()}
    assert static - shipped == set()
    assert VENDORED / "swagger-ui-bundle.js" in shipped


# -- the policy ----------------------------------------------------------------------------------


def test_the_policy_starts_from_nothing_and_never_allows_inline_script() -> None:
    assert policy() == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    bare = policy(scripts=(), styles=(style_hash("b{}"),), images=(), connect=())
    assert "script-src" not in bare and "img-src" not in bare and "connect-src" not in bare
    assert "style-src 'sha256-" in bare
    for unsafe in ("'unsafe-inline'", "'unsafe-eval'", "'UNSAFE-EVAL'", "data:", "*"):
        with pytest.raises(ValueError, match="script-src"):
            policy(scripts=("'self'", unsafe))


# -- the pages, served ---------------------------------------------------------------------------


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def asset_urls(page: str) -> list[str]:
    return re.findall(r"(?:src|href)='(/docs/assets/[^']+)'", page)


def test_the_plain_list_and_the_interactive_page_link_each_other(client: TestClient) -> None:
    plain = client.get("/docs")
    assert plain.status_code == 200
    assert "href='/docs/try'" in plain.text
    assert "<script" not in plain.text
    page = client.get("/docs/try")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert "href='/docs'" in page.text
    home = client.get("/")
    assert 'href="/docs/try"' in home.text and 'href="/docs"' in home.text


def test_the_interactive_page_runs_no_inline_script(client: TestClient) -> None:
    response = client.get("/docs/try")
    page = response.text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert len(scripts) == 2
    for attributes, body in scripts:
        assert re.search(r"src='/docs/assets/[0-9a-f]{16}/[\w.-]+\.js'", attributes)
        assert body.strip() == ""
    assert "<style" not in page and " style=" not in page and "onload=" not in page
    directives = {
        name: sources for name, _, sources in
        (part.partition(" ") for part in response.headers["content-security-policy"].split("; "))
    }
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["style-src"] == "'self'"  # no 'unsafe-inline', even for styles
    for name in ("frame-ancestors", "object-src", "base-uri", "form-action"):
        assert directives[name] == "'none'", name
    assert "unsafe" not in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


def test_the_assets_are_cached_for_good_and_gzipped(client: TestClient) -> None:
    urls = asset_urls(client.get("/docs/try").text)
    assert {url.rsplit("/", 1)[-1] for url in urls} == set(ASSETS)
    files = manifest()["files"]
    assert isinstance(files, dict)
    sizes = {}
    for url in urls:
        name = url.rsplit("/", 1)[-1]
        plain = client.get(url, headers={"Accept-Encoding": "identity"})
        assert plain.status_code == 200, url
        assert "content-encoding" not in plain.headers
        assert plain.headers["cache-control"] == FOREVER
        assert plain.headers["cross-origin-resource-policy"] == "same-origin"
        assert "access-control-allow-origin" not in plain.headers
        digest = hashlib.sha256(plain.content).hexdigest()
        assert url.split("/")[3] == digest[:16]  # the URL names the content
        vendored = ASSETS[name][0].removeprefix("apidocs/")
        if vendored in files:
            assert digest == files[vendored]["sha256"]
        # Raw bytes on the wire: gzip, as the browser gets it.
        with client.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as zipped:
            wire = b"".join(zipped.iter_raw())
            assert zipped.headers["content-encoding"] == "gzip"
            assert zipped.headers["vary"] == "Accept-Encoding"
        assert gzip.decompress(wire) == plain.content
        sizes[name] = len(wire)
        again = client.get(url, headers={"If-None-Match": plain.headers["etag"]})
        assert again.status_code == 304
    page = len(gzip.compress(client.get("/docs/try").content, 9))
    spec = len(gzip.compress(client.get("/api/v1/openapi.json").content, 9))
    total = sum(sizes.values()) + page + spec
    print(f"\n/docs/try loads {total:,} bytes gzipped: the page {page:,}, the API document "
          f"{spec:,} (not gzipped as served), "
          + ", ".join(f"{name} {size:,}" for name, size in sorted(sizes.items())))
    assert sizes["swagger-ui-bundle.js"] < 600_000


@pytest.mark.parametrize("path", [
    "/docs/assets/0000000000000000/swagger-ui-bundle.js",  # not the current version
    "/docs/assets/{version}/index.html",  # not one of the files served
    "/docs/assets/{version}/..%2Fwidget.js",
    "/docs/assets/{version}/manifest.json",
])
def test_no_other_file_is_served(client: TestClient, path: str) -> None:
    version = asset_urls(client.get("/docs/try").text)[0].split("/")[3]
    response = client.get(path.format(version=version))
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# -- in the browser ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_the_reference_loads_offline_and_sends_a_request_with_the_token(
    tmp_path: Path,
) -> None:
    _need_chromium()
    from playwright.sync_api import Route, sync_playwright

    settings = _settings(tmp_path, demo_widget=False)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=10) as http:
        owner = {"email": "owner@example.com", "password": PASSWORD}
        assert http.post("/api/v1/auth/register", json=owner).status_code == 202
        token = http.post("/api/v1/auth/login", json=owner).json()["access_token"]
        made = http.post("/api/v1/assistants", headers={"Authorization": f"Bearer {token}"},
                         json={"name": "Shop helper", "provider": "demo", "model": "demo"})
        assert made.status_code == 201, made.text

        with sync_playwright() as pw:
            browser = _launch(pw)
            try:
                context = browser.new_context()
                context.set_default_timeout(TIMEOUT_MS * 2)
                requests: list[tuple[str, str, str]] = []
                elsewhere: list[str] = []

                # Every request the page makes; any to another origin is recorded and stopped.
                def route(route_: Route) -> None:
                    if not route_.request.url.startswith(url + "/"):
                        elsewhere.append(route_.request.url)
                        route_.abort()
                    else:
                        route_.continue_()

                context.route("**/*", route)
                page = context.new_page()
                page.on("request", lambda r: requests.append(
                    (r.method, r.url, r.headers.get("authorization", ""))))
                problems: list[str] = []
                page.on("pageerror", lambda error: problems.append(str(error)))
                page.on("console", lambda m: problems.append(m.text)
                        if m.type == "error" else None)
                page.add_init_script(
                    "window.__violations = [];"
                    "document.addEventListener('securitypolicyviolation', (e) =>"
                    " window.__violations.push([e.violatedDirective, e.blockedURI]));"
                )

                page.goto(f"{url}/docs/try")
                page.get_by_role("button", name="Authorize").first.click()
                modal = page.locator(".modal-ux")
                scheme = modal.locator(".auth-container").filter(has_text="ownerToken")
                scheme.locator("input").fill(token)
                scheme.get_by_role("button", name="Apply credentials").click()
                modal.get_by_role("button", name="Close").first.click()

                operation = page.locator("#operations-assistants-get_api_v1_assistants")
                operation.locator(".opblock-summary").click()
                operation.get_by_role("button", name="Execute").click()
                answer = operation.locator(".live-responses-table")
                answer.locator(".response-col_status", has_text="200").wait_for()
                assert "Shop helper" in answer.inner_text()
                # The models render (nested schema tables) under the policy as well.
                page.locator("section.models .json-schema-2020-12-expand-deep-button").first \
                    .click()

                assert page.evaluate("window.__violations") == []
                assert elsewhere == []
                assert problems == []
                origins = {f"{urlsplit(u).scheme}://{urlsplit(u).netloc}"
                           for _, u, _ in requests}
                assert origins == {url}, requests
                paths = [urlsplit(u).path for _, u, _ in requests]
                assert paths[0] == "/docs/try"
                assert "/api/v1/openapi.json" in paths
                assert ("GET", f"{url}/api/v1/assistants", f"Bearer {token}") in requests
            finally:
                browser.close()
