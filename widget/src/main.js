// LOACL chat widget, the entry point: finds its script tag, reads the configuration, starts the
// visitor's session, and wires the other modules together. Each run of the script is one widget.
// Bundled by widget/build.sh into loacl/static/widget.js; see widget/README.md.
import { endpoint, request, setToken, token, useWidget } from "./api.js";
import { apiBase, findScript, readOptions, settings, uploads, useConfig } from "./config.js";
import * as conversation from "./conversation.js";
import { DEFAULT_PLACEHOLDER, DEFAULT_TITLE, explain, isKnownCode, t, useLocale } from "./i18n.js";
import { ctx, extra, useBase } from "./lazy.js";
import { emit, named, register } from "./page.js";
import { accentText, doc, element, errorLine, icon, ICONS, renderMarkdown } from "./render.js";
import * as transport from "./transport.js";
import {
  applyLook, attachButton, badge, closeButton, dropZone, fileList, form, greeting, host, input, launcher,
  log, newButton, nudge, panel, picker, root, sendButton, setStatus, title, handoffButton,
} from "./view.js";

// Errors after which the chat cannot work on this page at all.
const FATAL = ["origin_not_allowed", "widget_not_found", "identity_required"];
const MAX_INPUT_PX = 140;
const NEAR_BOTTOM_PX = 60;

// localStorage throws in some private modes: the conversation then lasts as long as the page.
function stored(key) {
  try {
    return localStorage.getItem(key);
  } catch (error) {
    return null;
  }
}
function store(key, value) {
  try {
    value ? localStorage.setItem(key, value) : localStorage.removeItem(key);
  } catch (error) {
    // kept for this page only
  }
}

let options;
let storageKey;
let session = null; // a promise while starting
let ready = false;
let fatal = null; // a code: the chat cannot work here
let holding = true; // no session starts until the page's queued calls have been played
let generation = 0; // counts identity changes: a session started for an earlier one is dropped
const queued = []; // texts the page sent before the session was ready
let sendOnReady = false; // the visitor pressed Enter before the session was ready
let asking = false; // the pre-chat form is shown
let profile = null; // a name and e-mail address from identify(), sent once the session is ready
let unread = 0;
let blink = 0; // the title blink's timer
let pageTitle;
let restoreScroll = 0; // px from the bottom, restored once the history is shown
let fromBottom = 0; // px from the bottom, while the panel is open

// Someone is waiting for the socket: the panel is open, or a message or reply is under way.
// While a person is asked for or answers, their messages may come at any moment.
const handedOver = () => /waiting|human/.test(conversation.handoff.state);
const wanted = () => !panel.hidden || !conversation.idle() || handedOver();
let typedAt = 0;

transport.initTransport({
  canConnect: () => ready && !!token,
  wanted,
  ready(frame) {
    setStatus("");
    conversation.setHandoff(frame);
    for (const frame of conversation.pendingFrames()) transport.send(frame);
  },
  frame: conversation.onFrame,
  http() {
    setStatus("");
    conversation.useHttp();
  },
  refused() {
    // The token or the origin is refused now: start the session again.
    ready = false;
    session = null;
    begin();
  },
  retrying() {
    if (!conversation.idle()) setStatus(t("reconnecting"), [t("stop"), transport.stop]);
  },
  stopped() {
    setStatus(t("stopped"), [t("retry"), () => { setStatus(""); transport.retry(); }]);
  },
});
// A reply that ends while the panel is closed is unread.
conversation.initConversation(sync, () => panel.hidden && setUnread(unread + 1));
// "Talk to a person" where the assistant hands over, while it answers.
// Nobody answers now (the handoff's answer, or an `away` frame when the assistant asked): when
// to expect a reply, and a field for an address, from the second file.
const away = (info) => extra().then((loaded) => loaded.away(ctx, info), () => {});
conversation.initHandoff(() => { handoffButton.hidden = !settings.handoff || handedOver(); }, away);
handoffButton.addEventListener("click", () => {
  handoffButton.hidden = true;
  request("/handoff", "POST", {}).then((answer) => {
    conversation.setHandoff(answer);
    if (answer.away) away(answer.away);
  }, (error) => setStatus(explain(error.code)));
});

// What the second file (lazy.js) needs of this one.
Object.assign(ctx, {
  t, explain, request, endpoint, lang: () => root.lang, token: () => token, uploads: () => uploads, fileList, input, form, changed: sync,
});

// -- attachments: the picker and drops; the chips and uploads are in the second file ------------
let files = null; // the second file's uploader, once loaded
const uploading = () => !!files?.uploading();
const uploaded = () => files?.uploaded() || [];

function attach(list) {
  if (!ready || fatal || !list.length) return;
  extra().then((loaded) => {
    files ||= loaded.uploader(ctx);
    files.add(list);
  }, (error) => setStatus(explain(error.code)));
}
picker.addEventListener("change", () => {
  attach([...picker.files]);
  picker.value = "";
});
const carriesFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
panel.addEventListener("dragover", (event) => {
  if (!carriesFiles(event) || !ready || fatal) return;
  event.preventDefault();
  dropZone.hidden = false;
});
panel.addEventListener("dragleave", (event) => {
  if (!panel.contains(event.relatedTarget)) dropZone.hidden = true;
});
panel.addEventListener("drop", (event) => {
  if (!carriesFiles(event)) return;
  event.preventDefault();
  dropZone.hidden = true;
  attach([...event.dataTransfer.files]);
});

// -- what survives a reload in this tab: open or closed, the draft, the scroll, unread replies ----
function remember() {
  if (holding) return; // the saved state is not read yet
  try {
    sessionStorage.setItem(storageKey, JSON.stringify({ o: !panel.hidden, d: input.value, s: fromBottom, n: unread }));
  } catch (error) {
    // not kept
  }
}
function recall() {
  try {
    return JSON.parse(sessionStorage.getItem(storageKey)) || {};
  } catch (error) {
    return {};
  }
}

function setUnread(count) {
  unread = count;
  badge.hidden = !count;
  badge.textContent = count;
  launcher.setAttribute("aria-label", panel.hidden
    ? t("open") + (count ? " (" + t("unread", { n: count }) + ")" : "") : t("close"));
  if (blink) doc.title = pageTitle;
  clearInterval(blink);
  blink = 0;
  if (count && settings.title_blink) {
    pageTitle = doc.title;
    blink = setInterval(() => {
      doc.title = doc.title === pageTitle ? t("unread", { n: unread }) : pageTitle;
    }, 1000);
  }
  remember();
}

function label() {
  const locale = useLocale(options.locale || settings.locale);
  root.lang = locale.lang; // both reflect their attributes
  root.dir = locale.dir;
  // An owner's own title or placeholder wins; the default one is shown in the visitor's language.
  const own = (key, fallback) => settings[key] && settings[key] !== fallback ? settings[key] : t(key);
  title.textContent = own("title", DEFAULT_TITLE);
  input.placeholder = own("placeholder", DEFAULT_PLACEHOLDER);
  input.setAttribute("aria-label", t("input"));
  closeButton.setAttribute("aria-label", t("close"));
  handoffButton.textContent = t("handoff");
  newButton.setAttribute("aria-label", t("new_chat"));
  attachButton.setAttribute("aria-label", t("attach"));
  sendButton.setAttribute("aria-label", t("send"));
  fileList.setAttribute("aria-label", t("files"));
  dropZone.textContent = t("drop");
  setUnread(unread);
}

function look() {
  const accent = settings.accent_color;
  applyLook(options.theme || settings.theme || "auto", options.position || settings.position || "",
    accent, accentText(accent));
}

function sync() {
  sendButton.disabled = !ready || conversation.busy || !!fatal || uploading();
  attachButton.disabled = !ready || !!fatal;
  input.disabled = !!fatal;
  form.hidden = !!fatal || asking;
  // A signed-in user has one conversation per widget: only anonymous visitors start another.
  newButton.hidden = !!fatal || !!options.userId;
}

function failed(code) {
  emit("error", { code });
}

function begin() {
  if (session || fatal || holding) return session;
  setStatus("");
  const at = generation;
  session = (async () => {
    const body = {};
    if (options.userId) {
      body.user_id = String(options.userId);
      body.user_hash = String(options.userHash || "");
    } else if (token) {
      body.visitor_token = token;
    }
    const started = await request("/sessions", "POST", body);
    if (at !== generation) return;
    setToken(started.visitor_token);
    store(storageKey, token);
    await conversation.history();
    if (at !== generation) return;
    if (restoreScroll > NEAR_BOTTOM_PX) log.scrollTop = log.scrollHeight - log.clientHeight - restoreScroll;
    restoreScroll = 0;
    conversation.fillUp();
    // The pre-chat form, before a conversation's first message (once per conversation here).
    const fields = settings.prechat_fields || [];
    const asked = storageKey + ":asked";
    if (fields.length && !profile && !log.querySelector(".u") && stored(asked) !== started.conversation_id) {
      asking = true;
      sync();
      await (await extra()).prechat(ctx, fields);
      if (at !== generation) return;
      store(asked, started.conversation_id);
      asking = false;
      input.focus();
    }
    ready = true;
    sync();
    transport.connect();
    for (const text of queued.splice(0)) send(text);
    if (sendOnReady) send();
    introduce();
  })().catch((error) => {
    if (at !== generation) return;
    session = null;
    failed(error.code);
    if (FATAL.includes(error.code)) return setFatal(error.code);
    setStatus(explain(error.code, error.retry), [t("retry"), begin]);
  });
  return session;
}

function introduce() {
  if (!ready || !profile) return;
  request("/profile", "POST", profile).catch((error) => failed(error.code));
  profile = null;
}

function setFatal(code) {
  fatal = code;
  log.replaceChildren(errorLine(explain(code)));
  setStatus("");
  sync();
}

/** Leaves the conversation shown for another: a new identity, a reset, a new conversation. */
function switchTo(userId, userHash) {
  options.userId = userId;
  options.userHash = userHash;
  generation++;
  sendOnReady = false;
  session = null;
  ready = false;
  asking = false;
  for (const old of panel.querySelectorAll(".pc")) old.remove();
  if (fatal === "identity_required") fatal = null;
  setToken(null);
  store(storageKey, null);
  transport.close();
  conversation.clear();
  setStatus("");
  sync();
  setUnread(0); // and saves the tab's state without the old conversation's
  if (!panel.hidden) begin();
}

// -- the composer, the keyboard, opening and closing ---------------------------------------------
/** Sends the composer's text and files, or `given` (the page's LOACL("send", text)). */
function send(given) {
  if (fatal) return;
  if (!ready) {
    if (given) queued.push(given);
    else sendOnReady = !!input.value.trim();
    return begin();
  }
  sendOnReady = false;
  if (uploading()) return setStatus(t("wait_upload"));
  if (conversation.busy) {
    failed("reply_in_progress");
    return setStatus(t("reply_in_progress"));
  }
  if (given) return conversation.say(given);
  const chips = uploaded();
  const names = chips.map((chip) => chip.name).join(", ");
  const text = input.value.trim() || names;
  if (!text) return;
  input.value = "";
  grow();
  remember();
  files?.clear();
  sync();
  conversation.say(text, chips.map((chip) => chip.id), null, names);
}

function grow() {
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight + 2, MAX_INPUT_PX) + "px";
}

/** `quietly`: restored after a reload, without taking the focus. */
function open(quietly) {
  if (!panel.hidden) return;
  panel.hidden = false;
  root.classList.add("o");
  launcher.setAttribute("aria-expanded", "true");
  if (!nudge.hidden) dismissNudge();
  setUnread(0);
  if (!quietly) (fatal ? closeButton : input).focus();
  if (!fatal) ready ? transport.connect() : begin();
  conversation.toBottom();
  emit("open");
}

function close() {
  if (panel.hidden) return;
  const hadFocus = panel.contains(host.shadowRoot.activeElement);
  panel.hidden = true;
  root.classList.remove("o");
  launcher.setAttribute("aria-expanded", "false");
  setUnread(unread);
  if (hadFocus) launcher.focus();
  // Nothing is waiting for the socket: let it go until the panel opens again.
  if (conversation.idle()) transport.close();
  emit("close");
}

const toggle = () => (panel.hidden ? open() : close());

launcher.addEventListener("click", toggle);
closeButton.addEventListener("click", close);
newButton.addEventListener("click", () => {
  switchTo();
  input.focus();
});
form.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
log.addEventListener("scroll", () => {
  fromBottom = log.scrollHeight - log.scrollTop - log.clientHeight;
});
input.addEventListener("input", () => {
  grow();
  remember();
  // The person answering sees the visitor typing (the server passes it on at most every 2 s).
  if (handedOver() && transport.isReady() && Date.now() - typedAt > 2000) {
    typedAt = Date.now();
    transport.send({ type: "typing", typing: true });
  }
});
input.addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter starts a new line; an IME composing text keeps its Enter.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
    event.preventDefault();
    send();
  }
});
root.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && !panel.hidden) {
    event.stopPropagation();
    close();
  }
});

// -- the proactive greeting: once per device, until dismissed ------------------------------------
function dismissNudge() {
  nudge.hidden = true;
  store(storageKey + ":nudged", "1");
}

function nudgeLater() {
  const text = settings.proactive_greeting;
  if (!text || stored(storageKey + ":nudged")) return;
  setTimeout(() => {
    if (!panel.hidden || fatal) return;
    nudge.replaceChildren(
      element("button", { type: "button", cls: "pt", text, onclick: () => open() }),
      element("button", { type: "button", "aria-label": t("dismiss"), onclick: dismissNudge },
        [icon(ICONS.close)]),
    );
    nudge.hidden = false;
  }, settings.proactive_delay_seconds * 1000);
}

// -- the page's window.LOACL ---------------------------------------------------------------------
const commands = {
  open: () => open(),
  close,
  toggle,
  identify(user) {
    const id = user?.userId == null ? undefined : String(user.userId);
    const hash = String(user?.userHash || "");
    if (id !== options.userId || hash !== String(options.userHash || "")) switchTo(id, hash);
    if (user?.name || user?.email) {
      profile = { name: String(user.name || ""), email: String(user.email || "") };
      introduce();
    }
  },
  reset() {
    input.value = "";
    switchTo();
  },
  setLocale(tag) {
    options.locale = tag;
    label();
  },
  send(text, how) {
    text = String(text ?? "").trim();
    if (!text) return;
    if (how?.prefill) {
      input.value = text;
      grow();
      remember();
    }
    open();
    if (!how?.prefill) send(text);
  },
};

// -- start: show the launcher once the public config is known ------------------------------------
/** Plays the page's queued calls and the tab's saved state, then starts a session if open. */
function arrive() {
  const saved = recall();
  register(options.widgetId, commands);
  input.value ||= saved.d || "";
  restoreScroll = saved.s || 0;
  if (saved.o) open(true);
  else if (panel.hidden) unread = saved.n || 0;
  holding = false;
  if (!panel.hidden) begin();
  label();
  grow();
}

function start(base) {
  const widgetId = (options.widgetId = String(options.widgetId || ""));
  useWidget(base, widgetId);
  storageKey = "loacl:" + widgetId;
  named(widgetId);
  useBase(base);
  setToken(stored(storageKey)); // the visitor's, so the conversation survives reloads
  window.addEventListener("online", () => {
    if (ready && !transport.isOpen() && wanted()) transport.connect();
  });
  addEventListener("pagehide", remember);
  label();
  sync();
  const mount = () => (doc.body || doc.documentElement).append(host);
  doc.body ? mount() : doc.addEventListener("DOMContentLoaded", mount);
  request("/config").then(
    (loaded) => {
      useConfig(loaded);
      greeting.append(renderMarkdown(settings.greeting || ""));
      picker.accept = loaded.uploads.allowed_types.map((type) => "." + type).join(",");
      look();
      conversation.setHandoff(conversation.handoff);
      root.hidden = false;
      arrive();
      nudgeLater();
      emit("ready");
    },
    (error) => {
      label();
      look();
      console.warn("LOACL: " + error.code); // "network": the chat server cannot be reached
      failed(error.code);
      if (error.code === "network") return;
      setFatal(isKnownCode(error.code) ? error.code : "widget_not_found");
      root.hidden = false;
      arrive();
    },
  );
}

const script = findScript(doc);
if (script) {
  options = readOptions(window.LOACL_WIDGET, script.dataset);
  // One start per widget id, however many times the script is included.
  const started = (window.__loaclStarted = window.__loaclStarted || {});
  if (!options.widgetId) {
    console.warn("LOACL: set window.LOACL_WIDGET = {widgetId: ...} or data-widget-id");
  } else if (!started[options.widgetId]) {
    started[options.widgetId] = 1;
    start(apiBase(script.src));
  }
}
