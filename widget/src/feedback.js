// Under each message, a row with its time (shown on hover and focus, read by screen readers);
// under each finished reply, the visitor's rating too: thumbs up or down, then an optional short
// comment, sent to POST .../messages/{id}/feedback (the newest rating of a reply counts).
import { request } from "./api.js";
import { settings } from "./config.js";
import { explain, t } from "./i18n.js";
import { ctx, extra } from "./lazy.js";
import { emit } from "./page.js";
import { element, icon, ICONS } from "./render.js";
import { root } from "./view.js";

/** The row under a message: its time (now when not given) and `children`. */
export function stamp(when, children) {
  const date = when ? new Date(when) : new Date();
  return element("div", { cls: "mt" }, [element("time", {
    datetime: date.toISOString(),
    text: date.toLocaleTimeString(root.lang, { hour: "numeric", minute: "2-digit" }),
  }), ...(children || [])]);
}

/** The row under a finished reply `id`, with `rating` ("up", "down") when it has one. */
export function feedbackRow(id, when, rating) {
  if (settings.feedback === false) return stamp(when);
  let box, note;
  const send = async (value, comment) => {
    note?.remove();
    try {
      await request("/messages/" + id + "/feedback", "POST", { rating: value, comment });
    } catch (error) {
      row.append((note = element("span", { cls: "e", role: "alert", text: explain(error.code, error.retry) })));
      emit("error", { code: error.code });
      return;
    }
    rating = value;
    for (const button of buttons) button.setAttribute("aria-pressed", button.value === value);
    return 1;
  };
  const rate = async (value) => {
    if (!(await send(value)) || box) return;
    box = 1;
    // The comment box is in the second file: most visitors never write one.
    extra().then((loaded) => loaded.comment(ctx, row, (comment) => send(rating, comment)), () => (box = 0));
  };
  const buttons = ["up", "down"].map((value) => element("button", {
    type: "button", value, "aria-label": t(value), "aria-pressed": "" + (value === rating),
    onclick: () => rate(value),
  }, [icon(ICONS.thumb)]));
  const row = stamp(when, buttons);
  return row;
}
