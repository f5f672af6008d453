// The second file: what few visitors use, loaded on demand from the same versioned, immutable
// URL space as the first (/widget/extra.<version>.js, with its integrity hash built into the
// first file). Attachments, the pre-chat form and the comment under a rating. It keeps no state
// of its own: the first file hands it what it needs (`ctx`, see main.js), and it hands back its
// functions through window.__loaclExtra, the same for every widget on the page.
import { element } from "./render.js";
import { uploader } from "./upload.js";

/** The pre-chat form, before the composer: resolves once the server has the answers. */
function prechat(ctx, fields) {
  return new Promise((resolve) => {
    let note;
    const inputs = fields.map((name) => element("input", {
      name, type: name === "email" ? "email" : "text", required: true, autocomplete: name, maxlength: "200",
    }));
    const form = element("form", { cls: "pc", "aria-labelledby": "pq" }, [
      element("p", { id: "pq", text: ctx.t("prechat") }),
      ...inputs.map((input) => element("label", {}, [ctx.t(input.name), input])),
      element("button", { type: "submit", text: ctx.t("start") }),
    ]);
    form.onsubmit = async (event) => {
      event.preventDefault();
      const body = {};
      for (const input of inputs) body[input.name] = input.value.trim();
      note?.remove();
      try {
        await ctx.request("/profile", "POST", body);
      } catch (error) {
        return form.append((note = element("span", { cls: "e", role: "alert", text: ctx.explain(error.code) })));
      }
      form.remove();
      resolve();
    };
    ctx.form.before(form);
    inputs[0].focus();
  });
}

/** The optional comment after a rating, under its row; `send(comment)` resolves to 1 once sent. */
function comment(ctx, row, send) {
  const field = element("input", { maxlength: "500", "aria-label": ctx.t("comment"), placeholder: ctx.t("comment") });
  const box = element("form", { cls: "fb", onsubmit(event) {
    event.preventDefault();
    const text = field.value.trim();
    if (text) send(text).then((done) => done && box.replaceWith(element("p", { cls: "fb", role: "status", text: ctx.t("thanks") })));
  } }, [field, element("button", { type: "submit", text: ctx.t("send") })]);
  row.after(box);
  field.focus();
  box.scrollIntoView({ block: "nearest" });
}

/** The sources a reply cites, numbered as its [n] marks, under its bubble: text only. */
function sources(ctx, bubble, citations) {
  bubble.after(element("ol", { cls: "src", "aria-label": ctx.t("sources") }, citations.map((c) =>
    element("li", { value: c.number }, [
      element("b", { text: c.document + (c.page > 1 ? " · " + c.page : "") }),
      element("span", { text: " " + (c.passage.length > 160 ? c.passage.slice(0, 160) + "…" : c.passage) }),
    ]))));
}

/** When the team next opens, in the visitor's language and the widget's time zone. */
function when(ctx, info) {
  try {
    return new Intl.DateTimeFormat(ctx.lang(), {
      weekday: "long", day: "numeric", month: "long", hour: "numeric", minute: "2-digit", timeZone: info.timezone,
    }).format(new Date(info.next_opening));
  } catch (error) {
    return info.next_opening;
  }
}

/** Nobody answers now (`info`: the handoff's `away`): say when a reply comes, and take an address for it. */
function away(ctx, info) {
  const old = ctx.form.parentNode.querySelector(".aw");
  if (old && !info.reply_email) return; // said already (a reconnect): keep what is being typed
  old?.remove();
  const said = info.next_opening ? ctx.t("away_until", { when: when(ctx, info), tz: info.timezone })
    : ctx.t(info.reason === "closed" ? "away_closed" : "away_nobody");
  const field = element("input", {
    name: "email", type: "email", required: true, autocomplete: "email", maxlength: "320", "aria-label": ctx.t("email"),
  });
  let note;
  const box = element("form", { cls: "pc aw", "aria-labelledby": "aq" }, [
    element("p", { id: "aq", role: "status", text: said + " " + ctx.t("away_ask") }),
    element("label", {}, [ctx.t("email"), field]),
    element("button", { type: "submit", text: ctx.t("send") }),
  ]);
  box.onsubmit = async (event) => {
    event.preventDefault();
    note?.remove();
    let saved;
    try {
      saved = await ctx.request("/reply-address", "POST", { email: field.value.trim() });
    } catch (error) {
      return box.append((note = element("span", { cls: "e", role: "alert", text: ctx.explain(error.code) })));
    }
    box.replaceChildren(element("p", { role: "status", text: ctx.t("away_saved", { email: saved.email }) }));
  };
  ctx.form.before(box);
  if (info.reply_email) box.replaceChildren(element("p", { role: "status", text: said + " " + ctx.t("away_saved", { email: info.reply_email }) }));
  else field.focus();
}

window.__loaclExtra = { uploader, prechat, comment, sources, away };
