"""A reply's sources in the widget, in Debian's Chromium: the passages of the assistant's
knowledge that the reply cites, numbered under it, as text (never markup), live and after a
reload. The fixtures are the widget tests' own (a LOACL, a host site on another origin, the
project's OpenAI test server scripting the model's ``file_search`` call)."""

from __future__ import annotations

import json

from loacl.openai_testserver import FunctionCall
from tests.test_widget import (  # noqa: F401  (fixtures)
    Loacl,
    Page,
    browser,
    host_site,
    loacl,
    new_page,
    opened,
    page,
    send,
    shot,
    wait_done,
)

PASSAGE = "Returns are accepted within 30 days. <img src=x onerror=window.__pwned=1>"


def test_a_reply_shows_the_sources_it_cites_as_text(loacl: Loacl, page: Page) -> None:
    base = f"/api/v1/assistants/{loacl.openai_assistant}/knowledge"
    sent = loacl.client.post(base, headers=loacl.headers,
                             files={"file": ("returns.txt", PASSAGE.encode())})
    assert sent.status_code == 202, sent.text
    url = f"{base}/{sent.json()['id']}"
    for _ in range(500):
        if loacl.client.get(url, headers=loacl.headers).json()["status"] == "ready":
            break
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
