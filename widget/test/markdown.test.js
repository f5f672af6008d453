// The markdown subset as a description of nodes: what the model writes can only become text and
// a few tags, and links only to http(s) URLs.
import assert from "node:assert/strict";
import { test } from "node:test";
import { parseInline, parseMarkdown, safeUrl } from "../src/markdown.js";

const node = (tag, children = [], href) => ({ tag, children, href });

test("inline marks, code, links and line breaks", () => {
  assert.deepEqual(parseInline("a **b** *c* `d` e\nf"), [
    "a ", node("strong", ["b"]), " ", node("em", ["c"]), " ", node("code", ["d"]), " e", node("br"), "f",
  ]);
  assert.deepEqual(parseInline("**see *this* now**"), [
    node("strong", ["see ", node("em", ["this"]), " now"]),
  ]);
  assert.deepEqual(parseInline("see [docs](https://example.com/d) or https://example.com/x."), [
    "see ", node("a", ["docs"], "https://example.com/d"), " or ",
    node("a", ["https://example.com/x"], "https://example.com/x"), ".",
  ]);
});

test("only http and https links become links", () => {
  assert.deepEqual(parseInline("[click](javascript:alert(1))"), ["click", ")"]);
  assert.deepEqual(parseInline("[x](data:text/html,hi)"), ["x"]);
  assert.equal(safeUrl("javascript:alert(1)"), null);
  assert.equal(safeUrl("/relative"), null);
  assert.equal(safeUrl("HTTPS://Example.com"), "https://example.com/");
});

test("HTML stays text", () => {
  assert.deepEqual(parseMarkdown("<img src=x onerror=alert(1)>"), [node("p", ["<img src=x onerror=alert(1)>"])]);
  assert.deepEqual(parseMarkdown("```\n<script>alert(1)</script>\n```"), [
    node("pre", [node("code", ["<script>alert(1)</script>"])]),
  ]);
});

test("blocks: paragraphs, headings, lists and their continuation lines", () => {
  assert.deepEqual(parseMarkdown("# Title\none\ntwo\n\n- a\n  more\n- b\n1. c"), [
    node("p", [node("strong", ["Title"])]),
    node("p", ["one", node("br"), "two"]),
    node("ul", [node("li", ["a", " more"]), node("li", ["b"])]),
    node("ol", [node("li", ["c"])]),
  ]);
  assert.deepEqual(parseMarkdown(""), []);
  assert.deepEqual(parseMarkdown("```\nunclosed"), [node("pre", [node("code", ["unclosed"])])]);
});
