// Offsets and resume: a reply's text only grows, a repeated delta adds nothing, a gap asks to
// resume from what we have; a reconnection resumes every unfinished reply and resends the outbox.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  deltaTail, endError, hasUnfinished, historyError, messageFrame, newReply, reconnectFrames, takePending,
} from "../src/messages.js";

test("a delta adds only what is new", () => {
  assert.equal(deltaTail(0, 0, "Hello"), "Hello");
  assert.equal(deltaTail(5, 5, " world"), " world");
  assert.equal(deltaTail(5, 3, "lo world"), " world"); // overlaps what we have
  assert.equal(deltaTail(5, 0, "Hello"), ""); // a repeat
  assert.equal(deltaTail(5, 7, "rld"), null); // a gap: resume from 5
});

test("a reconnection resumes unfinished replies from their length, then resends", () => {
  const replies = new Map([["r1", newReply("abc")], ["r2", newReply("done", true)]]);
  const outbox = [{ clientId: "c1", text: "hi", files: ["f1"] }];
  assert.deepEqual(reconnectFrames(replies, outbox), [
    { type: "resume", message_id: "r1", offset: 3 },
    { type: "message", text: "hi", file_ids: ["f1"], client_message_id: "c1" },
  ]);
  assert.deepEqual(messageFrame(outbox[0]), reconnectFrames(new Map(), outbox)[0]);
  assert.equal(hasUnfinished(replies), true);
  replies.get("r1").done = true;
  assert.equal(hasUnfinished(replies), false);
});

test("an acknowledged message leaves the outbox once", () => {
  const outbox = [{ clientId: "a" }, { clientId: "b" }];
  assert.deepEqual(takePending(outbox, "b"), { clientId: "b" });
  assert.equal(takePending(outbox, "b"), null);
  assert.deepEqual(outbox, [{ clientId: "a" }]);
});

test("how a reply ended decides the error shown under it", () => {
  assert.equal(endError("completed", null), null);
  assert.equal(endError("interrupted", null), "interrupted");
  assert.equal(endError("interrupted", "not_found"), "interrupted");
  assert.equal(endError("interrupted", "rate_limited"), "rate_limited");
  assert.equal(endError("failed", null), "provider_error");
  assert.equal(endError("failed", "provider_unavailable"), "provider_unavailable");
  assert.equal(historyError({ status: "completed" }), null);
  assert.equal(historyError({ status: "streaming" }), null);
  assert.equal(historyError({ status: "interrupted", error_code: "x" }), "interrupted");
  assert.equal(historyError({ status: "failed" }), "provider_error");
});
