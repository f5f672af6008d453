// The owner's live stream (WS /api/v1/owner/stream): one socket while a page listens, the access
// token in the first frame (never in the URL), pings answered, reconnected with backoff.
import { useEffect } from "preact/hooks";
import { accessToken, refresh } from "./api";

export interface Frame {
  type: string;
  [field: string]: unknown;
}

type Listener = (frame: Frame) => void;
const listeners = new Set<Listener>();
let socket: WebSocket | null = null;
let retries = 0;
let timer: ReturnType<typeof setTimeout> | undefined;

function connect(): void {
  const token = accessToken();
  if (socket || !token || !listeners.size) return;
  const url = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/api/v1/owner/stream`;
  const opened = new WebSocket(url);
  socket = opened;
  opened.onopen = () => opened.send(JSON.stringify({ type: "auth", token }));
  opened.onmessage = (event) => {
    let frame: Frame;
    try {
      frame = JSON.parse(String(event.data));
    } catch {
      return;
    }
    if (frame.type === "ping") return opened.send(JSON.stringify({ type: "pong" }));
    if (frame.type === "ready") retries = 0;
    listeners.forEach((listener) => listener(frame));
  };
  opened.onclose = async (event) => {
    if (socket === opened) socket = null;
    if (!listeners.size) return;
    // 4401: the access token expired (or the session ended): a new one, if the session lives.
    if (event.code === 4401 && !(await refresh().catch(() => false))) return;
    // Wait longer after each failure, up to half a minute; a page that listens again reloads.
    const wait = Math.min(30_000, 500 * 2 ** retries++);
    timer = setTimeout(connect, wait);
    listeners.forEach((listener) => listener({ type: "closed" }));
  };
}

export function useLive(listener: Listener, deps: unknown[] = []): void {
  useEffect(() => {
    listeners.add(listener);
    connect();
    return () => {
      listeners.delete(listener);
      if (!listeners.size) {
        clearTimeout(timer);
        socket?.close();
        socket = null;
      }
    };
  }, deps);
}
