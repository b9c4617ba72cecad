// One blocking-query loop per distinct URL for every tab of the UI (a SharedWorker).
//
// Browsers allow six HTTP/1.1 connections per host, and each open blocking query holds one: seven
// tabs each following the services list would stall the seventh. Here all tabs share their watches:
// twenty tabs on the services page are one `?index=` request waiting at the agent. A tab sends
// {op: "watch", id, url, token} / {op: "stop", id} / {op: "bye"}; it receives {id, op: "data" | "error", …}.
// (Plain script, no imports: import maps do not reach workers.)
const WAIT = "5m";
const watches = new Map();  // token + " " + url -> {subs: Map<port, Set<id>>, last, ctrl}
let requests = 0;

function send(w, msg) {
  w.last = msg;
  for (const [port, ids] of w.subs) for (const id of ids) port.postMessage({ ...msg, id });
}

function pause(signal, ms) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

async function run(w, url, token) {
  let index = 0;
  let failures = 0;
  const signal = w.ctrl.signal;
  while (!signal.aborted) {
    try {
      const sep = url.includes("?") ? "&" : "?";
      const target = index ? `${url}${sep}index=${index}&wait=${WAIT}` : url;
      requests += 1;
      const res = await fetch(target, { headers: token ? { "X-Consul-Token": token } : {}, signal, cache: "no-store" });
      const text = await res.text();
      const got = Number(res.headers.get("X-Consul-Index") || 0);
      if (!res.ok) {
        if (res.status === 404 && got) {  // "not there (yet)" is an answer too: keep blocking on it
          if (got !== index || !index) send(w, { op: "error", status: 404, message: text.trim(), index: got });
          index = got;
          continue;
        }
        throw Object.assign(new Error(text.trim() || res.statusText), { status: res.status });
      }
      failures = 0;
      if (got !== index || !index) {
        // The text goes to the tabs as it is: copying a string is cheaper than cloning a parsed object.
        const json = (res.headers.get("Content-Type") || "").includes("json");
        send(w, { op: "data", text, json, index: got });
        index = got < index ? 0 : got;  // an index that goes backwards (a restore) restarts from 0
      }
      if (!got) await pause(signal, 1000);  // an answer without an index cannot block
    } catch (err) {
      if (signal.aborted) return;
      send(w, { op: "error", status: err.status || 0, message: err.message, index: 0 });
      failures += 1;
      await pause(signal, Math.min(10000, 1000 * failures));
    }
  }
}

function subscribe(port, id, url, token) {
  const key = `${token} ${url}`;
  let w = watches.get(key);
  if (!w) {
    w = { subs: new Map(), last: null, ctrl: new AbortController() };
    watches.set(key, w);
    run(w, url, token);
  }
  if (!w.subs.has(port)) w.subs.set(port, new Set());
  w.subs.get(port).add(id);
  if (w.last) port.postMessage({ ...w.last, id });
}

function unsubscribe(port, id) {  // id undefined: every watch of this port (its tab went away)
  for (const [key, w] of watches) {
    const ids = w.subs.get(port);
    if (!ids) continue;
    if (id === undefined) ids.clear();
    else ids.delete(id);
    if (!ids.size) w.subs.delete(port);
    if (!w.subs.size) { w.ctrl.abort(); watches.delete(key); }
  }
}

self.onconnect = (event) => {
  const port = event.ports[0];
  port.onmessage = ({ data: msg }) => {
    if (msg.op === "watch") subscribe(port, msg.id, msg.url, msg.token || "");
    else if (msg.op === "stop") unsubscribe(port, msg.id);
    else if (msg.op === "bye") unsubscribe(port, undefined);
    else if (msg.op === "stats") {
      const bytes = performance.getEntriesByType("resource").reduce((n, e) => n + (e.transferSize || 0), 0);
      port.postMessage({ op: "stats", id: msg.id, watches: watches.size, requests, bytes });
    }
  };
  port.start();
};
