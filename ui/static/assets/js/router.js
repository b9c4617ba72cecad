// Client-side routes under the UI's content path, Consul's shape: /ui/<dc>/services/<name>, /ui/<dc>/kv/<key>.
import { html, useEffect, useState } from "./lib.js";

export const BASE = document.body.dataset.base || "/ui/";
const listeners = new Set();

function decode(segment) {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;  // a malformed escape: take it literally
  }
}

export function currentRoute() {
  const rel = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : "";
  const parts = rel.split("/").map(decode);  // per segment, so a key may contain ?, # or %
  return { dc: parts[0] || "", section: parts[1] || "", rest: parts.slice(2).join("/"), query: new URLSearchParams(location.search) };
}

export function href(dc, section, rest = "", query = "") {
  const tail = rest ? `/${rest.split("/").map(encodeURIComponent).join("/")}` : "";
  return `${BASE}${encodeURIComponent(dc)}/${section}${tail}${query ? `?${query}` : ""}`;
}

export function navigate(to, { replace = false } = {}) {
  if (to === location.pathname + location.search) return;
  history[replace ? "replaceState" : "pushState"](null, "", to);
  listeners.forEach((fn) => fn());
}

/** Keep the current page's query string (filters, sort) in the URL without a new history entry. */
export function setQuery(params) {
  const q = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(params)) {
    if (v) q.set(k, v);
    else q.delete(k);
  }
  const qs = q.toString();
  history.replaceState(null, "", location.pathname + (qs ? `?${qs}` : ""));
}

export function useRoute() {
  const [route, setRoute] = useState(currentRoute);
  useEffect(() => {
    const update = () => setRoute(currentRoute());
    listeners.add(update);
    window.addEventListener("popstate", update);
    return () => { listeners.delete(update); window.removeEventListener("popstate", update); };
  }, []);
  return route;
}

/** An <a> that navigates inside the app (a modified click still opens a new tab as usual). */
export function Link({ to, children, ...rest }) {
  const onClick = (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    e.preventDefault();
    navigate(to);
  };
  return html`<a href=${to} onClick=${onClick} ...${rest}>${children}</a>`;
}
