// LOACL chat widget, the entry point: finds its script tag, reads the configuration, starts the
// visitor's session, and wires the other modules together. Each run of the script is one widget.
// Bundled by widget/build.sh into loacl/static/widget.js; see widget/README.md.
import { request, setToken, token, useWidget } from "./api.js";
import { apiBase, findScript, readOptions, settings, useConfig } from "./config.js";
import * as conversation from "./conversation.js";
import { DEFAULT_PLACEHOLDER, DEFAULT_TITLE, explain, isKnownCode, t, useLocale } from "./i18n.js";
import { accentText, doc, errorLine, renderMarkdown } from "./render.js";
import * as transport from "./transport.js";
import { clearChips, initUploads, uploaded, uploading } from "./upload.js";
import {
  applyLook, attachButton, closeButton, dropZone, fileList, form, greeting, host, input, launcher, log,
  panel, picker, root, sendButton, setStatus, title,
} from "./view.js";

// Errors after which the chat cannot work on this page at all.
const FATAL = ["origin_not_allowed", "widget_not_found", "identity_required"];
const MAX_INPUT_PX = 140;

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

// Someone is waiting for the socket: the panel is open, or a message or reply is under way.
const wanted = () => !panel.hidden || !conversation.idle();

transport.initTransport({
  canConnect: () => ready && !!token,
  wanted,
  ready() {
    setStatus("");
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
conversation.initConversation(sync);
initUploads(() => ready && !fatal, sync);

function label() {
  const locale = useLocale(options.locale || settings.locale);
  root.lang = locale.lang; // both reflect their attributes
  root.dir = locale.dir;
  // An owner's own title or placeholder wins; the default one is shown in the visitor's language.
  const own = (key, fallback) => settings[key] && settings[key] !== fallback ? settings[key] : t(key);
  title.textContent = own("title", DEFAULT_TITLE);
  input.placeholder = own("placeholder", DEFAULT_PLACEHOLDER);
  input.setAttribute("aria-label", t("input"));
  launcher.setAttribute("aria-label", t("open"));
  closeButton.setAttribute("aria-label", t("close"));
  attachButton.setAttribute("aria-label", t("attach"));
  sendButton.setAttribute("aria-label", t("send"));
  fileList.setAttribute("aria-label", t("files"));
  dropZone.textContent = t("drop");
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
  form.hidden = !!fatal;
}

function begin() {
  if (session || fatal) return session;
  setStatus("");
  session = (async () => {
    const body = {};
    if (options.userId) {
      body.user_id = String(options.userId);
      body.user_hash = String(options.userHash || "");
    } else if (token) {
      body.visitor_token = token;
    }
    setToken((await request("/sessions", "POST", body)).visitor_token);
    store(storageKey, token);
    await conversation.history();
    conversation.fillUp();
    ready = true;
    sync();
    transport.connect();
  })().catch((error) => {
    session = null;
    if (FATAL.includes(error.code)) return setFatal(error.code);
    setStatus(explain(error.code, error.retry), [t("retry"), begin]);
  });
  return session;
}

function setFatal(code) {
  fatal = code;
  log.replaceChildren(errorLine(explain(code)));
  setStatus("");
  sync();
}

// -- the composer, the keyboard, opening and closing ---------------------------------------------
function send() {
  if (fatal) return;
  if (!ready) return begin();
  if (uploading()) return setStatus(t("wait_upload"));
  if (conversation.busy) return setStatus(t("reply_in_progress"));
  const files = uploaded();
  const names = files.map((chip) => chip.name).join(", ");
  const text = input.value.trim() || names;
  if (!text) return;
  input.value = "";
  grow();
  clearChips();
  sync();
  conversation.say(text, files.map((chip) => chip.id), null, names);
}

function grow() {
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight + 2, MAX_INPUT_PX) + "px";
}

function open() {
  panel.hidden = false;
  root.classList.add("o");
  launcher.setAttribute("aria-expanded", "true");
  launcher.setAttribute("aria-label", t("close"));
  if (fatal) {
    closeButton.focus();
  } else {
    input.focus();
    if (ready) transport.connect();
    else begin();
  }
  conversation.toBottom();
}

function close() {
  panel.hidden = true;
  root.classList.remove("o");
  launcher.setAttribute("aria-expanded", "false");
  launcher.setAttribute("aria-label", t("open"));
  launcher.focus();
  // Nothing is waiting for the socket: let it go until the panel opens again.
  if (conversation.idle()) transport.close();
}

launcher.addEventListener("click", () => (panel.hidden ? open() : close()));
closeButton.addEventListener("click", close);
form.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
input.addEventListener("input", grow);
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

// -- start: show the launcher once the public config is known ------------------------------------
function start(base) {
  const widgetId = String(options.widgetId || "");
  useWidget(base, widgetId);
  storageKey = "loacl:" + widgetId;
  setToken(stored(storageKey)); // the visitor's, so the conversation survives reloads
  window.addEventListener("online", () => {
    if (ready && !transport.isOpen() && wanted()) transport.connect();
  });
  label();
  sync();
  const mount = () => (doc.body || doc.documentElement).append(host);
  doc.body ? mount() : doc.addEventListener("DOMContentLoaded", mount);
  request("/config").then(
    (loaded) => {
      useConfig(loaded);
      greeting.append(renderMarkdown(settings.greeting || ""));
      picker.accept = loaded.uploads.allowed_types.map((type) => "." + type).join(",");
      label();
      look();
      root.hidden = false;
    },
    (error) => {
      label();
      look();
      console.warn("LOACL: " + error.code); // "network": the chat server cannot be reached
      if (error.code === "network") return;
      setFatal(isKnownCode(error.code) ? error.code : "widget_not_found");
      root.hidden = false;
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
