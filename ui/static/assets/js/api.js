// The agent's HTTP API as the UI uses it: one request function (token, datacenter, errors as the API's
// own message) and `watch`, a blocking-query loop (`?index=N&wait=`) — the UI never polls on a timer.
import { useEffect, useRef, useState } from "./lib.js";

const TOKEN_KEY = "proconsul:token";
const WAIT = "5m";

export class ApiError extends Error {
  constructor(status, message, index = 0) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.index = index;
  }
}

export const session = {
  dc: "",  // the datacenter the current page is about; "" = the agent's own
  localDc: "",  // the agent's own: where a bare /ui/ goes
  token: safeStorage(() => localStorage.getItem(TOKEN_KEY)) || "",
  setToken(value) {
    this.token = value.trim();
    safeStorage(() => (this.token ? localStorage.setItem(TOKEN_KEY, this.token) : localStorage.removeItem(TOKEN_KEY)));
  },
};

function safeStorage(fn) {
  try {
    return fn();
  } catch {
    return null;  // storage disabled: the token lives for this page only
  }
}

export function url(path, query = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v === undefined || v === null || v === false) continue;
    if (Array.isArray(v)) v.forEach((x) => params.append(k, x));
    else params.append(k, v === true ? "" : String(v));
  }
  if (session.dc && !params.has("dc")) params.set("dc", session.dc);  // every page is about one datacenter
  const qs = params.toString().replace(/=(&|$)/g, "$1");  // Consul's bare flags: ?keys&recurse
  return qs ? `${path}?${qs}` : path;
}

/** One API call. Resolves to {data, index, status}; rejects with ApiError carrying the agent's message. */
export async function request(method, path, { query = {}, body, raw = false, signal } = {}) {
  const headers = {};
  if (session.token) headers["X-Consul-Token"] = session.token;
  let payload = body;
  if (body !== undefined && !raw && typeof body !== "string") {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const res = await fetch(url(path, query), { method, headers, body: payload, signal, cache: "no-store" });
  const text = await res.text();
  const index = Number(res.headers.get("X-Consul-Index") || 0);
  if (!res.ok) throw new ApiError(res.status, text.trim() || res.statusText, index);
  let data = text;
  if ((res.headers.get("Content-Type") || "").includes("json")) data = text ? JSON.parse(text) : null;
  return { data, index, status: res.status };
}

export const get = (path, query, opts = {}) => request("GET", path, { ...opts, query });

// Watches go through one SharedWorker for all tabs (workers/watch.js): browsers give a host six
// HTTP/1.1 connections, and every open blocking query holds one. Without SharedWorker, each tab runs
// its own loops (watchHere).
let shared;  // undefined: not tried yet; null: unavailable
let seq = 0;
const handlers = new Map();

function sharedWatcher() {
  if (shared !== undefined) return shared;
  shared = null;
  if (!("SharedWorker" in window) || !import.meta.resolve) return null;
  try {
    const worker = new SharedWorker(import.meta.resolve("./workers/watch.js"), { name: "proconsul-watch" });
    worker.port.onmessage = ({ data: msg }) => {
      const h = handlers.get(msg.id);
      if (!h) return;
      if (msg.op === "data") h.onData(msg.json && msg.text ? JSON.parse(msg.text) : msg.text, msg.index);
      else if (msg.op === "error") h.onError?.(new ApiError(msg.status, msg.message, msg.index));
      else if (msg.op === "stats") { handlers.delete(msg.id); h.onData(msg); }
    };
    worker.port.start();
    window.addEventListener("pagehide", () => worker.port.postMessage({ op: "bye" }));
    shared = worker.port;
  } catch {
    shared = null;
  }
  return shared;
}

/** How many watches the shared worker holds open and how many requests it made (for the status line). */
export function watchStats() {
  const port = sharedWatcher();
  if (!port) return Promise.resolve(null);
  return new Promise((resolve) => {
    const id = ++seq;
    handlers.set(id, { onData: resolve });
    port.postMessage({ op: "stats", id });
  });
}

/** Follow `path` with blocking queries (shared between tabs when the browser can); returns stop(). */
export function watch(path, query, onData, onError) {
  const port = sharedWatcher();
  if (!port) return watchHere(path, query, onData, onError);
  const id = ++seq;
  handlers.set(id, { onData, onError });
  port.postMessage({ op: "watch", id, url: url(path, query), token: session.token });
  return () => { handlers.delete(id); port.postMessage({ op: "stop", id }); };
}

/**
 * Follow `path` with blocking queries in this tab: calls onData(data, index) now and after every change, until the
 * returned stop() is called. A failed call is retried after a growing pause (1 s … 10 s); a 404 with an
 * index is passed to onError and followed too (the thing may appear later).
 */
function watchHere(path, query, onData, onError) {
  const ctrl = new AbortController();
  let index = 0;
  let failures = 0;
  (async () => {
    while (!ctrl.signal.aborted) {
      try {
        const q = index ? { ...query, index, wait: WAIT } : query;
        const res = await request("GET", path, { query: q, signal: ctrl.signal });
        failures = 0;
        if (res.index !== index || !index) {
          // Consul's rule: an index that goes backwards (a restore) restarts the watch from 0.
          index = res.index < index ? 0 : res.index;
          onData(res.data, res.index);
        }
        if (!res.index) await pause(ctrl.signal, 1000);  // an answer without an index cannot block
      } catch (err) {
        if (ctrl.signal.aborted) return;
        if (err.status === 404 && err.index) {  // "not there (yet)" is an answer too: keep blocking on it
          if (err.index !== index || !index) onError?.(err);
          index = err.index;
          continue;
        }
        onError?.(err);
        failures += 1;
        await pause(ctrl.signal, Math.min(10000, 1000 * failures));
      }
    }
  })();
  return () => ctrl.abort();
}

function pause(signal, ms) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

/** A hook over `watch`: {data, error, index, loading}; follows `path` while the component is shown. */
export function useWatch(path, query = {}, deps = []) {
  const [state, setState] = useState({ data: undefined, error: null, index: 0, loading: true });
  const key = path ? url(path, query) : "";
  const last = useRef(key);
  useEffect(() => {
    if (!path) return undefined;
    // Another path starts empty; the same path restarted (a dependency changed) keeps showing its data.
    if (last.current !== key) setState({ data: undefined, error: null, index: 0, loading: true });
    last.current = key;
    let first = true;
    return watch(path, query,
      (data, index) => {
        if (first) performance.mark(`watch:${path}`);  // for bench/ui_bench.py and the devtools timeline
        first = false;
        setState({ data, error: null, index, loading: false });
      },
      (error) => setState((s) => ({ ...s, error, loading: false })));
  }, [key, session.dc, session.token, ...deps]);
  return state;
}

export function decodeValue(b64) {
  if (b64 === null || b64 === undefined) return { text: "", binary: false };
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  try {
    return { text: new TextDecoder("utf-8", { fatal: true }).decode(bytes), binary: false };
  } catch {
    return { text: "", binary: true, size: bytes.length };
  }
}
