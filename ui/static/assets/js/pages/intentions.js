// Intentions: the editor. The list is in the order evaluation uses (the agent's precedence order); the
// "check" box asks the agent which intention decides a pair; saving shows the API's own error message.
import { get, request, useWatch } from "../api.js";
import { Empty, ErrorBox, Incremental, Loading, PageHeader, Search } from "../components.js";
import { html, useEffect, useMemo, useRef, useState } from "../lib.js";
import { href, navigate, setQuery } from "../router.js";

const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];
const HEADER_MATCHES = ["Present", "Exact", "Prefix", "Suffix", "Regex"];
const L7_PROTOCOLS = new Set(["http", "http2", "grpc"]);
const PATHS = [["", "any path"], ["PathExact", "exactly"], ["PathPrefix", "starting with"], ["PathRegex", "matching regex"]];

function ActionBadge({ ixn }) {
  if (ixn.Permissions?.length) {
    return html`<span class="decision l7" title="Application-aware: decided per HTTP request">L7 · ${ixn.Permissions.length} permission${ixn.Permissions.length === 1 ? "" : "s"}</span>`;
  }
  return html`<span class="decision ${ixn.Action === "allow" ? "allow" : "deny"}">${ixn.Action === "allow" ? "✓ allow" : "✕ deny"}</span>`;
}

function NameField({ id, label, value, onInput, known, listId }) {
  const unknown = value && value !== "*" && known && !known.has(value);
  return html`<div class="field">
    <label for=${id}>${label}</label>
    <input id=${id} list=${listId} required autocomplete="off" value=${value} placeholder="service name, or * for all"
      aria-describedby=${`${id}-hint`} onInput=${(e) => onInput(e.currentTarget.value.trim())} />
    <p id=${`${id}-hint`} class=${unknown ? "hint warn" : "hint"}>${unknown
      ? html`<span aria-hidden="true">⚠ </span><b>${value}</b> is not in the catalog (yet). That is allowed: the intention applies once it registers.`
      : value === "*" ? "* matches every service." : "Pick from the catalog or type a name."}</p>
  </div>`;
}

/** The protocol proxies use for `service` (service-defaults, else proxy-defaults, else tcp). */
function useProtocol(service) {
  const [proto, setProto] = useState({ name: "", protocol: "tcp", loading: false });
  useEffect(() => {
    if (!service) { setProto({ name: "", protocol: "tcp", loading: false }); return undefined; }
    let live = true;
    setProto((p) => ({ ...p, loading: true }));
    const t = setTimeout(async () => {  // a debounce while the name is typed
      let protocol = "tcp";
      try {
        if (service !== "*") protocol = (await get(`/v1/config/service-defaults/${encodeURIComponent(service)}`)).data?.Protocol || "";
      } catch { protocol = ""; }
      if (!protocol) {
        try {
          const cfg = (await get("/v1/config/proxy-defaults/global")).data?.Config || {};
          protocol = cfg.protocol || cfg.Protocol || "tcp";
        } catch { protocol = "tcp"; }
      }
      if (live) setProto({ name: service, protocol: protocol.toLowerCase(), loading: false });
    }, 200);
    return () => { live = false; clearTimeout(t); };
  }, [service]);
  return proto;
}

const blankPermission = () => ({ Action: "allow", pathKind: "PathPrefix", path: "/", Methods: [], Header: [] });

function toForm(ixn) {
  if (!ixn) return { SourceName: "", DestinationName: "", mode: "allow", Description: "", Permissions: [blankPermission()] };
  const perms = (ixn.Permissions || []).map((p) => {
    const kind = ["PathExact", "PathPrefix", "PathRegex"].find((k) => p.HTTP?.[k]) || "";
    return { Action: p.Action, pathKind: kind, path: kind ? p.HTTP[kind] : "", Methods: p.HTTP?.Methods || [],
      Header: (p.HTTP?.Header || []).map((h) => ({ Name: h.Name, match: HEADER_MATCHES.find((m) => h[m] !== undefined && h[m] !== "" && h[m] !== false) || "Present",
        value: String(HEADER_MATCHES.map((m) => h[m]).find((v) => v !== undefined && v !== "" && v !== false && v !== true) ?? ""), Invert: !!h.Invert })) };
  });
  return { SourceName: ixn.SourceName, DestinationName: ixn.DestinationName, Description: ixn.Description || "",
    mode: perms.length ? "l7" : ixn.Action, Permissions: perms.length ? perms : [blankPermission()] };
}

function toBody(f) {
  const body = { SourceName: f.SourceName, DestinationName: f.DestinationName, Description: f.Description };
  if (f.mode !== "l7") return { ...body, Action: f.mode };
  body.Permissions = f.Permissions.map((p) => {
    const http = {};
    if (p.pathKind) http[p.pathKind] = p.path;
    if (p.Methods.length) http.Methods = p.Methods;
    if (p.Header.length) http.Header = p.Header.map((h) => ({ Name: h.Name, [h.match]: h.match === "Present" ? true : h.value, ...(h.Invert ? { Invert: true } : {}) }));
    return { Action: p.Action, HTTP: http };
  });
  return body;
}

function PermissionEditor({ perm, index, onChange, onRemove }) {
  const set = (patch) => onChange({ ...perm, ...patch });
  const id = `perm-${index}`;
  return html`<fieldset class="permission" data-permission=${index}>
    <legend>Permission ${index + 1}</legend>
    <div class="perm-grid">
      <label>Action <select value=${perm.Action} onChange=${(e) => set({ Action: e.currentTarget.value })}>
        <option value="allow" selected=${perm.Action === "allow"}>allow</option><option value="deny" selected=${perm.Action === "deny"}>deny</option></select></label>
      <label>Path <select value=${perm.pathKind} onChange=${(e) => set({ pathKind: e.currentTarget.value })}>
        ${PATHS.map(([v, t]) => html`<option value=${v} selected=${perm.pathKind === v}>${t}</option>`)}</select></label>
      ${perm.pathKind ? html`<label class="grow">Path value <input value=${perm.path} placeholder="/api" onInput=${(e) => set({ path: e.currentTarget.value })} /></label>` : ""}
    </div>
    <div class="methods" role="group" aria-label=${`Methods of permission ${index + 1} (none checked: any)`}>
      <span class="muted small">Methods (none: any)</span>
      ${METHODS.map((m) => html`<label class="check"><input type="checkbox" checked=${perm.Methods.includes(m)}
        onChange=${(e) => set({ Methods: e.currentTarget.checked ? [...perm.Methods, m] : perm.Methods.filter((x) => x !== m) })} />${m}</label>`)}
    </div>
    ${perm.Header.map((h, j) => html`<div class="perm-grid header-row" data-header=${j}>
      <label>Header <input value=${h.Name} placeholder="x-user" onInput=${(e) => set({ Header: perm.Header.map((x, k) => k === j ? { ...x, Name: e.currentTarget.value } : x) })} /></label>
      <label>Match <select value=${h.match} onChange=${(e) => set({ Header: perm.Header.map((x, k) => k === j ? { ...x, match: e.currentTarget.value } : x) })}>
        ${HEADER_MATCHES.map((m) => html`<option value=${m} selected=${h.match === m}>${m.toLowerCase()}</option>`)}</select></label>
      ${h.match !== "Present" ? html`<label class="grow">Value <input value=${h.value} onInput=${(e) => set({ Header: perm.Header.map((x, k) => k === j ? { ...x, value: e.currentTarget.value } : x) })} /></label>` : ""}
      <label class="check"><input type="checkbox" checked=${h.Invert} onChange=${(e) => set({ Header: perm.Header.map((x, k) => k === j ? { ...x, Invert: e.currentTarget.checked } : x) })} />invert</label>
      <button type="button" class="ghost small" aria-label=${`Remove header ${j + 1}`} onClick=${() => set({ Header: perm.Header.filter((_, k) => k !== j) })}>✕</button>
    </div>`)}
    <div class="row">
      <button type="button" class="secondary small" onClick=${() => set({ Header: [...perm.Header, { Name: "", match: "Exact", value: "", Invert: false }] })}>Add header match</button>
      <button type="button" class="ghost small danger" id=${id} onClick=${onRemove}>Remove permission</button>
    </div>
  </fieldset>`;
}

function IntentionForm({ editing, known, onDone }) {
  const [f, setF] = useState(() => toForm(editing));
  const [error, setError] = useState(null);
  const [saving, setSaving] = useState(false);
  const proto = useProtocol(f.DestinationName);
  const l7ok = L7_PROTOCOLS.has(proto.protocol);
  const set = (patch) => setF({ ...f, ...patch });
  const panel = useRef(null);
  useEffect(() => { panel.current?.querySelector("input")?.focus(); }, []);

  const submit = async (e) => {
    e.preventDefault();
    setSaving(true);
    setError(null);
    try {
      if (editing) await request("PUT", `/v1/connect/intentions/${encodeURIComponent(editing.ID)}`, { body: toBody(f) });
      else await request("POST", "/v1/connect/intentions", { body: toBody(f) });
      onDone(true);
    } catch (err) {
      setError(err);
      panel.current?.querySelector(".alert")?.focus();
    } finally {
      setSaving(false);
    }
  };
  return html`<section class="card form-panel" ref=${panel} aria-labelledby="ixn-form-title">
    <h2 id="ixn-form-title">${editing ? `Edit ${editing.SourceName} → ${editing.DestinationName}` : "New intention"}</h2>
    <form onSubmit=${submit}>
      <div class="grid2">
        <${NameField} id="ixn-source" label="Source" value=${f.SourceName} onInput=${(v) => set({ SourceName: v })} known=${known} listId="service-names" />
        <${NameField} id="ixn-destination" label="Destination" value=${f.DestinationName} onInput=${(v) => set({ DestinationName: v })} known=${known} listId="service-names" />
      </div>
      <fieldset class="actions-choice"><legend>Action</legend>
        <label class="radio"><input type="radio" name="mode" value="allow" checked=${f.mode === "allow"} onChange=${() => set({ mode: "allow" })} />Allow</label>
        <label class="radio"><input type="radio" name="mode" value="deny" checked=${f.mode === "deny"} onChange=${() => set({ mode: "deny" })} />Deny</label>
        <label class="radio"><input type="radio" name="mode" value="l7" checked=${f.mode === "l7"} disabled=${!l7ok && f.mode !== "l7"}
          onChange=${() => set({ mode: "l7" })} />Application-aware (L7 permissions)</label>
        <p class="hint">${proto.loading ? "Looking up the destination's protocol…" : f.DestinationName
          ? html`Destination protocol: <b>${proto.protocol}</b>. ${l7ok ? "L7 permissions match HTTP paths, methods and headers." : html`L7 permissions need <code>http</code>, <code>http2</code> or <code>grpc</code> (set it in the destination's <code>service-defaults</code>).`}`
          : "Choose a destination to see its protocol."}</p>
      </fieldset>
      ${f.mode === "l7" ? html`<div class="permissions">
        <p class="hint">The first permission that matches a request decides it; a request none matches is denied.</p>
        ${f.Permissions.map((p, i) => html`<${PermissionEditor} perm=${p} index=${i}
          onChange=${(np) => set({ Permissions: f.Permissions.map((x, k) => k === i ? np : x) })}
          onRemove=${() => set({ Permissions: f.Permissions.filter((_, k) => k !== i) })} />`)}
        <button type="button" class="secondary" onClick=${() => set({ Permissions: [...f.Permissions, blankPermission()] })}>Add permission</button>
      </div>` : ""}
      <div class="field"><label for="ixn-description">Description</label>
        <textarea id="ixn-description" rows="2" value=${f.Description} onInput=${(e) => set({ Description: e.currentTarget.value })}></textarea></div>
      ${error ? html`<div class="alert error" role="alert" tabindex="-1"><strong>Not saved — the agent said (HTTP ${error.status}):</strong> <span class="msg">${error.message}</span></div>` : ""}
      <div class="row">
        <button type="submit" disabled=${saving}>${saving ? "Saving…" : "Save"}</button>
        <button type="button" class="secondary" onClick=${() => onDone(false)}>Cancel</button>
      </div>
    </form>
  </section>`;
}

function CheckBox({ known, onDecided }) {
  const [src, setSrc] = useState("");
  const [dst, setDst] = useState("");
  const [path, setPath] = useState("");
  const [method, setMethod] = useState("GET");
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const run = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      const q = { source: src, destination: dst };
      if (path) Object.assign(q, { path, method });
      const res = await get("/v1/internal/ui/intention-check", q);
      setResult(res.data);
      onDecided(res.data.Intention?.ID || "");
    } catch (err) { setResult(null); setError(err); onDecided(""); }
  };
  return html`<section class="card check-box" aria-labelledby="check-title">
    <h2 id="check-title">Check a connection</h2>
    <form class="check-form" onSubmit=${run}>
      <label>Source <input list="service-names" required value=${src} aria-label="Check source" onInput=${(e) => setSrc(e.currentTarget.value.trim())} /></label>
      <span class="arrow" aria-hidden="true">→</span>
      <label>Destination <input list="service-names" required value=${dst} aria-label="Check destination" onInput=${(e) => setDst(e.currentTarget.value.trim())} /></label>
      <label>HTTP path <input value=${path} placeholder="optional, for L7: /api" title="Evaluate L7 permissions for a request to this path" onInput=${(e) => setPath(e.currentTarget.value)} /></label>
      ${path ? html`<label>Method <select value=${method} onChange=${(e) => setMethod(e.currentTarget.value)}>${METHODS.map((m) => html`<option selected=${m === method}>${m}</option>`)}</select></label>` : ""}
      <button type="submit">Check</button>
    </form>
    <${ErrorBox} error=${error} />
    ${result ? html`<div class="check-result ${result.Allowed ? "allowed" : "denied"}" role="status" aria-live="polite">
      <span class="decision ${result.Allowed ? "allow" : "deny"}">${result.Allowed ? "✓ Allowed" : "✕ Denied"}</span>
      <span>${result.Reason}</span>
      ${result.NeedsRequest ? html`<span class="hint">This pair is decided per HTTP request: enter a path to evaluate its L7 permissions.</span>` : ""}
      ${known && src && src !== "*" && !known.has(src) ? html`<span class="hint warn">⚠ ${src} is not in the catalog.</span>` : ""}
      ${known && dst && dst !== "*" && !known.has(dst) ? html`<span class="hint warn">⚠ ${dst} is not in the catalog.</span>` : ""}
    </div>` : ""}
  </section>`;
}

export function IntentionsPage({ route }) {
  const list = useWatch("/v1/connect/intentions");
  const services = useWatch("/v1/internal/ui/services");
  const [q, setQ] = useState(route.query.get("q") || "");
  const [decided, setDecided] = useState("");
  const [flash, setFlash] = useState(null);
  // The names list (thousands of <option>s) is built when a name field is first focused, not on load.
  const [wantNames, setWantNames] = useState(false);
  const onFocus = (e) => { if (!wantNames && e.target.getAttribute?.("list") === "service-names") setWantNames(true); };
  const editId = route.query.get("edit");
  const creating = route.query.get("new") === "1";
  const intentions = list.data || [];
  const known = useMemo(() => (services.data ? new Set(services.data.map((s) => s.Name)) : null), [services.data]);
  const editing = editId ? intentions.find((i) => i.ID === editId) : null;
  const shown = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return needle ? intentions.filter((i) => i.SourceName.toLowerCase().includes(needle) || i.DestinationName.toLowerCase().includes(needle)
      || (i.Description || "").toLowerCase().includes(needle)) : intentions;
  }, [list.data, q]);
  useEffect(() => {
    if (decided) document.querySelector(`[data-id="${CSS.escape(decided)}"]`)?.scrollIntoView({ block: "nearest" });
  }, [decided]);

  const open = (params) => navigate(href(route.dc, "intentions", "", new URLSearchParams(params).toString()));
  const done = (saved) => { if (saved) setFlash("Saved. Proxies and authorize enforce it within a second."); open(q ? { q } : {}); };
  const remove = async (ixn) => {
    if (!confirm(`Delete the intention ${ixn.SourceName} → ${ixn.DestinationName}?`)) return;
    try {
      await request("DELETE", `/v1/connect/intentions/${encodeURIComponent(ixn.ID)}`);
      setFlash(`Deleted ${ixn.SourceName} → ${ixn.DestinationName}.`);
    } catch (err) { setFlash(null); alert(`Not deleted: ${err.message}`); }
  };

  return html`<div onfocusin=${onFocus}>
    <${PageHeader} title="Intentions" sub="Who may talk to whom through the mesh, most specific first.">
      <button type="button" onClick=${() => { setFlash(null); open({ new: "1" }); }}>New intention</button>
    </${PageHeader}>
    <datalist id="service-names">${wantNames ? (services.data || []).map((s) => html`<option value=${s.Name} />`) : ""}<option value="*" /></datalist>
    ${flash ? html`<div class="alert ok" role="status">${flash}</div>` : ""}
    ${creating || editing ? html`<${IntentionForm} key=${editId || "new"} editing=${editing} known=${known} onDone=${done} />` : ""}
    ${editId && !editing && list.data ? html`<div class="alert warn">That intention no longer exists.</div>` : ""}
    <${CheckBox} known=${known} onDecided=${setDecided} />
    <${ErrorBox} error=${list.error} />
    <div class="toolbar" role="search">
      <${Search} label="Filter intentions by service or description" value=${q} onInput=${(v) => { setQ(v); setQuery({ q: v }); }} />
      <span class="muted small">${list.data ? `${shown.length} of ${intentions.length}` : ""}</span>
    </div>
    ${list.loading ? html`<${Loading} what="Loading intentions" />` : ""}
    ${list.data && !intentions.length ? html`<${Empty}><p>No intentions yet: every connection gets the default decision.</p>
      <p class="small">Create one with <b>New intention</b>, e.g. allow <code>web</code> → <code>api</code>.</p></${Empty}>` : ""}
    ${shown.length ? html`<div class="table-wrap"><table class="list intentions-table">
      <caption class="sr-only">Intentions in evaluation order: higher precedence first</caption>
      <thead><tr><th scope="col" class="prec" title="Higher is evaluated first">Precedence</th><th scope="col">Source</th><th scope="col" aria-label="to"></th>
        <th scope="col">Destination</th><th scope="col">Action</th><th scope="col" class="wide">Description</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
      <tbody><${Incremental} items=${shown} colSpan=${7} render=${(i) => html`<tr key=${i.ID} data-id=${i.ID}
          data-pair=${`${i.SourceName}->${i.DestinationName}`} class=${decided === i.ID ? "decided" : ""}>
        <td class="prec">${i.Precedence}</td>
        <td><span class=${i.SourceName === "*" ? "wild" : known && !known.has(i.SourceName) ? "unknown" : ""}
          title=${known && i.SourceName !== "*" && !known.has(i.SourceName) ? "not in the catalog" : ""}>${i.SourceName}</span></td>
        <td aria-hidden="true" class="muted">→</td>
        <td><span class=${i.DestinationName === "*" ? "wild" : known && !known.has(i.DestinationName) ? "unknown" : ""}
          title=${known && i.DestinationName !== "*" && !known.has(i.DestinationName) ? "not in the catalog" : ""}>${i.DestinationName}</span></td>
        <td><${ActionBadge} ixn=${i} />${decided === i.ID ? html` <span class="pill">decides the check</span>` : ""}</td>
        <td class="wide small">${i.Description}</td>
        <td class="row-actions"><button type="button" class="secondary small" aria-label=${`Edit ${i.SourceName} to ${i.DestinationName}`}
            onClick=${() => { setFlash(null); open({ edit: i.ID }); }}>Edit</button>
          <button type="button" class="ghost small danger" aria-label=${`Delete ${i.SourceName} to ${i.DestinationName}`} onClick=${() => remove(i)}>Delete</button></td>
      </tr>`} /></tbody></table></div>` : ""}</div>`;
}
