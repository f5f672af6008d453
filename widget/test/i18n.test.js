// Strings: every locale has every key, lookups fall back to English, error codes are explained.
import assert from "node:assert/strict";
import { test } from "node:test";
import { refusal } from "../src/config.js";
import { explainWith, formatBytes, pickLocale, STRINGS, translate } from "../src/i18n.js";

const LIMITS = { max_size: 2000, allowed_types: ["pdf", "txt"] };

test("every locale has every English key", () => {
  for (const [lang, table] of Object.entries(STRINGS)) {
    assert.deepEqual(Object.keys(table).sort(), Object.keys(STRINGS.en).sort(), lang);
  }
});

test("a locale picks its table, language and direction", () => {
  assert.deepEqual(pickLocale("fr-CA"), { lang: "fr", dir: "ltr", table: STRINGS.fr });
  assert.deepEqual(pickLocale("ar"), { lang: "ar", dir: "rtl", table: STRINGS.ar });
  assert.deepEqual(pickLocale("he"), { lang: "en", dir: "rtl", table: STRINGS.en });
  assert.deepEqual(pickLocale(undefined), { lang: "en", dir: "ltr", table: STRINGS.en });
});

test("lookups fall back to English, then to the generic error", () => {
  const partial = { error: "Oops", title: "Titre" };
  assert.equal(translate(partial, "title"), "Titre");
  assert.equal(translate(partial, "send"), "Send");
  assert.equal(translate(partial, "no_such_key"), "Oops");
  assert.equal(translate(STRINGS.en, "file_too_large", { max: "2 KB" }), "This file is too large. The limit is 2 KB.");
  assert.equal(translate(STRINGS.en, "file_too_large"), "This file is too large. The limit is .");
});

test("error codes: aliases, limits, waits, unknown codes", () => {
  assert.equal(explainWith(STRINGS.en, "payload_too_large", 0, LIMITS), "This file is too large. The limit is 2 KB.");
  assert.equal(explainWith(STRINGS.fr, "unsupported_file_type", 0, LIMITS),
    "Ce type de fichier n’est pas accepté. Types acceptés : pdf, txt.");
  assert.equal(explainWith(STRINGS.en, "rate_limited", 12, LIMITS),
    "You are sending messages too fast. Please wait a moment and try again. (12 s)");
  assert.equal(explainWith(STRINGS.en, "brand_new_code", 0, LIMITS), STRINGS.en.error);
  // A long wait (a used-up budget starts again at midnight) is not counted out in seconds.
  assert.equal(explainWith(STRINGS.fr, "budget_exhausted", 43200, LIMITS),
    "L’assistant ne peut plus répondre pour le moment. Réessayez plus tard.");
  assert.deepEqual([formatBytes(512), formatBytes(2048), formatBytes(5 * 1048576)], ["512 B", "2 KB", "5 MB"]);
});

test("files are checked before they are sent", () => {
  assert.equal(refusal({ name: "a.PDF", size: 10 }, LIMITS), null);
  assert.equal(refusal({ name: "tool.exe", size: 10 }, LIMITS), "unsupported_file_type");
  assert.equal(refusal({ name: "pdf", size: 10 }, LIMITS), "unsupported_file_type");
  assert.equal(refusal({ name: "big.txt", size: 5000 }, LIMITS), "file_too_large");
  assert.equal(refusal({ name: "empty.txt", size: 0 }, LIMITS), "empty_file");
});
