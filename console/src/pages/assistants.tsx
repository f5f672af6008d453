// Assistants: the list, and one form to create or edit one (model picker, instructions), with a
// preview chat: the real widget talking to the assistant as it stands in the form, unsaved.
import { useEffect, useRef, useState } from "preact/hooks";
import { all, api, ApiError, get, streamLines } from "../api";
import { currentLocale, t } from "../i18n";
import { BASE, href, navigate } from "../router";
import type { Assistant, Model } from "../types";
import { Knowledge } from "./knowledge";
import { Confirm, Field, Heading, Loading, Notice, problem, Select, useLoad, useSubmit } from "../ui";

export function Assistants() {
  const { data, error } = useLoad(() => all<Assistant>("/api/v1/assistants"));
  return (
    <section>
      <Heading>{t("assistants")}</Heading>
      <p><a class="button primary" href={href("/assistants/new")}>{t("assistant_new")}</a></p>
      {!data ? <Loading error={error} /> : data.length === 0 ? <p>{t("assistants_empty")}</p> : (
        <ul class="cards">
          {data.map((item) => (
            <li key={item.id}>
              <a href={href(`/assistants/${item.id}`)}>{item.name}</a>
              <span class="muted"> {item.provider} · {item.model}</span>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

/** The models to pick from, or null when the server cannot list them (a free text field then). */
async function models(): Promise<Model[] | null> {
  try {
    return (await get<{ data: Model[] }>("/api/v1/models")).data;
  } catch {
    return null;
  }
}

export function AssistantForm(props: { id?: string }) {
  const editing = props.id !== undefined;
  const loaded = useLoad(async () => {
    const [found, choices] = await Promise.all([
      editing ? get<Assistant>(`/api/v1/assistants/${encodeURIComponent(props.id!)}`) : Promise.resolve(null),
      models(),
    ]);
    return { found, choices };
  }, [props.id]);
  if (!loaded.data) return <section><Heading>{t(editing ? "assistant_edit" : "assistant_new")}</Heading><Loading error={loaded.error} /></section>;
  return <AssistantEditor key={props.id || "new"} found={loaded.data.found} choices={loaded.data.choices} />;
}

function AssistantEditor(props: { found: Assistant | null; choices: Model[] | null }) {
  const found = props.found;
  const [name, setName] = useState(found?.name || "");
  const [model, setModel] = useState(found ? `${found.provider}:${found.model}` : "");
  const [instructions, setInstructions] = useState(found?.instructions || "");
  const [temperature, setTemperature] = useState(found?.temperature?.toString() || "");
  const [version, setVersion] = useState(found?.version || 0);
  const [saved, setSaved] = useState(false);

  const body = () => {
    const [provider, ...rest] = model.includes(":") ? model.split(":") : ["", model];
    const chosen = rest.join(":");
    return {
      name, instructions,
      provider: provider || null,
      model: chosen || null,
      temperature: temperature.trim() === "" ? null : Number(temperature),
    };
  };
  const form = useSubmit(async () => {
    if (!found) return (await api<Assistant>("POST", "/api/v1/assistants", { body: body() })).data;
    return (await api<Assistant>("PATCH", `/api/v1/assistants/${found.id}`, { body: body(), ifMatch: version, patch: true })).data;
  }, (result) => {
    if (!found) navigate(`/assistants/${result.id}`, true);
    else {
      setVersion(result.version);
      setSaved(true);
    }
  });
  const options: [string, string][] = [["", t("model_default")]];
  for (const choice of props.choices || []) options.push([`${choice.provider}:${choice.id}`, `${choice.id} (${choice.provider})`]);
  if (found && !options.some(([value]) => value === model)) options.push([model, `${found.model} (${found.provider})`]);
  const [deleteError, setDeleteError] = useState("");

  return (
    <section>
      <Heading>{found ? found.name : t("assistant_new")}</Heading>
      <form onSubmit={(event) => { setSaved(false); form.submit(event); }} noValidate>
        {form.error && <Notice kind="error">{form.error}</Notice>}
        {saved && <Notice kind="ok">{t("saved")}</Notice>}
        <Field label={t("name")} name="name" required value={name} onInput={setName} error={form.fields.name} maxLength={200} />
        {props.choices ? (
          <Select label={t("model")} name="model" value={model} options={options} onChange={setModel} error={form.fields.model || form.fields.provider} />
        ) : (
          <Field label={t("model")} name="model" value={model.includes(":") ? model.split(":").slice(1).join(":") : model}
            onInput={(value) => setModel(found ? `${found.provider}:${value}` : value)} hint={t("model_hint")} error={form.fields.model || form.fields.provider} />
        )}
        <Field label={t("instructions")} name="instructions" multiline rows={10} value={instructions} onInput={setInstructions} error={form.fields.instructions} hint={t("instructions_hint")} maxLength={32000} />
        <Field label={t("temperature")} name="temperature" type="number" value={temperature} onInput={setTemperature} error={form.fields.temperature} hint={t("temperature_hint")} />
        <div class="actions">
          <button type="submit" class="primary" disabled={form.busy}>{found ? t("save") : t("create")}</button>
          <a href={href("/assistants")}>{t("back")}</a>
        </div>
      </form>
      {found && <Knowledge assistantId={found.id} />}
      <AssistantPreview title={name || t("assistant_new")} draft={body} />
      {found && (
        <div class="danger-zone">
          <h2>{t("delete")}</h2>
          {deleteError && <Notice kind="error">{deleteError}</Notice>}
          <Confirm label={t("assistant_delete")} question={t("assistant_delete_question", { name: found.name })} confirm={t("delete_for_good")}
            onConfirm={async () => {
              try {
                await api("DELETE", `/api/v1/assistants/${found.id}`, { ifMatch: version });
                navigate("/assistants", true);
              } catch (error) {
                setDeleteError(problem(error).message);
              }
            }} />
        </div>
      )}
    </section>
  );
}

type Draft = () => Record<string, unknown>;

/** The real /widget.js in the same sandboxed frame as the widget page's preview, chatting with
 * the form's assistant as it stands: each question goes to POST /api/v1/assistant-preview with
 * the draft of that moment, so a change shows in the next answer without saving. */
function AssistantPreview(props: { title: string; draft: Draft }) {
  const frame = useRef<HTMLIFrameElement>(null);
  const draft = useRef(props.draft);
  draft.current = props.draft;
  const [ready, setReady] = useState(false);
  useEffect(() => {
    const listener = (event: MessageEvent) => {
      const source = frame.current?.contentWindow;
      if (event.origin !== location.origin || !source || event.source !== source) return;
      const data = event.data as { type?: string; id?: string; messages?: unknown[] };
      if (data?.type === "loacl-preview-ready") setReady(true);
      if (data?.type !== "loacl-preview-ask" || !data.id) return;
      const id = data.id;
      const relay = (piece: Record<string, unknown>) => source.postMessage({ type: "loacl-preview-piece", id, piece }, location.origin);
      const assistant = { ...draft.current() };
      if (!assistant.name) assistant.name = props.title;
      streamLines("/api/v1/assistant-preview", { assistant, messages: data.messages }, relay)
        .catch((error) => relay({ type: "error", code: error instanceof ApiError ? error.code : "provider_error", text: problem(error).message }));
    };
    addEventListener("message", listener);
    return () => removeEventListener("message", listener);
  }, []);
  useEffect(() => {
    if (!ready) return;
    const timer = setTimeout(() => frame.current?.contentWindow?.postMessage({
      type: "loacl-assistant-preview",
      settings: { title: props.title, greeting: "", placeholder: t("preview_placeholder"), theme: "auto",
        position: "bottom-right", accent_color: "#2563eb", locale: currentLocale() },
    }, location.origin), 250);
    return () => clearTimeout(timer);
  }, [ready]); // once: a new look would start the widget again, and the chat with it
  return (
    <div class="preview">
      <h2>{t("assistant_preview")}</h2>
      <p class="hint">{t("assistant_preview_hint")}</p>
      <iframe ref={frame} src={`${BASE}/preview.html`} title={t("assistant_preview")} sandbox="allow-scripts allow-same-origin" />
    </div>
  );
}
