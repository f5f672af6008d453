// The inbox across every widget (filters, search, live), and one conversation's transcript,
// updated live while the visitor chats.
import { useRef, useState } from "preact/hooks";
import { accessToken, all, get } from "../api";
import { formatDate, t } from "../i18n";
import { type Frame, useLive } from "../live";
import { Markdown } from "../markdown";
import { href } from "../router";
import type { ConversationItem, Message, Widget } from "../types";
import { Field, Heading, Loading, Notice, problem, Select, useLoad } from "../ui";

const STATUSES = ["", "open", "erased"];

interface Filters {
  widget: string;
  status: string;
  since: string;
  until: string;
  q: string;
}

function query(filters: Filters, cursor: string | null): string {
  const params = new URLSearchParams();
  if (filters.widget) params.set("widget_id", filters.widget);
  if (filters.status) params.set("status", filters.status);
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

export function Inbox() {
  const [filters, setFilters] = useState<Filters>({ widget: "", status: "", since: "", until: "", q: "" });
  const [applied, setApplied] = useState(filters);
  const widgets = useLoad(() => all<Widget>("/api/v1/widgets"));
  const [more, setMore] = useState<ConversationItem[]>([]);
  const list = useLoad(async () => {
    setMore([]);
    return get<{ data: ConversationItem[]; next_cursor: string | null }>(query(applied, null));
  }, [JSON.stringify(applied)]);
  const [cursor, setCursor] = useState<string | null>(null);
  const refresh = useDebounced(list.reload);
  useLive((frame) => {
    if (frame.type === "conversation" || frame.type === "message" || frame.type === "ready") refresh();
  }, []);
  const set = (key: keyof Filters) => (value: string) => setFilters({ ...filters, [key]: value });
  const next = cursor ?? list.data?.next_cursor ?? null;
  const loadMore = async () => {
    if (!next) return;
    const page = await get<{ data: ConversationItem[]; next_cursor: string | null }>(query(applied, next));
    setMore([...more, ...page.data]);
    setCursor(page.next_cursor);
  };
  const names = new Map((widgets.data || []).map((widget) => [widget.id, widget.name]));
  const items = [...(list.data?.data || []), ...more];
  return (
    <section>
      <Heading>{t("inbox")}</Heading>
      <form class="filters" role="search" onSubmit={(event) => { event.preventDefault(); setCursor(null); setApplied(filters); }}>
        <Select label={t("widget")} name="widget" value={filters.widget} onChange={set("widget")}
          options={[["", t("all_widgets")], ...(widgets.data || []).map((widget) => [widget.id, widget.name] as [string, string])]} />
        <Select label={t("status")} name="status" value={filters.status} onChange={set("status")}
          options={STATUSES.map((status) => [status, status ? t(`status_${status}` as "status_open") : t("all_statuses")])} />
        <Field label={t("since")} name="since" type="date" value={filters.since} onInput={set("since")} />
        <Field label={t("until")} name="until" type="date" value={filters.until} onInput={set("until")} />
        <Field label={t("search")} name="q" type="search" value={filters.q} onInput={set("q")} />
        <button type="submit">{t("apply_filters")}</button>
      </form>
      {!list.data ? <Loading error={list.error} /> : items.length === 0 ? <p>{t("inbox_empty")}</p> : (
        <ul class="inbox" aria-live="polite">
          {items.map((item) => (
            <li key={item.id}>
              <a href={href(`/conversations/${item.id}`)}>
                <span class="title">{item.widget_title || item.widget_name || names.get(item.widget_id) || item.widget_id}</span>
                <span class="preview-text">{item.preview || t("no_messages")}</span>
                <span class="muted">{formatDate(item.last_activity_at)} · {t("message_count", { n: item.message_count })} · {t(`status_${item.status}` as "status_open")}</span>
              </a>
            </li>
          ))}
        </ul>
      )}
      {next && <button type="button" onClick={loadMore}>{t("load_more")}</button>}
    </section>
  );
}

interface Conversation {
  id: string;
  widget_id: string;
  status: string;
  created_at: string;
}

function upsert(messages: Message[], message: Message): Message[] {
  const at = messages.findIndex((old) => old.id === message.id);
  if (at < 0) return [...messages, message];
  const copy = messages.slice();
  copy[at] = { ...copy[at], ...message };
  return copy;
}

export function ConversationView(props: { id: string }) {
  const path = `/api/v1/conversations/${encodeURIComponent(props.id)}`;
  const loaded = useLoad(async () => {
    const [conversation, messages] = await Promise.all([
      get<Conversation>(path),
      get<{ data: Message[] }>(`${path}/messages?limit=100`),
    ]);
    return { conversation, messages: messages.data };
  }, [props.id]);
  const reload = useDebounced(loaded.reload, 150);
  useLive((frame: Frame) => {
    const data = loaded.data;
    if (!data) return;
    const message = (frame.message || frame) as Partial<Message> & { message_id?: string; offset?: number };
    if (frame.type === "ready") reload();
    if (frame.type === "message" && message.conversation_id === props.id && message.id) {
      loaded.setData({ ...data, messages: upsert(data.messages, message as Message) });
    } else if (frame.type === "delta" && typeof frame.message_id === "string") {
      const at = data.messages.findIndex((old) => old.id === frame.message_id);
      if (at < 0) return frame.conversation_id === props.id ? reload() : undefined;
      const old = data.messages[at];
      const offset = typeof frame.offset === "number" ? frame.offset : old.text.length;
      const text = old.text.slice(0, offset) + String(frame.text || "");
      loaded.setData({ ...data, messages: upsert(data.messages, { ...old, text, status: "streaming" }) });
    } else if (frame.type === "done" && frame.conversation_id === props.id) {
      const whole = frame.message as Message | undefined;
      if (whole && whole.id) loaded.setData({ ...data, messages: upsert(data.messages, whole) });
      else reload();
    }
  }, [loaded.data, props.id]);
  const [fileError, setFileError] = useState("");
  if (!loaded.data) return <section><Heading>{t("conversation")}</Heading><Loading error={loaded.error} /></section>;
  const { conversation, messages } = loaded.data;
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
    } catch (error) {
      setFileError(problem(error).message);
    }
  };
  return (
    <section>
      <Heading>{t("conversation")}</Heading>
      <p class="muted">{formatDate(conversation.created_at)} · {t(`status_${conversation.status}` as "status_open")}</p>
      <p><a href={href("/inbox")}>{t("back")}</a></p>
      {fileError && <Notice kind="error">{fileError}</Notice>}
      <ol class="transcript" aria-live="polite" aria-label={t("transcript")}>
        {messages.map((message) => (
          <li key={message.id} class={`bubble ${message.role === "user" ? "visitor" : "bot"}`}
            aria-busy={message.status === "streaming" ? "true" : "false"}>
            <span class="who">{message.role === "user" ? t("visitor") : t("assistant")}</span>
            <Markdown text={message.text} />
            {message.error_code && <p class="error">{t("reply_failed")}</p>}
            {message.file_ids.map((fileId) => (
              <button type="button" class="small" key={fileId} onClick={() => download(fileId)}>{t("download_file")}</button>
            ))}
            <span class="muted time">{formatDate(message.created_at)}</span>
          </li>
        ))}
      </ol>
    </section>
  );
}
