// An assistant's knowledge: the documents it searches to answer, how their reading goes (updated
// while any is still read), where they are searched (here, or in an OpenAI vector store), and
// deleting them. Part of the assistant's page.
import { useEffect, useState } from "preact/hooks";
import { all, api, get } from "../api";
import { t } from "../i18n";
import type { KnowledgeDocument, KnowledgeStore } from "../types";
import { Confirm, Loading, Notice, problem, Select, useLoad } from "../ui";

const READING_POLL_MS = 2000;
const ACCEPTED = ".pdf,.docx,.md,.markdown,.html,.htm,.txt";

const size = (bytes: number): string =>
  bytes < 1024 ? `${bytes} B` : bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KB` : `${(bytes / 1048576).toFixed(1)} MB`;

function status(document: KnowledgeDocument): string {
  if (document.status === "failed") return t("knowledge_failed", { reason: document.error?.message || document.error?.code || "" });
  if (document.status === "ready") return t("knowledge_ready", { pages: document.pages ?? 0, chunks: document.chunks ?? 0 });
  return t(document.status === "queued" ? "knowledge_queued" : "knowledge_reading");
}

export function Knowledge(props: { assistantId: string }) {
  const base = `/api/v1/assistants/${encodeURIComponent(props.assistantId)}/knowledge`;
  const documents = useLoad(() => all<KnowledgeDocument>(base), [props.assistantId]);
  const store = useLoad(() => get<KnowledgeStore>(`${base}-store`), [props.assistantId]);
  const [error, setError] = useState("");
  const [uploading, setUploading] = useState(0);
  const reading = (documents.data || []).some((d) => d.status === "queued" || d.status === "processing");
  useEffect(() => {
    if (!reading) return;
    const timer = setTimeout(documents.reload, READING_POLL_MS);
    return () => clearTimeout(timer);
  }, [reading, documents.data]);

  async function upload(files: FileList | null) {
    setError("");
    for (const file of Array.from(files || [])) {
      setUploading((n) => n + 1);
      try {
        const body = new FormData();
        body.append("file", file, file.name);
        await api("POST", base, { body });
      } catch (failure) {
        setError(`${file.name}: ${problem(failure).message}`);
      } finally {
        setUploading((n) => n - 1);
      }
    }
    documents.reload();
  }

  async function choose(value: string) {
    setError("");
    try {
      store.setData((await api<KnowledgeStore>("PUT", `${base}-store`, { body: { store: value } })).data);
      documents.reload();
    } catch (failure) {
      setError(problem(failure).message);
    }
  }

  async function remove(document: KnowledgeDocument) {
    setError("");
    try {
      await api("DELETE", `${base}/${encodeURIComponent(document.id)}`);
      documents.reload();
    } catch (failure) {
      setError(problem(failure).message);
    }
  }

  return (
    <section class="knowledge" aria-labelledby="knowledge-heading">
      <h2 id="knowledge-heading">{t("knowledge")}</h2>
      <p class="hint">{t("knowledge_hint")}</p>
      {error && <Notice kind="error">{error}</Notice>}
      {store.data && (
        <Select label={t("knowledge_store")} name="knowledge_store" value={store.data.store}
          options={[["local", t("knowledge_store_local")], ["openai", t("knowledge_store_openai")]]}
          onChange={choose} />
      )}
      <div class="field">
        <label for="knowledge-files">{t("knowledge_add")}</label>
        <input id="knowledge-files" type="file" multiple accept={ACCEPTED}
          onChange={(event) => {
            const input = event.currentTarget;
            upload(input.files).finally(() => { input.value = ""; });
          }} />
        {uploading > 0 && <p class="muted" role="status">{t("knowledge_uploading")}</p>}
      </div>
      {!documents.data ? <Loading error={documents.error} /> : documents.data.length === 0 ? (
        <p class="muted">{t("knowledge_empty")}</p>
      ) : (
        <ul class="cards documents" aria-live="polite">
          {documents.data.map((document) => (
            <li key={document.id} class={`document ${document.status}`}>
              <strong>{document.filename}</strong>
              <span class="muted"> {size(document.size)}</span>
              <div class="doc-status">{status(document)}
                {document.openai && <span class="muted"> · {t("knowledge_at_openai", { status: document.openai.status })}</span>}
              </div>
              <Confirm label={t("delete")} question={t("knowledge_delete_question", { name: document.filename })}
                confirm={t("delete_for_good")} onConfirm={() => remove(document)} />
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
