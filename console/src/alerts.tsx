// Telling the team that a visitor waits for a person, wherever the console is open: a highlight
// in the page (a live region under the header) and, once the member has allowed it with a click
// (never asked on load), a browser notification. Neither for the conversation the member has
// open in a focused tab: they see it already.
import { useEffect, useState } from "preact/hooks";
import { t } from "./i18n";
import { type Frame, useLive } from "./live";
import { href, navigate } from "./router";
import type { ConversationItem } from "./types";

/** The conversation open in this tab, if any (set by its page). */
let openConversation: string | null = null;
const opened = new Set<(id: string | null) => void>();
export function setOpenConversation(id: string | null): void {
  openConversation = id;
  opened.forEach((listener) => listener(id));
}

const supported = (): boolean => typeof window !== "undefined" && "Notification" in window;

export type Permission = "granted" | "denied" | "default" | "unsupported";
export const permission = (): Permission => (supported() ? Notification.permission : "unsupported");

/** Whether the member sees `id` already: open here, the tab shown and focused. */
function seen(id: string): boolean {
  return openConversation === id && document.visibilityState === "visible" && document.hasFocus();
}

function notify(item: ConversationItem): void {
  if (permission() !== "granted") return;
  const where = item.widget_title || item.widget_name || "";
  try {
    const shown = new Notification(t("notify_waiting_title"), {
      body: [where, item.preview || ""].filter(Boolean).join(" · "),
      tag: `loacl-waiting-${item.id}`, // one per conversation, whichever tabs are open
    });
    shown.onclick = () => {
      window.focus();
      navigate(`/conversations/${encodeURIComponent(item.id)}`);
      shown.close();
    };
  } catch {
    // Some browsers only show notifications from a service worker: the page's highlight stays.
  }
}

/** The in-page highlight of conversations that started waiting, and the notifications. */
export function WaitingAlerts() {
  const [waiting, setWaiting] = useState<ConversationItem[]>([]);
  // Conversations whose state frame said they just started waiting: the conversation frame
  // that follows carries the entry (widget, preview) the alert shows.
  const [pending] = useState(() => new Set<string>());
  useLive((frame: Frame) => {
    if (frame.type === "state" && typeof frame.conversation_id === "string") {
      const id = frame.conversation_id;
      if (frame.state === "waiting" && frame.previous !== "waiting") pending.add(id);
      else if (frame.state !== "waiting") {
        pending.delete(id);
        setWaiting((list) => list.filter((item) => item.id !== id));
      }
    } else if (frame.type === "conversation") {
      const item = frame.conversation as ConversationItem;
      if (!pending.has(item.id)) return;
      pending.delete(item.id);
      if (item.state !== "waiting" || seen(item.id)) return;
      notify(item);
      setWaiting((list) => [item, ...list.filter((old) => old.id !== item.id)]);
    }
  }, []);
  // Opening the conversation is seeing it: its highlight goes.
  useEffect(() => {
    const listener = (id: string | null) => id && setWaiting((list) => list.filter((item) => item.id !== id));
    opened.add(listener);
    return () => void opened.delete(listener);
  }, []);
  const shown = waiting.filter((item) => item.id !== openConversation);
  return (
    <div class="alerts" role="status" aria-live="polite">
      {shown.map((item) => (
        <p key={item.id} class="alert">
          <span>{t("alert_waiting", { where: item.widget_title || item.widget_name || item.widget_id })}</span>{" "}
          <a href={href(`/conversations/${encodeURIComponent(item.id)}`)}
            onClick={() => setWaiting((list) => list.filter((old) => old.id !== item.id))}>{t("alert_open")}</a>{" "}
          <button type="button" class="small" onClick={() => setWaiting((list) => list.filter((old) => old.id !== item.id))}>
            {t("alert_dismiss")}
          </button>
        </p>
      ))}
    </div>
  );
}

/** Asks the browser for notifications, on the member's click only. */
export function NotificationToggle() {
  const [state, setState] = useState<Permission>(permission);
  if (state === "unsupported") return null;
  if (state === "granted") return <p class="muted" role="status">{t("notify_on")}</p>;
  if (state === "denied") return <p class="muted" role="status">{t("notify_blocked")}</p>;
  return (
    <button type="button" onClick={async () => {
      try {
        setState(await Notification.requestPermission());
      } catch {
        setState(permission());
      }
    }}>{t("notify_enable")}</button>
  );
}
