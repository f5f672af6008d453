// The workspace's members (their roles, invites, removal) and the page an invite's link opens.
import { useState } from "preact/hooks";
import { adopt, api, ApiError, get, loadWorkspaces, login, may, type Result, signedIn, switchWorkspace, type Tokens, workspace, workspaces } from "../api";
import { formatDate, t } from "../i18n";
import { current, navigate } from "../router";
import type { Invite, Member } from "../types";
import { Confirm, Field, Heading, Loading, Notice, Select, problem, useLoad, useSubmit } from "../ui";

const ROLES: ("owner" | "admin" | "agent")[] = ["owner", "admin", "agent"];
const roleOptions = (): [string, string][] => ROLES.map((role) => [role, t(`role_${role}`)]);

function InviteForm(props: { workspaceId: string; onInvited: () => void }) {
  const [email, setEmail] = useState("");
  const [role, setRole] = useState("agent");
  const [sent, setSent] = useState("");
  const form = useSubmit(
    () => api<Invite>("POST", `/api/v1/workspaces/${encodeURIComponent(props.workspaceId)}/invites`, { body: { email, role } }),
    (result) => { setSent(result.data.email); setEmail(""); props.onInvited(); },
  );
  return (
    <form onSubmit={(event) => { setSent(""); form.submit(event); }} noValidate>
      <h2>{t("invite_title")}</h2>
      {form.error && <Notice kind="error">{form.error}</Notice>}
      {sent && <Notice kind="ok">{t("invite_sent", { email: sent })}</Notice>}
      <Field label={t("email")} name="email" type="email" autocomplete="off" required value={email} onInput={setEmail} error={form.fields.email} />
      <Select label={t("role")} name="role" value={role} options={roleOptions()} onChange={setRole} error={form.fields.role} />
      <button type="submit" class="primary" disabled={form.busy}>{t("invite_submit")}</button>
    </form>
  );
}

/** Rename this workspace (admin or owner), or make a new one and move into it (anyone). */
function WorkspaceForms(props: { workspaceId: string; name: string }) {
  const [name, setName] = useState(props.name);
  const [renamed, setRenamed] = useState(false);
  const [fresh, setFresh] = useState("");
  const rename = useSubmit(
    () => api("PATCH", `/api/v1/workspaces/${encodeURIComponent(props.workspaceId)}`, { body: { name: name.trim() } }),
    async () => { setRenamed(true); await loadWorkspaces(); },
  );
  const create = useSubmit(
    () => api<{ id: string }>("POST", "/api/v1/workspaces", { body: { name: fresh.trim() } }),
    async (result) => {
      await loadWorkspaces();
      await switchWorkspace(result.data.id);
      navigate("/members", true);
    },
  );
  return (
    <>
      {may("admin") && (
        <section class="panel">
          <form onSubmit={(event) => { setRenamed(false); rename.submit(event); }} noValidate>
            <h2>{t("workspace_rename")}</h2>
            {rename.error && <Notice kind="error">{rename.error}</Notice>}
            {renamed && <Notice kind="ok">{t("workspace_renamed")}</Notice>}
            <Field label={t("workspace_name")} name="name" required value={name} onInput={setName} error={rename.fields.name} />
            <button type="submit" disabled={rename.busy}>{t("save")}</button>
          </form>
        </section>
      )}
      <section class="panel">
        <form onSubmit={create.submit} noValidate>
          <h2>{t("workspace_new")}</h2>
          <p class="muted">{t("workspace_new_help")}</p>
          {create.error && <Notice kind="error">{create.error}</Notice>}
          <Field label={t("workspace_new_name")} name="new-name" required value={fresh} onInput={setFresh} error={create.fields.name} />
          <button type="submit" disabled={create.busy}>{t("workspace_create")}</button>
        </form>
      </section>
    </>
  );
}

export function Members() {
  const here = workspace();
  const id = here?.id || "";
  const base = `/api/v1/workspaces/${encodeURIComponent(id)}`;
  const owner = may("owner");
  const members = useLoad(() => get<{ data: Member[] }>(`${base}/members`), [id]);
  const invites = useLoad(() => (owner ? get<{ data: Invite[] }>(`${base}/invites`) : Promise.resolve({ data: [] })), [id, owner]);
  const me = useLoad(() => get<{ id: string }>("/api/v1/auth/me"), []);
  const [error, setError] = useState("");
  const act = async (action: () => Promise<unknown>) => {
    setError("");
    try {
      await action();
      members.reload();
      invites.reload();
    } catch (failure) {
      setError(problem(failure).message);
    }
  };
  return (
    <section>
      <Heading>{t("members")}{here ? ` · ${here.name}` : ""}</Heading>
      {error && <Notice kind="error">{error}</Notice>}
      {!members.data ? <Loading error={members.error} /> : (
        <div class="wide">
        <table class="list">
          <caption class="sr-only">{t("members")}</caption>
          <thead><tr><th scope="col">{t("name")}</th><th scope="col">{t("email")}</th><th scope="col">{t("role")}</th><th scope="col"><span class="sr-only">{t("actions")}</span></th></tr></thead>
          <tbody>
            {members.data.data.map((member) => (
              <tr key={member.account_id} data-email={member.email}>
                <td>{member.display_name}</td>
                <td dir="ltr">{member.email}</td>
                <td>
                  {owner ? (
                    <select aria-label={t("role_of", { name: member.display_name })} value={member.role}
                      onChange={(event) => act(() => api("PATCH", `${base}/members/${encodeURIComponent(member.account_id)}`, { body: { role: event.currentTarget.value } }))}>
                      {roleOptions().map(([value, label]) => <option key={value} value={value}>{label}</option>)}
                    </select>
                  ) : t(`role_${member.role}`)}
                </td>
                <td>
                  {member.account_id === me.data?.id ? (
                    <Confirm label={t("leave")} question={t("leave_question")} confirm={t("leave")} onConfirm={() => act(async () => {
                      await api("DELETE", `${base}/members/${encodeURIComponent(member.account_id)}`);
                      await loadWorkspaces();
                      const next = workspaces()[0];
                      if (next) await switchWorkspace(next.id);
                      navigate("/", true);
                    })} />
                  ) : owner && (
                    <Confirm label={t("remove")} question={t("remove_question", { name: member.display_name })} confirm={t("remove")}
                      onConfirm={() => act(() => api("DELETE", `${base}/members/${encodeURIComponent(member.account_id)}`))} />
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        </div>
      )}
      {owner && (
        <section class="panel">
          <InviteForm workspaceId={id} onInvited={() => invites.reload()} />
        </section>
      )}
      {owner && (
        <section class="panel">
          <h2>{t("invites_open")}</h2>
          {!invites.data ? <Loading error={invites.error} /> : invites.data.data.length === 0 ? <p class="muted">{t("invites_none")}</p> : (
            <ul class="cards">
              {invites.data.data.map((invite) => (
                <li key={invite.id}>
                  <span dir="ltr">{invite.email}</span> <span class="muted">{t(`role_${invite.role}`)} · {t("invite_expires", { when: formatDate(invite.expires_at) })}</span>
                  <button type="button" class="small" onClick={() => act(() => api("DELETE", `${base}/invites/${encodeURIComponent(invite.id)}`))}>{t("invite_revoke")}</button>
                </li>
              ))}
            </ul>
          )}
        </section>
      )}
      {here && <WorkspaceForms key={id} workspaceId={id} name={here.name} />}
    </section>
  );
}

/** `/console/invite?token=…`: join as the logged-in account, log in and join, or make one. */
export function AcceptInvite() {
  const [token] = useState(() => {
    const found = current().query.get("token") || "";
    if (found) history.replaceState(null, "", location.pathname);
    return found;
  });
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [name, setName] = useState("");
  const [newPassword, setNewPassword] = useState("");
  const joined = async (workspaceId: string) => {
    await loadWorkspaces();
    await switchWorkspace(workspaceId);
    navigate("/", true);
  };
  const asMe = useSubmit(async () => {
    if (!signedIn()) await login(email, password);
    const result = await api<{ workspace_id: string }>("POST", "/api/v1/invites/accept", { body: { token } });
    await joined(result.data.workspace_id);
  });
  const fresh = useSubmit(async () => {
    const body = { token, password: newPassword, name: name || null };
    let result: Result<Tokens & { workspace_id: string }>;
    try {
      // As at login: the refresh token in the HttpOnly cookie, so that a reload stays signed in.
      result = await api("POST", "/api/v1/invites/accept", { body: { ...body, session: "cookie" }, auth: false });
    } catch (error) {
      // A server without the cookie flow refuses the field: the refresh token comes in the body.
      if (!(error instanceof ApiError && error.status === 422 && "session" in error.fields)) throw error;
      result = await api("POST", "/api/v1/invites/accept", { body, auth: false });
    }
    await adopt(result.data);
    navigate("/", true);
  });
  return (
    <section class="narrow">
      <Heading>{t("invite_accept_title")}</Heading>
      {!token ? <Notice kind="error">{t("error_invalid_invite")}</Notice> : (
        <>
          <form onSubmit={asMe.submit} noValidate aria-labelledby="join-existing">
            <h2 id="join-existing">{signedIn() ? t("invite_join") : t("invite_have_account")}</h2>
            {asMe.error && <Notice kind="error">{asMe.error}</Notice>}
            {!signedIn() && (
              <>
                <Field label={t("email")} name="email" type="email" autocomplete="email" required value={email} onInput={setEmail} error={asMe.fields.email} />
                <Field label={t("password")} name="password" type="password" autocomplete="current-password" required value={password} onInput={setPassword} />
              </>
            )}
            <button type="submit" class="primary" disabled={asMe.busy}>{t("invite_join")}</button>
          </form>
          {!signedIn() && (
            <form onSubmit={fresh.submit} noValidate aria-labelledby="join-new">
              <h2 id="join-new">{t("invite_new_account")}</h2>
              {fresh.error && <Notice kind="error">{fresh.error}</Notice>}
              <Field label={t("name_optional")} name="name" autocomplete="name" value={name} onInput={setName} error={fresh.fields.name} />
              <Field label={t("new_password")} name="new_password" type="password" autocomplete="new-password" required value={newPassword} onInput={setNewPassword} error={fresh.fields.password} hint={t("password_hint")} />
              <button type="submit" disabled={fresh.busy}>{t("invite_create_join")}</button>
            </form>
          )}
        </>
      )}
    </section>
  );
}
