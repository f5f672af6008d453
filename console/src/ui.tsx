// Small shared pieces: labelled fields with their errors, notices, buttons, loading data.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useId, useRef, useState } from "preact/hooks";
import { ApiError, type FieldErrors } from "./api";
import { explain, t } from "./i18n";

interface FieldProps {
  label: string;
  name: string;
  value: string;
  onInput: (value: string) => void;
  error?: string;
  hint?: string;
  type?: string;
  required?: boolean;
  autocomplete?: string;
  multiline?: boolean;
  rows?: number;
  minLength?: number;
  maxLength?: number;
  list?: string;
  dir?: "ltr" | "rtl" | "auto";
  inputClass?: string;
}

export function Field(props: FieldProps) {
  const id = useId();
  const described = [props.hint ? `${id}-hint` : "", props.error ? `${id}-error` : ""].filter(Boolean).join(" ");
  const common = {
    id,
    name: props.name,
    value: props.value,
    required: props.required,
    class: props.inputClass,
    dir: props.dir,
    "aria-invalid": props.error ? ("true" as const) : undefined,
    "aria-describedby": described || undefined,
    onInput: (event: Event) => props.onInput((event.currentTarget as HTMLInputElement).value),
  };
  return (
    <div class="field">
      <label for={id}>{props.label}</label>
      {props.hint && <p class="hint" id={`${id}-hint`}>{props.hint}</p>}
      {props.multiline ? (
        <textarea {...common} rows={props.rows || 4} maxLength={props.maxLength} />
      ) : (
        <input {...common} type={(props.type || "text") as "text"} autoComplete={props.autocomplete}
          minLength={props.minLength} maxLength={props.maxLength} list={props.list} />
      )}
      {props.error && <p class="error" id={`${id}-error`}>{props.error}</p>}
    </div>
  );
}

interface SelectProps {
  label: string;
  name: string;
  value: string;
  options: [string, string][];
  onChange: (value: string) => void;
  error?: string;
}

export function Select(props: SelectProps) {
  const id = useId();
  return (
    <div class="field">
      <label for={id}>{props.label}</label>
      <select id={id} name={props.name} value={props.value}
        aria-invalid={props.error ? "true" : undefined}
        aria-describedby={props.error ? `${id}-error` : undefined}
        onChange={(event) => props.onChange(event.currentTarget.value)}>
        {props.options.map(([value, label]) => <option key={value} value={value}>{label}</option>)}
      </select>
      {props.error && <p class="error" id={`${id}-error`}>{props.error}</p>}
    </div>
  );
}

export function Check(props: { label: string; checked: boolean; onChange: (value: boolean) => void }) {
  const id = useId();
  return (
    <div class="field check">
      <input id={id} type="checkbox" checked={props.checked}
        onChange={(event) => props.onChange(event.currentTarget.checked)} />
      <label for={id}>{props.label}</label>
    </div>
  );
}

export function Notice(props: { kind?: "error" | "ok" | "info"; children: ComponentChildren }) {
  const kind = props.kind || "info";
  return (
    <div class={`notice notice-${kind}`} role={kind === "error" ? "alert" : "status"}>
      {props.children}
    </div>
  );
}

/** What a failed request says to the owner, and the reasons per field. */
export function problem(error: unknown): { message: string; fields: FieldErrors } {
  if (error instanceof ApiError) return { message: explain(error.code, error.message), fields: error.fields };
  return { message: t("error_unknown"), fields: {} };
}

/** A form's state: busy while submitting, its error and field errors afterwards. */
export function useSubmit<T>(action: () => Promise<T>, done?: (result: T) => void) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");
  const [fields, setFields] = useState<FieldErrors>({});
  const submit = async (event?: Event) => {
    event?.preventDefault();
    if (busy) return;
    setBusy(true);
    setError("");
    setFields({});
    try {
      const result = await action();
      done?.(result);
    } catch (failure) {
      const found = problem(failure);
      setError(found.message);
      setFields(found.fields);
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, fields, submit, setError };
}

/** Data loaded when the page opens (and again on `reload`). */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[] = []) {
  const [data, setData] = useState<T | null>(null);
  const [failure, setFailure] = useState<unknown>(null);
  const [tick, setTick] = useState(0);
  const alive = useRef(true);
  useEffect(() => {
    alive.current = true;
    setFailure(null);
    load().then(
      (value) => alive.current && setData(value),
      (reason) => alive.current && setFailure(reason ?? new Error("failed")),
    );
    return () => {
      alive.current = false;
    };
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((value) => value + 1), []);
  // Worded when shown, so that it follows a change of language.
  const error = failure ? problem(failure).message : "";
  return { data, error, reload, setData };
}

export function Loading(props: { error: string }) {
  return props.error ? <Notice kind="error">{props.error}</Notice> : <p class="muted" role="status">{t("loading")}</p>;
}

export function Heading(props: { children: ComponentChildren }) {
  // The page's heading takes the focus after a route change, so screen readers hear the new page.
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => ref.current?.focus(), []);
  return <h1 tabIndex={-1} ref={ref}>{props.children}</h1>;
}

/** Ask before doing something that cannot be undone. */
export function Confirm(props: { label: string; question: string; confirm: string; onConfirm: () => Promise<void> | void }) {
  const [asking, setAsking] = useState(false);
  const [busy, setBusy] = useState(false);
  if (!asking) {
    return <button type="button" class="danger" onClick={() => setAsking(true)}>{props.label}</button>;
  }
  return (
    <div class="confirm" role="group" aria-label={props.question}>
      <p>{props.question}</p>
      <button type="button" class="danger" disabled={busy} onClick={async () => {
        setBusy(true);
        try {
          await props.onConfirm();
        } finally {
          setBusy(false);
          setAsking(false);
        }
      }}>{props.confirm}</button>
      <button type="button" onClick={() => setAsking(false)}>{t("cancel")}</button>
    </div>
  );
}

/** Copy `text`, and say so in a live region. */
export function CopyButton(props: { text: string; label: string }) {
  const [state, setState] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(props.text);
      setState(t("copied"));
    } catch {
      setState(t("copy_failed"));
    }
  };
  return (
    <span class="copy">
      <button type="button" onClick={copy}>{props.label}</button>
      <span role="status" class="muted">{state}</span>
    </span>
  );
}
