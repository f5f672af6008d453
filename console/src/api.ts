// JSON over HTTP to /api/v1. The access token lives in this module's memory only; the refresh
// token is an HttpOnly cookie the page never sees (or, against a server without the cookie flow,
// kept in memory too, so a reload signs out). Every failure is an ApiError with the problem's
// stable `code` and, for 422, the reason per field.

export interface FieldErrors {
  [field: string]: string;
}

export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public fields: FieldErrors = {},
  ) {
    super(message);
  }
}

export interface Result<T> {
  data: T;
  etag: string | null;
}

interface Options {
  body?: unknown;
  ifMatch?: string | number | null;
  auth?: boolean;
  patch?: boolean;
}

let access: string | null = null;
let memoryRefresh: string | null = null;
const listeners = new Set<() => void>();

export const signedIn = (): boolean => access !== null;
export const accessToken = (): string | null => access;

export function onAuthChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function setAccess(token: string | null): void {
  const changed = (token === null) !== (access === null);
  access = token;
  if (token === null) memoryRefresh = null;
  if (changed) listeners.forEach((listener) => listener());
}

export const etagOf = (version: number): string => `"${version}"`;

async function send(method: string, path: string, options: Options): Promise<Response> {
  const headers: Record<string, string> = { Accept: "application/json" };
  if (options.body !== undefined) {
    headers["Content-Type"] = options.patch ? "application/merge-patch+json" : "application/json";
  }
  if (options.auth !== false && access) headers.Authorization = `Bearer ${access}`;
  if (options.ifMatch !== undefined && options.ifMatch !== null) {
    headers["If-Match"] = typeof options.ifMatch === "number" ? etagOf(options.ifMatch) : options.ifMatch;
  }
  try {
    return await fetch(path, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "network");
  }
}

async function failure(response: Response): Promise<ApiError> {
  let body: { code?: string; detail?: string; errors?: { field?: string; message?: string }[] } = {};
  try {
    body = await response.json();
  } catch {
    // not JSON
  }
  const fields: FieldErrors = {};
  for (const error of body.errors || []) {
    if (error.field) fields[error.field] = error.message || "";
  }
  return new ApiError(response.status, body.code || `http_${response.status}`, body.detail || "", fields);
}

export async function api<T>(method: string, path: string, options: Options = {}): Promise<Result<T>> {
  let response = await send(method, path, options);
  if (response.status === 401 && options.auth !== false && access) {
    // The access token expired: one refresh, then the same request again.
    if (await refresh()) response = await send(method, path, options);
    else setAccess(null);
  }
  if (!response.ok) {
    const error = await failure(response);
    if (response.status === 401 && options.auth !== false) setAccess(null);
    throw error;
  }
  // 204, and a 202 such as the reset mail's, carry no body: nothing to parse.
  const text = response.status === 204 ? "" : await response.text();
  const data = (text ? JSON.parse(text) : null) as T;
  return { data, etag: response.headers.get("ETag") };
}

export const get = async <T>(path: string): Promise<T> => (await api<T>("GET", path)).data;

interface Tokens {
  access_token: string;
  refresh_token?: string;
}

/** A new access token from the refresh cookie (or the in-memory refresh token). */
export async function refresh(): Promise<boolean> {
  const body = memoryRefresh ? { refresh_token: memoryRefresh } : {};
  const response = await send("POST", "/api/v1/auth/refresh-token", { body, auth: false });
  if (!response.ok) return false;
  const tokens = (await response.json()) as Tokens;
  if (memoryRefresh && tokens.refresh_token) memoryRefresh = tokens.refresh_token;
  setAccess(tokens.access_token);
  return true;
}

/** At start: a session kept in the refresh cookie, if there is one. */
export async function restore(): Promise<boolean> {
  try {
    return await refresh();
  } catch {
    return false;
  }
}

export async function login(email: string, password: string): Promise<void> {
  let result: Result<Tokens>;
  try {
    result = await api<Tokens>("POST", "/api/v1/auth/login", {
      body: { email, password, session: "cookie" }, auth: false,
    });
  } catch (error) {
    // A server without the cookie flow refuses the field: log in with the bearer pair.
    if (!(error instanceof ApiError && error.status === 422 && "session" in error.fields)) throw error;
    result = await api<Tokens>("POST", "/api/v1/auth/login", { body: { email, password }, auth: false });
    memoryRefresh = result.data.refresh_token || null;
  }
  setAccess(result.data.access_token);
  if (memoryRefresh === null && result.data.refresh_token) memoryRefresh = result.data.refresh_token;
}

export async function logout(): Promise<void> {
  try {
    await api("POST", "/api/v1/auth/logout", { body: {} });
  } finally {
    setAccess(null);
  }
}

/** After the account is deleted or the password changed elsewhere. */
export const forget = (): void => setAccess(null);

/** The page a list answers with. */
export interface Page<T> {
  data: T[];
  next_cursor: string | null;
}

/** Every item of a paginated list (the console's lists are small). */
export async function all<T>(path: string, rounds = 10): Promise<T[]> {
  const items: T[] = [];
  let cursor: string | null = null;
  const joiner = path.includes("?") ? "&" : "?";
  for (let round = 0; round < rounds; round++) {
    const after = cursor ? `&after=${encodeURIComponent(cursor)}` : "";
    const url = `${path}${joiner}limit=100${after}`;
    const page: Page<T> = await get<Page<T>>(url);
    items.push(...page.data);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return items;
}

/** POST ``body`` to ``path`` and hand each line of the newline-delimited JSON answer to
 * ``onLine`` as it arrives (the assistant preview's stream); a refusal throws as ``api`` does. */
export async function streamLines(path: string, body: unknown, onLine: (line: Record<string, unknown>) => void): Promise<void> {
  const options: Options = { body };
  let response = await send("POST", path, options);
  if (response.status === 401 && access) {
    if (await refresh()) response = await send("POST", path, options);
    else setAccess(null);
  }
  if (!response.ok || !response.body) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    let end: number;
    while ((end = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, end).trim();
      buffered = buffered.slice(end + 1);
      if (line) onLine(JSON.parse(line) as Record<string, unknown>);
    }
  }
}
