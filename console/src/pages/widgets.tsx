// Widgets: the list, and one page to create or edit one with a live preview of the real widget,
// the allowed origins, the embed code, the identity secret and deleting it.
import { useEffect, useRef, useState } from "preact/hooks";
import { all, api, get } from "../api";
import { LOCALES, t } from "../i18n";
import { BASE, href, navigate } from "../router";
import type { Assistant, EmbedCode, Widget, WidgetSettings } from "../types";
import { Check, Confirm, CopyButton, Field, Heading, Loading, Notice, problem, Select, useLoad, useSubmit } from "../ui";

const DEFAULTS: WidgetSettings = {
  title: "Chat with us", greeting: "", placeholder: "Type a message…", theme: "auto",
  position: "bottom-right", accent_color: "#2563eb", locale: "en",
};

// Secrets shown once: kept here between creating a widget and opening its page, never in the URL.
const shownOnce = new Map<string, string>();

export function Widgets() {
  const { data, error } = useLoad(() => all<Widget>("/api/v1/widgets"));
  return (
    <section>
      <Heading>{t("widgets")}</Heading>
      <p><a class="button primary" href={href("/widgets/new")}>{t("widget_new")}</a></p>
      {!data ? <Loading error={error} /> : data.length === 0 ? <p>{t("widgets_empty")}</p> : (
        <ul class="cards">
          {data.map((item) => (
            <li key={item.id}>
              <a href={href(`/widgets/${item.id}`)}>{item.name}</a>
              <span class="muted"> {item.settings.title}{item.enabled ? "" : ` · ${t("disabled")}`}</span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

export function WidgetPage(props: { id?: string }) {
  const loaded = useLoad(async () => {
    const [found, assistants] = await Promise.all([
      props.id ? get<Widget>(`/api/v1/widgets/${encodeURIComponent(props.id)}`) : Promise.resolve(null),
      all<Assistant>("/api/v1/assistants"),
    ]);
    return { found, assistants };
  }, [props.id]);
  if (!loaded.data) return <section><Heading>{t("widget_new")}</Heading><Loading error={loaded.error} /></section>;
  return <WidgetEditor key={props.id || "new"} found={loaded.data.found} assistants={loaded.data.assistants} />;
}

function WidgetEditor(props: { found: Widget | null; assistants: Assistant[] }) {
  const found = props.found;
  const [name, setName] = useState(found?.name || "");
  const [assistant, setAssistant] = useState(found?.assistant_id || props.assistants[0]?.id || "");
  const [origins, setOrigins] = useState<string[]>(found?.allowed_origins.length ? found.allowed_origins : [""]);
  const [look, setLook] = useState<WidgetSettings>({ ...DEFAULTS, ...(found?.settings || {}) });
  const [enabled, setEnabled] = useState(found?.enabled ?? true);
  const [version, setVersion] = useState(found?.version || 0);
  const [saved, setSaved] = useState(false);
  const [secret, setSecret] = useState(found ? shownOnce.get(found.id) || "" : "");
  useEffect(() => {
    if (found) shownOnce.delete(found.id);
  }, []);

  const set = (key: keyof WidgetSettings) => (value: string) => setLook({ ...look, [key]: value });
  const body = () => ({
    name, assistant_id: assistant, enabled,
    allowed_origins: origins.map((origin) => origin.trim()).filter(Boolean),
    settings: look,
  });
  const form = useSubmit(async () => {
    if (!found) return (await api<Widget>("POST", "/api/v1/widgets", { body: body() })).data;
    return (await api<Widget>("PATCH", `/api/v1/widgets/${found.id}`, { body: body(), ifMatch: version, patch: true })).data;
  }, (result) => {
    if (!found) {
      if (result.identity_secret) shownOnce.set(result.id, result.identity_secret);
      navigate(`/widgets/${result.id}`, true);
    } else {
      setVersion(result.version);
      setSaved(true);
    }
  });

  if (props.assistants.length === 0) {
    return (
      <section>
        <Heading>{t("widget_new")}</Heading>
        <Notice>{t("widget_needs_assistant")} <a href={href("/assistants/new")}>{t("assistant_new")}</a></Notice>
      </section>
    );
  }
  // The origins' errors are per entry ("allowed_origins.2"), but count only the non-empty ones sent.
  const sent = origins.map((origin, index) => [origin.trim(), index] as const).filter(([origin]) => origin);
  const originError = (index: number) => {
    const position = sent.findIndex(([, at]) => at === index);
    return position < 0 ? undefined : form.fields[`allowed_origins.${position}`];
  };

  return (
    <section>
      <Heading>{found ? found.name : t("widget_new")}</Heading>
      {secret && (
        <Notice kind="ok">
          <p>{t("secret_once")}</p>
          <code class="secret" data-testid="identity-secret">{secret}</code>{" "}
          <CopyButton text={secret} label={t("copy")} />
        </Notice>
      )}
      <div class="split">
        <form onSubmit={(event) => { setSaved(false); form.submit(event); }} noValidate>
          {form.error && <Notice kind="error">{form.error}</Notice>}
          {saved && <Notice kind="ok">{t("saved")}</Notice>}
          <Field label={t("name")} name="name" required value={name} onInput={setName} error={form.fields.name} maxLength={200} />
          <Select label={t("assistant")} name="assistant_id" value={assistant} onChange={setAssistant}
            options={props.assistants.map((item) => [item.id, item.name])} error={form.fields.assistant_id} />
          <fieldset>
            <legend>{t("allowed_origins")}</legend>
            <p class="hint">{t("allowed_origins_hint")}</p>
            {form.fields.allowed_origins && <p class="error">{form.fields.allowed_origins}</p>}
            {origins.map((origin, index) => (
              <div class="row" key={index}>
                <Field label={t("origin_n", { n: index + 1 })} name={`origin-${index}`} value={origin} type="url" dir="ltr"
                  onInput={(value) => setOrigins(origins.map((old, at) => (at === index ? value : old)))} error={originError(index)} />
                <button type="button" class="small" aria-label={t("origin_remove", { n: index + 1 })}
                  onClick={() => setOrigins(origins.length > 1 ? origins.filter((_, at) => at !== index) : [""])}>×</button>
              </div>
            ))}
            <button type="button" onClick={() => setOrigins([...origins, ""])}>{t("origin_add")}</button>
          </fieldset>
          <fieldset>
            <legend>{t("appearance")}</legend>
            <Field label={t("widget_title")} name="title" value={look.title} onInput={set("title")} error={form.fields["settings.title"]} maxLength={100} />
            <Field label={t("greeting")} name="greeting" multiline rows={3} value={look.greeting} onInput={set("greeting")} error={form.fields["settings.greeting"]} />
            <Field label={t("placeholder")} name="placeholder" value={look.placeholder} onInput={set("placeholder")} error={form.fields["settings.placeholder"]} />
            <div class="field">
              <label for="accent">{t("accent_color")}</label>
              <div class="row">
                <input id="accent" type="color" value={/^#[0-9a-f]{6}$/i.test(look.accent_color) ? look.accent_color : "#2563eb"}
                  onInput={(event) => set("accent_color")(event.currentTarget.value)} />
                <input aria-label={t("accent_color_hex")} value={look.accent_color} dir="ltr" class="short"
                  onInput={(event) => set("accent_color")(event.currentTarget.value)} />
              </div>
              {form.fields["settings.accent_color"] && <p class="error">{form.fields["settings.accent_color"]}</p>}
            </div>
            <Select label={t("theme")} name="theme" value={look.theme} onChange={set("theme")}
              options={[["auto", t("theme_auto")], ["light", t("theme_light")], ["dark", t("theme_dark")]]} />
            <Select label={t("position")} name="position" value={look.position} onChange={set("position")}
              options={[["bottom-right", t("position_right")], ["bottom-left", t("position_left")]]} />
            <Select label={t("widget_locale")} name="locale" value={look.locale} onChange={set("locale")}
              options={LOCALES.map((code) => [code, t(`language_${code}`)])} />
          </fieldset>
          <Check label={t("enabled")} checked={enabled} onChange={setEnabled} />
          <div class="actions">
            <button type="submit" class="primary" disabled={form.busy}>{found ? t("save") : t("create")}</button>
            <a href={href("/widgets")}>{t("back")}</a>
          </div>
        </form>
        <Preview widgetId={found?.id || "preview"} settings={look} />
      </div>
      {found && <Embed id={found.id} version={version} />}
      {found && <Secret id={found.id} version={version} onRotated={(next, value) => { setVersion(next); setSecret(value); }} />}
      {found && <DeleteWidget id={found.id} name={found.name} version={version} />}
    </section>
  );
}

/** The real /widget.js in a sandboxed same-origin frame, fed the unsaved settings. */
function Preview(props: { widgetId: string; settings: WidgetSettings }) {
  const frame = useRef<HTMLIFrameElement>(null);
  const [ready, setReady] = useState(false);
  useEffect(() => {
    const listener = (event: MessageEvent) => {
      if (event.origin === location.origin && event.source === frame.current?.contentWindow
          && event.data?.type === "loacl-preview-ready") setReady(true);
    };
    addEventListener("message", listener);
    return () => removeEventListener("message", listener);
  }, []);
  useEffect(() => {
    if (!ready) return;
    const timer = setTimeout(() => frame.current?.contentWindow?.postMessage(
      { type: "loacl-preview", widgetId: props.widgetId, settings: props.settings }, location.origin), 250);
    return () => clearTimeout(timer);
  }, [ready, props.widgetId, JSON.stringify(props.settings)]);
  return (
    <div class="preview">
      <h2>{t("preview")}</h2>
      <p class="hint">{t("preview_hint")}</p>
      <iframe ref={frame} src={`${BASE}/preview.html`} title={t("preview")} sandbox="allow-scripts allow-same-origin" />
    </div>
  );
}

function Embed(props: { id: string; version: number }) {
  const { data, error } = useLoad(() => get<EmbedCode>(`/api/v1/widgets/${props.id}/embed-code`), [props.id, props.version]);
  const pinned = data && `<script src="${data.versioned_script_url}" integrity="${data.integrity}" crossorigin="anonymous" data-widget-id="${data.widget_id}" async></script>\n`;
  return (
    <section class="panel">
      <h2>{t("embed_code")}</h2>
      <p class="hint">{t("embed_hint")}</p>
      {!data ? <Loading error={error} /> : (
        <>
          <pre dir="ltr" data-testid="embed-code"><code>{data.html}</code></pre>
          <CopyButton text={data.html} label={t("embed_copy")} />
          <h3>{t("embed_pinned")}</h3>
          <p class="hint">{t("embed_pinned_hint")}</p>
          <pre dir="ltr"><code>{pinned}</code></pre>
          <CopyButton text={pinned || ""} label={t("copy")} />
        </>
      )}
    </section>
  );
}

function Secret(props: { id: string; version: number; onRotated: (version: number, secret: string) => void }) {
  const [error, setError] = useState("");
  return (
    <section class="panel">
      <h2>{t("identity_secret")}</h2>
      <p class="hint">{t("identity_secret_hint")}</p>
      {error && <Notice kind="error">{error}</Notice>}
      <Confirm label={t("rotate_secret")} question={t("rotate_question")} confirm={t("rotate_confirm")} onConfirm={async () => {
        try {
          const { data } = await api<Widget>("POST", `/api/v1/widgets/${props.id}/rotate-secret`, { ifMatch: props.version });
          props.onRotated(data.version, data.identity_secret || "");
          window.scrollTo(0, 0);
        } catch (failure) {
          setError(problem(failure).message);
        }
      }} />
    </section>
  );
}

function DeleteWidget(props: { id: string; name: string; version: number }) {
  const [error, setError] = useState("");
  return (
    <section class="panel danger-zone">
      <h2>{t("delete")}</h2>
      {error && <Notice kind="error">{error}</Notice>}
      <Confirm label={t("widget_delete")} question={t("widget_delete_question", { name: props.name })} confirm={t("delete_for_good")}
        onConfirm={async () => {
          try {
            await api("DELETE", `/api/v1/widgets/${props.id}`, { ifMatch: props.version });
            navigate("/widgets", true);
          } catch (failure) {
            setError(problem(failure).message);
          }
        }} />
    </section>
  );
}
