// Choosing the console's language and filling its strings (strings.ts holds them all). The
// languages are the widget's: English, French and Arabic (right to left).
import { STRINGS, type Key } from "./strings";

export type Locale = keyof typeof STRINGS;
export const LOCALES = Object.keys(STRINGS) as Locale[];
const RTL = new Set<string>(["ar"]);
const KEY = "loacl-console:locale";

function stored(): string | null {
  try {
    return localStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function pick(wanted: readonly string[]): Locale {
  for (const tag of wanted) {
    const lang = tag.toLowerCase().split("-")[0];
    if (lang in STRINGS) return lang as Locale;
  }
  return "en";
}

let locale: Locale = pick([stored() || "", ...(navigator.languages || [navigator.language])]);

export const currentLocale = (): Locale => locale;

export function setLocale(next: Locale): void {
  locale = next;
  try {
    localStorage.setItem(KEY, next);
  } catch {
    // kept for this page only
  }
  applyLocale();
}

export function applyLocale(): void {
  document.documentElement.lang = locale;
  document.documentElement.dir = RTL.has(locale) ? "rtl" : "ltr";
  document.title = t("app_title");
}

/** The string `key` in the current language (English when missing), `{name}`s filled. */
export function t(key: Key, vars: Record<string, string | number> = {}): string {
  const table = STRINGS[locale] as Partial<Record<Key, string>>;
  const text = table[key] ?? STRINGS.en[key];
  return text.replace(/\{(\w+)\}/g, (whole, name: string) => (name in vars ? String(vars[name]) : whole));
}

/** The sentence for an API error code, or the server's own words. */
export function explain(code: string, detail = ""): string {
  const key = `error_${code}` as Key;
  if (key in STRINGS.en) return t(key);
  return detail || t("error_unknown");
}

export const formatNumber = (value: number, digits = 0): string =>
  new Intl.NumberFormat(locale, { maximumFractionDigits: digits, minimumFractionDigits: digits }).format(value);

export const formatDate = (iso: string): string => {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" }).format(date);
};
