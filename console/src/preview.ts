// The widget preview (/console/preview.html, framed by the console's widget page): runs the real
// /widget.js with the settings the owner has not saved yet. The console posts them here; the
// widget's request for its public config is answered with them. A widget whose allowed origins
// include this server chats here for real; any other (and a widget not saved yet) shows its look
// only: an empty conversation, no socket, and sending says this origin is not allowed.
//
// The assistant editor frames it too ("loacl-assistant-preview"): then the widget chats with the
// assistant as it stands in the editor, saved or not. Its socket is a stand-in speaking the
// widget's own frames; each question goes up to the console (which holds the owner's token, this
// frame never does), which asks POST /api/v1/assistant-preview and hands the streamed pieces back.

interface PreviewMessage {
  type: "loacl-preview";
  widgetId: string;
  settings: Record<string, string>;
}

interface AssistantPreviewMessage {
  type: "loacl-assistant-preview";
  settings: Record<string, string>;
}

let latest: PreviewMessage | null = null;
let shown = 0; // counts show(): a look replaced by a newer one stops waiting to open
let lookOnly = false;
let chatting = false; // the assistant editor's preview: every widget call is answered here
const ASSISTANT_WIDGET = "assistant-preview";
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

interface Turn { role: "user" | "assistant"; text: string }
type Frame = Record<string, unknown>;

/** The widget's socket in the assistant preview: the server's frames, made from the pieces of
 * POST /api/v1/assistant-preview that the console relays. */
class PreviewSocket {
  readyState = 0;
  onopen: ((event: Event) => void) | null = null;
  onmessage: ((event: { data: string }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  onerror: ((event: Event) => void) | null = null;

  constructor() {
    setTimeout(() => {
      this.readyState = 1;
      this.onopen?.(new Event("open"));
    }, 0);
  }

  send(data: string): void {
    const frame = JSON.parse(data) as Frame;
    if (frame.type === "auth") this.emit({ type: "ready", conversation_id: ASSISTANT_WIDGET });
    else if (frame.type === "ping") this.emit({ type: "pong" });
    else if (frame.type === "message" && typeof frame.text === "string") ask(this, frame.text, String(frame.client_message_id || ""));
  }

  close(): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code: 1000 });
  }

  emit(frame: Frame): void {
    if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(frame) });
  }
}

let turnsSoFar: Turn[] = [];
let asked = 0;
const answering = new Map<string, (piece: Frame) => void>();

function ask(socket: PreviewSocket, text: string, clientId: string): void {
  const n = ++asked;
  const messageId = `preview-q${n}`;
  const replyId = `preview-a${n}`;
  turnsSoFar.push({ role: "user", text });
  const turns = turnsSoFar.slice();
  socket.emit({ type: "ack", client_message_id: clientId, message_id: messageId, reply_id: replyId, duplicate: false });
  let answer = "";
  answering.set(replyId, (piece) => {
    if (piece.type === "delta") {
      answer += String(piece.text);
      socket.emit({ type: "delta", message_id: replyId, offset: piece.offset, text: piece.text });
    } else if (piece.type === "done") {
      answering.delete(replyId);
      turnsSoFar.push({ role: "assistant", text: answer });
      socket.emit({ type: "done", message_id: replyId, status: "completed", usage: piece.usage, length: answer.length });
    } else if (piece.type === "error") {
      answering.delete(replyId);
      turnsSoFar.pop(); // the question goes again with the next one
      socket.emit({ type: "error", code: piece.code, text: piece.text, message_id: replyId });
      socket.emit({ type: "done", message_id: replyId, status: "failed", usage: null, length: answer.length });
    }
  });
  window.parent.postMessage({ type: "loacl-preview-ask", id: replyId, messages: turns }, location.origin);
}

// Without a real session there is no socket: the widget then uses HTTP, which the stand-in answers.
window.WebSocket = class extends RealSocket {
  constructor(url: string | URL, protocols?: string | string[]) {
    if (chatting && WIDGET_API.test(String(url))) return new PreviewSocket() as unknown as WebSocket;
    if (lookOnly && WIDGET_API.test(String(url))) throw new Error("preview: no socket");
    super(url, protocols);
  }
};

window.fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
  const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url, location.href);
  const kind = url.origin === location.origin ? WIDGET_API.exec(url.pathname)?.[1] : undefined;
  const method = (init?.method || "GET").toUpperCase();
  if (chatting && kind === "config") return json({ widget_id: ASSISTANT_WIDGET, settings: latest?.settings, uploads: { max_size: 0, allowed_types: [] } });
  if (chatting && kind) return standIn(kind, method);
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

function show(message: PreviewMessage, chat = false): void {
  latest = message;
  lookOnly = false;
  chatting = chat;
  turnsSoFar = [];
  answering.clear();
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
  const start = ++shown;
  script.addEventListener("load", () => openWhenReady(start, 0));
  document.body.append(script);
}

/** Open the panel once the widget's launcher shows (its config answered: on a busy machine
 * that may take many seconds), so the title and greeting show. */
function openWhenReady(start: number, tries: number): void {
  if (start !== shown) return;
  const launcher = document.querySelector("loacl-chat")?.shadowRoot?.querySelector<HTMLButtonElement>(".r:not([hidden]) .l");
  if (launcher) launcher.click();
  else if (tries < 600) setTimeout(() => openWhenReady(start, tries + 1), 100);
}

addEventListener("message", (event: MessageEvent) => {
  if (event.origin !== location.origin || event.source !== window.parent) return;
  const data = event.data as PreviewMessage;
  if (data && data.type === "loacl-preview" && typeof data.widgetId === "string") show(data);
  const given = event.data as AssistantPreviewMessage;
  if (given && given.type === "loacl-assistant-preview") {
    show({ type: "loacl-preview", widgetId: ASSISTANT_WIDGET, settings: given.settings }, true);
  }
  const piece = event.data as { type?: string; id?: string; piece?: Frame };
  if (piece && piece.type === "loacl-preview-piece" && piece.id && piece.piece) answering.get(piece.id)?.(piece.piece);
});

window.parent.postMessage({ type: "loacl-preview-ready" }, location.origin);
