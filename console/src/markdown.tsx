// A transcript's text rendered as the widget renders it: the widget's own parser (markdown.js)
// describes the nodes, and they become Preact elements, text as text. Nothing is ever parsed as
// HTML, and links are http(s) only (the parser checks) and open without a referrer.
import type { ComponentChildren } from "preact";
// @ts-expect-error: the widget's module is plain JavaScript
import { parseMarkdown } from "../../widget/src/markdown.js";

type Node = string | { tag: string; children: Node[]; href?: string };
const TAGS = new Set(["p", "br", "strong", "em", "code", "pre", "ul", "ol", "li", "a"]);
const BLOCKS = new Set(["p", "br", "pre", "ul", "ol", "li"]);

function build(node: Node, key: number): ComponentChildren {
  if (typeof node === "string") return node;
  const children = node.children.map(build);
  if (!TAGS.has(node.tag)) return children;
  if (node.tag === "a") return <a key={key} href={node.href} target="_blank" rel="noopener noreferrer nofollow">{children}</a>;
  if (node.tag === "br") return <br key={key} />;
  const Tag = node.tag as "p";
  return <Tag key={key}>{children}</Tag>;
}

export function Markdown(props: { text: string }) {
  return <div class="md">{(parseMarkdown(props.text) as Node[]).map(build)}</div>;
}

/** The words of a text without its Markdown marks, on one line: for a list's one-line excerpt,
 * where "**Sure.** See `x`" reads "Sure. See x". */
export function plainText(text: string): string {
  const words = (node: Node): string => {
    if (typeof node === "string") return node;
    const inner = node.children.map(words).join("");
    return BLOCKS.has(node.tag) ? ` ${inner} ` : inner;
  };
  return (parseMarkdown(text) as Node[]).map(words).join(" ").replace(/\s+/g, " ").trim();
}
