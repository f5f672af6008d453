// The configuration, from the page and from the server. The page sets
// `window.LOACL_WIDGET = {widgetId, position, theme, locale, userId, userHash}` before the script,
// or data-* attributes on the script tag (these win). The API base is the script's own URL, so
// /widget.js, /widget/<version>.js and /widget.js?v=<version> all work wherever LOACL is mounted.
// The server's public config (GET .../config) gives the owner's settings and the upload limits.

const SCRIPT_URL = /\/widget(?:\.js|\/[\w.-]+\.js)(?:[?#].*)?$/;
const DATA_OPTIONS = ["widgetId", "position", "theme", "locale"];

/** Our own <script> tag: the current one, else the last one whose URL looks like ours. */
export function findScript(doc) {
  const current = doc.currentScript;
  if (current && SCRIPT_URL.test(current.src)) return current;
  return [...doc.querySelectorAll("script[src]")].reverse().find((tag) => SCRIPT_URL.test(tag.src));
}

export function readOptions(pageOptions, dataset) {
  const options = Object.assign({}, pageOptions);
  for (const name of DATA_OPTIONS) if (dataset[name]) options[name] = dataset[name];
  return options;
}

/** "https://chat.example.com/x/widget.js?v=1" -> "https://chat.example.com/x" */
export const apiBase = (scriptUrl) => scriptUrl.replace(SCRIPT_URL, "");

// Until the server answers (or when it cannot), no settings and no uploads.
export let settings = {};
export let uploads = { max_size: 0, allowed_types: [] };
export function useConfig(loaded) {
  settings = { ...loaded.settings, handoff: loaded.handoff };
  uploads = loaded.uploads;
}

const extension = (name) => {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot + 1).toLowerCase() : "";
};

/** Why a file cannot be sent under `limits` ({allowed_types, max_size}), or null when it can. */
export function refusal(file, limits) {
  return limits.allowed_types.indexOf(extension(file.name)) < 0 ? "unsupported_file_type"
    : file.size > limits.max_size ? "file_too_large" : !file.size ? "empty_file" : null;
}
