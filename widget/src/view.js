// The widget's elements: one <loacl-chat> element whose open shadow root holds the launcher and the
// panel. Built once when the script runs (each run of the script is one widget); main.js adds
// the behaviour, and mounts `host` once the page has a body.
import { botBubble, doc, element, icon, ICONS } from "./render.js";
import CSS from "./styles.css";

export const host = doc.createElement("loacl-chat");
const shadow = host.attachShadow({ mode: "open" });
try {
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(CSS);
  shadow.adoptedStyleSheets = [sheet];
} catch (error) {
  shadow.append(element("style", { text: CSS }));
}

const button = (props, path) => element("button", { type: "button", ...props }, [icon(path)]);
export const launcher = button({ cls: "l", "aria-expanded": "false", "aria-controls": "p" }, ICONS.chat);
export const badge = element("span", { cls: "n", hidden: true, "aria-hidden": "true" });
launcher.append(badge);
export const title = element("h2", { id: "h" });
export const newButton = button({}, ICONS.plus);
export const closeButton = button({}, ICONS.close);
export const handoffButton = element("button", { type: "button", cls: "ho", hidden: true });
export const log = element("div", {
  cls: "g", role: "log", "aria-live": "polite", "aria-relevant": "additions text", tabindex: "0",
  "aria-labelledby": "h",
});
export const status = element("div", { cls: "st", role: "status" });
export const fileList = element("div", { cls: "fs", role: "list" });
export const input = element("textarea", { rows: "1" });
export const picker = element("input", { type: "file", hidden: true, multiple: true, tabindex: "-1" });
export const attachButton = button({ onclick: () => picker.click() }, ICONS.clip);
export const sendButton = element("button", { cls: "s", type: "submit" }, [icon(ICONS.send)]);
export const form = element("form", { cls: "k" }, [attachButton, picker, input, sendButton]);
export const dropZone = element("div", { cls: "dz", hidden: true, "aria-hidden": "true" });
export const panel = element("div", { cls: "p", id: "p", role: "dialog", "aria-labelledby": "h", hidden: true }, [
  element("div", { cls: "hd" }, [title, handoffButton, newButton, closeButton]), log, status, fileList, form, dropZone,
]);
// The proactive greeting: a bubble next to the launcher (main.js fills it).
export const nudge = element("div", { cls: "pb", role: "status", hidden: true });
export const root = element("div", { cls: "r", hidden: true }, [nudge, launcher, panel]);
export const greeting = botBubble();
shadow.append(root);

/** The status line under the log: a text and at most one button, [label, onclick]. */
export function setStatus(text, action) {
  status.replaceChildren();
  if (text) status.append(element("span", { text }));
  if (action) status.append(element("button", { type: "button", text: action[0], onclick: action[1] }));
}

/** Position, accent colour and theme; "auto" follows prefers-color-scheme live. */
export function applyLook(theme, position, accent, textOnAccent) {
  root.classList.toggle("lf", /left/.test(position));
  if (textOnAccent) {
    root.style.setProperty("--a", accent);
    root.style.setProperty("--at", textOnAccent);
  }
  const query = window.matchMedia && matchMedia("(prefers-color-scheme: dark)");
  const apply = () => root.classList.toggle("dk", theme === "dark" || (theme === "auto" && !!query && query.matches));
  apply();
  if (theme === "auto" && query) query.addEventListener ? query.addEventListener("change", apply) : query.addListener(apply);
}
