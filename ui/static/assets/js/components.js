// Small pieces every page uses: health badges, tags, errors, empty states, incremental lists.
import { html, useEffect, useRef, useState } from "./lib.js";

const LABEL = { passing: "Passing", warning: "Warning", critical: "Critical", maintenance: "Maintenance" };
const ICON = { passing: "✓", warning: "!", critical: "✕", maintenance: "⏸" };

export function worstStatus(checks) {
  const order = { passing: 0, warning: 1, maintenance: 2, critical: 3 };
  let worst = "passing";
  for (const c of checks || []) if ((order[c.Status] ?? 3) > order[worst]) worst = c.Status in order ? c.Status : "critical";
  return worst;
}

export function summaryStatus(s) {
  return s.ChecksCritical > 0 ? "critical" : s.ChecksWarning > 0 ? "warning" : "passing";
}

export function Health({ status, label, count }) {
  const text = label ?? LABEL[status] ?? status;
  return html`<span class="badge ${status}" title=${text}>
    <span aria-hidden="true">${ICON[status] || "?"}</span> ${count !== undefined ? html`<b>${count}</b> ` : ""}${text}</span>`;
}

export function CheckCounts({ s }) {
  return html`<span class="counts">
    ${s.ChecksPassing ? html`<${Health} status="passing" count=${s.ChecksPassing} label="passing" />` : ""}
    ${s.ChecksWarning ? html`<${Health} status="warning" count=${s.ChecksWarning} label="warning" />` : ""}
    ${s.ChecksCritical ? html`<${Health} status="critical" count=${s.ChecksCritical} label="critical" />` : ""}
    ${!s.ChecksPassing && !s.ChecksWarning && !s.ChecksCritical ? html`<span class="muted">no checks</span>` : ""}
  </span>`;
}

export function Tags({ tags, max = 6 }) {
  if (!tags || !tags.length) return html`<span class="muted">—</span>`;
  const shown = tags.slice(0, max);
  return html`<span class="tags">${shown.map((t) => html`<span class="tag">${t}</span>`)}${
    tags.length > max ? html`<span class="tag more" title=${tags.slice(max).join(", ")}>+${tags.length - max}</span>` : ""}</span>`;
}

export function Kind({ kind }) {
  const k = kind || "service";
  return html`<span class="kind kind-${k}">${k}</span>`;
}

export function ErrorBox({ error, title = "The agent answered with an error" }) {
  if (!error) return null;
  return html`<div class="alert error" role="alert"><strong>${title}${error.status ? ` (HTTP ${error.status})` : ""}:</strong>
    <span class="msg">${error.message || String(error)}</span></div>`;
}

export function Loading({ what = "Loading" }) {
  return html`<p class="loading" role="status"><span class="spinner" aria-hidden="true"></span>${what}…</p>`;
}

export function Empty({ children }) {
  return html`<div class="empty">${children}</div>`;
}

export function MetaTable({ meta, label = "Meta" }) {
  const entries = Object.entries(meta || {});
  if (!entries.length) return html`<span class="muted">none</span>`;
  return html`<dl class="meta" aria-label=${label}>${entries.map(([k, v]) => html`<div><dt>${k}</dt><dd>${String(v)}</dd></div>`)}</dl>`;
}

export function CheckList({ checks }) {
  if (!checks || !checks.length) return html`<p class="muted">No health checks.</p>`;
  return html`<ul class="checks">${checks.map((c) => html`<li class="check ${c.Status}">
    <div class="check-head"><${Health} status=${c.Status} />
      <span class="check-name">${c.Name || c.CheckID}</span>
      <span class="muted small">${c.Type || (c.CheckID === "serfHealth" ? "serf" : "")}${c.ServiceID ? "" : " · node check"}</span></div>
    ${c.Notes ? html`<p class="small">${c.Notes}</p>` : ""}
    ${c.Output ? html`<details open=${c.Status !== "passing"}><summary>Output</summary><pre class="output">${c.Output}</pre></details>` : ""}
  </li>`)}</ul>`;
}

/** Renders `items` a page at a time: more appear as the end scrolls into view (or on the button). */
export function Incremental({ items, render, page = 150, colSpan = 0 }) {
  const [n, setN] = useState(page);
  const sentinel = useRef(null);
  useEffect(() => setN(page), [items.length === 0]);
  useEffect(() => {
    if (!sentinel.current || n >= items.length || !("IntersectionObserver" in window)) return undefined;
    const io = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) setN((x) => x + page);
    }, { rootMargin: "400px" });
    io.observe(sentinel.current);
    return () => io.disconnect();
  }, [n, items.length]);
  const rows = items.slice(0, n).map(render);
  if (n >= items.length) return rows;
  const more = html`<button type="button" class="secondary" onClick=${() => setN(n + page * 4)}>Show more (${items.length - n} left)</button>`;
  return html`${rows}${colSpan
    ? html`<tr ref=${sentinel} class="more-row"><td colspan=${colSpan}>${more}</td></tr>`
    : html`<div ref=${sentinel} class="more-row">${more}</div>`}`;
}

export function PageHeader({ title, children, sub }) {
  const h1 = useRef(null);
  useEffect(() => { h1.current?.focus({ preventScroll: true }); }, [title]);
  return html`<header class="page-head"><div><h1 tabindex="-1" ref=${h1}>${title}</h1>${sub ? html`<p class="sub">${sub}</p>` : ""}</div>
    <div class="actions">${children}</div></header>`;
}

export function Search({ value, onInput, label, placeholder }) {
  return html`<label class="search"><span class="sr-only">${label}</span>
    <input type="search" value=${value} placeholder=${placeholder || label} aria-label=${label}
      onInput=${(e) => onInput(e.currentTarget.value)} /></label>`;
}

export function Select({ label, value, onChange, options }) {
  return html`<label class="select"><span>${label}</span>
    <select value=${value} onChange=${(e) => onChange(e.currentTarget.value)}>
      ${options.map(([v, text]) => html`<option value=${v} selected=${v === value}>${text}</option>`)}
    </select></label>`;
}

/** Small line icons (inline SVG: no icon font, no emoji font needed). */
export function Icon({ name }) {
  const paths = {
    folder: "M2 4.5A1.5 1.5 0 0 1 3.5 3h3l1.5 2h4.5A1.5 1.5 0 0 1 14 6.5v5a1.5 1.5 0 0 1-1.5 1.5h-9A1.5 1.5 0 0 1 2 11.5z",
    key: "M10 2.5a3.5 3.5 0 1 1-3.2 4.9L2.5 11.7V14h2.3v-1.3h1.3v-1.3h1.3l1.4-1.4A3.5 3.5 0 0 1 10 2.5zm1 2.2a.9.9 0 1 0 0 1.8.9.9 0 0 0 0-1.8z",
  };
  return html`<svg class="icon" width="16" height="16" viewBox="0 0 16 16" aria-hidden="true" focusable="false">
    <path d=${paths[name]} fill="none" stroke="currentColor" stroke-width="1.3" stroke-linejoin="round" /></svg>`;
}
