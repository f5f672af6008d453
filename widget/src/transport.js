// The live connection: one WebSocket at a time, JSON frames both ways. A drop reconnects with
// exponential backoff (0.5 s doubling to 15 s, with jitter); the caller resumes on each "ready".
// Without WebSocket, or after three connections in a row that never became ready (a proxy that
// eats sockets), it switches to plain HTTP for good and says so through `hooks.http`.
import { socketUrl, token } from "./api.js";

const MAX_DELAY_MS = 15000;
const FIRST_DELAY_MS = 500;
const FAILURES_BEFORE_HTTP = 3;

// canConnect() whether a session exists; wanted() whether anyone waits for a socket; ready();
// frame(frame); http(); refused() when the server refused the token or the origin (close codes
// 4401, 4403); retrying() before each wait; stopped() after stop().
let hooks;
let socket = null;
let socketReady = false;
export let overHttp = false;
let failures = 0; // connections in a row that closed before "ready"
let attempts = 0; // reconnections since the last "ready": the backoff's exponent
let timer = 0;
let stopped = false; // the visitor pressed Stop

export const initTransport = (callbacks) => { hooks = callbacks; };
export const isOpen = () => !!socket;
export const isReady = () => socketReady;

export function connect() {
  if (overHttp || socket || stopped || !hooks.canConnect()) return;
  clearTimeout(timer);
  let opening;
  try {
    opening = new WebSocket(socketUrl()); // throws too where there is no WebSocket at all
  } catch (error) {
    return switchToHttp();
  }
  socket = opening;
  let opened = false;
  // The visitor token as the first frame: a URL's query string ends up in proxies' logs.
  opening.onopen = () => opening.send(JSON.stringify({ type: "auth", token }));
  opening.onmessage = (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (error) {
      return;
    }
    if (frame.type === "ready") {
      opened = true;
      socketReady = true;
      failures = 0;
      attempts = 0;
      hooks.ready(frame);
    } else {
      hooks.frame(frame);
    }
  };
  opening.onclose = (event) => {
    if (socket !== opening) return;
    socket = null;
    socketReady = false;
    if (!opened && ++failures >= FAILURES_BEFORE_HTTP) return switchToHttp();
    if (event.code === 4401 || event.code === 4403) return hooks.refused();
    if (hooks.wanted()) retryLater();
  };
}

function retryLater() {
  clearTimeout(timer);
  if (stopped) return;
  hooks.retrying();
  const delay = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** attempts++) * (0.8 + Math.random() * 0.4);
  timer = setTimeout(connect, delay);
}

function switchToHttp() {
  overHttp = true;
  socket = null;
  hooks.http();
}

/** Connects even after Stop (the visitor sent something). */
export function wake() {
  stopped = false;
  connect();
}

/** The visitor's Retry after Stop: from the shortest delay again. */
export function retry() {
  attempts = 0;
  wake();
}

export function stop() {
  stopped = true;
  clearTimeout(timer);
  hooks.stopped();
}

/** Closes the socket on purpose (1000); its close event is then ignored. */
export function close() {
  const closing = socket;
  if (!closing) return;
  socket = null;
  socketReady = false;
  closing.close(1000);
}

export function send(frame) {
  if (socket && socketReady) socket.send(JSON.stringify(frame));
}
