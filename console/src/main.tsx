// The owner console: the shell (navigation, language, theme) and the routes. Served by LOACL at
// /console/ (every /console/<path> answers with index.html; the routes are resolved here).
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";
import { WaitingAlerts } from "./alerts";
import { logout, may, onAuthChange, restore, signedIn, switchWorkspace, workspace, workspaces } from "./api";
import { applyLocale, currentLocale, LOCALES, type Locale, setLocale, t } from "./i18n";
import { Account } from "./pages/account";
import { AssistantForm, Assistants } from "./pages/assistants";
import { Forgot, Login, Reset, SignUp, Verify } from "./pages/auth";
import { ConversationView, Inbox } from "./pages/conversations";
import { AcceptInvite, Members } from "./pages/members";
import { Usage } from "./pages/usage";
import { WidgetPage, Widgets } from "./pages/widgets";
import { href, match, navigate, useLocation } from "./router";
import "./styles.css";

type Page = (params: Record<string, string>) => preact.JSX.Element;

const PUBLIC: [string, Page][] = [
  ["/signup", () => <SignUp />],
  ["/verify", () => <Verify />],
  ["/login", () => <Login />],
  ["/forgot", () => <Forgot />],
  ["/reset", () => <Reset />],
  ["/invite", () => <AcceptInvite />],
];

const PRIVATE: [string, Page][] = [
  ["/", () => (may("admin") ? <Widgets /> : <Inbox />)],
  ["/assistants", () => <Assistants />],
  ["/assistants/new", () => <AssistantForm />],
  ["/assistants/:id", (params) => <AssistantForm id={params.id} />],
  ["/widgets", () => <Widgets />],
  ["/widgets/new", () => <WidgetPage />],
  ["/widgets/:id", (params) => <WidgetPage id={params.id} />],
  ["/inbox", () => <Inbox />],
  ["/conversations/:id", (params) => <ConversationView id={params.id} />],
  ["/usage", () => <Usage />],
  ["/account", () => <Account />],
  ["/members", () => <Members />],
];
// What an agent may open (the others need an admin or owner).
const AGENT_PAGES = ["/", "/inbox", "/conversations/:id", "/members", "/account"];

const THEME_KEY = "loacl-console:theme";
type Theme = "auto" | "light" | "dark";

function storedTheme(): Theme {
  try {
    const value = localStorage.getItem(THEME_KEY);
    return value === "light" || value === "dark" ? value : "auto";
  } catch {
    return "auto";
  }
}

function applyTheme(theme: Theme): void {
  document.documentElement.dataset.theme = theme;
  try {
    localStorage.setItem(THEME_KEY, theme);
  } catch {
    // kept for this page only
  }
}

function find(routes: [string, Page][], path: string): preact.JSX.Element | null {
  for (const [pattern, page] of routes) {
    const params = match(pattern, path);
    if (params) return page(params);
  }
  return null;
}

const NAV: [string, "widgets" | "assistants" | "inbox" | "usage" | "members" | "account"][] = [
  ["/widgets", "widgets"], ["/assistants", "assistants"], ["/inbox", "inbox"], ["/usage", "usage"],
  ["/members", "members"], ["/account", "account"],
];

function allowed(path: string): boolean {
  return may("admin") || AGENT_PAGES.some((pattern) => match(pattern, path) !== null);
}

/** Which workspace the console acts in, when the account has more than one. */
function Switcher() {
  const list = workspaces();
  const here = workspace();
  if (list.length < 2 || !here) return null;
  return (
    <label class="switcher">
      <span class="sr-only">{t("workspace")}</span>
      <select aria-label={t("workspace")} value={here.id} onChange={async (event) => {
        await switchWorkspace(event.currentTarget.value);
        navigate("/", true);
      }}>
        {list.map((item) => <option key={item.id} value={item.id}>{item.name} · {t(`role_${item.role}`)}</option>)}
      </select>
    </label>
  );
}

function Settings() {
  const [theme, setTheme] = useState<Theme>(storedTheme);
  const [, setLanguage] = useState<Locale>(currentLocale());
  return (
    <div class="prefs">
      <label>
        <span class="sr-only">{t("language")}</span>
        <select value={currentLocale()} aria-label={t("language")} onChange={(event) => {
          setLocale(event.currentTarget.value as Locale);
          setLanguage(event.currentTarget.value as Locale);
        }}>
          {LOCALES.map((code) => <option key={code} value={code}>{t(`language_${code}`)}</option>)}
        </select>
      </label>
      <label>
        <span class="sr-only">{t("theme")}</span>
        <select value={theme} aria-label={t("theme")} onChange={(event) => {
          const next = event.currentTarget.value as Theme;
          setTheme(next);
          applyTheme(next);
        }}>
          <option value="auto">{t("theme_auto")}</option>
          <option value="light">{t("theme_light")}</option>
          <option value="dark">{t("theme_dark")}</option>
        </select>
      </label>
    </div>
  );
}

function App() {
  const where = useLocation();
  const [, setAuthTick] = useState(0);
  const [, setLocaleTick] = useState(0);
  useEffect(() => onAuthChange(() => setAuthTick((tick) => tick + 1)), []);
  const inside = signedIn();
  let page = find(PUBLIC, where.path);
  if (!page) {
    if (!inside) {
      page = <Login />;
      if (where.path !== "/login") queueMicrotask(() => navigate("/login", true));
    } else {
      page = (allowed(where.path) && find(PRIVATE, where.path)) || <section><h1>{t("not_found")}</h1><p><a href={href("/")}>{t("back")}</a></p></section>;
    }
  }
  return (
    <div onChange={() => setLocaleTick((tick) => tick + 1)}>
      <a class="skip" href="#main">{t("skip")}</a>
      <header class="top">
        <a class="brand" href={href("/")}>LOACL</a>
        {inside && (
          <nav aria-label={t("navigation")}>
            <ul>
              {NAV.filter(([path]) => allowed(path)).map(([path, key]) => (
                <li key={path}>
                  <a href={href(path)} aria-current={where.path.startsWith(path) || (path === "/widgets" && where.path === "/") ? "page" : undefined}>{t(key)}</a>
                </li>
              ))}
              <li>
                <button type="button" class="link" onClick={async () => {
                  await logout().catch(() => undefined);
                  navigate("/login", true);
                }}>{t("logout")}</button>
              </li>
            </ul>
          </nav>
        )}
        {inside && <Switcher />}
        <Settings />
      </header>
      {inside && <WaitingAlerts key={workspace()?.id || ""} />}
      <main id="main" key={`${workspace()?.id || ""}:${where.path}`}>{page}</main>
    </div>
  );
}

applyLocale();
applyTheme(storedTheme());
const root = document.getElementById("app")!;
restore().finally(() => render(<App />, root));
