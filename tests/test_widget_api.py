"""The widget on real sites: the page's ``window.LOACL`` API and its events, state that survives a
reload, the unread badge, ratings, the proactive greeting, several widgets on one page and a
strict Content-Security-Policy. Debian's Chromium driven by Playwright against a real LOACL, the
host pages on another origin (the fixtures of ``tests/test_widget.py``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import FilePayload, Page, WebSocketRoute

# The browser, the servers and the pages of tests/test_widget.py: fixtures are found by the
# names this module holds (pyproject.toml lets their parameters shadow them, F811).
from tests.test_widget import (  # noqa: F401
    Loacl,
    browser,
    bubbles,
    composer,
    host_site,
    launcher,
    loacl,
    new_page,
    page,
    panel,
    send,
    shot,
    wait_done,
)

STUB = ("window.LOACL = window.LOACL || function () { (LOACL.q = LOACL.q || []).push(arguments); };"
        "window.__events = [];"
        "['ready','open','close','message','reply','error'].forEach(function (n) {"
        " addEventListener('loacl:' + n, function (e) {"
        "  window.__events.push(Object.assign({type: e.type}, e.detail)); }); });")


def events(page: Page, kind: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = page.evaluate("window.__events")
    return [e for e in found if kind is None or e["type"] == f"loacl:{kind}"]


def wait_event(page: Page, kind: str, count: int = 1) -> None:
    page.wait_for_function(
        f"window.__events.filter((e) => e.type === 'loacl:{kind}').length >= {count}"
    )


def embed(loacl: Loacl, widget: str, calls: str = "", headers: dict[str, str] | None = None,
          nonce: str = "", extra: str = "") -> str:
    """A host page with the stub and ``calls`` before the script (the data-* embed)."""
    attr = f' nonce="{nonce}"' if nonce else ""
    return loacl.host.add(
        "<!doctype html><html><head><meta charset='utf-8'><title>Host</title></head><body>"
        f"<h1>A host page</h1><script{attr}>{STUB}{calls}</script>"
        f'<script src="{loacl.url}/widget.js" data-widget-id="{widget}" async></script>{extra}'
        "</body></html>",
        headers,
    )


def made(loacl: Loacl, **fields: Any) -> dict[str, Any]:
    body = {"name": "Site", "assistant_id": loacl.demo_assistant,
            "allowed_origins": [loacl.host.origin], **fields}
    response = loacl.client.post("/api/v1/widgets", json=body, headers=loacl.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def owner_messages(loacl: Loacl, widget: str) -> list[list[dict[str, Any]]]:
    """Each conversation's messages, as the widget's owner reads them, oldest first."""
    listed = loacl.client.get(f"/api/v1/widgets/{widget}/conversations", headers=loacl.headers)
    return [
        loacl.client.get(f"/api/v1/widgets/{widget}/messages",
                         params={"conversation_id": c["id"]}, headers=loacl.headers
                         ).json()["data"]
        for c in listed.json()["data"]
    ]


# -- the API and its events ----------------------------------------------------------------------


def test_calls_queued_before_the_script_and_every_command(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(settings={"title": "Queued"})
    # on() and open() before the script exists: played when it has loaded.
    page.goto(embed(loacl, widget, "LOACL('on', 'ready', function (d) { window.__ready = d; });"
                                   "LOACL('open');"))
    page.get_by_role("dialog", name="Queued").wait_for()
    wait_event(page, "open")
    assert page.evaluate("window.__ready") == {"widgetId": widget}
    assert [e["type"] for e in events(page)][:2] == ["loacl:open", "loacl:ready"]
    assert page.evaluate("typeof LOACL.open") == "function"

    page.evaluate("LOACL.close()")
    assert not panel(page).is_visible()
    assert launcher(page).get_attribute("aria-expanded") == "false"
    page.evaluate("LOACL.toggle()")
    assert panel(page).is_visible()
    page.evaluate("LOACL('toggle')")
    assert not panel(page).is_visible()
    assert [e["type"] for e in events(page, "close")] == ["loacl:close", "loacl:close"]

    # send() opens the panel and asks; the events carry ids and the status, never the text.
    page.evaluate("""LOACL.on('reply', function (d) { window.__reply = d; });
        LOACL.send('What are your opening hours?')""")
    wait_done(page)
    wait_event(page, "reply")
    assert bubbles(page, "u").inner_text() == "What are your opening hours?"
    [message] = events(page, "message")
    assert set(message) == {"type", "widgetId", "clientMessageId"}
    reply = page.evaluate("window.__reply")
    assert reply["status"] == "completed" and reply["widgetId"] == widget
    assert "text" not in reply and re.fullmatch(r"[0-9a-f]{32}", reply["messageId"])

    # A prefill puts the text in the composer and sends nothing.
    page.evaluate("LOACL.send('Draft for later', {prefill: true})")
    assert composer(page).input_value() == "Draft for later"
    assert bubbles(page, "u").count() == 1

    page.evaluate("LOACL.setLocale('fr')")
    assert composer(page).get_attribute("placeholder") == "Écrivez un message…"
    # off() removes a handler.
    page.evaluate("window.__count = 0; window.__h = function () { window.__count++; };"
                  "LOACL.on('loacl:close', window.__h); LOACL.close();"
                  "LOACL.off('close', window.__h); LOACL.open(); LOACL.close();")
    assert page.evaluate("window.__count") == 1


def test_events_carry_text_only_when_the_owner_allows_it(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(settings={"events_include_text": True})
    page.goto(embed(loacl, widget, "LOACL('send', 'Tell me');"))
    wait_event(page, "reply")
    assert events(page, "message")[0]["text"] == "Tell me"
    assert "Demo answer." in events(page, "reply")[0]["text"]


def test_identify_reset_identify_never_shows_the_first_users_conversation(
    loacl: Loacl, page: Page
) -> None:
    created = made(loacl)
    widget, secret = created["id"], created["identity_secret"]

    def user_hash(user: str) -> str:
        return hmac.new(secret.encode(), user.encode(), hashlib.sha256).hexdigest()

    page.goto(embed(loacl, widget, "LOACL('identify', " + json.dumps(
        {"userId": "alice", "userHash": user_hash("alice"), "name": "Alice",
         "email": "alice@example.com"}) + "); LOACL('open');"))
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Alice's private question")
    wait_done(page)
    alice_token = page.evaluate(f"localStorage.getItem('loacl:{widget}')")
    assert not page.locator("loacl-chat .hd button").first.is_visible()  # no "new" for users

    page.evaluate("LOACL.reset()")
    assert bubbles(page, "u").count() == 0
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    assert page.evaluate(f"localStorage.getItem('loacl:{widget}')") != alice_token
    page.evaluate("LOACL.identify(" + json.dumps(
        {"userId": "bob", "userHash": user_hash("bob")}) + ")")
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Bob here")
    wait_done(page)
    assert bubbles(page, "u").all_inner_texts() == ["Bob here"]
    assert "Alice" not in page.locator("loacl-chat .g").inner_text()

    listed = loacl.client.get(f"/api/v1/widgets/{widget}/conversations",
                              headers=loacl.headers).json()["data"]
    by_user = {c["user_id"]: c for c in listed}
    assert by_user["alice"]["visitor_name"] == "Alice"
    assert by_user["alice"]["visitor_email"] == "alice@example.com"
    assert by_user["bob"]["visitor_name"] is None
    texts = {c["user_id"]: [m["text"] for m in loacl.client.get(
        f"/api/v1/widgets/{widget}/messages", params={"conversation_id": c["id"]},
        headers=loacl.headers).json()["data"] if m["role"] == "user"] for c in listed}
    assert texts["alice"] == ["Alice's private question"]
    assert texts["bob"] == ["Bob here"]


def test_a_new_conversation_for_an_anonymous_visitor(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget()
    page.goto(embed(loacl, widget, "LOACL('send', 'First');"))
    wait_done(page)
    page.get_by_role("button", name="New conversation").click()
    assert bubbles(page, "u").count() == 0
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Second")
    wait_done(page)
    assert bubbles(page, "u").all_inner_texts() == ["Second"]
    assert sorted(len(m) for m in owner_messages(loacl, widget)) == [2, 2]


# -- state across reloads, unread replies ---------------------------------------------------------


def test_a_reload_mid_answer_comes_back_open_with_the_text_once(
    loacl: Loacl, page: Page
) -> None:
    widget = loacl.widget("openai")
    text = " ".join(f"w{n:02d}" for n in range(60))
    loacl.openai.script(text, token_delay=0.04)
    page.goto(embed(loacl, widget, "LOACL('open');"))
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Long one")
    page.wait_for_function(
        "() => (document.querySelector('loacl-chat').shadowRoot"
        ".querySelector('.m.b[aria-busy=true]')?.textContent || '').length > 20"
    )
    composer(page).fill("half-typed draft")
    page.reload()
    panel(page).wait_for()
    reply = wait_done(page)
    assert reply.inner_text() == text
    assert bubbles(page, "u").all_inner_texts() == ["Long one"]
    assert composer(page).input_value() == "half-typed draft"
    assert launcher(page).get_attribute("aria-expanded") == "true"


def test_an_answer_that_ends_while_closed_is_unread(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget("openai", settings={"title_blink": True})
    loacl.openai.script("A slow answer " * 10, token_delay=0.03)
    page.goto(embed(loacl, widget))
    launcher(page).click()
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Take your time")
    page.locator("loacl-chat .g .m.b[aria-busy='true']").wait_for()
    page.keyboard.press("Escape")
    badge = page.locator("loacl-chat .l .n")
    badge.wait_for()
    assert badge.inner_text() == "1"
    assert launcher(page).get_attribute("aria-label") == "Open chat (1 new)"
    page.wait_for_function("document.title === '1 new'")
    shot(page, "unread")
    # It survives a reload in this tab, and opening reads it.
    page.reload()
    badge.wait_for()
    launcher(page).click()
    assert not badge.is_visible()
    assert launcher(page).get_attribute("aria-label") == "Close chat"
    page.wait_for_function("document.title === 'Host'")


# -- ratings, times ------------------------------------------------------------------------------


def test_a_rating_and_its_comment_reach_the_owner(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget()
    page.goto(embed(loacl, widget, "LOACL('send', 'Rate me');"))
    wait_done(page)
    row = page.locator("loacl-chat .g .mt").last
    time = row.locator("time")
    assert re.match(r"\d{4}-\d\d-\d\dT", time.get_attribute("datetime") or "")
    up = page.get_by_role("button", name="Helpful", exact=True)
    assert up.get_attribute("aria-pressed") == "false"
    up.focus()
    assert time.evaluate("(t) => getComputedStyle(t).opacity") == "1"  # shown on focus
    page.keyboard.press("Enter")
    comment = page.get_by_role("textbox", name="Tell us more (optional)")
    comment.wait_for()
    assert up.get_attribute("aria-pressed") == "true"
    comment.fill("Clear and quick")
    comment.press("Enter")
    page.get_by_text("Thank you for your feedback.").wait_for()
    shot(page, "feedback-light")

    [messages] = owner_messages(loacl, widget)
    reply = messages[1]
    assert reply["feedback"]["rating"] == "up"
    assert reply["feedback"]["comment"] == "Clear and quick"
    usage = loacl.client.get("/api/v1/usage", params={"widget_id": widget},
                             headers=loacl.headers).json()
    assert (usage["total"]["feedback_up"], usage["total"]["feedback_down"]) == (1, 0)

    # On the site's next page (the panel comes back open) the rating is shown as given;
    # changing it replaces it. Not a reload of this page: its `send` would ask again, and a
    # second reply would have rating buttons of its own.
    page.goto(embed(loacl, widget))
    panel(page).wait_for()
    down = page.get_by_role("button", name="Not helpful")
    up = page.get_by_role("button", name="Helpful", exact=True)
    assert up.get_attribute("aria-pressed") == "true"
    down.click()
    page.get_by_role("textbox", name="Tell us more (optional)").wait_for()
    assert down.get_attribute("aria-pressed") == "true"
    [messages] = owner_messages(loacl, widget)
    assert messages[1]["feedback"]["rating"] == "down"


def test_ratings_can_be_turned_off(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(settings={"feedback": False})
    page.goto(embed(loacl, widget, "LOACL('send', 'No thumbs');"))
    wait_done(page)
    page.locator("loacl-chat .g .mt time").last.wait_for(state="attached")
    assert page.get_by_role("button", name="Helpful", exact=True).count() == 0


# -- the proactive greeting ---------------------------------------------------------------------


def test_the_proactive_greeting_is_shown_until_dismissed(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(settings={"proactive_greeting": "Questions about shipping?",
                                    "proactive_delay_seconds": 0})
    url = embed(loacl, widget)
    page.goto(url)
    bubble = page.get_by_role("button", name="Questions about shipping?")
    bubble.wait_for()
    shot(page, "proactive")
    page.reload()
    bubble.wait_for()  # not dismissed yet: shown again
    page.get_by_role("button", name="Dismiss").click()
    assert not bubble.is_visible()
    page.reload()
    wait_event(page, "ready")
    page.evaluate("new Promise((done) => setTimeout(done, 100))")  # its timer (0 s) has run
    assert page.locator("loacl-chat .pb").is_hidden()
    # Clicking it opens the chat (and counts as dismissing it).
    other = loacl.widget(settings={"proactive_greeting": "Hi!", "proactive_delay_seconds": 0})
    page.goto(embed(loacl, other))
    page.get_by_role("button", name="Hi!").click()
    assert panel(page).is_visible()
    assert page.locator("loacl-chat .pb").is_hidden()


# -- several widgets, strict pages, status lines -----------------------------------------------


def test_two_widgets_on_one_page(loacl: Loacl, page: Page) -> None:
    first = loacl.widget(settings={"title": "Sales"})
    second = loacl.widget(settings={"title": "Support", "position": "bottom-left"})
    url = embed(loacl, first, f"LOACL({json.dumps(second)}, 'open');",
                extra=f'<script src="{loacl.url}/widget.js" data-widget-id="{second}" async>'
                      "</script>")
    page.goto(url)
    page.get_by_role("dialog", name="Support").wait_for()
    wait_event(page, "ready", 2)
    assert not page.get_by_role("dialog", name="Sales").is_visible()
    assert [e["widgetId"] for e in events(page, "open")] == [second]
    page.evaluate(f"LOACL({json.dumps(first)}, 'open')")
    page.get_by_role("dialog", name="Sales").wait_for()
    page.evaluate("LOACL.close()")  # every widget
    assert page.locator("loacl-chat .p:visible").count() == 0
    assert sorted(e["widgetId"] for e in events(page, "close")) == sorted([first, second])


def test_a_strict_policy_page_reports_no_violation(loacl: Loacl, page: Page) -> None:
    """docs/embed.md's policy (no 'unsafe-inline' anywhere), with a nonce for the page's own
    inline stub; the page listens for securitypolicyviolation."""
    guide = (Path(__file__).resolve().parent.parent / "docs" / "embed.md").read_text()
    [policy] = re.findall(r"^Content-Security-Policy: (.*)$", guide, re.M)
    host = loacl.url.removeprefix("http://")
    policy = policy.replace("https://loacl.example.com", loacl.url) \
        .replace("wss://loacl.example.com", f"ws://{host}")
    assert "unsafe" not in policy and "style-src" not in policy
    policy = policy.replace("script-src 'self'", "script-src 'self' 'nonce-n0nce'")
    page.add_init_script("window.__violations = [];"
                         "document.addEventListener('securitypolicyviolation', (e) =>"
                         " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));")
    widget = loacl.widget(settings={"title": "Strict", "proactive_greeting": "Hello",
                                    "proactive_delay_seconds": 0})
    page.goto(embed(loacl, widget, "LOACL('open');",
                    headers={"Content-Security-Policy": policy}, nonce="n0nce"))
    page.get_by_role("dialog", name="Strict").wait_for()
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Strictly speaking")
    wait_done(page)
    page.get_by_role("button", name="Helpful", exact=True).click()
    page.get_by_role("textbox", name="Tell us more (optional)").wait_for()
    page.evaluate("LOACL.close(); LOACL.open()")
    assert page.evaluate("window.__violations") == []
    # The check itself works: an inline style attribute is reported.
    page.evaluate("document.body.insertAdjacentHTML('beforeend', '<p style=\"color:red\">x</p>')")
    page.wait_for_function("window.__violations.length > 0")


def test_a_page_enforcing_trusted_types_loads_the_second_file(
    loacl: Loacl, page: Page
) -> None:
    """With Trusted Types enforced, the second file's URL comes from the "loacl" policy the
    page allows (docs/embed.md); a file can be attached and the comment box opens."""
    host = loacl.url.removeprefix("http://")
    policy = (f"default-src 'self'; script-src 'self' 'nonce-n0nce' {loacl.url}; "
              f"connect-src 'self' {loacl.url} ws://{host}; "
              "require-trusted-types-for 'script'; trusted-types loacl")
    page.add_init_script("window.__violations = [];"
                         "document.addEventListener('securitypolicyviolation', (e) =>"
                         " window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));")
    widget = loacl.widget()
    page.goto(embed(loacl, widget, "LOACL('open');",
                    headers={"Content-Security-Policy": policy}, nonce="n0nce"))
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    notes: FilePayload = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"some notes"}
    page.locator("loacl-chat input[type=file]").set_input_files(files=[notes])
    page.locator("loacl-chat .fs .c[data-state=done]").wait_for()
    send(page, "Read my notes")
    wait_done(page)
    assert page.evaluate("window.__violations") == []


def test_the_status_line_says_how_a_reply_is_doing(
    loacl: Loacl, new_page: Callable[..., Page]
) -> None:
    """The server's status frames (waiting, retrying), shown until the text comes."""
    widget = loacl.widget("openai")
    loacl.openai.script("Finally here", token_delay=0.2)
    page = new_page()

    def relay(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "started" or frame.get("type") == "ack":
                ws.send(message)
                reply = frame.get("reply_id")
                ws.send(json.dumps({"type": "status", "message_id": reply,
                                    "state": "retrying", "retry_in": 2.4, "attempt": 1,
                                    "code": "provider_rate_limited"}))
                return
            ws.send(message)

        server.on_message(to_page)

    page.route_web_socket(re.compile(r"/stream$"), relay)
    page.goto(embed(loacl, widget, "LOACL('open');"))
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    send(page, "Are you there?")
    status = page.locator("loacl-chat .st")
    status.get_by_text("The assistant is busy. Trying again in 3 s (attempt 1)…").wait_for()
    wait_done(page)
    assert status.inner_text() == ""


# -- screenshots: light, dark, narrow -----------------------------------------------------------


def test_screenshots_of_the_new_controls(loacl: Loacl, new_page: Callable[..., Page]) -> None:
    for name, theme, options in (("light", "light", {}), ("dark", "dark", {}),
                                 ("390", "auto", {"viewport": {"width": 390, "height": 780}})):
        widget = loacl.widget(settings={"theme": theme})
        page = new_page(**options)
        page.goto(embed(loacl, widget, "LOACL('send', 'Show me the controls');"))
        wait_done(page)
        page.get_by_role("button", name="Not helpful").click()
        page.get_by_role("textbox", name="Tell us more (optional)").wait_for()
        page.locator("loacl-chat .g .m.u").hover()
        shot(page, f"api-{name}")


def test_the_pre_chat_form_comes_before_the_first_message(loacl: Loacl, page: Page) -> None:
    widget = loacl.widget(settings={"prechat_fields": ["name", "email"], "title": "Form"})
    page.goto(embed(loacl, widget, "LOACL('open');"))
    form = page.get_by_role("form", name="Before we start, please tell us:")
    form.wait_for()
    assert not composer(page).is_visible()
    name = page.get_by_label("Your name")
    assert page.evaluate("document.querySelector('loacl-chat').shadowRoot.activeElement.name") \
        == "name"
    name.fill("Grace")
    page.get_by_label("Your e-mail address").fill("not an address")
    page.get_by_role("button", name="Start the chat").click()
    assert form.is_visible()  # the browser's own check refuses it first
    page.get_by_label("Your e-mail address").fill("grace@example.com")
    shot(page, "prechat")
    page.keyboard.press("Enter")
    page.locator("loacl-chat .s:not([disabled])").wait_for()
    assert not form.is_visible()
    send(page, "Hello after the form")
    wait_done(page)
    [conversation] = loacl.client.get(f"/api/v1/widgets/{widget}/conversations",
                                      headers=loacl.headers).json()["data"]
    assert (conversation["visitor_name"], conversation["visitor_email"]) == (
        "Grace", "grace@example.com")
    page.reload()
    wait_done(page)
    assert page.get_by_role("form", name="Before we start, please tell us:").count() == 0
