"""The owner console in a real browser: Debian's Chromium driven by Playwright against a real
LOACL on a loopback port, with the embedding site on a second port (another origin).

- the path of a new owner: sign up, open the verification link from the mail, log in, create an
  assistant and a widget, copy the embed code, chat through it on the other site, rotate the
  identity secret, log out;
- the inbox: a visitor's conversation appears and its reply streams in without a reload;
- an axe-core scan of every page, light and dark: no serious or critical violation;
- screenshots of every page (light, dark, 390 px phone) in ``artifacts/console/``.

Without Chromium these tests skip locally and fail under CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from loacl.http.app import create_app
from loacl.openai_testserver import OpenAITestServer
from loacl.settings import Settings
from tests.live import OPEN_LIMITS, serve
from tests.test_mail import Collector, unused_port
from tests.test_widget import (
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    HostSite,
    _need_chromium,
    host_site,
)

try:
    from playwright.sync_api import (
        Browser,
        FilePayload,
        FrameLocator,
        Page,
        ViewportSize,
        expect,
        sync_playwright,
    )
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None  # type: ignore[assignment]

__all__ = ["host_site"]  # the fixture, shared with the widget's tests

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts" / "console"
AXE = ROOT / "tests" / "data" / "axe.min.js"
PASSWORD = "correct horse battery staple"
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class Loacl:
    url: str
    settings: Settings
    host: HostSite
    mail: Collector

    def next_mail(self, to: str) -> EmailMessage:
        """The next mail to ``to`` that the SMTP server took (sending runs in the
        background); mails to others stay for their own calls."""
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            for message in list(self.mail.messages):
                if message["To"] == to:
                    self.mail.messages.remove(message)
                    return message
            time.sleep(0.05)
        raise AssertionError(f"no mail to {to}: {[m['To'] for m in self.mail.messages]}")


@contextlib.contextmanager
def running(settings: Settings, host: HostSite) -> Iterator[Loacl]:
    """LOACL on loopback, its mail sent over SMTP to a real server (aiosmtpd) on another."""
    collector = Collector()
    port = unused_port()
    smtp = Controller(collector, hostname="127.0.0.1", port=port)
    smtp.start()
    settings = settings.model_copy(update={
        "smtp_host": "127.0.0.1", "smtp_port": port, "smtp_security": "none"})
    try:
        with serve(create_app(settings)) as url:
            yield Loacl(url, settings, host, collector)
    finally:
        smtp.stop()


def verification_link(loacl: Loacl, message: EmailMessage) -> str:
    """The mail's link to the console; a server whose mail names only the token is given the
    link the console serves."""
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    link = re.search(r"(https?://\S+/console/verify\?token=\S+)", text)
    if link:
        return link.group(1).replace(link.group(1).split("/console/")[0], loacl.url)
    token = re.search(r"Your token:\s+(\S+)", text)
    assert token, text
    return f"{loacl.url}/console/verify?token={token.group(1)}"


@pytest.fixture(scope="module")
def loacl(tmp_path_factory: pytest.TempPathFactory, host_site: HostSite) -> Iterator[Loacl]:
    _need_chromium()
    folder = tmp_path_factory.mktemp("console")
    settings = Settings(
        database_url=f"sqlite:///{folder / 'loacl.db'}", data_dir=folder / "data",
        log_format="text", log_level="warning", argon2_time_cost=1, argon2_memory_kib=64,
        argon2_parallelism=1, demo_widget=False, demo_delay=0.02,
        **OPEN_LIMITS,
    )
    with running(settings, host_site) as loacl:
        yield loacl


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    _need_chromium()
    expect.set_options(timeout=TIMEOUT_MS)  # expect()'s own default is 5 s
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[..., Page]]:
    contexts = []
    errors: list[str] = []
    violations: list[str] = []

    def make(**options: Any) -> Page:
        context = browser.new_context(**options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("console", lambda message: violations.append(message.text)
                if "Content Security Policy" in message.text else None)
        return page

    yield make
    for context in contexts:
        context.close()
    assert errors == [], f"uncaught errors in the page: {errors}"
    assert violations == [], f"the page broke its Content-Security-Policy: {violations}"


def shots(page: Page, name: str) -> None:
    """The page as it is now, light, dark and on a 390 px wide phone."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.screenshot(path=str(ARTIFACTS / f"{name}-{scheme}.png"), full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(PHONE)
    page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], (
        f"{name}: wider than a phone"
    )
    if size:
        page.set_viewport_size(size)


def heading(page: Page, text: str) -> None:
    page.get_by_role("heading", level=1, name=text).wait_for()


def sign_up_and_log_in(loacl: Loacl, page: Page, address: str) -> None:
    page.goto(f"{loacl.url}/console/signup")
    heading(page, "Create your account")
    page.get_by_label("E-mail address").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    page.get_by_role("status").filter(has_text=address).wait_for()
    page.goto(verification_link(loacl, loacl.next_mail(address)))
    page.get_by_text("Your address is verified").wait_for()
    assert "token" not in page.url  # the one-time token leaves the address bar
    page.get_by_role("link", name="Log in").click()
    log_in(page, address)


def log_in(page: Page, address: str) -> None:
    heading(page, "Log in")
    page.get_by_label("E-mail address").fill(address)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    heading(page, "Widgets")


def create_assistant(page: Page, name: str) -> str:
    page.get_by_role("link", name="Assistants").click()
    heading(page, "Assistants")
    page.get_by_role("link", name="New assistant").click()
    heading(page, "New assistant")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Instructions").fill("Answer briefly.")
    page.get_by_role("button", name="Create").click()
    heading(page, name)
    match = re.search(r"/console/assistants/([^/?#]+)$", page.url)
    assert match, page.url
    return match.group(1)


def create_widget(page: Page, name: str, origin: str, title: str) -> str:
    page.get_by_role("link", name="Widgets").click()
    page.get_by_role("link", name="New widget").click()
    heading(page, "New widget")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Origin 1", exact=True).fill(origin)
    page.get_by_label("Title", exact=True).fill(title)
    page.get_by_label("Greeting").fill("Hello **there**!")
    page.get_by_role("button", name="Create").click()
    heading(page, name)
    match = re.search(r"/console/widgets/([^/?#]+)$", page.url)
    assert match, page.url
    return match.group(1)


def host_page(loacl: Loacl, embed: str) -> str:
    return loacl.host.add(
        "<!doctype html><html><head><meta charset='utf-8'><title>Shop</title></head>"
        f"<body><h1>A shop</h1>{embed}</body></html>"
    )


def chat(page: Page, url: str, text: str, replies: int = 1) -> None:
    page.goto(url)
    page.locator("loacl-chat .l").click()
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    page.locator("loacl-chat textarea").fill(text)
    page.locator("loacl-chat textarea").press("Enter")
    page.locator(f"loacl-chat .g .m.b[aria-busy='false'] >> nth={replies - 1}").wait_for()


# -- the path of a new owner ----------------------------------------------------------------------


def test_a_new_owner_gets_a_widget_answering_on_another_origin(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    sign_up_and_log_in(loacl, page, "new@example.com")
    # A reload keeps the session (the refresh cookie), though the access token was in memory.
    page.reload()
    heading(page, "Widgets")
    create_assistant(page, "Shop helper")

    widget_id = create_widget(page, "Shop", loacl.host.origin, "Shop help")
    secret = page.get_by_test_id("identity-secret").inner_text()
    assert len(secret) >= 16

    # The preview runs the real widget with the settings, saved or not.
    preview = page.frame_locator("iframe[title='Preview']")
    preview.locator("loacl-chat h2").filter(has_text="Shop help").wait_for()
    assert preview.locator("loacl-chat .g .m.b strong").first.inner_text() == "there"
    page.get_by_label("Title", exact=True).fill("Unsaved title")
    preview.locator("loacl-chat h2").filter(has_text="Unsaved title").wait_for()
    page.get_by_label("Title", exact=True).fill("Shop help")

    # The embed code, copied to the clipboard.
    code = page.get_by_test_id("embed-code").inner_text()
    assert widget_id in code and f"{loacl.url}/widget.js" in code
    page.get_by_role("button", name="Copy the embed code").click()
    page.get_by_role("status").filter(has_text="Copied.").first.wait_for()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == code.strip()

    # A visitor on the other origin chats through it.
    visitor = new_page()
    chat(visitor, host_page(loacl, copied), "Hello from the shop")
    assert visitor.locator("loacl-chat h2").inner_text() == "Shop help"

    # The identity secret, rotated: the new one is shown once and differs.
    page.get_by_role("button", name="Make a new identity secret").click()
    page.get_by_role("button", name="Yes, make a new one").click()
    page.get_by_test_id("identity-secret").filter(has_not_text=secret).wait_for()
    assert page.get_by_test_id("identity-secret").inner_text() != secret

    # Logging out ends the session: the console asks to log in again, even after a reload.
    page.get_by_role("button", name="Log out").click()
    heading(page, "Log in")
    page.goto(f"{loacl.url}/console/widgets/{widget_id}")
    heading(page, "Log in")


def test_the_origins_editor_shows_the_reason_per_origin(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    sign_up_and_log_in(loacl, page, "origins@example.com")
    create_assistant(page, "Helper")
    page.get_by_role("link", name="Widgets").click()
    page.get_by_role("link", name="New widget").click()
    page.get_by_label("Name", exact=True).fill("Site")
    page.get_by_label("Origin 1", exact=True).fill("https://good.example")
    page.get_by_role("button", name="Add an origin").click()
    page.get_by_label("Origin 2", exact=True).fill("https://bad.example/with/a/path")
    page.get_by_role("button", name="Create").click()
    page.get_by_role("alert").filter(has_text="Some fields need a change").wait_for()
    bad = page.get_by_label("Origin 2", exact=True)
    assert bad.get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Origin 1", exact=True).get_attribute("aria-invalid") is None
    reason = page.locator(f"#{bad.get_attribute('aria-describedby')}").inner_text()
    assert reason.strip()
    bad.fill("https://bad.example")
    page.get_by_role("button", name="Create").click()
    heading(page, "Site")


def test_the_inbox_shows_a_conversation_live(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    sign_up_and_log_in(loacl, page, "inbox@example.com")
    create_assistant(page, "Inbox helper")
    create_widget(page, "Inbox site", loacl.host.origin, "Ask us")
    code = page.get_by_test_id("embed-code").inner_text()
    page.get_by_role("link", name="Inbox").click()
    heading(page, "Inbox")
    visitor = new_page()
    url = host_page(loacl, code)
    chat(visitor, url, "Where is my parcel?")
    item = page.locator(".inbox li a").filter(has_text="Where is my parcel?")
    item.wait_for()  # no reload: the live stream brought it
    item.click()
    heading(page, "Conversation")
    page.locator(".bubble.visitor").filter(has_text="Where is my parcel?").wait_for()
    visitor.locator("loacl-chat textarea").fill("And my invoice?")
    visitor.locator("loacl-chat textarea").press("Enter")
    page.locator(".bubble.visitor").filter(has_text="And my invoice?").wait_for()
    page.locator(".bubble.bot[aria-busy='false']").nth(1).wait_for()
    visitor.locator("loacl-chat .g .m.b[aria-busy='false'] >> nth=1").wait_for()
    reply = visitor.locator("loacl-chat .g .m.b[aria-busy] >> nth=1").inner_text()
    assert page.locator(".bubble.bot .md").nth(1).inner_text().strip() == reply.strip()
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        assert axe_violations(page) == [], scheme
    shots(page, "conversation")
    page.get_by_role("link", name="Inbox").click()
    heading(page, "Inbox")
    page.locator(".inbox li").first.wait_for()
    # The excerpt is the last reply's words, not its Markdown ("**Demo answer.**").
    excerpt = page.locator(".inbox li .preview-text").first.inner_text()
    assert excerpt.startswith("Demo answer. This is"), excerpt
    assert " ".join(reply.split()).startswith(excerpt.rstrip("…").strip()[:60]), (excerpt, reply)
    shots(page, "inbox-with-conversations")

    # The two replies count in the usage: a bar today, a row for the widget.
    page.get_by_role("link", name="Usage").click()
    heading(page, "Usage")
    row = page.locator("tbody tr").filter(has_text="Inbox site")
    row.wait_for()
    assert row.locator("td").first.inner_text() == "2"
    heights = [float(bar.get_attribute("height") or 0) for bar in page.locator(".chart .bar").all()]
    assert len(heights) == 30 and heights[-1] > 0 and heights[:-1] == [0] * 29
    shots(page, "usage-with-replies")


# -- every page: accessibility and screenshots --------------------------------------------------


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (frames aside: the
    preview frame is the widget, which tests/test_widget.py covers)."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    found: list[dict[str, Any]] = page.evaluate(
        "async () => (await axe.run(document, {iframes: false, resultTypes: ['violations']}))"
        ".violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
        " nodes: v.nodes.map(n => n.target.join(' '))}))"
    )
    return [v for v in found if v["impact"] in ("serious", "critical")]


@pytest.mark.long
def test_every_page_is_accessible_in_both_themes(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    public = {
        "signup": ("/console/signup", "Create your account"),
        "login": ("/console/login", "Log in"),
        "forgot": ("/console/forgot", "Reset your password"),
        "reset": ("/console/reset?token=not-a-real-token", "Set a new password"),
        "verify": ("/console/verify?token=not-a-real-token", "Verify your e-mail address"),
        "invite": ("/console/invite?token=not-a-real-token", "Join a workspace"),
    }
    report: dict[str, list[dict[str, Any]]] = {}

    def check(name: str) -> None:
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            found = axe_violations(page)
            if found:
                report[f"{name} ({scheme})"] = found
        shots(page, name)

    for name, (path, title) in public.items():
        page.goto(loacl.url + path)
        heading(page, title)
        check(name)

    sign_up_and_log_in(loacl, page, "pages@example.com")
    assistant = create_assistant(page, "Pages helper")
    check("assistant")
    widget = create_widget(page, "Pages site", loacl.host.origin, "Help")
    page.frame_locator("iframe[title='Preview']").locator("loacl-chat h2").wait_for()
    check("widget")
    private = {
        "widgets": ("/console/widgets", "Widgets"),
        "assistants": ("/console/assistants", "Assistants"),
        "assistant-new": ("/console/assistants/new", "New assistant"),
        "widget-new": ("/console/widgets/new", "New widget"),
        "inbox": ("/console/inbox", "Inbox"),
        "usage": ("/console/usage", "Usage"),
        "members": ("/console/members", "Members"),
        "account": ("/console/account", "Account"),
    }
    for name, (path, title) in private.items():
        # In-app navigation keeps the access token (a reload would need the refresh cookie).
        page.evaluate("(path) => { history.pushState(null, '', path);"
                      " dispatchEvent(new PopStateEvent('popstate')); }", path)
        heading(page, title)
        if name.endswith("-new"):
            # A page with a preview frame: ready when the real widget shows in it (the frame's
            # own loading makes "network idle" a poor sign there, late on a loaded machine).
            frame = page.frame_locator(".preview iframe")
            frame.locator("loacl-chat h2").wait_for(state="attached")
        else:
            page.wait_for_load_state("networkidle")
        check(name)
    assert assistant and widget
    # The same in Arabic, right to left.
    page.get_by_label("Language").select_option("ar")
    assert page.evaluate("document.documentElement.dir") == "rtl"
    heading(page, "الحساب")
    check("account-ar")
    assert report == {}, json.dumps(report, indent=1, ensure_ascii=False)


# -- the account ----------------------------------------------------------------------------------


def test_the_account_changes_the_password_ends_sessions_and_deletes_itself(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    sign_up_and_log_in(loacl, page, "account@example.com")
    # The model picker lists the server's models.
    page.get_by_role("link", name="Assistants").click()
    page.get_by_role("link", name="New assistant").click()
    choices = page.get_by_label("Model").locator("option")
    expect(choices.nth(1)).to_be_attached()  # the server's models arrive after the form
    options = choices.all_inner_texts()
    assert options[0] == "The provider's default model" and len(options) > 1, options

    # Another session, from elsewhere: listed, and ended from here.
    other = httpx.post(f"{loacl.url}/api/v1/auth/login", timeout=10,
                       json={"email": "account@example.com", "password": PASSWORD})
    assert other.status_code == 200, other.text
    page.get_by_role("link", name="Account").click()
    heading(page, "Account")
    sessions = page.locator(".panel").filter(has_text="Sessions").locator("li")
    sessions.nth(1).wait_for()
    assert sessions.count() == 2
    # This one is marked, and has no button to end it.
    current = sessions.filter(has_not=page.get_by_role("button"))
    assert current.count() == 1 and "this session" in current.inner_text()
    page.get_by_role("button", name="End this session").click()
    expect(sessions).to_have_count(1)
    refused = httpx.get(f"{loacl.url}/api/v1/auth/me", timeout=10, headers={
        "Authorization": f"Bearer {other.json()['access_token']}"})
    assert refused.status_code == 401

    page.get_by_label("Current password").fill(PASSWORD)
    page.get_by_label("New password").fill("another good passphrase")
    page.get_by_role("button", name="Change the password").click()
    page.get_by_role("status").filter(has_text="Your password is changed.").wait_for()

    page.get_by_label("Password", exact=True).fill("another good passphrase")
    page.get_by_role("button", name="Delete the account").click()
    page.get_by_role("button", name="Yes, delete for good").click()
    heading(page, "Log in")
    gone = httpx.post(f"{loacl.url}/api/v1/auth/login", timeout=10, json={
        "email": "account@example.com", "password": "another good passphrase"})
    assert gone.status_code == 401


def test_an_owner_invites_someone_who_joins_from_the_mailed_link(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    owner = new_page()
    sign_up_and_log_in(loacl, owner, "team-owner@example.com")
    owner.get_by_role("link", name="Members").click()
    owner.get_by_role("heading", level=1, name=re.compile("^Members")).wait_for()
    owner.get_by_label("E-mail address").fill("sam@example.com")
    owner.get_by_label("Role", exact=True).select_option("agent")
    owner.get_by_role("button", name="Send the invite").click()
    owner.get_by_text("We mailed an invite to sam@example.com.").wait_for()
    owner.get_by_role("listitem").filter(has_text="sam@example.com").wait_for()
    shots(owner, "members")

    body = loacl.next_mail("sam@example.com").get_body(("plain",))
    assert body is not None
    found = re.search(r"https?://\S+/console/invite\?token=(\S+)", body.get_content())
    assert found, body.get_content()
    sam = new_page()  # another browser: nothing shared with the owner's
    sam.goto(f"{loacl.url}/console/invite?token={found.group(1)}")
    heading(sam, "Join a workspace")
    assert "token" not in sam.url  # the one-time token leaves the address bar
    sam.get_by_label("Name (optional)").fill("Sam")
    sam.get_by_label("New password").fill(PASSWORD)
    sam.get_by_role("button", name="Create my account and join").click()
    heading(sam, "Inbox")
    # A reload keeps the new member signed in (the refresh cookie, as after a login), in the
    # workspace joined.
    sam.reload()
    heading(sam, "Inbox")
    nav = sam.get_by_role("navigation")
    expect(nav.get_by_role("link", name="Inbox")).to_be_visible()
    expect(nav.get_by_role("link", name="Widgets")).to_have_count(0)  # not for an agent
    expect(nav.get_by_role("link", name="Usage")).to_have_count(0)
    switcher = sam.get_by_label("Workspace", exact=True)
    expect(switcher.locator("option")).to_have_count(2)  # their own, and the one joined

    owner.reload()
    owner.get_by_role("heading", level=1, name=re.compile("^Members")).wait_for()
    row = owner.locator("tr").filter(has_text="sam@example.com")
    expect(row).to_contain_text("Sam")
    owner.get_by_label("Role of Sam").select_option("admin")
    expect(owner.get_by_label("Role of Sam")).to_have_value("admin")
    row.get_by_role("button", name="Remove").click()
    owner.get_by_role("group").get_by_role("button", name="Remove").click()
    expect(owner.locator("tr").filter(has_text="sam@example.com")).to_have_count(0)
    expect(owner.get_by_role("listitem").filter(has_text="sam@example.com")).to_have_count(0)

    # The owner names the workspace, then makes a second one and is moved into it; the
    # switcher offers both, under their names.
    owner.get_by_label("Name", exact=True).fill("Support team")
    owner.get_by_role("button", name="Save").click()
    owner.get_by_text("Renamed.").wait_for()
    owner.get_by_label("New workspace's name").fill("Second site")
    owner.get_by_role("button", name="Create and open it").click()
    owner.get_by_role("heading", level=1, name="Members · Second site").wait_for()
    switcher = owner.get_by_label("Workspace", exact=True)
    expect(switcher.locator("option")).to_have_text(
        [re.compile("^Support team · Owner"), re.compile("^Second site · Owner")])
    expect(owner.locator("tr").filter(has_text="team-owner@example.com")).to_have_count(1)
    shots(owner, "members-workspaces")

    # Sam's console was in the owner's workspace: the next request finds them out of it, and
    # the console carries on in their own.
    sam.get_by_role("link", name="Members").click()
    sam.get_by_role("heading", level=1, name=re.compile("^Members")).wait_for()
    expect(sam.locator("tr").filter(has_text="team-owner@example.com")).to_have_count(0)
    expect(sam.get_by_label("Workspace", exact=True)).to_have_count(0)  # one workspace left


# -- the assistant editor's preview chat ----------------------------------------------------------


@pytest.fixture
def loacl_openai(
    tmp_path: Path, host_site: HostSite, openai_server: tuple[OpenAITestServer, str]
) -> Iterator[Loacl]:
    """A LOACL whose provider is the OpenAI test server (it answers an instruction line
    ``Always answer: ...``), for a preview that must follow the instructions being edited."""
    _need_chromium()
    openai_server[0].reset()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'loacl.db'}", data_dir=tmp_path / "data",
        log_format="text", log_level="warning", argon2_time_cost=1, argon2_memory_kib=64,
        argon2_parallelism=1, demo_widget=False, openai_api_key="sk-test",
        openai_base_url=f"{openai_server[1]}/v1", **OPEN_LIMITS,
    )
    with running(settings, host_site) as loacl:
        yield loacl


def preview_ask(frame: FrameLocator, text: str, n: int) -> str:
    """Ask in the preview's widget; its ``n``-th answer (1-based) once finished."""
    frame.locator("loacl-chat textarea").fill(text)
    frame.locator("loacl-chat textarea").press("Enter")
    done = frame.locator(f"loacl-chat .g .m.b[aria-busy='false'] >> nth={n - 1}")
    done.wait_for()
    return done.inner_text().strip()


def test_the_preview_chat_follows_unsaved_instructions(
    loacl_openai: Loacl, new_page: Callable[..., Page],
    openai_server: tuple[OpenAITestServer, str],
) -> None:
    loacl = loacl_openai
    page = new_page()
    sign_up_and_log_in(loacl, page, "preview@example.com")
    page.get_by_role("link", name="Assistants").click()
    page.get_by_role("link", name="New assistant").click()
    heading(page, "New assistant")
    page.get_by_label("Name", exact=True).fill("Pirate")
    page.get_by_label("Model").select_option("openai:gpt-4o-mini")
    page.get_by_label("Instructions").fill("Answer briefly.")
    page.get_by_role("button", name="Create").click()
    heading(page, "Pirate")
    assistant_id = page.url.rsplit("/", 1)[1]
    page.get_by_role("heading", name="Preview chat").wait_for()
    frame = page.frame_locator("iframe[title='Preview chat']")
    frame.locator("loacl-chat .s:not([disabled])").wait_for()
    # Edited, not saved: the preview answers as the text in the form says.
    page.get_by_label("Instructions").fill("Always answer: Ahoy from the draft!")
    assert preview_ask(frame, "Who are you?", 1) == "Ahoy from the draft!"
    page.get_by_label("Instructions").fill("Always answer: Arr, changed again.")
    assert preview_ask(frame, "And now?", 2) == "Arr, changed again."
    sent = openai_server[0].requests_to("responses")[-1].json
    assert sent["instructions"] == "Always answer: Arr, changed again."
    assert [m["role"] for m in sent["input"]] == ["user", "assistant", "user"]
    shots(page, "assistant-preview")
    # Nothing was saved, and nothing was stored: the assistant is as created, no conversation.
    token = httpx.post(f"{loacl.url}/api/v1/auth/login", json={
        "email": "preview@example.com", "password": PASSWORD}).json()["access_token"]
    owner = {"Authorization": f"Bearer {token}"}
    saved = httpx.get(f"{loacl.url}/api/v1/assistants/{assistant_id}", headers=owner).json()
    assert saved["instructions"] == "Answer briefly."
    inbox = httpx.get(f"{loacl.url}/api/v1/conversations", headers=owner)
    assert inbox.status_code == 200 and inbox.json()["data"] == []


# -- a forgotten password, a visitor's file, searching the inbox ----------------------------------


def reset_link(loacl: Loacl, message: EmailMessage) -> str:
    """The mail's link to the console's reset page, on this server's address."""
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    link = re.search(r"(https?://\S+?)(/console/reset\?token=\S+)", text)
    assert link, text
    return loacl.url + link.group(2)


def test_a_forgotten_password_is_reset_through_the_mailed_link(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    address = "forgetful@example.com"
    page = new_page()
    sign_up_and_log_in(loacl, page, address)
    page.get_by_role("button", name="Log out").click()
    heading(page, "Log in")
    page.get_by_role("link", name="Forgot your password?").click()
    heading(page, "Reset your password")
    page.get_by_label("E-mail address").fill(address)
    page.get_by_role("button", name="Send the reset link").click()
    page.get_by_role("status").filter(has_text="we sent it a link").wait_for()
    shots(page, "forgot-sent")
    page.goto(reset_link(loacl, loacl.next_mail(address)))
    heading(page, "Set a new password")
    assert "token" not in page.url  # the one-time token leaves the address bar
    page.get_by_label("New password").fill("a brand new passphrase")
    page.get_by_role("button", name="Set the password").click()
    page.get_by_role("status").filter(has_text="Your password is set").wait_for()
    shots(page, "reset-done")
    # The old password no longer opens the account; the new one does.
    old = httpx.post(f"{loacl.url}/api/v1/auth/login", json={"email": address,
                                                              "password": PASSWORD})
    assert old.status_code == 401
    page.get_by_role("link", name="Log in").click()
    heading(page, "Log in")
    page.get_by_label("E-mail address").fill(address)
    page.get_by_label("Password").fill("a brand new passphrase")
    page.get_by_role("button", name="Log in").click()
    heading(page, "Widgets")


def visitor_says(loacl: Loacl, widget_id: str, text: str,
                 file: tuple[str, bytes] | None = None) -> None:
    """A visitor on the host site asks ``text`` (with a file), through the widget's API."""
    origin = {"Origin": loacl.host.origin}
    base = f"{loacl.url}/api/v1/widgets/{widget_id}"
    with httpx.Client(timeout=30) as http:
        session = http.post(f"{base}/sessions", json={}, headers=origin)
        assert session.status_code == 201, session.text
        headers = {**origin, "Authorization": f"Bearer {session.json()['visitor_token']}"}
        file_ids = []
        if file is not None:
            uploaded = http.post(f"{base}/files", headers=headers,
                                 files={"file": (file[0], file[1], "text/plain")})
            assert uploaded.status_code == 201, uploaded.text
            file_ids.append(uploaded.json()["id"])
        asked = http.post(f"{base}/messages", headers=headers,
                          json={"text": text, "file_ids": file_ids})
        assert asked.status_code in (200, 201), asked.text


def test_a_visitors_file_downloads_from_the_conversation_and_the_inbox_searches_text(
    loacl: Loacl, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = new_page(accept_downloads=True)
    sign_up_and_log_in(loacl, page, "files@example.com")
    create_assistant(page, "File helper")
    widget_id = create_widget(page, "File site", loacl.host.origin, "Send us files")
    content = b"order A-1: two lamps, one table\n"
    visitor_says(loacl, widget_id, "Here is my order list", ("order-list.txt", content))
    visitor_says(loacl, widget_id, "Where is my invoice for March?")
    page.get_by_role("link", name="Inbox").click()
    heading(page, "Inbox")
    rows = page.locator(".inbox li")
    expect(rows).to_have_count(2)
    # Search: only the conversation whose text matches.
    page.get_by_label("Search").fill("invoice")
    page.get_by_role("button", name="Show").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Where is my invoice for March?")
    shots(page, "inbox-search")
    page.get_by_label("Search").fill("lamps-that-nobody-wrote")
    page.get_by_role("button", name="Show").click()
    page.get_by_text("No conversations match.").wait_for()
    page.get_by_label("Search").fill("order list")
    page.get_by_role("button", name="Show").click()
    expect(rows).to_have_count(1)
    rows.first.locator("a").click()
    heading(page, "Conversation")
    page.locator(".bubble.visitor").filter(has_text="Here is my order list").wait_for()
    with page.expect_download() as waited:
        page.get_by_role("button", name="Download the file").click()
    download = waited.value
    assert download.suggested_filename == "order-list.txt"
    saved = tmp_path / "downloaded.txt"
    download.save_as(saved)
    assert saved.read_bytes() == content
    shots(page, "conversation-with-file")


# -- the live handoff inbox -----------------------------------------------------------------------

# Records each Notification the page makes and each permission request, around the real ones.
NOTIFICATION_SPY = """
(() => {
  const Real = window.Notification;
  if (!Real) return;
  window.__notifications = [];
  window.__permissionAsked = 0;
  function Spy(title, options) {
    window.__notifications.push({ title, body: (options || {}).body, tag: (options || {}).tag });
    return new Real(title, options);
  }
  Spy.prototype = Real.prototype;
  Object.defineProperty(Spy, "permission", { get: () => Real.permission });
  Spy.requestPermission = (...args) => {
    window.__permissionAsked += 1;
    return Real.requestPermission(...args);
  };
  window.Notification = Spy;
})();
"""


def api_login(loacl: Loacl, address: str) -> dict[str, str]:
    token = httpx.post(f"{loacl.url}/api/v1/auth/login", timeout=10, json={
        "email": address, "password": PASSWORD}).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def handoff_widget(loacl: Loacl, owner: dict[str, str], title: str) -> str:
    """A widget whose assistant hands over to a person (the widget shows "Talk to a person");
    its embed code."""
    with httpx.Client(base_url=loacl.url, timeout=10, headers=owner) as http:
        assistant = http.post("/api/v1/assistants", json={
            "name": "Handoff helper", "provider": "demo", "model": "demo", "handoff": True})
        assert assistant.status_code == 201, assistant.text
        widget = http.post("/api/v1/widgets", json={
            "name": "Handoff site", "assistant_id": assistant.json()["id"],
            "allowed_origins": [loacl.host.origin], "settings": {"title": title}})
        assert widget.status_code == 201, widget.text
        code = http.get(f"/api/v1/widgets/{widget.json()['id']}/embed-code")
        assert code.status_code == 200, code.text
        return str(code.json()["html"])


def assert_accessible(page: Page) -> None:
    """No serious or critical axe-core violation on the page, light and dark."""
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        assert axe_violations(page) == [], scheme


@pytest.mark.long
def test_an_agent_takes_over_a_waiting_conversation_live_and_is_notified(
    loacl: Loacl, browser: Browser, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    page.add_init_script(NOTIFICATION_SPY)
    sign_up_and_log_in(loacl, page, "handoff@example.com")
    owner = api_login(loacl, "handoff@example.com")
    url = host_page(loacl, handoff_widget(loacl, owner, "Handoff help"))
    page.get_by_role("link", name="Inbox").click()
    heading(page, "Inbox")

    # The permission is asked on a click only, never on load.
    enable = page.get_by_role("button", name="Enable notifications")
    enable.wait_for()
    assert page.evaluate("window.__permissionAsked") == 0
    page.context.grant_permissions(["notifications"], origin=loacl.url)
    enable.click()
    page.get_by_role("status").filter(has_text="Browser notifications are on.").wait_for()
    assert page.evaluate("window.__permissionAsked") == 1

    # A visitor asks for a person: the conversation appears live, first and marked, with how
    # long it has waited; a notification and the page's highlight say so.
    visitor = new_page()
    chat(visitor, url, "Hello there")
    handoff = visitor.locator("loacl-chat .ho")
    expect(handoff).to_have_text("Talk to a person")
    handoff.click()
    waiting = page.locator(".inbox li.waiting").first
    expect(waiting).to_contain_text("Handoff help")
    expect(waiting).to_contain_text("waiting, just now")
    expect(waiting).to_contain_text("nobody assigned")
    expect(page.locator(".inbox li").first).to_have_class("waiting")
    page.get_by_role("status").filter(has_text="1 waiting for a person").wait_for()
    page.locator(".alert").filter(
        has_text="A visitor is waiting for a person on Handoff help.").wait_for()
    page.wait_for_function("window.__notifications.length === 1")
    shown = page.evaluate("window.__notifications[0]")
    assert shown["title"] == "A visitor is waiting for a person"
    assert "Handoff help" in shown["body"]
    # The workspace's members are mailed (over SMTP, to the test's server) with a link to it.
    mailed = loacl.next_mail("handoff@example.com")
    mailed_text = mailed.get_body(("plain",))
    assert mailed_text is not None
    link = re.search(r"/console/conversations/([0-9a-f]+)", mailed_text.get_content())
    assert link, mailed_text.get_content()
    # The time waited goes on counting: three minutes later (the page's clock moved on), the
    # inbox says so without a reload.
    page.clock.install()
    page.clock.fast_forward("03:10")
    # (refreshed every 5 s: a bound above that, not a measurement)
    expect(waiting).to_contain_text("waiting 3 min", timeout=TIMEOUT_MS)
    assert_accessible(page)
    shots(page, "handoff-inbox")

    # The agent opens it and takes over; the highlight goes, the visitor hears who answers.
    waiting.locator("a").click()
    heading(page, "Conversation")
    expect(page.locator(".alert")).to_have_count(0)
    controls = page.get_by_role("group", name="Who answers")
    expect(controls.get_by_role("status")).to_contain_text(
        re.compile(r"^Waiting for a person · waiting 3 min · nobody assigned$"))
    controls.get_by_role("button", name="Take over").click()
    expect(controls.get_by_role("status")).to_have_text("A person answers · you answer")
    expect(controls.get_by_role("button", name="Take over")).to_have_count(0)

    # The agent types (the visitor sees it), and the reply reaches the visitor's widget with
    # the agent's name.
    page.get_by_label("Your reply").press_sequentially("Hi")
    visitor.locator("loacl-chat .st").filter(has_text="handoff is typing…").wait_for()
    page.get_by_label("Your reply").fill("Hi, I am Handoff from the team.")
    page.get_by_role("button", name="Send").click()
    agent = page.locator(".bubble.agent").filter(has_text="Hi, I am Handoff from the team.")
    expect(agent.locator(".who")).to_have_text("handoff")
    expect(page.get_by_label("Your reply")).to_have_value("")
    in_widget = visitor.locator("loacl-chat .m.ag").filter(
        has_text="Hi, I am Handoff from the team.")
    expect(in_widget.locator("b")).to_have_text("handoff")

    # The visitor types (shown live) and writes: the message appears without a reload, and is
    # read since the conversation is open.
    visitor.locator("loacl-chat textarea").fill("My order 1234 has not arrived")
    page.get_by_role("status").filter(has_text="The visitor is typing…").wait_for()
    visitor.locator("loacl-chat textarea").press("Enter")
    page.locator(".bubble.visitor").filter(has_text="My order 1234 has not arrived").wait_for()
    expect(page.locator(".typing")).to_have_text("")
    conversation_id = page.url.rsplit("/", 1)[1]
    assert link.group(1) == conversation_id  # the mail named this conversation
    path = f"{loacl.url}/api/v1/conversations/{conversation_id}"

    def entry() -> dict[str, Any]:
        found: dict[str, Any] = httpx.get(path, headers=owner, timeout=10).json()
        return found

    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while entry()["unread"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert entry()["unread"] == 0
    assert entry()["state"] == "human" and entry()["assignee"]["name"] == "handoff"
    assert_accessible(page)
    shots(page, "handoff-conversation")

    # The visitor reloads mid-conversation: everything is there, each message once.
    visitor.reload()
    visitor.locator("loacl-chat .m.ag").first.wait_for()
    expect(visitor.locator("loacl-chat .m.ag")).to_have_count(1)
    expect(visitor.locator("loacl-chat .m.ag")).to_contain_text("Hi, I am Handoff from the team.")
    expect(visitor.locator("loacl-chat .g .m.u")).to_have_text(
        ["Hello there", "My order 1234 has not arrived"])
    # the assistant's one answer (the greeting aside)
    expect(visitor.locator("loacl-chat .g .m.b[aria-busy]")).to_have_count(1)

    # Given back to the assistant: it answers the visitor again.
    controls.get_by_role("button", name="Give back to the assistant").click()
    expect(controls.get_by_role("status")).to_have_text("The assistant answers · nobody assigned")
    expect(controls.get_by_role("button", name="Give back to the assistant")).to_have_count(0)
    assert entry()["state"] == "bot" and entry()["assignee"] is None
    visitor.locator("loacl-chat .s:not([disabled])").wait_for()
    visitor.locator("loacl-chat textarea").fill("Thanks. And returns?")
    visitor.locator("loacl-chat textarea").press("Enter")
    answer = visitor.locator("loacl-chat .g .m.b[aria-busy='false'] >> nth=1")
    expect(answer).to_contain_text("Thanks. And returns?")  # the demo answer quotes it
    page.locator(".bubble").filter(has_text="Thanks. And returns?").first.wait_for()

    # Closed.
    controls.get_by_role("button", name="Close").click()
    expect(controls.get_by_role("status")).to_have_text("Closed · nobody assigned")
    expect(controls.get_by_role("button", name="Close")).to_have_count(0)
    assert entry()["state"] == "closed"

    # The visitor writes again (the assistant answers: reopened) and asks for a person again,
    # while the agent has the conversation open in front of them: it shows waiting here at
    # once, with neither a notification nor a highlight.
    page.bring_to_front()
    assert page.evaluate("document.hasFocus() && document.visibilityState === 'visible'")
    visitor.locator("loacl-chat textarea").fill("One more question")
    visitor.locator("loacl-chat textarea").press("Enter")
    expect(controls.get_by_role("status")).to_have_text("The assistant answers · nobody assigned")
    expect(handoff).to_be_visible()
    handoff.click()
    expect(controls.get_by_role("status")).to_contain_text("Waiting for a person")
    expect(page.locator(".alert")).to_have_count(0)
    # One notification in all: none for what the agent did, none for what they were looking at.
    assert page.evaluate("window.__notifications.length") == 1


# -- an assistant's knowledge ---------------------------------------------------------------


def test_an_assistants_knowledge_is_uploaded_followed_and_deleted(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    sign_up_and_log_in(loacl, page, "knowledge@example.com")
    assistant_id = create_assistant(page, "Shop expert")
    section = page.get_by_role("region", name="Knowledge")
    section.get_by_text("No documents yet.").wait_for()
    # Two documents at once: one is read into passages, the other cannot be read and says why.
    files: list[FilePayload] = [
        {"name": "shipping.txt", "mimeType": "text/plain",
         "buffer": b"Parcels leave our warehouse in Leeds every weekday at noon."},
        {"name": "broken.pdf", "mimeType": "application/pdf",
         "buffer": b"%PDF-1.4\nthis is not a real PDF\n"},
    ]
    section.get_by_label("Add documents").set_input_files(files)
    shipping = section.locator("li").filter(has_text="shipping.txt")
    expect(shipping).to_contain_text(re.compile(r"Ready · pages: \d+ · passages: 1"))
    broken = section.locator("li").filter(has_text="broken.pdf")
    expect(broken).to_contain_text("Could not be read")
    assert_accessible(page)
    shots(page, "knowledge")
    # What the page shows is what the API holds.
    owner = api_login(loacl, "knowledge@example.com")
    base = f"{loacl.url}/api/v1/assistants/{assistant_id}/knowledge"
    held = {d["filename"]: d["status"] for d in httpx.get(base, headers=owner).json()["data"]}
    assert held == {"shipping.txt": "ready", "broken.pdf": "failed"}

    # An OpenAI vector store needs the openai provider: the refusal is shown, nothing changes.
    section.get_by_label("Searched").select_option("openai")
    section.get_by_role("alert").wait_for()
    assert httpx.get(f"{base}-store", headers=owner).json()["store"] == "local"

    # Deleting asks first, then the document is gone here and in the API.
    broken.get_by_role("button", name="Delete").click()
    broken.get_by_role("button", name="Yes, delete for good").click()
    expect(section.locator("li").filter(has_text="broken.pdf")).to_have_count(0)
    left = [d["filename"] for d in httpx.get(base, headers=owner).json()["data"]]
    assert left == ["shipping.txt"]
