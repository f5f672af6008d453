/* LOACL chat widget: vanilla JavaScript, no dependencies, everything inside one shadow root.
 * Source of loacl/static/widget.js (minified by widget/build.sh). See widget/README.md. */
(() => {
  "use strict";
  const W = window;
  const D = document;
  const NS = "http://www.w3.org/2000/svg";
  const SCRIPT_RE = /\/widget(?:\.js|\/[\w.-]+\.js)(?:[?#].*)?$/;
  const DEFAULT_TITLE = "Chat with us";
  const DEFAULT_PLACEHOLDER = "Type a message…";

  // -- every string, per locale ------------------------------------------------------------
  const STR = {
    en: {
      title: DEFAULT_TITLE, placeholder: DEFAULT_PLACEHOLDER, open: "Open chat",
      close: "Close chat", send: "Send", attach: "Attach a file", remove: "Remove",
      input: "Message", retry: "Retry", stop: "Stop", typing: "The assistant is typing",
      reconnecting: "Connection lost. Reconnecting…", stopped: "Not connected.",
      drop: "Drop a file to attach it", uploading: "Uploading", uploaded: "Attached",
      files: "Attachments", interrupted: "The answer was interrupted. Please ask again.",
      wait_upload: "Please wait until your files are uploaded.",
      network: "The chat can't be reached. Check your connection and try again.",
      origin_not_allowed: "This website is not allowed to use this chat. The site's owner can add it to the widget's allowed origins.",
      widget_not_found: "This chat is not available.",
      rate_limited: "You are sending messages too fast. Please wait a moment and try again.",
      provider_rate_limited: "The assistant is busy right now. Please try again in a moment.",
      provider_unavailable: "The assistant can't be reached right now. Please try again later.",
      provider_error: "The assistant couldn't answer. Please try again.",
      file_too_large: "This file is too large. The limit is {max}.",
      unsupported_file_type: "This type of file isn't accepted. Accepted types: {types}.",
      empty_file: "This file is empty.",
      unsupported_file_for_provider: "The assistant can't read this kind of file.",
      unknown_file: "An attached file is no longer available. Please attach it again.",
      message_too_long: "Your message is too long. Please shorten it.",
      reply_in_progress: "Please wait for the current answer to finish.",
      identity_required: "Please sign in to this website to chat.",
      error: "Something went wrong. Please try again.",
    },
    fr: {
      title: "Discutons", placeholder: "Écrivez un message…", open: "Ouvrir la discussion",
      close: "Fermer la discussion", send: "Envoyer", attach: "Joindre un fichier",
      remove: "Retirer", input: "Message", retry: "Réessayer", stop: "Arrêter",
      typing: "L’assistant écrit", reconnecting: "Connexion perdue. Reconnexion…",
      stopped: "Non connecté.", drop: "Déposez un fichier pour le joindre",
      uploading: "Envoi en cours", uploaded: "Joint", files: "Pièces jointes",
      interrupted: "La réponse a été interrompue. Posez la question à nouveau.",
      wait_upload: "Attendez la fin de l’envoi de vos fichiers.",
      network: "La discussion est injoignable. Vérifiez votre connexion et réessayez.",
      origin_not_allowed: "Ce site n’est pas autorisé à utiliser cette discussion. Son propriétaire peut l’ajouter aux origines autorisées du widget.",
      widget_not_found: "Cette discussion n’est pas disponible.",
      rate_limited: "Vous envoyez des messages trop vite. Patientez un instant, puis réessayez.",
      provider_rate_limited: "L’assistant est très sollicité. Réessayez dans un instant.",
      provider_unavailable: "L’assistant est injoignable pour le moment. Réessayez plus tard.",
      provider_error: "L’assistant n’a pas pu répondre. Réessayez.",
      file_too_large: "Ce fichier est trop volumineux. La limite est de {max}.",
      unsupported_file_type: "Ce type de fichier n’est pas accepté. Types acceptés : {types}.",
      empty_file: "Ce fichier est vide.",
      unsupported_file_for_provider: "L’assistant ne peut pas lire ce type de fichier.",
      unknown_file: "Un fichier joint n’est plus disponible. Joignez-le à nouveau.",
      message_too_long: "Votre message est trop long. Raccourcissez-le.",
      reply_in_progress: "Attendez la fin de la réponse en cours.",
      identity_required: "Connectez-vous à ce site pour discuter.",
      error: "Une erreur s’est produite. Réessayez.",
    },
    ar: {
      title: "تحدث معنا", placeholder: "اكتب رسالة…", open: "افتح المحادثة",
      close: "أغلق المحادثة", send: "إرسال", attach: "إرفاق ملف", remove: "إزالة",
      input: "رسالة", retry: "أعد المحاولة", stop: "إيقاف", typing: "المساعد يكتب",
      reconnecting: "انقطع الاتصال. جارٍ إعادة الاتصال…", stopped: "غير متصل.",
      drop: "أفلت ملفًا لإرفاقه", uploading: "جارٍ الرفع", uploaded: "تم الإرفاق",
      files: "المرفقات", interrupted: "انقطعت الإجابة. يُرجى السؤال مرة أخرى.",
      wait_upload: "يُرجى الانتظار حتى يكتمل رفع ملفاتك.",
      network: "تعذّر الوصول إلى المحادثة. تحقّق من اتصالك وأعد المحاولة.",
      origin_not_allowed: "هذا الموقع غير مسموح له باستخدام هذه المحادثة. يمكن لمالك الموقع إضافته إلى المصادر المسموح بها.",
      widget_not_found: "هذه المحادثة غير متاحة.",
      rate_limited: "أنت ترسل الرسائل بسرعة كبيرة. انتظر قليلًا ثم أعد المحاولة.",
      provider_rate_limited: "المساعد مشغول الآن. يُرجى المحاولة بعد قليل.",
      provider_unavailable: "تعذّر الوصول إلى المساعد الآن. يُرجى المحاولة لاحقًا.",
      provider_error: "لم يتمكن المساعد من الإجابة. يُرجى المحاولة مرة أخرى.",
      file_too_large: "هذا الملف كبير جدًا. الحد الأقصى {max}.",
      unsupported_file_type: "هذا النوع من الملفات غير مقبول. الأنواع المقبولة: {types}.",
      empty_file: "هذا الملف فارغ.",
      unsupported_file_for_provider: "لا يستطيع المساعد قراءة هذا النوع من الملفات.",
      unknown_file: "لم يعد أحد الملفات المرفقة متاحًا. يُرجى إرفاقه مرة أخرى.",
      message_too_long: "رسالتك طويلة جدًا. يُرجى اختصارها.",
      reply_in_progress: "يُرجى انتظار انتهاء الإجابة الحالية.",
      identity_required: "يُرجى تسجيل الدخول إلى هذا الموقع للمحادثة.",
      error: "حدث خطأ ما. يُرجى المحاولة مرة أخرى.",
    },
  };
  const RTL = { ar: 1, fa: 1, he: 1, ur: 1 };
  // Codes that mean the same thing to a visitor.
  const ALIAS = {
    payload_too_large: "file_too_large", unsupported_media_type: "unsupported_file_type",
    invalid_identity: "identity_required",
  };

  // -- small helpers -----------------------------------------------------------------------
  function h(tag, props, kids) {
    const el = D.createElement(tag);
    for (const k in props) {
      const v = props[k];
      if (v == null || v === false) continue;
      if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k === "cls" ? "class" : k, v === true ? "" : v);
    }
    if (kids) el.append(...kids.filter((c) => c != null));
    return el;
  }
  function icon(d) {
    const s = D.createElementNS(NS, "svg");
    s.setAttribute("viewBox", "0 0 24 24");
    s.setAttribute("aria-hidden", "true");
    s.setAttribute("focusable", "false");
    const p = D.createElementNS(NS, "path");
    p.setAttribute("d", d);
    s.append(p);
    return s;
  }
  const ICON_CHAT = "M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z";
  const ICON_CLOSE = "M18 6 6 18M6 6l12 12";
  const ICON_SEND = "M22 2 11 13M22 2l-7 20-4-9-9-4z";
  const ICON_CLIP = "M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5";
  const storage = {
    get(k) {
      try { return localStorage.getItem(k); } catch (e) { return null; }
    },
    set(k, v) {
      try { v ? localStorage.setItem(k, v) : localStorage.removeItem(k); } catch (e) { /* private mode */ }
    },
  };
  function uid() {
    return W.crypto && crypto.randomUUID ? crypto.randomUUID()
      : Date.now().toString(36) + Math.random().toString(36).slice(2);
  }
  function fail(code, body, retry) {
    const e = new Error(code);
    e.code = ALIAS[code] || code;
    e.body = body;
    e.retry = retry;
    return e;
  }
  function bytes(n) {
    return n >= 1048576 ? +(n / 1048576).toFixed(1) + " MB" : n >= 1024 ? Math.round(n / 1024) + " KB" : n + " B";
  }

  // -- model output: text nodes and a small markdown subset, never HTML -------------------
  function link(el, label, href) {
    let u = null;
    try { u = new URL(href); } catch (e) { /* not a URL: text */ }
    if (u && (u.protocol === "http:" || u.protocol === "https:")) {
      el.append(h("a", { href: u.href, target: "_blank", rel: "noopener noreferrer", text: label }));
    } else {
      el.append(label);
    }
  }
  function inline(el, s) {
    const re = /`([^`\n]+)`|\*\*(.+?)\*\*|\*([^*\s](?:[^*\n]*[^*\s])?)\*|\[([^\]\n]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"])|\n/g;
    let last = 0;
    let m;
    while ((m = re.exec(s))) {
      el.append(s.slice(last, m.index));
      if (m[1]) el.append(h("code", { text: m[1] }));
      else if (m[2]) inline(el.appendChild(h("strong")), m[2]);
      else if (m[3]) inline(el.appendChild(h("em")), m[3]);
      else if (m[4]) link(el, m[4], m[5]);
      else if (m[6]) link(el, m[6], m[6]);
      else el.append(h("br"));
      last = re.lastIndex;
    }
    el.append(s.slice(last));
  }
  function markdown(text) {
    const out = D.createDocumentFragment();
    const lines = text.split("\n");
    let para = [];
    let list = null;
    const flush = () => {
      if (para.length) inline(out.appendChild(h("p")), para.join("\n"));
      para = [];
    };
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i];
      let m;
      if (/^\s*```/.test(line)) {
        flush();
        list = null;
        const code = [];
        while (++i < lines.length && !/^\s*```/.test(lines[i])) code.push(lines[i]);
        out.append(h("pre", {}, [h("code", { text: code.join("\n") })]));
      } else if ((m = /^\s*(?:([-*+])|\d+[.)])\s+(.*)$/.exec(line))) {
        flush();
        const tag = m[1] ? "UL" : "OL";
        if (!list || list.tagName !== tag) list = out.appendChild(h(tag));
        inline(list.appendChild(h("li")), m[2]);
      } else if ((m = /^#{1,6}\s+(.*)$/.exec(line))) {
        flush();
        list = null;
        inline(out.appendChild(h("p")).appendChild(h("strong")), m[1]);
      } else if (!line.trim()) {
        flush();
        list = null;
      } else if (list && /^\s+\S/.test(line)) {
        inline(list.lastChild, " " + line.trim());
      } else {
        list = null;
        para.push(line);
      }
    }
    flush();
    return out;
  }

  // -- styles: nothing from the host page gets in, nothing of ours gets out ---------------
  const CSS = `
:host{all:initial!important;display:block!important;position:static!important;visibility:visible!important;opacity:1!important;pointer-events:auto!important}
*{box-sizing:border-box}
[hidden]{display:none!important}
.r{--a:#2563eb;--at:#fff;--bg:#fff;--fg:#111827;--mu:#6b7280;--bd:#e5e7eb;--bu:#f1f5f9;--er:#b91c1c;--sh:0 8px 28px rgba(0,0,0,.22);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans Arabic",sans-serif;color:var(--fg);text-align:start;letter-spacing:normal;word-spacing:normal;text-transform:none;-webkit-font-smoothing:antialiased}
.r.dk{--bg:#111827;--fg:#f3f4f6;--mu:#9ca3af;--bd:#374151;--bu:#1f2937;--er:#fca5a5}
button{all:unset;box-sizing:border-box;display:inline-flex;align-items:center;justify-content:center;cursor:pointer;border-radius:8px;padding:6px;color:inherit;font:inherit}
button:disabled{opacity:.45;cursor:default}
:focus-visible{outline:2px solid var(--a);outline-offset:2px}
svg{width:20px;height:20px;fill:none;stroke:currentColor;stroke-width:2;stroke-linecap:round;stroke-linejoin:round}
.l{position:fixed;z-index:2147483647;bottom:20px;right:20px;width:56px;height:56px;border-radius:50%;background:var(--a);color:var(--at);box-shadow:var(--sh)}
.l:focus-visible{outline:3px solid var(--a);outline-offset:3px;box-shadow:0 0 0 3px #fff,var(--sh)}
.l svg{width:26px;height:26px}
.p{position:fixed;z-index:2147483647;bottom:88px;right:20px;width:380px;max-width:calc(100vw - 40px);height:600px;max-height:calc(100vh - 108px);display:flex;flex-direction:column;background:var(--bg);color:var(--fg);border:1px solid var(--bd);border-radius:14px;box-shadow:var(--sh);overflow:hidden}
.lf .l,.lf .p{right:auto;left:20px}
.hd{display:flex;align-items:center;gap:8px;padding:10px 10px 10px 16px;background:var(--a);color:var(--at)}
.hd h2{all:unset;flex:1;font-size:16px;font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.hd button:focus-visible{outline-color:var(--at)}
.g{flex:1;overflow-y:auto;padding:14px;display:flex;flex-direction:column;gap:10px;overscroll-behavior:contain}
.m{max-width:85%;padding:8px 12px;border-radius:14px;background:var(--bu);overflow-wrap:anywhere;align-self:flex-start}
.m.u{align-self:flex-end;background:var(--a);color:var(--at);white-space:pre-wrap}
.m p{margin:0 0 .55em}.m p:last-child{margin:0}
.m pre{margin:.4em 0;padding:8px;border-radius:8px;background:rgba(127,127,127,.16);overflow-x:auto;white-space:pre}
.m code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.m :not(pre)>code{background:rgba(127,127,127,.18);padding:1px 4px;border-radius:4px}
.m ul,.m ol{margin:.3em 0;padding-inline-start:1.3em}
.m a{color:inherit;text-decoration:underline}
.m .f{display:block;font-size:13px;opacity:.85}
.t::after{content:"";display:inline-block;width:26px;height:8px;background:radial-gradient(circle,var(--mu) 3px,transparent 3.5px) 0 0/9px 8px repeat-x;animation:b 1s steps(3) infinite}
@keyframes b{from{width:9px}to{width:36px}}
.e{color:var(--er);font-size:14px;display:flex;gap:8px;align-items:center;flex-wrap:wrap}
.e button{border:1px solid currentColor;padding:2px 10px;font-size:14px}
.st{padding:6px 14px;font-size:14px;color:var(--mu);display:flex;gap:8px;align-items:center;border-top:1px solid var(--bd)}
.st:empty{display:none}
.st button{border:1px solid currentColor;padding:2px 10px}
.fs{display:flex;flex-wrap:wrap;gap:6px;padding:0 10px}
.fs:empty{display:none}
.c{display:flex;flex-direction:column;gap:2px;max-width:100%;font-size:13px;padding:4px 4px 4px 10px;border:1px solid var(--bd);border-radius:10px;margin-top:8px}
.c>span{display:flex;align-items:center;gap:4px}
.c b{font-weight:500;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;max-width:220px}
.c .e{font-size:13px}
.c button{padding:2px}.c svg{width:14px;height:14px}
.pg{height:3px;background:var(--bd);border-radius:2px;overflow:hidden}
.pg i{display:block;height:100%;width:0;background:var(--a)}
.k{display:flex;align-items:flex-end;gap:4px;padding:10px;border-top:1px solid var(--bd)}
textarea{all:unset;box-sizing:border-box;flex:1;min-height:40px;max-height:140px;overflow-y:auto;font:inherit;font-size:16px;line-height:1.4;padding:8px 10px;border:1px solid var(--bd);border-radius:10px;background:var(--bg);color:var(--fg);white-space:pre-wrap;overflow-wrap:anywhere}
textarea::placeholder{color:var(--mu);opacity:1}
textarea:focus-visible{outline:2px solid var(--a);outline-offset:0}
.k button{width:40px;height:40px;color:var(--mu)}
.k .s{background:var(--a);color:var(--at)}
.dk .k .s:disabled{opacity:.55}
[dir=rtl] .s svg{transform:scaleX(-1)}
.dz{position:absolute;inset:0;display:flex;align-items:center;justify-content:center;background:var(--bg);opacity:.94;border:3px dashed var(--a);border-radius:14px;font-weight:600}
.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}
@media (max-width:480px){.p,.lf .p{inset:0;width:100%;max-width:none;height:100%;max-height:none;border:0;border-radius:0}.o .l{display:none}}
@media (prefers-reduced-motion:reduce){.t::after{animation:none}}
`;

  // -- one widget --------------------------------------------------------------------------
  function start(opts, base) {
    const wid = String(opts.widgetId || "");
    const KEY = "loacl:" + wid;
    const root = (path) => base + "/api/v1/widgets/" + encodeURIComponent(wid) + path;
    let L = STR.en;
    let conf = null;
    let fatal = null; // a code: the chat cannot work here
    let token = storage.get(KEY);
    let session = null; // a promise while starting
    let ready = false;
    let prev = null; // the cursor of older history, or null when all is shown
    let olderLoading = false;
    let ws = null;
    let wsReady = false;
    let fallback = false;
    let fails = 0;
    let attempts = 0;
    let timer = 0;
    let stopped = false;
    let busy = false;
    let lastText = "";
    const outbox = []; // messages sent but not acknowledged: {cid, text, files, el}
    const replies = new Map(); // reply id -> {text, el, body, done, err}
    const shown = new Set(); // ids of messages in the log
    const chips = [];

    const t = (k, vars) => {
      const s = L[k] || STR.en[k] || L.error;
      return s.replace(/\{(\w+)\}/g, (_, v) => (vars && vars[v] != null ? vars[v] : ""));
    };
    const explain = (code, retry) => {
      code = ALIAS[code] || code;
      const s = code === "file_too_large" || code === "unsupported_file_type"
        ? t(code, { max: bytes(conf.uploads.max_size), types: conf.uploads.allowed_types.join(", ") })
        : t(code in STR.en ? code : "error");
      return s + (retry > 0 ? " (" + retry + " s)" : "");
    };

    // The DOM.
    const host = D.createElement("loacl-chat");
    const shadow = host.attachShadow({ mode: "open" });
    try {
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      shadow.adoptedStyleSheets = [sheet];
    } catch (e) {
      shadow.append(h("style", { text: CSS }));
    }
    const launcher = h("button", { cls: "l", type: "button", "aria-expanded": "false", "aria-controls": "p", onclick: () => (panel.hidden ? open() : close()) }, [icon(ICON_CHAT)]);
    const title = h("h2", { id: "h" });
    const closeBtn = h("button", { type: "button", onclick: () => close() }, [icon(ICON_CLOSE)]);
    const log = h("div", { cls: "g", role: "log", "aria-live": "polite", "aria-relevant": "additions text", tabindex: "0", "aria-labelledby": "h" });
    const status = h("div", { cls: "st", role: "status" });
    const fileList = h("div", { cls: "fs", role: "list" });
    const input = h("textarea", { rows: "1" });
    const picker = h("input", { type: "file", hidden: true, multiple: true, tabindex: "-1" });
    const attachBtn = h("button", { type: "button", onclick: () => picker.click() }, [icon(ICON_CLIP)]);
    const sendBtn = h("button", { cls: "s", type: "submit" }, [icon(ICON_SEND)]);
    const form = h("form", { cls: "k", onsubmit: (e) => { e.preventDefault(); send(); } }, [attachBtn, picker, input, sendBtn]);
    const dropZone = h("div", { cls: "dz", hidden: true, "aria-hidden": "true" });
    const panel = h("div", { cls: "p", id: "p", role: "dialog", "aria-labelledby": "h", hidden: true }, [
      h("div", { cls: "hd" }, [title, closeBtn]), log, status, fileList, form, dropZone,
    ]);
    const wrap = h("div", { cls: "r" }, [launcher, panel]);
    const greet = botBubble();
    wrap.hidden = true;
    shadow.append(wrap);

    function label() {
      const s = conf && conf.settings;
      const lang = String(opts.locale || (s && s.locale) || "en").toLowerCase().split("-")[0];
      L = STR[lang] || STR.en;
      wrap.setAttribute("lang", lang in STR ? lang : "en");
      wrap.setAttribute("dir", RTL[lang] ? "rtl" : "ltr");
      title.textContent = s && s.title && s.title !== DEFAULT_TITLE ? s.title : t("title");
      input.placeholder = s && s.placeholder && s.placeholder !== DEFAULT_PLACEHOLDER ? s.placeholder : t("placeholder");
      input.setAttribute("aria-label", t("input"));
      launcher.setAttribute("aria-label", t("open"));
      closeBtn.setAttribute("aria-label", t("close"));
      attachBtn.setAttribute("aria-label", t("attach"));
      sendBtn.setAttribute("aria-label", t("send"));
      fileList.setAttribute("aria-label", t("files"));
      dropZone.textContent = t("drop");
    }

    function look() {
      const s = (conf && conf.settings) || {};
      wrap.classList.toggle("lf", /left/.test(opts.position || s.position || ""));
      const accent = /^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(s.accent_color || "") ? s.accent_color : null;
      if (accent) {
        const hex = accent.length === 4 ? accent.replace(/\w/g, "$&$&") : accent;
        const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.substr(i, 2), 16));
        wrap.style.setProperty("--a", accent);
        wrap.style.setProperty("--at", 0.299 * r + 0.587 * g + 0.114 * b > 170 ? "#111827" : "#fff");
      }
      const theme = opts.theme || s.theme || "auto";
      const mq = W.matchMedia && matchMedia("(prefers-color-scheme: dark)");
      const apply = () => wrap.classList.toggle("dk", theme === "dark" || (theme === "auto" && !!mq && mq.matches));
      apply();
      if (theme === "auto" && mq) mq.addEventListener ? mq.addEventListener("change", apply) : mq.addListener(apply);
    }

    // -- HTTP ---------------------------------------------------------------------------
    async function api(path, method, body) {
      const headers = {};
      if (token && path[1] !== "c" && path[1] !== "s") headers.Authorization = "Bearer " + token;
      if (body) headers["Content-Type"] = "application/json";
      let res;
      try {
        res = await fetch(root(path), { method: method || "GET", headers, body: body && JSON.stringify(body), credentials: "omit" });
      } catch (e) {
        throw fail("network");
      }
      let data = null;
      try { data = await res.json(); } catch (e) { /* no body */ }
      if (!res.ok) {
        const retry = +(res.headers.get("Retry-After") || (data && data.retry_after) || 0);
        throw fail((data && data.code) || (res.status === 429 ? "rate_limited" : "error"), data, retry);
      }
      return data;
    }

    // -- the log ------------------------------------------------------------------------
    function nearBottom() {
      return log.scrollHeight - log.scrollTop - log.clientHeight < 60;
    }
    function toBottom() {
      log.scrollTop = log.scrollHeight;
    }
    function errorLine(code, retry, onRetry) {
      const el = h("div", { cls: "e", role: "alert" }, [h("span", { text: explain(code, retry) })]);
      if (onRetry) el.append(h("button", { type: "button", text: t("retry"), onclick: () => { el.remove(); onRetry(); } }));
      return el;
    }
    function userBubble(text, files) {
      const el = h("div", { cls: "m u", dir: "auto" }, [text]);
      if (files) el.append(h("span", { cls: "f", text: "📎 " + files }));
      return el;
    }
    function botBubble() {
      return h("div", { cls: "m b", dir: "auto" });
    }
    function paint(r) {
      r.body.replaceChildren(markdown(r.text));
      const typing = !r.done && !r.text;
      r.body.classList.toggle("t", typing);
      typing ? r.body.setAttribute("aria-label", t("typing")) : r.body.removeAttribute("aria-label");
      r.body.setAttribute("aria-busy", r.done ? "false" : "true");
      r.body.hidden = r.done && !r.text; // a reply that failed before its first word
    }
    function reply(id, text, done) {
      let r = replies.get(id);
      if (!r) {
        r = { text: text || "", done: !!done, body: botBubble() };
        r.el = r.body;
        replies.set(id, r);
        shown.add(id);
        const stay = nearBottom();
        log.append(r.el);
        paint(r);
        if (stay) toBottom();
      }
      if (!r.done) setBusy(true);
      return r;
    }
    function historyNode(m) {
      shown.add(m.id);
      if (m.role === "user") return userBubble(m.text, m.file_ids && m.file_ids.length ? m.file_ids.length : 0);
      const r = { text: m.text, done: m.status !== "streaming", body: botBubble() };
      r.el = r.body;
      replies.set(m.id, r);
      paint(r);
      if (m.status === "failed" || m.status === "interrupted") {
        const box = h("div", {}, [r.body, errorLine(m.status === "interrupted" ? "interrupted" : m.error_code || "provider_error")]);
        r.el = box;
        return box;
      }
      if (!r.done) setBusy(true);
      return r.el;
    }
    async function history(before) {
      const page = await api("/messages?limit=30" + (before ? "&before=" + encodeURIComponent(before) : ""));
      prev = page.prev_cursor;
      const frag = D.createDocumentFragment();
      for (const m of page.data) if (!shown.has(m.id)) frag.append(historyNode(m));
      const height = log.scrollHeight;
      const top = log.scrollTop;
      log.insertBefore(frag, log.firstChild);
      if (!prev && conf.settings.greeting) log.insertBefore(greet, log.firstChild);
      if (before) log.scrollTop = top + log.scrollHeight - height;
      else toBottom();
    }
    async function older() {
      if (olderLoading || !prev) return;
      olderLoading = true;
      log.setAttribute("aria-busy", "true");
      try {
        await history(prev);
      } catch (e) {
        /* try again on the next scroll */
      } finally {
        olderLoading = false;
        log.removeAttribute("aria-busy");
      }
      if (prev && log.scrollHeight <= log.clientHeight) older();
    }
    log.addEventListener("scroll", () => {
      if (log.scrollTop < 40) older();
    });

    function setStatus(text, button) {
      status.replaceChildren();
      if (text) status.append(h("span", { text }));
      if (button) status.append(h("button", { type: "button", text: button[0], onclick: button[1] }));
    }
    function setBusy(on) {
      busy = on;
      sync();
    }
    function sync() {
      const loading = chips.some((c) => !c.id && !c.err);
      sendBtn.disabled = !ready || busy || !!fatal;
      attachBtn.disabled = !ready || !!fatal;
      input.disabled = !!fatal;
      form.hidden = !!fatal;
      if (loading) sendBtn.disabled = true;
    }

    // -- the session ----------------------------------------------------------------------
    function begin() {
      if (session || fatal) return session;
      setStatus("");
      session = (async () => {
        const body = {};
        if (opts.userId) {
          body.user_id = String(opts.userId);
          body.user_hash = String(opts.userHash || "");
        } else if (token) {
          body.visitor_token = token;
        }
        const s = await api("/sessions", "POST", body);
        token = s.visitor_token;
        storage.set(KEY, token);
        await history();
        if (prev && log.scrollHeight <= log.clientHeight) older();
        ready = true;
        sync();
        connect();
      })().catch((e) => {
        session = null;
        if (e.code === "origin_not_allowed" || e.code === "widget_not_found" || e.code === "identity_required") return setFatal(e.code);
        setStatus(explain(e.code, e.retry), [t("retry"), begin]);
      });
      return session;
    }
    function setFatal(code) {
      fatal = code;
      log.replaceChildren(errorLine(code));
      setStatus("");
      sync();
    }

    // -- streaming over a WebSocket, resumable -------------------------------------------
    const wanted = () => !panel.hidden || outbox.length > 0 || busy;
    function connect() {
      if (fallback || ws || !ready || stopped || !token) return;
      clearTimeout(timer);
      const WS = W.WebSocket;
      if (typeof WS !== "function") return toFallback();
      let sock;
      try {
        sock = new WS(base.replace(/^http/, "ws") + "/api/v1/widgets/" + encodeURIComponent(wid) + "/stream?token=" + encodeURIComponent(token));
      } catch (e) {
        return toFallback();
      }
      ws = sock;
      let opened = false;
      sock.onmessage = (ev) => {
        let f;
        try { f = JSON.parse(ev.data); } catch (e) { return; }
        if (f.type === "ready") {
          opened = true;
          wsReady = true;
          fails = 0;
          attempts = 0;
          setStatus("");
          for (const [id, r] of replies) if (!r.done) wire({ type: "resume", message_id: id, offset: r.text.length });
          for (const p of outbox) wire({ type: "message", text: p.text, file_ids: p.files, client_message_id: p.cid });
        } else {
          frame(f);
        }
      };
      sock.onclose = (ev) => {
        if (ws !== sock) return;
        ws = null;
        wsReady = false;
        if (!opened && ++fails >= 3) return toFallback();
        if (ev.code === 4401 || ev.code === 4403) {
          // The token or the origin is refused now: start the session again.
          ready = false;
          session = null;
          return begin();
        }
        if (wanted()) later();
      };
    }
    function later() {
      clearTimeout(timer);
      if (stopped) return;
      if (busy || outbox.length) setStatus(t("reconnecting"), [t("stop"), stop]);
      const delay = Math.min(15000, 500 * 2 ** attempts++) * (0.8 + Math.random() * 0.4);
      timer = setTimeout(connect, delay);
    }
    function stop() {
      stopped = true;
      clearTimeout(timer);
      setStatus(t("stopped"), [t("retry"), () => { stopped = false; attempts = 0; setStatus(""); connect(); }]);
    }
    function wire(f) {
      if (ws && wsReady) ws.send(JSON.stringify(f));
    }
    function toFallback() {
      fallback = true;
      ws = null;
      setStatus("");
      for (const p of outbox.splice(0)) post(p);
      poll();
    }
    // Without a socket, replies that were streaming are read from the history until they end.
    async function poll() {
      if (![...replies.values()].some((r) => !r.done)) return;
      try {
        for (const m of (await api("/messages?limit=30")).data) {
          const r = replies.get(m.id);
          if (!r || r.done) continue;
          r.text = m.text;
          r.err = m.error_code;
          if (m.status === "streaming") paint(r);
          else finish(m.id, m.status);
        }
      } catch (e) {
        /* try again */
      }
      setTimeout(poll, 1500);
    }
    function take(cid) {
      const i = outbox.findIndex((p) => p.cid === cid);
      return i < 0 ? null : outbox.splice(i, 1)[0];
    }
    function frame(f) {
      if (f.type === "ping") {
        wire({ type: "pong" });
      } else if (f.type === "ack" || f.type === "started") {
        const m = f.message || { id: f.message_id, client_message_id: f.client_message_id };
        const p = take(m.client_message_id);
        if (!shown.has(m.id)) {
          shown.add(m.id);
          if (!p && m.text != null) log.append(userBubble(m.text, m.file_ids && m.file_ids.length));
        }
        reply(f.reply_id);
      } else if (f.type === "delta") {
        const r = reply(f.message_id);
        if (r.done) return;
        if (f.offset > r.text.length) return wire({ type: "resume", message_id: f.message_id, offset: r.text.length });
        const add = f.text.slice(r.text.length - f.offset);
        if (!add) return;
        r.text += add;
        if (!r.frame) {
          r.frame = requestAnimationFrame(() => {
            r.frame = 0;
            const stay = nearBottom();
            paint(r);
            if (stay) toBottom();
          });
        }
      } else if (f.type === "done") {
        finish(f.message_id, f.status);
      } else if (f.type === "error") {
        const p = f.client_message_id && take(f.client_message_id);
        const r = f.message_id && replies.get(f.message_id);
        if (p) {
          refused(p, f.code, f.retry_after);
        } else if (r) {
          r.err = f.code;
          if (f.code === "not_found") finish(f.message_id, "interrupted");
        } else if (f.code !== "invalid_frame") {
          setStatus(explain(f.code, f.retry_after));
        }
      }
    }
    function finish(id, st) {
      const r = replies.get(id);
      if (!r || r.done) return;
      r.done = true;
      cancelAnimationFrame(r.frame);
      const stay = nearBottom();
      paint(r);
      if (st !== "completed") {
        const code = st === "interrupted" && (!r.err || r.err === "not_found") ? "interrupted" : r.err || "provider_error";
        r.el.after(errorLine(code, 0, () => resend(lastText)));
      }
      setBusy([...replies.values()].some((x) => !x.done));
      if (stay) toBottom();
    }
    function refused(p, code, retry) {
      p.el.after(errorLine(code, retry, () => {
        p.el.remove();
        resend(p.text, p.files, code === "network" ? p.cid : null);
      }));
      setBusy(false);
      toBottom();
    }

    // -- sending --------------------------------------------------------------------------
    function send() {
      if (fatal) return;
      if (!ready) return begin();
      if (chips.some((c) => !c.id && !c.err)) return setStatus(t("wait_upload"));
      if (busy) return setStatus(t("reply_in_progress"));
      const files = chips.filter((c) => c.id);
      const text = input.value.trim() || files.map((c) => c.name).join(", ");
      if (!text) return;
      input.value = "";
      grow();
      for (const c of chips.splice(0)) c.el.remove();
      sync();
      resend(text, files.map((c) => c.id), null, files.map((c) => c.name).join(", "));
    }
    function resend(text, fileIds, cid, names) {
      if (!text) return;
      lastText = text;
      const files = fileIds || [];
      const p = { cid: cid || uid(), text, files, el: userBubble(text, names || (files.length ? files.length : 0)) };
      log.append(p.el);
      toBottom();
      setStatus("");
      setBusy(true);
      if (fallback) return post(p);
      outbox.push(p);
      if (wsReady) wire({ type: "message", text, file_ids: files, client_message_id: p.cid });
      else {
        stopped = false;
        connect();
      }
    }
    async function post(p) {
      const wait = botBubble();
      wait.classList.add("t");
      log.append(wait);
      toBottom();
      try {
        const res = await api("/messages", "POST", { text: p.text, file_ids: p.files, client_message_id: p.cid });
        wait.remove();
        shown.add(res.message.id);
        const r = reply(res.reply.id, res.reply.text, true);
        r.done = true;
        paint(r);
        setBusy(false);
      } catch (e) {
        wait.remove();
        const b = e.body;
        if (b && b.reply) {
          const r = reply(b.reply.id, b.reply.text, true);
          r.done = true;
          paint(r);
          r.el.after(errorLine(e.code, e.retry, () => resend(p.text)));
          setBusy(false);
        } else {
          refused(p, e.code, e.retry);
        }
      }
      toBottom();
    }

    // -- files ----------------------------------------------------------------------------
    function addFiles(list) {
      if (!ready || fatal) return;
      const u = conf.uploads;
      for (const file of list) {
        const dot = file.name.lastIndexOf(".");
        const ext = dot > 0 ? file.name.slice(dot + 1).toLowerCase() : "";
        const c = { name: file.name };
        const bar = h("i");
        const note = h("span", { cls: "e", role: "alert" });
        const rm = h("button", { type: "button", "aria-label": t("remove") + " " + file.name, onclick: () => drop(c) }, [icon(ICON_CLOSE)]);
        c.progress = h("div", { cls: "pg", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0", "aria-label": t("uploading") + " " + file.name }, [bar]);
        c.bar = bar;
        c.el = h("div", { cls: "c", role: "listitem" }, [h("span", {}, [h("b", { text: file.name }), rm]), c.progress, note]);
        c.note = note;
        chips.push(c);
        fileList.append(c.el);
        const refuse = u.allowed_types.indexOf(ext) < 0 ? "unsupported_file_type"
          : file.size > u.max_size ? "file_too_large" : !file.size ? "empty_file" : null;
        if (refuse) chipError(c, refuse);
        else upload(c, file);
      }
      sync();
    }
    function drop(c) {
      if (c.xhr) c.xhr.abort();
      c.el.remove();
      chips.splice(chips.indexOf(c), 1);
      sync();
      input.focus();
    }
    function chipError(c, code) {
      c.err = code;
      c.progress.remove();
      c.note.textContent = explain(code);
      sync();
    }
    function upload(c, file) {
      const x = (c.xhr = new XMLHttpRequest());
      x.open("POST", root("/files"));
      x.setRequestHeader("Authorization", "Bearer " + token);
      x.upload.onprogress = (e) => {
        if (!e.lengthComputable) return;
        const pct = Math.round((100 * e.loaded) / e.total);
        c.bar.style.width = pct + "%";
        c.progress.setAttribute("aria-valuenow", pct);
      };
      x.onload = () => {
        let b = null;
        try { b = JSON.parse(x.responseText); } catch (e) { /* no body */ }
        if (x.status === 201 && b && b.id) {
          c.id = b.id;
          c.bar.style.width = "100%";
          c.progress.setAttribute("aria-valuenow", "100");
          c.progress.setAttribute("aria-label", t("uploaded") + " " + c.name);
          c.el.setAttribute("data-state", "done");
          sync();
        } else {
          chipError(c, ALIAS[b && b.code] || (b && b.code) || (x.status === 413 ? "file_too_large" : "error"));
        }
      };
      x.onerror = () => chipError(c, "network");
      const body = new FormData();
      body.append("file", file);
      x.send(body);
    }
    picker.addEventListener("change", () => {
      addFiles([...picker.files]);
      picker.value = "";
    });
    const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].indexOf("Files") >= 0;
    panel.addEventListener("dragover", (e) => {
      if (!hasFiles(e) || !ready || fatal) return;
      e.preventDefault();
      dropZone.hidden = false;
    });
    panel.addEventListener("dragleave", (e) => {
      if (!panel.contains(e.relatedTarget)) dropZone.hidden = true;
    });
    panel.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      dropZone.hidden = true;
      addFiles([...e.dataTransfer.files]);
    });

    // -- the composer and the keyboard ---------------------------------------------------
    function grow() {
      input.style.height = "auto";
      input.style.height = Math.min(input.scrollHeight + 2, 140) + "px";
    }
    input.addEventListener("input", grow);
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      }
    });
    wrap.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && !panel.hidden) {
        e.stopPropagation();
        close();
      }
    });

    function open() {
      panel.hidden = false;
      wrap.classList.add("o");
      launcher.setAttribute("aria-expanded", "true");
      launcher.setAttribute("aria-label", t("close"));
      if (fatal) closeBtn.focus();
      else {
        input.focus();
        if (ready) connect();
        else begin();
      }
      toBottom();
    }
    function close() {
      panel.hidden = true;
      wrap.classList.remove("o");
      launcher.setAttribute("aria-expanded", "false");
      launcher.setAttribute("aria-label", t("open"));
      launcher.focus();
      if (ws && !busy && !outbox.length) {
        const s = ws;
        ws = null;
        wsReady = false;
        s.close(1000);
      }
    }
    W.addEventListener("online", () => {
      if (ready && !ws && wanted()) connect();
    });

    // -- start --------------------------------------------------------------------------
    label();
    sync();
    const mount = () => (D.body || D.documentElement).append(host);
    D.body ? mount() : D.addEventListener("DOMContentLoaded", mount);
    return api("/config").then(
      (c) => {
        conf = c;
        greet.append(markdown(c.settings.greeting || ""));
        picker.accept = c.uploads.allowed_types.map((x) => "." + x).join(",");
        label();
        look();
        wrap.hidden = false;
      },
      (e) => {
        conf = { settings: {}, uploads: { max_size: 0, allowed_types: [] } };
        label();
        look();
        if (e.code === "network") return console.warn("LOACL: the chat server cannot be reached");
        console.warn("LOACL: " + e.code);
        setFatal(e.code in STR.en ? e.code : "widget_not_found");
        wrap.hidden = false;
      },
    );
  }

  // -- find our own script, read the configuration, start --------------------------------
  let script = D.currentScript;
  if (!script || !SCRIPT_RE.test(script.src)) {
    script = [...D.querySelectorAll("script[src]")].reverse().find((s) => SCRIPT_RE.test(s.src));
  }
  if (!script) return;
  const opts = Object.assign({}, W.LOACL_WIDGET);
  const data = script.dataset;
  for (const k of ["widgetId", "position", "theme", "locale"]) if (data[k]) opts[k] = data[k];
  const started = (W.__loaclStarted = W.__loaclStarted || {});
  if (!opts.widgetId) return console.warn("LOACL: set window.LOACL_WIDGET = {widgetId: ...} or data-widget-id");
  if (started[opts.widgetId]) return;
  started[opts.widgetId] = 1;
  start(opts, script.src.replace(SCRIPT_RE, ""));
})();
