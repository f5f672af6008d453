// Model output as a small markdown subset, parsed into a description of nodes that render.js
// turns into DOM: a string is a text node, anything else is {tag, children, href}. Nothing here
// is ever parsed as HTML, so text the model writes can only ever become text.
// Paragraphs, line breaks, headings (shown bold), **bold**, *italic*, `code`, fenced code blocks,
// lists, and links to http(s) URLs only.

const INLINE = /`([^`\n]+)`|\*\*(.+?)\*\*|\*([^*\s](?:[^*\n]*[^*\s])?)\*|\[([^\]\n]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"])|\n/g;
const FENCE = /^\s*```/;
const LIST_ITEM = /^\s*(?:([-*+])|\d+[.)])\s+(.*)$/;
const HEADING = /^#{1,6}\s+(.*)$/;
const CONTINUATION = /^\s+\S/;

const describe = (tag, children = [], href) => ({ tag, children, href });

/** The URL to link to, or null unless it is an absolute http: or https: URL. */
export function safeUrl(href) {
  let url = null;
  try {
    url = new URL(href);
  } catch (error) {
    // not a URL: shown as text
  }
  return url && (url.protocol === "http:" || url.protocol === "https:") ? url.href : null;
}

function link(label, href) {
  const url = safeUrl(href);
  return url ? describe("a", [label], url) : label;
}

/** The nodes of one run of inline text: code, bold, italic, links, bare URLs, line breaks. */
export function parseInline(text) {
  const nodes = [];
  let last = 0;
  // matchAll works on a copy of INLINE, so the recursion for bold and italic is safe.
  for (const match of text.matchAll(INLINE)) {
    const [found, code, bold, italic, label, href, bare] = match;
    if (match.index > last) nodes.push(text.slice(last, match.index));
    if (code) nodes.push(describe("code", [code]));
    else if (bold) nodes.push(describe("strong", parseInline(bold)));
    else if (italic) nodes.push(describe("em", parseInline(italic)));
    else if (label) nodes.push(link(label, href));
    else if (bare) nodes.push(link(bare, bare));
    else nodes.push(describe("br"));
    last = match.index + found.length;
  }
  if (last < text.length) nodes.push(text.slice(last));
  return nodes;
}

/** The block nodes of a whole message: paragraphs, lists, code blocks. */
export function parseMarkdown(text) {
  const blocks = [];
  const lines = text.split("\n");
  let paragraph = [];
  let list = null;
  const flush = () => {
    if (paragraph.length) blocks.push(describe("p", parseInline(paragraph.join("\n"))));
    paragraph = [];
  };
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index];
    let match;
    if (FENCE.test(line)) {
      flush();
      list = null;
      const code = [];
      while (++index < lines.length && !FENCE.test(lines[index])) code.push(lines[index]);
      blocks.push(describe("pre", [describe("code", [code.join("\n")])]));
    } else if ((match = LIST_ITEM.exec(line))) {
      flush();
      const tag = match[1] ? "ul" : "ol";
      if (!list || list.tag !== tag) blocks.push((list = describe(tag)));
      list.children.push(describe("li", parseInline(match[2])));
    } else if ((match = HEADING.exec(line))) {
      flush();
      list = null;
      blocks.push(describe("p", [describe("strong", parseInline(match[1]))]));
    } else if (!line.trim()) {
      flush();
      list = null;
    } else if (list && CONTINUATION.test(line)) {
      const item = list.children[list.children.length - 1];
      item.children.push(...parseInline(" " + line.trim()));
    } else {
      list = null;
      paragraph.push(line);
    }
  }
  flush();
  return blocks;
}
