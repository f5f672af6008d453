// The widget preview (/console/preview.html, framed by the console's widget page): runs the real
// /widget.js with the settings the owner has not saved yet. The console posts them here; the
// widget's request for its public config is answered with them. A widget whose allowed origins
// include this server chats here for real; any other (and a widget not saved yet) shows its look
// only: an empty conversation, no socket, and sending says this origin is not allowed.

interface PreviewMessage {
  type: "loacl-preview";
  widgetId: string;
  settings: Record<string, string>;
}

let latest: PreviewMessage | null = null;
let lookOnly = false;
const WIDGET_API = /\/api\/v1\/widgets\/[^/]+\/(config|sessions|messages|files|stream)/;
const realFetch = window.fetch.bind(window);
const RealSocket = window.WebSocket;

const json = (body: unknown, status = 200): Response =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
const NOT_HERE = { code: "origin_not_allowed", detail: "this preview shows the widget's look only" };

/** The look-only answers: a session, an empty conversation, and a refusal for the rest. */
function standIn(kind: string, method: string): Response {
  if (kind === "sessions") return json({ visitor_token: "preview" });
  if (kind === "messages" && method === "GET") {
    return json({ data: [], conversation_id: null, prev_cursor: null, next_cursor: null });
  }
  return json(NOT_HERE, 403);
}

// Without a real session there is no socket: the widget then uses HTTP, which the stand-in answers.
window.WebSocket = class extends RealSocket {
  constructor(url: string | URL, protocols?: string | string[]) {
    if (lookOnly && WIDGET_API.test(String(url))) throw new Error("preview: no socket");
    super(url, protocols);
  }
};

window.fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
  const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url, location.href);
  const kind = url.origin === location.origin ? WIDGET_API.exec(url.pathname)?.[1] : undefined;
  const method = (init?.method || "GET").toUpperCase();
  if (latest && kind === "sessions") {
    const real = await realFetch(input, init).catch(() => null);
    lookOnly = !real || real.status === 403 || real.status === 404;
    return lookOnly || !real ? standIn(kind, method) : real;
  }
  if (lookOnly && kind && kind !== "config") return standIn(kind, method);
  if (latest && kind === "config") {
    let real: Record<string, unknown> = { uploads: { max_size: 0, allowed_types: [] } };
    try {
      // The server's upload limits, when this widget exists and allows this origin.
      const answer = await realFetch(input, init);
      if (answer.ok) real = await answer.json();
    } catch {
      // the preview shows the look without uploads
    }
    const body = { ...real, widget_id: latest.widgetId, settings: latest.settings };
    return new Response(JSON.stringify(body), { headers: { "Content-Type": "application/json" } });
  }
  return realFetch(input, init);
};

function show(message: PreviewMessage): void {
  latest = message;
  lookOnly = false;
  try {
    // The stand-in's visitor token means nothing to the server: not kept for the next start.
    if (localStorage.getItem(`loacl:${message.widgetId}`) === "preview") localStorage.removeItem(`loacl:${message.widgetId}`);
  } catch {
    // no storage: nothing kept
  }
  document.querySelectorAll("loacl-chat, script[data-preview]").forEach((node) => node.remove());
  // The widget starts once per id and page; each new look is a new start.
  (window as unknown as { __loaclStarted?: Record<string, number> }).__loaclStarted = {};
  const script = document.createElement("script");
  script.src = "/widget.js";
  script.dataset.preview = "";
  script.dataset.widgetId = message.widgetId;
  script.dataset.theme = message.settings.theme;
  script.dataset.position = message.settings.position;
  script.dataset.locale = message.settings.locale;
  script.addEventListener("load", () => openWhenReady(0));
  document.body.append(script);
}

/** Open the panel, so the title and greeting show. */
function openWhenReady(tries: number): void {
  const launcher = document.querySelector("loacl-chat")?.shadowRoot?.querySelector<HTMLButtonElement>(".r:not([hidden]) .l");
  if (launcher) launcher.click();
  else if (tries < 50) setTimeout(() => openWhenReady(tries + 1), 100);
}

addEventListener("message", (event: MessageEvent) => {
  if (event.origin !== location.origin || event.source !== window.parent) return;
  const data = event.data as PreviewMessage;
  if (data && data.type === "loacl-preview" && typeof data.widgetId === "string") show(data);
});

window.parent.postMessage({ type: "loacl-preview-ready" }, location.origin);
