// The conversation as data, with no DOM: messages sent but not yet acknowledged (the outbox),
// replies by id with the text received so far, and the ids already shown. These functions decide
// what to send and what a frame changes; conversation.js draws the result.
//
// A reply's text only grows, by character offset: a delta that repeats or overlaps what we have
// adds only its new tail, and one that starts past our end means frames were missed, so we ask
// the server to resume from our length instead.

// The caller keeps: outbox, [{clientId, text, files, element}] resent with the same id until
// acknowledged; replies, a Map of reply id -> {text, done, error, body, element, frame}.

export const newReply = (text, done) => ({ text: text || "", done: !!done });

/** What a delta at `offset` adds to `known` characters: "" for nothing new, null for a gap. */
export function deltaTail(known, offset, text) {
  return offset > known ? null : text.slice(known - offset);
}

export const resumeFrame = (replyId, reply) =>
  ({ type: "resume", message_id: replyId, offset: reply.text.length });

export const messageFrame = (pending) =>
  ({ type: "message", text: pending.text, file_ids: pending.files, client_message_id: pending.clientId });

/** Sent on every (re)connection: resume each unfinished reply, resend each unacknowledged message. */
export function reconnectFrames(replies, outbox) {
  const frames = [];
  for (const [replyId, reply] of replies) if (!reply.done) frames.push(resumeFrame(replyId, reply));
  for (const pending of outbox) frames.push(messageFrame(pending));
  return frames;
}

/** Removes and returns the outbox entry with this client id, or null. */
export function takePending(outbox, clientId) {
  const index = outbox.findIndex((pending) => pending.clientId === clientId);
  return index < 0 ? null : outbox.splice(index, 1)[0];
}

export const hasUnfinished = (replies) => [...replies.values()].some((reply) => !reply.done);

/** The error code to show under a reply that ended with `status`, or null when it completed. */
export function endError(status, error) {
  if (status === "completed") return null;
  return status === "interrupted" && (!error || error === "not_found") ? "interrupted"
    : error || "provider_error";
}

/** The same for a reply read from the history (its status and error_code). */
export function historyError(message) {
  if (message.status !== "failed" && message.status !== "interrupted") return null;
  return message.status === "interrupted" ? "interrupted" : message.error_code || "provider_error";
}
