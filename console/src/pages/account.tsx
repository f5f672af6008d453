// The account: change the password, see and end sessions, delete the account.
import { useState } from "preact/hooks";
import { api, forget, get } from "../api";
import { formatDate, t } from "../i18n";
import { navigate } from "../router";
import type { Session, User } from "../types";
import { Confirm, Field, Heading, Loading, Notice, problem, useLoad, useSubmit } from "../ui";

function Password() {
  const [current, setCurrent] = useState("");
  const [next, setNext] = useState("");
  const [done, setDone] = useState(false);
  const form = useSubmit(
    () => api("POST", "/api/v1/auth/password", { body: { current_password: current, new_password: next } }),
    () => { setDone(true); setCurrent(""); setNext(""); },
  );
  return (
    <section class="panel">
      <h2>{t("change_password")}</h2>
      <form onSubmit={(event) => { setDone(false); form.submit(event); }} noValidate>
        {form.error && <Notice kind="error">{form.error}</Notice>}
        {done && <Notice kind="ok">{t("password_changed")}</Notice>}
        <Field label={t("current_password")} name="current_password" type="password" autocomplete="current-password" value={current} onInput={setCurrent} error={form.fields.current_password} />
        <Field label={t("new_password")} name="new_password" type="password" autocomplete="new-password" value={next} onInput={setNext} error={form.fields.new_password} hint={t("password_hint")} />
        <button type="submit" disabled={form.busy}>{t("change_password")}</button>
      </form>
    </section>
  );
}

function Sessions() {
  const loaded = useLoad(() => get<{ data: Session[] }>("/api/v1/auth/sessions"));
  const [error, setError] = useState("");
  return (
    <section class="panel">
      <h2>{t("sessions")}</h2>
      {error && <Notice kind="error">{error}</Notice>}
      {!loaded.data ? <Loading error={loaded.error} /> : (
        <ul class="cards">
          {loaded.data.data.map((session) => (
            <li key={session.id}>
              <span dir="ltr">{session.ip || t("session_unknown")}</span>
              <span class="muted"> {formatDate(session.last_used_at || session.created_at)}{session.current ? ` · ${t("session_current")}` : ""}</span>
              {!session.current && (
                <button type="button" class="small" onClick={async () => {
                  try {
                    await api("DELETE", `/api/v1/auth/sessions/${encodeURIComponent(session.id)}`);
                    loaded.reload();
                  } catch (failure) {
                    setError(problem(failure).message);
                  }
                }}>{t("revoke")}</button>
              )}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function DisplayName(props: { user: User }) {
  const [name, setName] = useState(props.user.name || "");
  const [done, setDone] = useState(false);
  const form = useSubmit(
    () => api<User>("PATCH", "/api/v1/auth/me", { body: { name: name.trim() || null } }),
    () => setDone(true),
  );
  return (
    <section class="panel">
      <h2>{t("display_name")}</h2>
      <form onSubmit={(event) => { setDone(false); form.submit(event); }} noValidate>
        {form.error && <Notice kind="error">{form.error}</Notice>}
        {done && <Notice kind="ok">{t("saved")}</Notice>}
        <Field label={t("display_name")} name="display_name" autocomplete="name" value={name} onInput={setName} error={form.fields.name} hint={t("display_name_hint")} maxLength={200} />
        <button type="submit" disabled={form.busy}>{t("save")}</button>
      </form>
    </section>
  );
}

function DeleteAccount() {
  const [password, setPassword] = useState("");
  const [error, setError] = useState("");
  return (
    <section class="panel danger-zone">
      <h2>{t("delete_account")}</h2>
      <p class="hint">{t("delete_account_hint")}</p>
      {error && <Notice kind="error">{error}</Notice>}
      <Field label={t("password")} name="delete_password" type="password" autocomplete="current-password" value={password} onInput={setPassword} />
      <Confirm label={t("delete_account")} question={t("delete_account_question")} confirm={t("delete_for_good")} onConfirm={async () => {
        try {
          await api("DELETE", "/api/v1/auth/me", { body: { password } });
          forget();
          navigate("/login", true);
        } catch (failure) {
          setError(problem(failure).message);
        }
      }} />
    </section>
  );
}

export function Account() {
  const me = useLoad(() => get<User>("/api/v1/auth/me"));
  return (
    <section>
      <Heading>{t("account")}</Heading>
      {!me.data ? <Loading error={me.error} /> : <p>{t("signed_in_as", { email: me.data.email })}</p>}
      {me.data && <DisplayName user={me.data} />}
      <Password />
      <Sessions />
      <DeleteAccount />
    </section>
  );
}
