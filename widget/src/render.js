// Building DOM: elements, icons, bubbles, error lines, and the nodes markdown.js describes. Only
// createElement, attributes and text, never HTML parsing, so it also works under Trusted Types and
// a strict CSP.
import { parseMarkdown } from "./markdown.js";

export const doc = document;
const SVG = "http://www.w3.org/2000/svg";
export const ICONS = {
  chat: "M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z",
  close: "M18 6 6 18M6 6l12 12",
  send: "M22 2 11 13M22 2l-7 20-4-9-9-4z",
  plus: "M12 5v14M5 12h14",
  thumb: "M7 10v12M15 5.9 14 10h5.8a2 2 0 0 1 1.9 2.6l-2.3 8a2 2 0 0 1-1.9 1.4H4a2 2 0 0 1-2-2v-8a2 2 0 0 1 2-2h2.8a2 2 0 0 0 1.8-1.1L12 2a3.1 3.1 0 0 1 3 3.9z",
  clip: "M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5",
};

/** props: `text` sets the text, `cls` the class, `on<event>` a listener, true an empty attribute;
 * `namespace` makes an SVG element. */
export function element(tag, props, children, namespace) {
  const made = namespace ? doc.createElementNS(namespace, tag) : doc.createElement(tag);
  for (const name in props) {
    const value = props[name];
    if (value == null || value === false) continue;
    if (name === "text") made.textContent = value;
    else if (name.startsWith("on")) made.addEventListener(name.slice(2), value);
    else made.setAttribute(name === "cls" ? "class" : name, value === true ? "" : value);
  }
  if (children) made.append(...children.filter((child) => child != null));
  return made;
}

export const icon = (path) => element("svg", { viewBox: "0 0 24 24", "aria-hidden": "true" },
  [element("path", { d: path }, null, SVG)], SVG);

const build = (node) => typeof node === "string" ? node
  : element(node.tag, node.href && { href: node.href, target: "_blank", rel: "noopener noreferrer" },
    node.children.map(build));

/** Model output as DOM, through markdown.js's description (text nodes and a few tags). */
export function renderMarkdown(text) {
  const fragment = doc.createDocumentFragment();
  fragment.append(...parseMarkdown(text).map(build));
  return fragment;
}

export function errorLine(text, retryLabel, onRetry) {
  const line = element("div", { cls: "e", role: "alert" }, [element("span", { text })]);
  if (onRetry) {
    line.append(element("button", {
      type: "button", text: retryLabel, onclick: () => { line.remove(); onRetry(); },
    }));
  }
  return line;
}

/** `files`: how many files, or their names, shown under the text. */
export function userBubble(text, files) {
  const bubble = element("div", { cls: "m u", dir: "auto" }, [text]);
  if (files) bubble.append(element("span", { cls: "f", text: "📎 " + files }));
  return bubble;
}

export const botBubble = () => element("div", { cls: "m b", dir: "auto" });

/** A person's message: their name above the text, set apart from the assistant's. */
export const agentBubble = (name, text) =>
  element("div", { cls: "m b ag", dir: "auto" }, [element("b", { text: name }), text]);

/** Redraws a reply from its text; while it streams it is aria-busy, so it is read once complete. */
export function paintReply(reply, typingLabel) {
  const body = reply.body;
  body.replaceChildren(renderMarkdown(reply.text));
  const typing = !reply.done && !reply.text;
  body.classList.toggle("t", typing);
  typing ? body.setAttribute("aria-label", typingLabel) : body.removeAttribute("aria-label");
  body.setAttribute("aria-busy", reply.done ? "false" : "true");
  body.hidden = reply.done && !reply.text; // a reply that failed before its first word
}

/** Black or white text on the accent colour, by its luminance; null unless it is #rgb or #rrggbb. */
export function accentText(accent) {
  if (!/^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(accent || "")) return null;
  const hex = accent.length === 4 ? accent.replace(/\w/g, "$&$&") : accent;
  const [red, green, blue] = [1, 3, 5].map((start) => parseInt(hex.substr(start, 2), 16));
  return 0.299 * red + 0.587 * green + 0.114 * blue > 170 ? "#111827" : "#fff";
}
