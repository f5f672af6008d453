// The log of messages as the visitor sees it: history pages, the visitor's messages on their way,
// replies as they stream (over the socket or, without one, over HTTP), and what went wrong.
import { request } from "./api.js";
import { settings } from "./config.js";
import { explain, t } from "./i18n.js";
import {
  deltaTail, endError, hasUnfinished, historyError, messageFrame, newReply, reconnectFrames,
  resumeFrame, takePending,
} from "./messages.js";
import { feedbackRow, stamp } from "./feedback.js";
import { ctx, extra } from "./lazy.js";
import { emit } from "./page.js";
import { agentBubble, botBubble, doc, element, errorLine, paintReply, userBubble } from "./render.js";
import * as transport from "./transport.js";
import { greeting, log, setStatus } from "./view.js";

const PAGE = "/messages?limit=30";
const NEAR_BOTTOM_PX = 60;
const NEAR_TOP_PX = 40;
const POLL_MS = 1500;

const outbox = []; // messages sent but not acknowledged
const replies = new Map(); // by id
const shown = new Set(); // ids of the messages in the log
export let busy = false;
let onBusy; // called whenever `busy` is set
let onArrive; // called when a reply ends here
let epoch = 0; // counts clear(): an answer for a conversation since left is dropped
let notice = 0; // the status line shows how a reply is doing (waiting, retrying)
let lastText = ""; // what a Retry under a failed reply sends again
let olderCursor = null; // the cursor of older history, or null when all is shown
let olderLoading = false;
let cursor = 0; // the newest message's cursor: a reconnecting socket resumes after it
let typingTimer = 0;
/** Who answers: bot, waiting (for a person), human (`agent` answers) or closed. */
export let handoff = { state: "bot" };
let onHandoff = () => {};
export const initHandoff = (changed, away) => { onHandoff = changed; onAway = away; };
let onAway;

export const initConversation = (onBusyChange, arrived) => {
  onBusy = onBusyChange;
  onArrive = arrived;
};
/** Events carry the text only when the widget's owner says so (events_include_text). */
const withText = (detail, text) => settings.events_include_text ? { ...detail, text } : detail;
const failedEvent = (code) => emit("error", { code });

/** Forgets the conversation shown (a new visitor or conversation follows). */
export function clear() {
  epoch++;
  outbox.length = 0;
  cursor = 0;
  handoff = { state: "bot" };
  replies.clear();
  shown.clear();
  olderCursor = null;
  log.replaceChildren();
  setBusy(false);
}
export const idle = () => !busy && !outbox.length;
export const pendingFrames = () =>
  [...(cursor ? [{ type: "resume", after: cursor }] : []), ...reconnectFrames(replies, outbox)];

/** The state a `ready` or `state` frame (or the handoff request) tells. */
export function setHandoff(frame) {
  handoff = { state: frame.state || "bot", agent: frame.agent };
  clearTimeout(typingTimer);
  typingTimer = 0;
  const line = handoff.state === "waiting" ? t("handoff_waiting")
    : handoff.state === "human" ? t("handoff_human", { name: handoff.agent }) : "";
  if (line || !notice) setStatus(line);
  onHandoff();
}
const seen = (message) => { cursor = Math.max(cursor, +message.cursor || 0); };

const nearBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
export const toBottom = () => { log.scrollTop = log.scrollHeight; };
const paint = (reply) => paintReply(reply, t("typing"));
const failedLine = (code, retry, onRetry) => errorLine(explain(code, retry), t("retry"), onRetry);
function setBusy(on) {
  busy = on;
  onBusy();
}

/** A new reply in `replies`, drawn in a bubble of its own (not yet in the log). */
function track(id, text, done) {
  const known = newReply(text, done);
  known.body = known.element = botBubble();
  replies.set(id, known);
  shown.add(id);
  paint(known);
  return known;
}

/** The numbered sources a reply cites, under it (drawn by the second file). */
function cite(known, citations) {
  if (citations?.length) extra().then((loaded) => loaded.sources(ctx, known.element, citations), () => {});
}

function reply(id, text, done) {
  let known = replies.get(id);
  if (!known) {
    known = track(id, text, done);
    const stay = nearBottom();
    log.append(known.element);
    if (stay) toBottom();
  }
  if (!known.done) setBusy(true);
  return known;
}

function historyNodes(message) {
  shown.add(message.id);
  seen(message);
  if (message.role === "agent") return [agentBubble(message.author_name, message.text), stamp(message.created_at)];
  if (message.role === "user") {
    return [userBubble(message.text, message.file_ids?.length || 0), stamp(message.created_at)];
  }
  const known = track(message.id, message.text, message.status !== "streaming");
  const code = historyError(message);
  if (code) return [(known.element = element("div", {}, [known.body, failedLine(code)]))];
  if (!known.done) {
    setBusy(true);
    return [known.element];
  }
  cite(known, message.citations);
  return [known.element, feedbackRow(message.id, message.finished_at, message.feedback?.rating)];
}

export async function history(before) {
  const at = epoch;
  const page = await request(PAGE + (before ? "&before=" + encodeURIComponent(before) : ""));
  if (at !== epoch) return;
  olderCursor = page.prev_cursor;
  const fragment = doc.createDocumentFragment();
  for (const message of page.data) if (!shown.has(message.id)) fragment.append(...historyNodes(message));
  const height = log.scrollHeight;
  const top = log.scrollTop;
  log.insertBefore(fragment, log.firstChild);
  if (!olderCursor && settings.greeting) log.insertBefore(greeting, log.firstChild);
  if (before) log.scrollTop = top + log.scrollHeight - height;
  else toBottom();
}

async function older() {
  if (olderLoading || !olderCursor) return;
  olderLoading = true;
  log.setAttribute("aria-busy", "true");
  try {
    await history(olderCursor);
  } catch (error) {
    // tried again on the next scroll
  } finally {
    olderLoading = false;
    log.removeAttribute("aria-busy");
  }
  fillUp();
}

/** Loads older pages until the log can scroll (or all is shown). */
export function fillUp() {
  if (olderCursor && log.scrollHeight <= log.clientHeight) older();
}
log.addEventListener("scroll", () => {
  if (log.scrollTop < NEAR_TOP_PX) older();
});

export function onFrame(frame) {
  if (frame.type === "ping") {
    transport.send({ type: "pong" });
  } else if (frame.type === "ack" || frame.type === "started") {
    const message = frame.message || { id: frame.message_id, client_message_id: frame.client_message_id };
    const pending = takePending(outbox, message.client_message_id);
    if (!shown.has(message.id)) {
      shown.add(message.id);
      if (!pending && message.text != null) {
        log.append(userBubble(message.text, message.file_ids?.length), stamp());
      }
    }
    if (frame.reply_id) reply(frame.reply_id);
    else setBusy(hasUnfinished(replies));
  } else if (frame.type === "message") {
    // A person's message, or one kept for them, or one missed while away: shown once.
    const message = frame.message;
    if (message.role === "user") takePending(outbox, message.client_message_id);
    if (!shown.has(message.id)) {
      const stay = nearBottom();
      log.append(...historyNodes(message));
      if (stay) toBottom();
      if (message.role === "agent") onArrive();
    } else seen(message);
    setBusy(hasUnfinished(replies));
  } else if (frame.type === "state") {
    setHandoff(frame);
  } else if (frame.type === "away") {
    onAway(frame);
  } else if (frame.type === "typing") {
    clearTimeout(typingTimer);
    if (frame.typing) {
      setStatus(t("handoff_typing", { name: frame.name || handoff.agent }));
      typingTimer = setTimeout(() => setHandoff(handoff), 6000);
    } else setHandoff(handoff);
  } else if (frame.type === "status") {
    notice = 1;
    setStatus(frame.state === "retrying"
      ? t("retrying", { s: Math.ceil(frame.retry_in || 0), n: frame.attempt }) : t("waiting"));
  } else if (frame.type === "delta") {
    onDelta(frame);
  } else if (frame.type === "done") {
    finish(frame.message_id, frame.status, frame.citations);
  } else if (frame.type === "error") {
    const pending = frame.client_message_id && takePending(outbox, frame.client_message_id);
    const known = frame.message_id && replies.get(frame.message_id);
    if (pending) {
      refused(pending, frame.code, frame.retry_after);
    } else if (known) {
      known.error = frame.code;
      if (frame.code === "not_found") finish(frame.message_id, "interrupted");
    } else if (frame.code !== "invalid_frame") {
      setStatus(explain(frame.code, frame.retry_after));
      failedEvent(frame.code);
    }
  }
}

function quiet() {
  if (notice) setStatus("");
  notice = 0;
}

function onDelta(frame) {
  quiet();
  const known = reply(frame.message_id);
  if (known.done) return;
  const tail = deltaTail(known.text.length, frame.offset, frame.text);
  if (tail === null) return transport.send(resumeFrame(frame.message_id, known));
  if (!tail) return;
  known.text += tail;
  // Many deltas may arrive per frame: draw once per animation frame.
  if (!known.frame) {
    known.frame = requestAnimationFrame(() => {
      known.frame = 0;
      const stay = nearBottom();
      paint(known);
      if (stay) toBottom();
    });
  }
}

function finish(id, status, citations) {
  const known = replies.get(id);
  if (!known || known.done) return;
  known.done = true;
  quiet();
  cancelAnimationFrame(known.frame);
  const stay = nearBottom();
  paint(known);
  const code = endError(status, known.error);
  if (code) {
    known.element.after(failedLine(code, 0, () => say(lastText)));
    failedEvent(code);
  } else {
    known.element.after(feedbackRow(id));
    cite(known, citations);
  }
  setBusy(hasUnfinished(replies));
  if (stay) toBottom();
  ended(id, status, known);
}

function ended(id, status, known) {
  emit("reply", withText({ messageId: id, status }, known.text));
  onArrive();
}

function refused(pending, code, retry) {
  failedEvent(code);
  pending.element.after(failedLine(code, retry, () => {
    pending.element.remove();
    pending.time.remove();
    say(pending.text, pending.files, code === "network" ? pending.clientId : null);
  }));
  setBusy(false);
  toBottom();
}

/** Shows and sends a message; `clientId` is kept when it is a resend the server may have seen. */
export function say(text, fileIds, clientId, names) {
  if (!text) return;
  lastText = text;
  const files = fileIds || [];
  const pending = {
    clientId: clientId || newId(), text, files,
    element: userBubble(text, names || (files.length ? files.length : 0)),
  };
  log.append(pending.element, (pending.time = stamp()));
  toBottom();
  emit("message", withText({ clientMessageId: pending.clientId }, text));
  setStatus("");
  setBusy(true);
  if (transport.overHttp) return post(pending);
  outbox.push(pending);
  if (transport.isReady()) transport.send(messageFrame(pending));
  else transport.wake();
}

async function post(pending) {
  const waiting = botBubble();
  const at = epoch;
  waiting.classList.add("t");
  log.append(waiting);
  toBottom();
  try {
    const response = await request("/messages", "POST",
      { text: pending.text, file_ids: pending.files, client_message_id: pending.clientId });
    waiting.remove();
    if (at !== epoch) return;
    shown.add(response.message.id);
    if (response.reply) whole(response.reply).element.after(feedbackRow(response.reply.id));
    else setBusy(false);
  } catch (error) {
    waiting.remove();
    if (at !== epoch) return;
    const answer = error.body?.reply;
    if (answer) whole(answer).element.after(failedLine(error.code, error.retry, () => say(pending.text)));
    else refused(pending, error.code, error.retry);
  }
  toBottom();
}

/** A reply the server sent whole (over HTTP), drawn as finished. */
function whole(answer) {
  const known = reply(answer.id, answer.text, true);
  known.done = true;
  paint(known);
  cite(known, answer.citations);
  setBusy(false);
  ended(answer.id, answer.status, known);
  return known;
}

/** The socket is gone for good: post what waits, and read streaming replies from the history. */
export function useHttp() {
  for (const pending of outbox.splice(0)) post(pending);
  poll();
}
async function poll() {
  if (!hasUnfinished(replies)) return;
  try {
    for (const message of (await request(PAGE)).data) {
      const known = replies.get(message.id);
      if (!known || known.done) continue;
      known.text = message.text;
      known.error = message.error_code;
      if (message.status === "streaming") paint(known);
      else finish(message.id, message.status);
    }
  } catch (error) {
    // tried again below
  }
  setTimeout(poll, POLL_MS);
}

// randomUUID exists in secure contexts only (https, localhost): elsewhere, time and chance.
const newId = () => crypto.randomUUID?.() || Date.now().toString(36) + Math.random().toString(36).slice(2);
