// JSON over HTTP to /api/v1/widgets/{id}/...: every failure becomes an Error whose `code` is one
// the strings table can explain ("network" when the server cannot be reached at all). This module
// also holds the visitor token, which every call but the config and the session itself carries.
import { canonicalCode } from "./i18n.js";

let widgetRoot = "";
export let token = null;

export function useWidget(base, widgetId) {
  widgetRoot = base + "/api/v1/widgets/" + encodeURIComponent(widgetId);
}
export const setToken = (value) => { token = value; };
export const endpoint = (path) => widgetRoot + path;
// The token goes in the socket's first frame (transport.js), never in its URL, which proxies log.
// "http:" becomes "ws:", "https:" "wss:".
export const socketUrl = () => "ws" + endpoint("/stream").slice(4);

export const failure = (code, body, retryAfter) =>
  Object.assign(new Error(code), { code: canonicalCode(code), body, retry: retryAfter });

export async function request(path, method, body) {
  const headers = {};
  if (token && path !== "/config" && path !== "/sessions") headers.Authorization = "Bearer " + token;
  if (body) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(endpoint(path), {
      method: method || "GET", headers, body: body && JSON.stringify(body), credentials: "omit",
    });
  } catch (error) {
    throw failure("network");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (error) {
    // no body
  }
  if (!response.ok) {
    const retryAfter = +(response.headers.get("Retry-After") || data?.retry_after || 0);
    throw failure(data?.code || (response.status === 429 ? "rate_limited" : "error"), data, retryAfter);
  }
  return data;
}
