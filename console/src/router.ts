// Client-side routes under /console/: the server answers every /console/<path> with the same page,
// and this module maps the path to a page and keeps it in step with the address bar.
import { useEffect, useState } from "preact/hooks";

export const BASE = "/console";

export interface Location {
  path: string; // without BASE: "/", "/widgets/abc"
  query: URLSearchParams;
}

const listeners = new Set<() => void>();

export function current(): Location {
  const path = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) || "/" : "/";
  return { path, query: new URLSearchParams(location.search) };
}

export function navigate(path: string, replace = false): void {
  const url = BASE + path;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  listeners.forEach((listener) => listener());
  window.scrollTo(0, 0);
}

addEventListener("popstate", () => listeners.forEach((listener) => listener()));

// A click on an in-app link moves without reloading (and so keeps the access token).
document.addEventListener("click", (event) => {
  const target = (event.target as Element | null)?.closest?.("a");
  if (!target || event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const href = target.getAttribute("href");
  if (!href || !href.startsWith(BASE + "/") || target.target || target.hasAttribute("download")) return;
  event.preventDefault();
  navigate(href.slice(BASE.length));
});

export function useLocation(): Location {
  const [, setTick] = useState(0);
  useEffect(() => {
    const listener = () => setTick((tick) => tick + 1);
    listeners.add(listener);
    return () => void listeners.delete(listener);
  }, []);
  return current();
}

/** `pattern` like "/widgets/:id" against `path`: the parameters, or null. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const want = pattern.split("/");
  const have = path.replace(/\/+$/, "").split("/");
  if (path === "/") have.splice(1, 1, "");
  if (want.length !== have.length) return null;
  const params: Record<string, string> = {};
  for (let index = 0; index < want.length; index++) {
    if (want[index].startsWith(":")) params[want[index].slice(1)] = decodeURIComponent(have[index]);
    else if (want[index] !== have[index]) return null;
  }
  return params;
}

export const href = (path: string): string => BASE + path;
