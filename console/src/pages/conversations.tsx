// The inbox across every widget (filters, search, live), and one conversation's transcript,
// updated live while the visitor chats.
import { useEffect, useRef, useState } from "preact/hooks";
import { NotificationToggle, setOpenConversation } from "../alerts";
import { accessToken, all, api, get, meId, workspace } from "../api";
import { formatDate, t } from "../i18n";
import { type Frame, useLive } from "../live";
import { Markdown, plainText } from "../markdown";
import { href } from "../router";
import type { ConversationItem, Member, Message, Widget } from "../types";
import { Field, Heading, Loading, Notice, problem, Select, useLoad } from "../ui";

const STATUSES = ["", "waiting", "human", "bot", "closed", "open", "erased"];

interface Filters {
  widget: string;
  status: string;
  assignee: string; // "", "me" or "none"
  since: string;
  until: string;
  q: string;
}

const EMPTY: Filters = { widget: "", status: "", assignee: "", since: "", until: "", q: "" };

function query(filters: Filters, cursor: string | null, me: string): string {
  const params = new URLSearchParams();
  if (filters.widget) params.set("widget_id", filters.widget);
  if (filters.status) params.set("status", filters.status);
  if (filters.assignee === "me" && me) params.set("assignee", me);
  else if (filters.assignee === "none") params.set("assignee", "none");
  if (filters.since) params.set("since", new Date(`${filters.since}T00:00:00`).toISOString());
  if (filters.until) params.set("until", new Date(`${filters.until}T23:59:59`).toISOString());
  if (filters.q.trim()) params.set("q", filters.q.trim());
  if (cursor) params.set("after", cursor);
  const text = params.toString();
  return `/api/v1/conversations${text ? `?${text}` : ""}`;
}

/** Coalesces bursts of live frames into one call. */
function useDebounced(action: () => void, wait = 300): () => void {
  const timer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  return () => {
    clearTimeout(timer.current);
    timer.current = setTimeout(action, wait);
  };
}

/** Re-renders every `every` ms (the waiting times). */
function useNow(every = 5000): number {
  const [now, setNow] = useState(Date.now);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), every);
    return () => clearInterval(timer);
  }, [every]);
  return now;
}

/** "waiting 3 min": how long since `since`, in whole minutes (under one: "just now"). */
function waited(since: string | null, now: number): string {
  const at = since ? Date.parse(since) : NaN;
  if (Number.isNaN(at)) return t("state_waiting");
  const minutes = Math.floor(Math.max(0, now - at) / 60_000);
  if (minutes < 1) return t("waiting_now");
  if (minutes < 60) return t("waiting_minutes", { n: minutes });
  return t("waiting_hours", { n: Math.floor(minutes / 60), m: minutes % 60 });
}

/** Waiting conversations first, the longest waiting at the top; the rest as the server sorts. */
function ordered(items: ConversationItem[]): ConversationItem[] {
  const seen = new Set<string>();
  const unique = items.filter((item) => !seen.has(item.id) && seen.add(item.id));
  const waiting = unique.filter((item) => item.state === "waiting")
    .sort((a, b) => (a.waiting_since || "").localeCompare(b.waiting_since || ""));
  return [...waiting, ...unique.filter((item) => item.state !== "waiting")];
}

function StateBadge(props: { item: { state?: string }; now: number; since?: string | null }) {
  const state = props.item.state || "bot";
  return (
    <span class={`badge state-${state}`}>
      {state === "waiting" ? waited(props.since ?? null, props.now) : t(`state_${state}` as "state_bot")}
    </span>
  );
}

export function Inbox() {
  const [filters, setFilters] = useState<Filters>(EMPTY);
  const [applied, setApplied] = useState(filters);
  const widgets = useLoad(() => all<Widget>("/api/v1/widgets").catch(() => [] as Widget[]));
  const me = useLoad(() => meId(), []);
  const [more, setMore] = useState<ConversationItem[]>([]);
  const mine = me.data || "";
  const list = useLoad(async () => {
    setMore([]);
    if (applied.assignee === "me" && !mine) return { data: [], next_cursor: null };
    return get<{ data: ConversationItem[]; next_cursor: string | null }>(query(applied, null, mine));
  }, [JSON.stringify(applied), mine]);
  const [cursor, setCursor] = useState<string | null>(null);
  const refresh = useDebounced(list.reload);
  const now = useNow();
  useLive((frame) => {
    if (frame.type === "conversation" || frame.type === "message" || frame.type === "ready") refresh();
  }, []);
  const set = (key: keyof Filters) => (value: string) => setFilters({ ...filters, [key]: value });
  const next = cursor ?? list.data?.next_cursor ?? null;
  const loadMore = async () => {
    if (!next) return;
    const page = await get<{ data: ConversationItem[]; next_cursor: string | null }>(query(applied, next, mine));
    setMore([...more, ...page.data]);
    setCursor(page.next_cursor);
  };
  const items = ordered([...(list.data?.data || []), ...more]);
  // An agent may not list the widgets: the filter offers those its conversations name.
  const names = new Map<string, string>(items.map((item) => [item.widget_id, item.widget_name || item.widget_title || item.widget_id]));
  for (const widget of widgets.data || []) names.set(widget.id, widget.name);
  if (applied.widget && !names.has(applied.widget)) names.set(applied.widget, applied.widget);
  const waitingCount = items.filter((item) => item.state === "waiting").length;
  return (
    <section>
      <Heading>{t("inbox")}</Heading>
      <div class="actions">
        <NotificationToggle />
        {waitingCount > 0 && <p class="waiting-count" role="status">{t("waiting_count", { n: waitingCount })}</p>}
      </div>
      <form class="filters" role="search" onSubmit={(event) => { event.preventDefault(); setCursor(null); setApplied(filters); }}>
        <Select label={t("widget")} name="widget" value={filters.widget} onChange={set("widget")}
          options={[["", t("all_widgets")], ...[...names].sort((a, b) => a[1].localeCompare(b[1]))]} />
        <Select label={t("status")} name="status" value={filters.status} onChange={set("status")}
          options={STATUSES.map((status) => [status, status ? t(`status_${status}` as "status_open") : t("all_statuses")])} />
        <Select label={t("assigned_to")} name="assignee" value={filters.assignee} onChange={set("assignee")}
          options={[["", t("assignee_anyone")], ["me", t("assignee_me")], ["none", t("assignee_nobody")]]} />
        <Field label={t("since")} name="since" type="date" value={filters.since} onInput={set("since")} />
        <Field label={t("until")} name="until" type="date" value={filters.until} onInput={set("until")} />
        <Field label={t("search")} name="q" type="search" value={filters.q} onInput={set("q")} />
        <button type="submit">{t("apply_filters")}</button>
      </form>
      {!list.data ? <Loading error={list.error} /> : items.length === 0 ? <p>{t("inbox_empty")}</p> : (
        <ul class="inbox" aria-label={t("conversations")}>
          {items.map((item) => (
            <li key={item.id} class={item.state === "waiting" ? "waiting" : undefined}>
              <a href={href(`/conversations/${item.id}`)}>
                <span class="title">
                  {item.widget_title || item.widget_name || names.get(item.widget_id) || item.widget_id}
                  {item.unread > 0 && <span class="badge unread">{t("unread", { n: item.unread })}</span>}
                </span>
                <span class="preview-text">{(item.preview && plainText(item.preview)) || t("no_messages")}</span>
                <span class="muted">
                  <StateBadge item={item} now={now} since={item.waiting_since} />
                  {" · "}{item.assignee ? t("assigned_name", { name: item.assignee.name }) : t("unassigned")}
                  {" · "}{formatDate(item.last_activity_at)} · {t("message_count", { n: item.message_count })}
                  {item.status === "erased" && ` · ${t("status_erased")}`}
                </span>
              </a>
            </li>
          ))}
        </ul>
      )}
      {next && <button type="button" onClick={loadMore}>{t("load_more")}</button>}
    </section>
  );
}

function upsert(messages: Message[], message: Message): Message[] {
  const at = messages.findIndex((old) => old.id === message.id);
  if (at < 0) return [...messages, message];
  const copy = messages.slice();
  copy[at] = { ...copy[at], ...message };
  return copy;
}

const TYPING_SHOWN_MS = 6000; // a visitor's typing signal shows this long, unless renewed or ended
const TYPING_EVERY_MS = 2500; // the member's typing is sent at most this often
const TYPING_IDLE_MS = 4000; // no key for this long: the member stopped typing

/** The member's typing, passed on to the visitor: at most once per TYPING_EVERY_MS (the
 * server limits too, and its 429 is no failure), "stopped" after a pause or on send. */
function useTypingSignal(path: string) {
  const last = useRef(0);
  const idle = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const on = useRef(false);
  const send = (typing: boolean) =>
    api("POST", `${path}/typing`, { body: { typing } }).catch(() => undefined);
  const stop = () => {
    clearTimeout(idle.current);
    if (on.current) {
      on.current = false;
      last.current = 0;
      void send(false);
    }
  };
  useEffect(() => stop, [path]);
  const typed = () => {
    const now = Date.now();
    if (now - last.current >= TYPING_EVERY_MS) {
      last.current = now;
      on.current = true;
      void send(true);
    }
    clearTimeout(idle.current);
    idle.current = setTimeout(stop, TYPING_IDLE_MS);
  };
  return { typed, stop };
}

interface Loaded {
  conversation: ConversationItem;
  messages: Message[];
}

function who(message: Message): string {
  if (message.role === "user") return t("visitor");
  if (message.role === "agent") return message.author_name || t("agent");
  return t("assistant");
}

function Assign(props: { item: ConversationItem; onAssign: (id: string | null) => void; busy: boolean }) {
  const here = workspace();
  const members = useLoad(async () => (here
    ? (await get<{ data: Member[] }>(`/api/v1/workspaces/${encodeURIComponent(here.id)}/members`)).data
    : []), [here?.id]);
  if (!members.data || members.data.length < 2 || props.item.state === "closed") return null;
  return (
    <Select label={t("assign_to")} name="assignee" value={props.item.assignee?.id || ""}
      onChange={(value) => props.onAssign(value || null)}
      options={[["", t("assignee_nobody")], ...members.data.map((member) => [member.account_id, member.display_name || member.email] as [string, string])]} />
  );
}

export function ConversationView(props: { id: string }) {
  const path = `/api/v1/conversations/${encodeURIComponent(props.id)}`;
  const loaded = useLoad<Loaded>(async () => {
    const [conversation, messages] = await Promise.all([
      get<ConversationItem>(path),
      get<{ data: Message[] }>(`${path}/messages?limit=100`),
    ]);
    return { conversation, messages: messages.data };
  }, [props.id]);
  const me = useLoad(() => meId(), []);
  const reload = useDebounced(loaded.reload, 150);
  const now = useNow();
  const [visitorTyping, setVisitorTyping] = useState(false);
  const typingTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  const [draft, setDraft] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const [fileError, setFileError] = useState("");
  const typing = useTypingSignal(path);

  // Read when viewed: on opening, and as messages arrive while the tab is shown.
  const markRead = useDebounced(() => {
    if (document.visibilityState !== "visible") return;
    api("POST", `${path}/read`, { body: {} }).catch(() => undefined);
  }, 500);
  useEffect(() => {
    setOpenConversation(props.id);
    const shown = () => document.visibilityState === "visible" && markRead();
    document.addEventListener("visibilitychange", shown);
    return () => {
      setOpenConversation(null);
      document.removeEventListener("visibilitychange", shown);
      clearTimeout(typingTimer.current);
    };
  }, [props.id]);
  useEffect(() => {
    if (loaded.data && loaded.data.conversation.unread > 0) markRead();
  }, [loaded.data?.conversation.unread]);

  // Frames come in bursts: each change applies to the latest state (not the one of the last
  // render), so that none is lost.
  const change = (update: (data: Loaded) => Loaded) =>
    loaded.setData((data: Loaded | null) => (data ? update(data) : data));
  useLive((frame: Frame) => {
    if (frame.type === "ready") return reload();
    if (frame.type === "conversation") {
      const item = frame.conversation as ConversationItem;
      if (item.id === props.id) change((data) => ({ ...data, conversation: item }));
      return;
    }
    if (frame.conversation_id !== props.id) return;
    if (frame.type === "message") {
      const message = frame.message as Message;
      change((data) => ({ ...data, messages: upsert(data.messages, message) }));
      if (message.role === "user") {
        setVisitorTyping(false);
        markRead();
      }
    } else if (frame.type === "delta" && typeof frame.message_id === "string") {
      change((data) => {
        const old = data.messages.find((message) => message.id === frame.message_id);
        if (!old) {
          setTimeout(reload); // a reply that started before the page read the transcript
          return data;
        }
        const offset = typeof frame.offset === "number" ? frame.offset : old.text.length;
        const text = old.text.slice(0, offset) + String(frame.text || "");
        return { ...data, messages: upsert(data.messages, { ...old, text, status: "streaming" }) };
      });
    } else if (frame.type === "done") {
      const whole = frame.message as Message | undefined;
      if (whole && whole.id) change((data) => ({ ...data, messages: upsert(data.messages, whole) }));
      else reload();
    } else if (frame.type === "typing" && frame.from === "visitor") {
      clearTimeout(typingTimer.current);
      setVisitorTyping(frame.typing === true);
      if (frame.typing === true) typingTimer.current = setTimeout(() => setVisitorTyping(false), TYPING_SHOWN_MS);
    }
  }, [props.id]);

  if (!loaded.data) return <section><Heading>{t("conversation")}</Heading><Loading error={loaded.error} /></section>;
  const { conversation, messages } = loaded.data;
  const mine = me.data || "";
  const holder = conversation.assignee;
  const heldByMe = conversation.state === "human" && holder !== null && holder.id === mine;
  const heldByOther = conversation.state === "human" && holder !== null && holder.id !== mine;
  const erased = conversation.status === "erased";

  const act = async (action: string, body?: unknown) => {
    setBusy(true);
    setError("");
    try {
      const result = await api<ConversationItem>("POST", `${path}/${action}`, { body: body ?? {} });
      change((data) => ({ ...data, conversation: result.data }));
    } catch (failure) {
      setError(problem(failure).message);
    } finally {
      setBusy(false);
    }
  };
  const send = async (event: Event) => {
    event.preventDefault();
    const text = draft.trim();
    if (!text || busy) return;
    setBusy(true);
    setError("");
    typing.stop();
    try {
      const result = await api<Message>("POST", `${path}/messages`, {
        body: { text, client_message_id: `console-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}` },
      });
      setDraft("");
      change((data) => ({ ...data, messages: upsert(data.messages, result.data) }));
    } catch (failure) {
      setError(problem(failure).message);
    } finally {
      setBusy(false);
    }
  };
  const download = async (fileId: string) => {
    setFileError("");
    try {
      const response = await fetch(`${path}/files/${encodeURIComponent(fileId)}`, {
        headers: { Authorization: `Bearer ${accessToken()}` },
      });
      if (!response.ok) throw new Error(String(response.status));
      const name = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "")?.[1] || fileId;
      const url = URL.createObjectURL(await response.blob());
      const link = document.createElement("a");
      link.href = url;
      link.download = name;
      link.click();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (failure) {
      setFileError(problem(failure).message);
    }
  };
  const where = conversation.widget_title || conversation.widget_name || conversation.widget_id;
  return (
    <section class="conversation">
      <Heading>{t("conversation")}</Heading>
      <p class="muted">
        {where} · {formatDate(conversation.created_at)} · {t(`status_${conversation.status}` as "status_open")}
      </p>
      <p><a href={href("/inbox")}>{t("back")}</a></p>
      <div class={`handoff state-${conversation.state}`} role="group" aria-label={t("handoff_controls")}>
        <p class="who-answers" role="status">
          <strong>{t(`status_${conversation.state}` as "status_bot")}</strong>
          {conversation.state === "waiting" && <> · <StateBadge item={conversation} now={now} since={conversation.waiting_since} /></>}
          {" · "}{heldByMe ? t("answered_by_you") : holder ? t("assigned_name", { name: holder.name }) : t("unassigned")}
        </p>
        {conversation.reply_email && <p class="reply-address">{t("reply_address", { email: conversation.reply_email })}</p>}
        {!erased && (
          <div class="actions">
            {!heldByMe && (
              <button type="button" class="primary" disabled={busy}
                onClick={() => act("takeover", heldByOther ? { force: true } : {})}>
                {heldByOther ? t("take_over_from", { name: holder!.name }) : t("take_over")}
              </button>
            )}
            {(conversation.state === "waiting" || heldByMe) && (
              <button type="button" disabled={busy} onClick={() => act("release")}>{t("release")}</button>
            )}
            {conversation.state !== "closed" && (
              <button type="button" disabled={busy} onClick={() => act("close")}>{t("close_conversation")}</button>
            )}
            <Assign item={conversation} busy={busy} onAssign={(id) => act("assign", { assignee_id: id })} />
          </div>
        )}
      </div>
      {error && <Notice kind="error">{error}</Notice>}
      {fileError && <Notice kind="error">{fileError}</Notice>}
      <ol class="transcript" aria-live="polite" aria-label={t("transcript")}>
        {messages.map((message) => (
          <li key={message.id} class={`bubble ${message.role === "user" ? "visitor" : message.role === "agent" ? "agent" : "bot"}`}
            aria-busy={message.status === "streaming" ? "true" : "false"}>
            <span class="who">{who(message)}</span>
            {message.role === "agent" ? <p class="plain" dir="auto">{message.text}</p> : <Markdown text={message.text} />}
            {message.error_code && <p class="error">{t("reply_failed")}</p>}
            {message.file_ids.map((fileId) => (
              <button type="button" class="small" key={fileId} onClick={() => download(fileId)}>{t("download_file")}</button>
            ))}
            <span class="muted time">{formatDate(message.created_at)}</span>
          </li>
        ))}
      </ol>
      <p class="typing muted" role="status">{visitorTyping ? t("visitor_typing") : ""}</p>
      {!erased && (
        <form class="reply" onSubmit={send} noValidate
          onKeyDown={(event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) void send(event); }}>
          {heldByOther ? (
            <p class="hint">{t("reply_held", { name: holder!.name })}</p>
          ) : !heldByMe && <p class="hint">{t("reply_takes_over")}</p>}
          <Field label={t("reply_label")} name="reply" multiline rows={3} value={draft} maxLength={20000} hint={t("reply_hint")}
            onInput={(value) => { setDraft(value); if (value.trim() && !heldByOther) typing.typed(); }} />
          <button type="submit" class="primary" disabled={busy || heldByOther || !draft.trim()}>{t("reply_send")}</button>
        </form>
      )}
    </section>
  );
}
