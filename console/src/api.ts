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

/** A workspace of the account's, and the account's role in it. */
export interface Workspace {
  id: string;
  name: string;
  personal: boolean;
  role: "owner" | "admin" | "agent";
  created_at: string;
}

// The workspace the access token acts in (the token says; the console remembers the choice so
// that a reload, which refreshes, stays there), and the account's workspaces.
const WORKSPACE_KEY = "loacl-console:workspace";
let workspaceId: string | null = null;
let workspaceList: Workspace[] = [];

function remembered(): string | null {
  try {
    return localStorage.getItem(WORKSPACE_KEY);
  } catch {
    return null;
  }
}

function remember(id: string | null): void {
  try {
    if (id) localStorage.setItem(WORKSPACE_KEY, id);
    else localStorage.removeItem(WORKSPACE_KEY);
  } catch {
    // kept for this page only
  }
}

export const workspaces = (): Workspace[] => workspaceList;
export const workspace = (): Workspace | null =>
  workspaceList.find((item) => item.id === workspaceId) || null;
/** Whether the account's role in the current workspace is at least `role`. */
export function may(role: "owner" | "admin" | "agent"): boolean {
  const rank = { owner: 3, admin: 2, agent: 1 };
  const mine = workspace();
  return mine !== null && rank[mine.role] >= rank[role];
}

const notify = (): void => listeners.forEach((listener) => listener());

/** The account's workspaces, read again (after a change of membership). */
export async function loadWorkspaces(): Promise<void> {
  if (!access) return;
  const response = await send("GET", "/api/v1/workspaces", {});
  if (!response.ok) return;
  workspaceList = ((await response.json()) as { data: Workspace[] }).data;
  notify();
}

async function signedInto(tokens: Tokens): Promise<void> {
  workspaceId = tokens.workspace_id || null;
  remember(workspaceId);
  const was = access;
  access = tokens.access_token;
  await loadWorkspaces();
  if (was === null) notify();
}

/** Act in another workspace: a new access token of the same session. */
export async function switchWorkspace(id: string): Promise<void> {
  const result = await api<Tokens>("POST", `/api/v1/workspaces/${encodeURIComponent(id)}/switch`);
  await signedInto(result.data);
}

export const signedIn = (): boolean => access !== null;

/** The signed-in account's id, asked once per sign-in. */
let myId: Promise<string> | null = null;
export function meId(): Promise<string> {
  if (!myId) {
    myId = get<{ id: string }>("/api/v1/auth/me").then((me) => me.id);
    myId.catch(() => { myId = null; });
  }
  return myId;
}
export const accessToken = (): string | null => access;

export function onAuthChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

function setAccess(token: string | null): void {
  const changed = (token === null) !== (access === null);
  access = token;
  if (token === null) {
    memoryRefresh = null;
    myId = null;
    workspaceList = [];
    workspaceId = null;
  }
  if (changed) listeners.forEach((listener) => listener());
}

export const etagOf = (version: number): string => `"${version}"`;

async function send(method: string, path: string, options: Options): Promise<Response> {
  const headers: Record<string, string> = { Accept: "application/json" };
  // A FormData body (a file upload) brings its own multipart type and boundary.
  const form = options.body instanceof FormData;
  if (options.body !== undefined && !form) {
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
      body: options.body === undefined ? undefined : form ? (options.body as FormData) : JSON.stringify(options.body),
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
  } else if (response.status === 403 && options.auth !== false && access) {
    // Removed from the workspace: a token for one the account still belongs to.
    const body = (await response.clone().json().catch(() => ({}))) as { code?: string };
    if (body.code === "not_a_member") {
      remember(null);
      if (await refresh()) response = await send(method, path, options);
    }
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

export interface Tokens {
  access_token: string;
  refresh_token?: string;
  workspace_id?: string;
}

/** A new access token from the refresh cookie (or the in-memory refresh token), for the
 * workspace the console was in. */
export async function refresh(): Promise<boolean> {
  const body: Record<string, string> = memoryRefresh ? { refresh_token: memoryRefresh } : {};
  const chosen = workspaceId || remembered();
  if (chosen) body.workspace_id = chosen;
  const response = await send("POST", "/api/v1/auth/refresh-token", { body, auth: false });
  if (!response.ok) return false;
  const tokens = (await response.json()) as Tokens;
  if (memoryRefresh && tokens.refresh_token) memoryRefresh = tokens.refresh_token;
  await signedInto(tokens);
  return true;
}

/** Signed in by an invite that made the account: its tokens come in the answer's body. */
export async function adopt(tokens: Tokens): Promise<void> {
  memoryRefresh = tokens.refresh_token || null;
  await signedInto(tokens);
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
  if (memoryRefresh === null && result.data.refresh_token) memoryRefresh = result.data.refresh_token;
  await signedInto(result.data);
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
