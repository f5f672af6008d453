// The widget preview (/console/preview.html, framed by the console's widget page): runs the real
// /widget.js with the settings the owner has not saved yet. The console posts them here; the
// widget's request for its public config is answered with them, and every other request goes to
// the server as usual (a widget whose allowed origins include this server can chat here).

interface PreviewMessage {
  type: "loacl-preview";
  widgetId: string;
  settings: Record<string, string>;
}

let latest: PreviewMessage | null = null;
const CONFIG = /\/api\/v1\/widgets\/[^/]+\/config$/;
const realFetch = window.fetch.bind(window);

window.fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
  const url = new URL(typeof input === "string" || input instanceof URL ? input : input.url, location.href);
  if (latest && url.origin === location.origin && CONFIG.test(url.pathname)) {
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
