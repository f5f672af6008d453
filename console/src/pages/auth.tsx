// Signing up, verifying the address, logging in, and resetting a forgotten password.
import { useEffect, useState } from "preact/hooks";
import { api, login } from "../api";
import { t } from "../i18n";
import { current, href, navigate } from "../router";
import { Field, Heading, Notice, problem, useSubmit } from "../ui";

/** The one-time token of a mail link, taken out of the address bar once read. */
function linkToken(): string {
  const token = current().query.get("token") || "";
  if (token) history.replaceState(null, "", location.pathname);
  return token;
}

export function SignUp() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const [sent, setSent] = useState("");
  const form = useSubmit(
    () => api<{ email: string }>("POST", "/api/v1/auth/register", { body: { email, password, name: name || null }, auth: false }),
    (result) => setSent(result.data.email),
  );
  return (
    <section class="narrow">
      <Heading>{t("signup_title")}</Heading>
      {sent ? (
        <Notice kind="ok">{t("signup_sent", { email: sent })}</Notice>
      ) : (
        <form onSubmit={form.submit} noValidate>
          {form.error && <Notice kind="error">{form.error}</Notice>}
          <Field label={t("email")} name="email" type="email" autocomplete="email" required value={email} onInput={setEmail} error={form.fields.email} />
          <Field label={t("password")} name="password" type="password" autocomplete="new-password" required value={password} onInput={setPassword} error={form.fields.password} hint={t("password_hint")} />
          <Field label={t("name_optional")} name="name" autocomplete="name" value={name} onInput={setName} error={form.fields.name} />
          <button type="submit" class="primary" disabled={form.busy}>{t("signup_submit")}</button>
        </form>
      )}
      <p><a href={href("/login")}>{t("have_account")}</a></p>
    </section>
  );
}

export function Verify() {
  const [token] = useState(linkToken);
  const [state, setState] = useState<"busy" | "ok" | "error">(token ? "busy" : "error");
  const [message, setMessage] = useState(token ? "" : t("error_invalid_verification_token"));
  useEffect(() => {
    if (!token) return;
    api("POST", "/api/v1/auth/verify-email", { body: { token }, auth: false }).then(
      () => setState("ok"),
      (error) => {
        setState("error");
        setMessage(problem(error).message);
      },
    );
  }, [token]);
  return (
    <section class="narrow">
      <Heading>{t("verify_title")}</Heading>
      {state === "busy" && <p role="status">{t("verifying")}</p>}
      {state === "ok" && <Notice kind="ok">{t("verified")}</Notice>}
      {state === "error" && <Notice kind="error">{message}</Notice>}
      <p><a href={href("/login")}>{t("login_title")}</a></p>
    </section>
  );
}

export function Login() {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const form = useSubmit(() => login(email, password), () => navigate("/", true));
  return (
    <section class="narrow">
      <Heading>{t("login_title")}</Heading>
      <form onSubmit={form.submit} noValidate>
        {form.error && <Notice kind="error">{form.error}</Notice>}
        <Field label={t("email")} name="email" type="email" autocomplete="username" required value={email} onInput={setEmail} error={form.fields.email} />
        <Field label={t("password")} name="password" type="password" autocomplete="current-password" required value={password} onInput={setPassword} error={form.fields.password} />
        <button type="submit" class="primary" disabled={form.busy}>{t("login_submit")}</button>
      </form>
      <p><a href={href("/forgot")}>{t("forgot_link")}</a></p>
      <p><a href={href("/signup")}>{t("signup_link")}</a></p>
    </section>
  );
}

export function Forgot() {
  const [email, setEmail] = useState("");
  const [sent, setSent] = useState(false);
  const form = useSubmit(
    () => api("POST", "/api/v1/auth/reset-password", { body: { email }, auth: false }),
    () => setSent(true),
  );
  return (
    <section class="narrow">
      <Heading>{t("forgot_title")}</Heading>
      {sent ? <Notice kind="ok">{t("forgot_sent")}</Notice> : (
        <form onSubmit={form.submit} noValidate>
          {form.error && <Notice kind="error">{form.error}</Notice>}
          <Field label={t("email")} name="email" type="email" autocomplete="email" required value={email} onInput={setEmail} error={form.fields.email} />
          <button type="submit" class="primary" disabled={form.busy}>{t("forgot_submit")}</button>
        </form>
      )}
      <p><a href={href("/login")}>{t("login_title")}</a></p>
    </section>
  );
}

export function Reset() {
  const [token] = useState(linkToken);
  const [password, setPassword] = useState("");
  const [done, setDone] = useState(false);
  const form = useSubmit(
    () => api("POST", "/api/v1/auth/reset-password/confirm", { body: { token, password }, auth: false }),
    () => setDone(true),
  );
  return (
    <section class="narrow">
      <Heading>{t("reset_title")}</Heading>
      {!token && <Notice kind="error">{t("error_invalid_reset_token")}</Notice>}
      {done ? <Notice kind="ok">{t("reset_done")}</Notice> : token && (
        <form onSubmit={form.submit} noValidate>
          {form.error && <Notice kind="error">{form.error}</Notice>}
          <Field label={t("new_password")} name="password" type="password" autocomplete="new-password" required value={password} onInput={setPassword} error={form.fields.password} hint={t("password_hint")} />
          <button type="submit" class="primary" disabled={form.busy}>{t("reset_submit")}</button>
        </form>
      )}
      <p><a href={href("/login")}>{t("login_title")}</a></p>
    </section>
  );
}
