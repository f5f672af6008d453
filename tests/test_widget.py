"""The embeddable widget in a real browser: Debian's Chromium driven by Playwright.

LOACL runs on one loopback port; the host pages that embed the widget come from a second server
on another port, so every call the widget makes is cross-origin, as on a real site. Replies come
from the demo provider or from LOACL's OpenAI-compatible test server (scripted text and faults).
Screenshots of the main states go to ``artifacts/``.

Without Chromium these tests skip locally and fail under CI (``CI=true``).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from loacl.http.app import create_app
from loacl.openai_testserver import FunctionCall, HttpError, OpenAITestServer
from loacl.settings import Settings
from tests.live import OPEN_LIMITS, serve

try:
    from playwright.sync_api import (
        Browser,
        Dialog,
        FilePayload,
        Locator,
        Page,
        Playwright,
        WebSocketRoute,
        expect,
        sync_playwright,
    )
    from playwright.sync_api import Route as HeldRequest
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = Path(os.environ.get("LOACL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# The bound on every wait for the page (Playwright's actions and waits, and expect()): each ends
# as soon as what it waits for holds, so a healthy run needs a small part of it; the rest is for a
# loaded machine (two test workers on two cores, each with its Chromium and its servers).
TIMEOUT_MS = 30_000
PASSWORD = "correct horse battery staple"


def _need_chromium() -> None:
    missing = None
    if sync_playwright is None:
        missing = "the playwright package is not installed (pip install -e '.[test]')"
    elif not CHROMIUM.exists():
        missing = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests need Chromium: {missing}")
    pytest.skip(f"browser tests need Chromium: {missing}")


# -- servers -----------------------------------------------------------------------------------


@dataclass
class HostSite:
    """The site that embeds the widget: a second origin serving pages tests register."""

    url: str
    pages: dict[str, str] = field(default_factory=dict)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    count: int = 0

    @property
    def origin(self) -> str:
        return self.url

    def add(self, html: str, headers: dict[str, str] | None = None) -> str:
        self.count += 1
        name = f"p{self.count}"
        self.pages[name] = html
        self.headers[name] = headers or {}
        return f"{self.url}/{name}"


@dataclass
class Loacl:
    url: str
    settings: Settings
    client: httpx.Client
    headers: dict[str, str]
    demo_assistant: str
    openai_assistant: str
    host: HostSite
    openai: OpenAITestServer

    def widget(self, assistant: str = "demo", origins: list[str] | None = None,
               **fields: Any) -> str:
        body: dict[str, Any] = {
            "name": "Test site",
            "assistant_id": self.demo_assistant if assistant == "demo" else self.openai_assistant,
            "allowed_origins": [self.host.origin] if origins is None else origins,
            **fields,
        }
        response = self.client.post("/api/v1/widgets", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def page(self, widget_id: str, *, form: str = "global", head: str = "", body: str = "",
             headers: dict[str, str] | None = None, **options: str) -> str:
        """A host page embedding the widget, the way the embed code does or with data-*."""
        script = f"{self.url}/widget.js"
        if form == "global":
            config = json.dumps({"widgetId": widget_id, **options})
            embed = (f"<script>window.LOACL_WIDGET = {config};</script>\n"
                     f'<script src="{script}" async></script>')
        else:
            attrs = "".join(f' data-{_kebab(k)}="{v}"' for k, v in options.items())
            embed = f'<script src="{script}" data-widget-id="{widget_id}"{attrs} async></script>'
        return self.host.add(
            "<!doctype html><html><head><meta charset='utf-8'><title>Host</title>"
            f"{head}</head><body><h1>A host page</h1><p>Some content.</p>{body}{embed}"
            "</body></html>",
            headers,
        )


def _kebab(name: str) -> str:
    return re.sub(r"([A-Z])", r"-\1", name).lower()


def _settings(folder: Path, **overrides: Any) -> Settings:
    return Settings(
        database_url=f"sqlite:///{folder / 'loacl.db'}",
        data_dir=folder / "data",
        log_format="text",
        log_level="warning",
        argon2_time_cost=1,
        argon2_memory_kib=64,
        argon2_parallelism=1,
        require_verified_email=False,
        **(OPEN_LIMITS | overrides),
    )


@pytest.fixture(scope="module")
def host_site() -> Iterator[HostSite]:
    site = HostSite("")

    async def page(request: Request) -> Response:
        html = site.pages.get(request.path_params["name"])
        if html is None:
            return Response("not found", status_code=404)
        headers = {"Cache-Control": "no-store", **site.headers[request.path_params["name"]]}
        return HTMLResponse(html, headers=headers)

    app = Starlette(routes=[Route("/{name}", page)])
    with serve(app) as url:
        site.url = url
        yield site


@pytest.fixture(scope="module")
def loacl(
    tmp_path_factory: pytest.TempPathFactory, host_site: HostSite,
    openai_server: tuple[OpenAITestServer, str],
) -> Iterator[Loacl]:
    _need_chromium()
    server, openai_url = openai_server
    settings = _settings(
        tmp_path_factory.mktemp("widget"), openai_api_key="sk-test",
        openai_base_url=f"{openai_url}/v1", provider_max_retries=0, demo_delay=0.005,
        max_upload_size=2000, demo_widget=False,
    )
    # No kept-alive connections: the server may drop an idle one just as the next test's first
    # request goes out on it (a slow machine makes the gap between tests long).
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with serve(create_app(settings)) as url, \
            httpx.Client(base_url=url, timeout=10, limits=no_reuse) as client:
        registered = client.post(
            "/api/v1/auth/register", json={"email": "owner@example.com", "password": PASSWORD}
        )
        assert registered.status_code == 202, registered.text
        login = client.post(
            "/api/v1/auth/login", json={"email": "owner@example.com", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        ids = []
        for body in ({"name": "Demo", "provider": "demo", "model": "demo"},
                     {"name": "Model", "provider": "openai", "model": "gpt-4.1-mini"}):
            made = client.post("/api/v1/assistants", json=body, headers=headers)
            assert made.status_code == 201, made.text
            ids.append(str(made.json()["id"]))
        yield Loacl(url, settings, client, headers, ids[0], ids[1], host_site, server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _need_chromium()
    with sync_playwright() as pw:
        launched = _launch(pw)
        yield launched
        launched.close()


def _launch(pw: Playwright) -> Browser:
    expect.set_options(timeout=TIMEOUT_MS)  # expect()'s own default is 5 s
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    contexts = []

    def make(**options: Any) -> Page:
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        return page

    errors: list[str] = []
    yield make
    for context in contexts:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"


@pytest.fixture
def page(new_page: Callable[..., Page]) -> Page:
    return new_page()


# -- helpers -----------------------------------------------------------------------------------


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"widget-{name}.png"))


def launcher(page: Page) -> Locator:
    return page.locator("loacl-chat .l")


def panel(page: Page) -> Locator:
    return page.locator("loacl-chat .p")


def composer(page: Page) -> Locator:
    return page.locator("loacl-chat textarea")


def bubbles(page: Page, kind: str = "b") -> Locator:
    return page.locator(f"loacl-chat .g .m.{kind}")


def opened(page: Page, url: str) -> Page:
    """Load ``url`` and open the widget; wait until it can send."""
    page.goto(url)
    launcher(page).click()
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    return page


def send(page: Page, text: str) -> None:
    composer(page).fill(text)
    composer(page).press("Enter")


def wait_done(page: Page, count: int = 1) -> Locator:
    """The ``count``-th assistant bubble (greeting excluded), once its reply has ended."""
    reply = page.locator("loacl-chat .g .m.b[aria-busy]").nth(count - 1)
    page.locator(
        f"loacl-chat .g .m.b[aria-busy='false'] >> nth={count - 1}"
    ).wait_for()
    return reply


def style(locator: Locator, prop: str) -> str:
    value: str = locator.evaluate(f"(el) => getComputedStyle(el).{prop}")
    return value


# -- initialisation, opening, closing ---------------------------------------------------------


def test_starts_from_window_config(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(settings={"title": "Shop help", "greeting": "Hello **there**!"})
    page.goto(loacl.page(widget, position="bottom-left", theme="light"))
    launcher(page).wait_for()
    shot(page, "closed")
    box = launcher(page).bounding_box()
    assert box is not None and box["x"] < 100  # bottom-left
    assert launcher(page).get_attribute("aria-expanded") == "false"
    launcher(page).click()
    assert launcher(page).get_attribute("aria-expanded") == "true"
    dialog = page.get_by_role("dialog", name="Shop help")
    dialog.wait_for()
    greeting = page.locator("loacl-chat .g .m.b").first
    assert greeting.inner_text() == "Hello there!"
    assert greeting.locator("strong").inner_text() == "there"
    assert style(launcher(page), "left") == "20px"
    dialog.get_by_role("button", name="Close chat").click()
    assert not panel(page).is_visible()
    assert launcher(page).get_attribute("aria-expanded") == "false"


def test_works_under_the_content_security_policy_of_the_embed_guide(
    loacl: Loacl, page: Page
) -> None:
    """docs/embed.md's policy, with this LOACL's address for loacl.example.com: no
    'unsafe-inline' for scripts or styles; the embed with data-* attributes needs no inline
    script."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "embed.md").read_text()
    [policy] = re.findall(r"^Content-Security-Policy: (.*)$", guide, re.M)
    host = loacl.url.removeprefix("http://")
    policy = policy.replace("https://loacl.example.com", loacl.url) \
        .replace("wss://loacl.example.com", f"ws://{host}")
    assert "unsafe" not in policy and "default-src 'self'" in policy
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text)
            if "Content Security Policy" in m.text else None)
    widget = loacl.widget(settings={"title": "Strict site"})
    page.goto(loacl.page(widget, form="data", headers={"Content-Security-Policy": policy}))
    launcher(page).click()
    page.get_by_role("dialog", name="Strict site").wait_for()
    # The session is ready (its socket open under the policy) when the send button is enabled.
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Under a strict policy?")
    assert "Demo answer." in wait_done(page).inner_text()
    assert violations == []


def test_a_message_entered_before_the_session_is_ready_is_sent_once_it_is(
    loacl: Loacl, page: Page
) -> None:
    """Enter pressed while the session still starts (a slow network) is not lost: the text
    stays in the composer and goes out as soon as the session is ready."""
    held: list[HeldRequest] = []
    page.route("**/sessions", lambda route: held.append(route) if not held
               else route.continue_())
    widget = loacl.widget()
    page.goto(loacl.page(widget))
    launcher(page).click()
    while not held:
        page.wait_for_timeout(20)
    send(page, "Typed early")
    assert composer(page).input_value() == "Typed early"  # kept while nothing can send it
    assert bubbles(page, "u").count() == 0
    held[0].continue_()
    assert "Typed early" in wait_done(page).inner_text()
    assert bubbles(page, "u").all_inner_texts() == ["Typed early"]
    assert composer(page).input_value() == ""


def test_starts_from_data_attributes(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(settings={"title": "Data attrs", "position": "bottom-left"})
    page.goto(loacl.page(widget, form="data", position="bottom-right", theme="dark"))
    launcher(page).click()
    page.get_by_role("dialog", name="Data attrs").wait_for()
    # The page's data-position wins over the widget's own setting.
    assert style(launcher(page), "right") == "20px"
    assert style(panel(page), "right") == "20px"
    assert style(panel(page), "backgroundColor") == "rgb(17, 24, 39)"  # dark


def test_sends_and_shows_the_demo_answer_with_history_after_reload(
    loacl: Loacl, page: Page
) -> None:
    widget = loacl.widget()
    url = loacl.page(widget)
    opened(page, url)
    send(page, "Where is my parcel?")
    reply = wait_done(page)
    assert "Demo answer." in reply.inner_text()
    assert "Where is my parcel?" in reply.inner_text()
    assert bubbles(page, "u").inner_text() == "Where is my parcel?"
    shot(page, "answer-light")
    token = page.evaluate(f"localStorage.getItem('loacl:{widget}')")
    assert token

    page.reload()
    # The panel was open: it comes back open (the tab's state survives a reload).
    panel(page).wait_for()
    assert launcher(page).get_attribute("aria-expanded") == "true"
    wait_done(page)
    assert bubbles(page, "u").all_inner_texts() == ["Where is my parcel?"]
    assert "Demo answer." in bubbles(page).last.inner_text()
    # The same visitor, so the same conversation: one conversation on the owner's side.
    listed = loacl.client.get(f"/api/v1/widgets/{widget}/conversations", headers=loacl.headers)
    assert [c["message_count"] for c in listed.json()["data"]] == [2]


def test_older_history_loads_on_scroll(loacl: Loacl, new_page: Callable[..., Page]) -> None:
    widget = loacl.widget("openai", limits={"messages_per_minute": 600})
    origin = {"Origin": loacl.host.origin}
    session = loacl.client.post(f"/api/v1/widgets/{widget}/sessions", json={}, headers=origin)
    token = session.json()["visitor_token"]
    auth = {**origin, "Authorization": f"Bearer {token}"}
    for n in range(20):
        loacl.openai.script(f"answer {n}")
        posted = loacl.client.post(f"/api/v1/widgets/{widget}/messages",
                                   json={"text": f"question {n}"}, headers=auth)
        assert posted.status_code == 201, posted.text
    page = new_page()
    page.add_init_script(f"localStorage.setItem('loacl:{widget}', {json.dumps(token)})")
    opened(page, loacl.page(widget))
    page.locator("loacl-chat .g .m.u >> text=question 19").wait_for()
    assert bubbles(page, "u").count() == 15  # the newest page of 30 messages
    for _ in range(5):
        page.locator("loacl-chat .g").evaluate("(el) => { el.scrollTop = 0; }")
        if bubbles(page, "u").count() == 20:
            break
        page.wait_for_timeout(100)
    page.locator("loacl-chat .g .m.u >> text=question 0").wait_for()
    texts = bubbles(page, "u").all_inner_texts()
    assert texts == [f"question {n}" for n in range(20)]


# -- streaming -------------------------------------------------------------------------------


def test_text_streams_in_steps(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget("openai")
    text = " ".join(f"word{n}" for n in range(60))
    loacl.openai.script(text, token_delay=0.03)
    opened(page, loacl.page(widget))
    send(page, "Tell me a long story")
    reply = bubbles(page).last
    page.locator("loacl-chat .g .m.b[aria-busy='true']").wait_for()
    seen: list[str] = []
    for _ in range(200):
        current = reply.inner_text()
        if not seen or current != seen[-1]:
            seen.append(current)
        if reply.get_attribute("aria-busy") == "false":
            break
        if len(seen) == 4:
            shot(page, "streaming")
        page.wait_for_timeout(25)
    wait_done(page)
    assert reply.inner_text() == text
    partial = [s for s in seen if s and s != text]
    assert len(partial) >= 3, seen
    assert all(text.startswith(s) for s in partial)
    assert [len(s) for s in partial] == sorted(len(s) for s in partial)


def test_the_token_goes_in_the_first_frame_never_in_the_url(loacl: Loacl, page: Page) -> None:
    """Finding 13 of issue 14: a token in the socket's URL lands in proxies' logs."""
    widget = loacl.widget()
    urls: list[str] = []
    first_frames: list[Any] = []

    def watch(ws: Any) -> None:
        urls.append(ws.url)
        ws.on("framesent", lambda payload: first_frames.append(payload)
              if len(first_frames) < len(urls) else None)

    page.on("websocket", watch)
    opened(page, loacl.page(widget))
    send(page, "Hello over a socket")
    assert "Hello over a socket" in wait_done(page).inner_text()
    token = page.evaluate(f"localStorage.getItem('loacl:{widget}')")
    assert token and urls
    assert urls[0] == f"{loacl.url.replace('http', 'ws')}/api/v1/widgets/{widget}/stream"
    assert all(token not in url and "?" not in url for url in urls), urls
    assert json.loads(first_frames[0]) == {"type": "auth", "token": token}


def test_a_dropped_socket_resumes_without_loss_or_duplication(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    widget = loacl.widget("openai")
    text = "".join(f"part{n:02d} " for n in range(50)).strip()
    loacl.openai.script(text, token_delay=0.04)
    page = new_page()
    # Keep each socket the widget opens, so the test can drop one mid-answer.
    page.add_init_script("""
        const Native = window.WebSocket;
        window.__sockets = [];
        window.WebSocket = class extends Native {
            constructor(...args) { super(...args); window.__sockets.push(this); }
        };
    """)
    opened(page, loacl.page(widget))
    send(page, "Count for me")
    reply = bubbles(page).last
    page.wait_for_function(
        "() => document.querySelector('loacl-chat').shadowRoot"
        ".querySelector('.g .m.b[aria-busy=true]')?.textContent.length > 40"
    )
    page.evaluate("window.__sockets.at(-1).close()")
    wait_done(page)
    assert reply.inner_text() == text
    assert page.evaluate("window.__sockets.length") >= 2
    stored = loacl.client.get(
        f"/api/v1/widgets/{widget}/messages",
        headers={"Origin": loacl.host.origin,
                 "Authorization": "Bearer "
                 + page.evaluate(f"localStorage.getItem('loacl:{widget}')")},
    ).json()["data"]
    assert stored[-1]["text"] == text


def test_a_reply_is_finished_over_http_when_sockets_stop_working(
    loacl: Loacl, page: Page
) -> None:
    widget = loacl.widget("openai")
    text = "".join(f"bit{n:02d} " for n in range(60)).strip()
    loacl.openai.script(text, token_delay=0.05)
    routes: list[WebSocketRoute] = []

    def route(ws: WebSocketRoute) -> None:
        routes.append(ws)
        if len(routes) == 1:
            ws.connect_to_server()  # the first socket works...
        else:
            ws.close()  # ...then the network eats every new one

    page.route_web_socket(re.compile(r"/stream$"), route)
    opened(page, loacl.page(widget))
    send(page, "Keep going")
    reply = bubbles(page).last
    page.wait_for_function(
        "() => document.querySelector('loacl-chat').shadowRoot"
        ".querySelector('.g .m.b[aria-busy=true]')?.textContent.length > 20"
    )
    routes[0].close(code=1001)
    wait_done(page)
    assert reply.inner_text() == text
    assert len(routes) == 4  # the first, then three refused before falling back


def test_falls_back_to_post_without_websockets(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    widget = loacl.widget()
    page = new_page()
    page.add_init_script("delete window.WebSocket;")
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    opened(page, loacl.page(widget))
    send(page, "No sockets here")
    reply = wait_done(page)
    assert "No sockets here" in reply.inner_text()
    assert any(u.endswith(f"/api/v1/widgets/{widget}/messages") for u in posts)
    assert sockets == []


# -- files -------------------------------------------------------------------------------------


def _attach(page: Page, name: str, data: bytes, mime: str = "text/plain") -> Locator:
    payload: FilePayload = {"name": name, "mimeType": mime, "buffer": data}
    page.locator("loacl-chat input[type=file]").set_input_files(files=[payload])
    return page.locator("loacl-chat .fs .c").last


def test_files_are_checked_uploaded_and_refused(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget()
    opened(page, loacl.page(widget))
    refused_type = _attach(page, "tool.exe", b"MZ...", "application/octet-stream")
    assert "isn't accepted" in refused_type.inner_text()
    assert "docx, pdf, txt" in refused_type.inner_text() or "pdf" in refused_type.inner_text()
    refused_size = _attach(page, "big.txt", b"x" * 5000)
    assert "too large" in refused_size.inner_text()
    assert "2 KB" in refused_size.inner_text()
    # The server decides from the content: a text file named .pdf is refused there.
    fake = _attach(page, "fake.pdf", b"just text")
    fake.locator(".e:text-matches('accepted', 'i')").wait_for()
    shot(page, "files-refused")
    for chip in page.locator("loacl-chat .fs .c button").all()[::-1]:
        chip.click()
    assert page.locator("loacl-chat .fs .c").count() == 0

    accepted = _attach(page, "notes.txt", b"the notes")
    page.locator("loacl-chat .fs .c[data-state=done]").wait_for()
    assert accepted.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    # Drag and drop adds a file too.
    page.locator("loacl-chat .p").evaluate("""(panel) => {
        const dt = new DataTransfer();
        dt.items.add(new File(["more notes"], "more.txt", {type: "text/plain"}));
        panel.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true,
                                                        cancelable: true}));
        panel.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true,
                                                    cancelable: true}));
    }""")
    page.locator("loacl-chat .fs .c[data-state=done] >> nth=1").wait_for()
    send(page, "Read these")
    wait_done(page)
    assert page.locator("loacl-chat .fs .c").count() == 0
    token = page.evaluate(f"localStorage.getItem('loacl:{widget}')")
    stored = loacl.client.get(
        f"/api/v1/widgets/{widget}/messages",
        headers={"Origin": loacl.host.origin, "Authorization": f"Bearer {token}"},
    ).json()["data"]
    assert stored[0]["text"] == "Read these"
    assert len(stored[0]["file_ids"]) == 2


# -- look: themes, positions, narrow screens, languages ----------------------------------------


def test_themes_and_positions(loacl: Loacl, page: Page) -> None:
    light = loacl.widget(settings={"theme": "light", "accent_color": "#16a34a"})
    dark = loacl.widget(settings={"theme": "dark", "position": "bottom-left"})
    auto = loacl.widget(settings={"theme": "auto"})

    page.emulate_media(color_scheme="dark")
    opened(page, loacl.page(light))
    assert style(panel(page), "backgroundColor") == "rgb(255, 255, 255)"
    assert style(launcher(page), "backgroundColor") == "rgb(22, 163, 74)"
    assert style(launcher(page), "right") == "20px"

    opened(page, loacl.page(dark))
    assert style(panel(page), "backgroundColor") == "rgb(17, 24, 39)"
    assert style(launcher(page), "left") == "20px"
    box = panel(page).bounding_box()
    assert box is not None and box["x"] == 20
    shot(page, "dark-left")

    page.emulate_media(color_scheme="light")
    opened(page, loacl.page(auto))
    assert style(panel(page), "backgroundColor") == "rgb(255, 255, 255)"
    page.emulate_media(color_scheme="dark")  # followed live
    page.wait_for_function(
        "() => getComputedStyle(document.querySelector('loacl-chat').shadowRoot"
        ".querySelector('.p')).backgroundColor === 'rgb(17, 24, 39)'"
    )


def test_full_screen_on_a_narrow_viewport(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    widget = loacl.widget()
    page = new_page(viewport={"width": 375, "height": 667}, has_touch=True)
    long_line = "<p style='white-space:nowrap'>" + "wide " * 10 + "</p>"
    opened(page, loacl.page(widget, body=long_line))
    assert panel(page).bounding_box() == {"x": 0, "y": 0, "width": 375, "height": 667}
    assert not launcher(page).is_visible()
    assert style(composer(page), "fontSize") == "16px"  # no zoom on focus in iOS
    assert page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    assert page.locator("meta[name=viewport]").count() == 0
    send(page, "Small screen")
    wait_done(page)
    shot(page, "mobile")
    page.keyboard.press("Escape")
    assert launcher(page).is_visible()


def test_languages_and_right_to_left(loacl: Loacl, page: Page) -> None:
    arabic = loacl.widget(settings={"locale": "ar"})
    french = loacl.widget(settings={"locale": "fr-CA"})
    opened(page, loacl.page(arabic))
    root = page.locator("loacl-chat .r")
    assert root.get_attribute("dir") == "rtl"
    assert root.get_attribute("lang") == "ar"
    assert launcher(page).get_attribute("aria-label") == "أغلق المحادثة"
    assert composer(page).get_attribute("placeholder") == "اكتب رسالة…"
    assert style(composer(page), "direction") == "rtl"
    send(page, "مرحبا")
    wait_done(page)
    shot(page, "arabic")

    opened(page, loacl.page(french))
    assert page.locator("loacl-chat .r").get_attribute("dir") == "ltr"
    assert composer(page).get_attribute("placeholder") == "Écrivez un message…"
    assert page.get_by_role("dialog", name="Discutons").is_visible()


# -- robustness and safety -----------------------------------------------------------------------


HOSTILE_CSS = """<style>
* { all: unset !important; }
button { display: none !important; }
div, loacl-chat { display: none !important; opacity: 0 !important; }
textarea { font-size: 4px !important; color: red !important; }
</style>"""


def test_a_hostile_host_stylesheet_does_not_break_it(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget()
    opened(page, loacl.page(widget, head=HOSTILE_CSS))
    assert launcher(page).is_visible()
    assert style(launcher(page), "width") == "56px"
    assert style(composer(page), "fontSize") == "16px"
    box = panel(page).bounding_box()
    assert box is not None and box["width"] == 380
    send(page, "Still works?")
    reply = wait_done(page)
    assert "Still works?" in reply.inner_text()
    shot(page, "hostile-css")
    # ...and ours does not leak out: the host page's own elements keep the host's styles.
    assert page.evaluate("getComputedStyle(document.querySelector('h1')).display") == "inline"


XSS = (
    "Hi <img src=x onerror=\"window.__pwned=1;alert(1)\"> and "
    "<script>window.__pwned=2;alert(2)</script>\n\n"
    "[click me](javascript:alert(3)) [safe](https://example.com/docs) "
    "<a href=\"javascript:alert(4)\">raw</a> <iframe src=\"javascript:alert(5)\"></iframe>\n\n"
    "**bold** and *italic* and `<b>code</b>`\n\n"
    "- one\n- two <svg onload=alert(6)>\n\n"
    "```\n<script>alert(7)</script>\n```"
)


def test_model_output_stays_inert(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget("openai")
    dialogs: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    loacl.openai.script(XSS)
    opened(page, loacl.page(widget))
    send(page, "Say something nasty")
    reply = wait_done(page)
    page.wait_for_timeout(200)  # let any injected handler have its chance
    assert dialogs == []
    assert page.evaluate("window.__pwned") is None
    for tag in ("img", "script", "iframe", "svg path[onload]", "[onerror]", "[onload]"):
        assert reply.locator(tag).count() == 0, tag
    links = reply.locator("a")
    assert links.count() == 1
    assert links.get_attribute("href") == "https://example.com/docs"
    assert links.get_attribute("rel") == "noopener noreferrer"
    assert links.get_attribute("target") == "_blank"
    assert page.evaluate("""() => [...document.querySelector('loacl-chat').shadowRoot
        .querySelectorAll('*')].flatMap((el) => [...el.attributes])
        .filter((a) => /javascript:|^on/i.test(a.value) || /^on/i.test(a.name))
        .map((a) => a.name + '=' + a.value)""") == []
    assert reply.locator("strong").inner_text() == "bold"
    assert reply.locator("em").inner_text() == "italic"
    assert reply.locator(":not(pre) > code").inner_text() == "<b>code</b>"
    assert reply.locator("pre code").inner_text() == "<script>alert(7)</script>"
    assert reply.locator("ul li").count() == 2
    assert "<img src=x" in reply.inner_text()


def test_a_foreign_origin_gets_a_clear_message_and_no_chat(
    loacl: Loacl, page: Page
) -> None:
    widget = loacl.widget(origins=["https://shop.example.com"])
    page.goto(loacl.page(widget))
    launcher(page).click()
    alert = page.locator("loacl-chat [role=alert]")
    alert.wait_for()
    assert "not allowed to use this chat" in alert.inner_text()
    assert not composer(page).is_visible()
    shot(page, "origin-refused")
    refused = loacl.client.get(f"/api/v1/widgets/{widget}/config",
                               headers={"Origin": loacl.host.origin})
    assert refused.json()["code"] == "origin_not_allowed"


def test_an_unknown_widget_says_so(loacl: Loacl, page: Page) -> None:
    page.goto(loacl.page("0" * 32))
    launcher(page).click()
    alert = page.locator("loacl-chat [role=alert]")
    alert.wait_for()
    assert alert.inner_text() == "This chat is not available."
    assert not composer(page).is_visible()


def test_a_too_long_message_is_explained(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget()
    opened(page, loacl.page(widget))
    send(page, "x" * (loacl.settings.max_message_chars + 1))
    alert = page.locator("loacl-chat .g [role=alert]")
    alert.wait_for()
    assert "too long" in alert.inner_text()
    assert alert.get_by_role("button", name="Retry").is_visible()
    send(page, "Short enough")
    assert "Short enough" in wait_done(page).inner_text()


def test_sockets_that_keep_failing_fall_back_to_post(
    loacl: Loacl, page: Page
) -> None:
    widget = loacl.widget()
    refused: list[str] = []

    def refuse(ws: WebSocketRoute) -> None:
        refused.append(ws.url)
        ws.close()

    page.route_web_socket(re.compile(r"/stream$"), refuse)
    opened(page, loacl.page(widget))
    send(page, "Through a proxy that eats sockets")
    reply = wait_done(page)
    assert "Through a proxy that eats sockets" in reply.inner_text()
    assert len(refused) == 3


def test_errors_offer_a_retry(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget("openai")
    loacl.openai.script(faults=[HttpError(status=500)])
    opened(page, loacl.page(widget))
    send(page, "Please answer")
    alert = page.locator("loacl-chat .g [role=alert]")
    alert.wait_for()
    assert "can't be reached" in alert.inner_text()
    shot(page, "provider-error")
    loacl.openai.script("Second time lucky")
    alert.get_by_role("button", name="Retry").click()
    page.locator("loacl-chat .g .m.b >> text=Second time lucky").wait_for()
    assert page.locator("loacl-chat .g [role=alert]").count() == 0


def test_rate_limits_are_explained(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(limits={"messages_per_minute": 1})
    opened(page, loacl.page(widget))
    send(page, "One")
    wait_done(page)
    send(page, "Two")
    alert = page.locator("loacl-chat .g [role=alert]")
    alert.wait_for()
    assert "too fast" in alert.inner_text()
    assert re.search(r"\(\d+ s\)", alert.inner_text())


def test_a_used_up_budget_is_explained(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(budget={"daily_tokens": 1})
    opened(page, loacl.page(widget))
    send(page, "One")
    wait_done(page)
    send(page, "Two")
    alert = page.locator("loacl-chat .g [role=alert]")
    alert.wait_for()
    assert alert.inner_text().startswith("The assistant can't answer any more right now.")
    # The wait is hours: the sentence says "later" instead of counting seconds.
    assert not re.search(r"\(\d+ s\)", alert.inner_text())


def test_keyboard_only(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget()
    page.goto(loacl.page(widget))
    launcher(page).wait_for()
    page.keyboard.press("Tab")
    assert page.evaluate(
        "document.activeElement.tagName === 'LOACL-CHAT' && "
        "document.activeElement.shadowRoot.activeElement.classList.contains('l')"
    )
    assert style(launcher(page), "outlineStyle") == "solid"  # visible focus
    page.keyboard.press("Enter")
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    assert page.evaluate(
        "document.activeElement.shadowRoot.activeElement.tagName"
    ) == "TEXTAREA"
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert composer(page).input_value() == "first line\nsecond line"
    page.keyboard.press("Enter")
    wait_done(page)
    assert bubbles(page, "u").inner_text() == "first line\nsecond line"
    log = page.get_by_role("log")
    assert log.get_attribute("aria-live") == "polite"
    shot(page, "keyboard")
    page.keyboard.press("Escape")
    assert not panel(page).is_visible()
    assert page.evaluate(
        "document.activeElement.shadowRoot.activeElement.classList.contains('l')"
    )


# -- the home page -------------------------------------------------------------------------------


def test_the_home_page_chats_with_the_demo_assistant(
    tmp_path: Path, new_page: Callable[..., Page]
) -> None:
    _need_chromium()
    with serve(create_app(_settings(tmp_path, demo_delay=0.005))) as url:
        page = new_page()
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        violations: list[str] = []
        page.on("console", lambda m: violations.append(m.text) if "Content Security" in m.text
                else None)
        page.goto(f"{url}/")
        assert page.get_by_role("link", name="API reference").get_attribute("href") == "/docs"
        launcher(page).click()
        page.get_by_role("dialog", name="LOACL demo").wait_for()
        page.locator("loacl-chat .s:not([disabled])").wait_for()
        send(page, "What is LOACL?")
        reply = wait_done(page)
        assert "Demo answer." in reply.inner_text()
        assert "What is LOACL?" in reply.inner_text()
        shot(page, "home")
        assert sockets and sockets[0].startswith(url.replace("http", "ws"))
        assert violations == []


# -- a reply's sources: the passages of the assistant's knowledge it cites ----------------------


PASSAGE = "Returns are accepted within 30 days. <img src=x onerror=window.__pwned=1>"


def test_a_reply_shows_the_sources_it_cites_as_text(loacl: Loacl, page: Page) -> None:
    base = f"/api/v1/assistants/{loacl.openai_assistant}/knowledge"
    sent = loacl.client.post(base, headers=loacl.headers,
                             files={"file": ("returns.txt", PASSAGE.encode())})
    assert sent.status_code == 202, sent.text
    url = f"{base}/{sent.json()['id']}"
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while loacl.client.get(url, headers=loacl.headers).json()["status"] != "ready":
        assert time.monotonic() < deadline, "the document was not read"
        page.wait_for_timeout(20)
    loacl.openai.script(calls=[FunctionCall(name="file_search", call_id="call_k1",
                                            arguments=json.dumps({"query": "returns days"}))])
    loacl.openai.script("You have 30 days [1].")
    widget = loacl.widget("openai")
    address = loacl.page(widget)
    opened(page, address)
    send(page, "How long do I have to return something?")
    reply = wait_done(page)
    assert reply.inner_text() == "You have 30 days [1]."
    sources = page.locator("loacl-chat .src li")
    sources.first.wait_for()
    assert sources.count() == 1
    assert sources.first.get_attribute("value") == "1"
    assert sources.first.inner_text() == f"returns.txt {PASSAGE}"
    assert page.locator("loacl-chat .src").get_attribute("aria-label") == "Sources"
    assert page.locator("loacl-chat .src img").count() == 0
    assert page.evaluate("window.__pwned") is None
    shot(page, "sources")
    page.reload()  # the history draws the sources again (the panel's state is restored)
    again = page.locator("loacl-chat .src li")
    again.first.wait_for(state="attached")
    assert again.first.text_content() == f"returns.txt {PASSAGE}"


# -- a person takes over -------------------------------------------------------------------------


def test_talk_to_a_person_and_the_persons_messages_with_their_name(
    loacl: Loacl, page: Page
) -> None:
    assistant = loacl.client.post("/api/v1/assistants", headers=loacl.headers, json={
        "name": "Desk", "provider": "demo", "model": "demo", "handoff": True})
    assert assistant.status_code == 201, assistant.text
    made = loacl.client.post("/api/v1/widgets", headers=loacl.headers, json={
        "name": "Desk", "assistant_id": assistant.json()["id"],
        "allowed_origins": [loacl.host.origin]})
    assert made.status_code == 201, made.text
    widget = made.json()["id"]
    opened(page, loacl.page(widget))
    send(page, "Hello")
    wait_done(page)
    status = page.locator("loacl-chat .st")
    ask = page.locator("loacl-chat .ho")
    assert ask.inner_text() == "Talk to a person"
    ask.click()
    status.get_by_text("Waiting for a person…").wait_for()
    assert ask.is_hidden()
    listed = loacl.client.get("/api/v1/conversations", headers=loacl.headers,
                              params={"widget_id": widget, "status": "waiting"})
    (conversation,) = listed.json()["data"]
    base = f"/api/v1/conversations/{conversation['id']}"
    taken = loacl.client.post(f"{base}/takeover", headers=loacl.headers)
    assert taken.status_code == 200, taken.text
    status.get_by_text("owner joined the chat").wait_for()
    typing = loacl.client.post(f"{base}/typing", headers=loacl.headers, json={"typing": True})
    assert typing.status_code == 204, typing.text
    status.get_by_text("owner is typing…").wait_for()
    sent = loacl.client.post(f"{base}/messages", headers=loacl.headers,
                             json={"text": "Hello, I am a person."})
    assert sent.status_code == 201, sent.text
    agent = page.locator("loacl-chat .g .m.ag")
    agent.wait_for()
    assert agent.locator("b").inner_text() == "owner"
    assert "Hello, I am a person." in agent.inner_text()
    shot(page, "agent-message")
    # The visitor's answer is kept for the person: no reply from the assistant.
    send(page, "Thanks!")
    page.locator("loacl-chat .g .m.u >> nth=1").wait_for()
    assert page.locator("loacl-chat .g .m.b:not(.ag)").count() == 1
    # After a reload, everything is there once, and who answers.
    page.reload()
    page.locator("loacl-chat .g .m.ag").wait_for()
    status.get_by_text("owner joined the chat").wait_for()
    assert page.locator("loacl-chat .g .m.ag").count() == 1
    assert bubbles(page, "u").all_inner_texts() == ["Hello", "Thanks!"]
    transcript = loacl.client.get(f"{base}/messages", headers=loacl.headers).json()["data"]
    assert [m["role"] for m in transcript] == ["user", "assistant", "agent", "user"]


def test_away_notice_and_the_address_form_outside_office_hours(loacl: Loacl, page: Page) -> None:
    zone = ZoneInfo("Europe/Berlin")
    day = datetime.now(zone).date() + timedelta(days=3)  # closed now, whatever the hour
    name = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[day.weekday()]
    assistant = loacl.client.post("/api/v1/assistants", headers=loacl.headers, json={
        "name": "Desk", "provider": "demo", "model": "demo", "handoff": True})
    assert assistant.status_code == 201, assistant.text
    widget = loacl.widget(assistant_id=assistant.json()["id"], name="Away desk",
                          office_hours={"timezone": "Europe/Berlin", "windows": [
                              {"day": name, "opens": "09:00", "closes": "17:00"}]})
    opened(page, loacl.page(widget))
    send(page, "Hello")
    wait_done(page)
    page.locator("loacl-chat .ho").click()
    notice = page.locator("loacl-chat form.aw p[role=status]")
    notice.wait_for()
    text = notice.inner_text()
    assert text.startswith("We're away. We'll reply from ")
    assert calendar.day_name[day.weekday()] in text and "9:00" in text
    assert "(Europe/Berlin)." in text and "answer by mail" in text
    field = page.locator("loacl-chat form.aw input[name=email]")
    assert field.get_attribute("type") == "email"
    assert field.get_attribute("aria-label") == "Your e-mail address"
    # A wrong address, past the browser's own check: the server's code, explained.
    field.evaluate("(el) => { el.type = 'text'; }")
    field.fill("ada@")
    page.locator("loacl-chat form.aw button").click()
    alert = page.locator("loacl-chat form.aw [role=alert]")
    alert.wait_for()
    assert alert.inner_text() == "Please enter a valid e-mail address."
    field.fill("<b>ada</b>@example.com")  # shown as text if it came back, never as markup
    page.locator("loacl-chat form.aw button").click()
    alert.get_by_text("Please enter a valid e-mail address.").wait_for()
    field.fill("Ada@Example.com")
    page.locator("loacl-chat form.aw button").click()
    page.locator("loacl-chat form.aw").get_by_text(
        "Thank you. We'll answer at Ada@example.com.").wait_for()
    assert page.locator("loacl-chat form.aw input").count() == 0
    shot(page, "away")
    # A reload while the conversation waits says it again, with the address already left (the
    # widget reopens as it was left: open).
    page.reload()
    again = page.locator("loacl-chat form.aw p[role=status]")
    again.wait_for()
    assert again.inner_text().startswith("We're away. We'll reply from "), again.inner_text()
    assert again.inner_text().endswith("Thank you. We'll answer at Ada@example.com.")
    assert page.locator("loacl-chat form.aw input").count() == 0
    listed = loacl.client.get("/api/v1/conversations", headers=loacl.headers,
                              params={"widget_id": widget, "status": "waiting"})
    (conversation,) = listed.json()["data"]
    exported = loacl.client.get(f"/api/v1/conversations/{conversation['id']}/export",
                                headers=loacl.headers)
    assert exported.json()["conversation"]["reply_email"] == "Ada@example.com"
