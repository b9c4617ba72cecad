// Key/Value: browse folders, and an editor that validates JSON/YAML/HCL before saving and saves with
// check-and-set, so two people editing one key never silently overwrite each other.
import { decodeValue, request, useWatch } from "../api.js";
import { Empty, ErrorBox, Icon, Loading, PageHeader, Select } from "../components.js";
import { html, useEffect, useRef, useState } from "../lib.js";
import { href, Link, navigate } from "../router.js";
import { detectFormat, FORMATS, validate } from "../validate.js";

const enc = (key) => key.split("/").map(encodeURIComponent).join("/");

function Crumbs({ dc, path }) {
  const parts = path.split("/").filter(Boolean);
  const isKey = path && !path.endsWith("/");
  const folders = isKey ? parts.slice(0, -1) : parts;
  return html`<nav class="crumbs" aria-label="Breadcrumb">
    <${Link} to=${href(dc, "kv")}>Key/Value</${Link}>
    ${folders.map((p, i) => html` <span aria-hidden="true">/</span> <${Link} to=${`${href(dc, "kv")}/${enc(folders.slice(0, i + 1).join("/"))}/`}>${p}</${Link}>`)}
    <span aria-hidden="true"> /</span></nav>`;
}

function Folder({ dc, prefix }) {
  const { data, error, loading } = useWatch(`/v1/kv/${enc(prefix)}`, { keys: true, separator: "/" });
  const keys = (data || []).filter((k) => k !== prefix).sort();
  const [busy, setBusy] = useState(null);
  const removeFolder = async (folder) => {
    if (!confirm(`Delete the folder ${folder} and every key in it?`)) return;
    setBusy({ error: null });
    try {
      await request("DELETE", `/v1/kv/${enc(folder)}`, { query: { recurse: true } });
      setBusy(null);
    } catch (e) { setBusy({ error: e }); }
  };
  const title = prefix ? prefix.split("/").filter(Boolean).at(-1) + "/" : "Key/Value";
  return html`
    ${prefix ? html`<${Crumbs} dc=${dc} path=${prefix} />` : ""}
    <${PageHeader} title=${title} sub=${data ? `${keys.length} item${keys.length === 1 ? "" : "s"}` : ""}>
      <${Link} class="button" to=${`${href(dc, "kv")}/${enc(prefix)}?new=1`}>Create</${Link}>
    </${PageHeader}>
    <${ErrorBox} error=${error?.status === 404 ? null : error} />
    <${ErrorBox} error=${busy?.error} />
    ${loading ? html`<${Loading} what="Loading keys" />` : ""}
    ${!loading && !keys.length ? html`<${Empty}>${prefix ? "This folder is empty." : "No keys yet."} Use <b>Create</b> to add one.</${Empty}>` : ""}
    ${keys.length ? html`<ul class="kv-list">${keys.map((k) => {
      const name = k.slice(prefix.length);
      const folder = k.endsWith("/");
      return html`<li class=${folder ? "folder" : "key"} data-key=${k}>
        <${Link} to=${`${href(dc, "kv")}/${enc(k)}`}><${Icon} name=${folder ? "folder" : "key"} />${name}</${Link}>
        ${folder ? html`<button type="button" class="ghost small danger" aria-label=${`Delete folder ${k}`} onClick=${() => removeFolder(k)}>Delete</button>` : ""}
      </li>`;
    })}</ul>` : ""}`;
}

function useValidation(format, text) {
  const [result, setResult] = useState({ valid: true, error: "", line: 0, checking: false });
  useEffect(() => {
    let live = true;
    setResult((r) => ({ ...r, checking: true }));
    const t = setTimeout(() => {  // a debounce for typing, not a poll: one check per pause in typing
      validate(format, text).then((r) => live && setResult({ ...r, checking: false }))
        .catch((e) => live && setResult({ valid: false, error: e.message, line: 0, checking: false }));
    }, 250);
    return () => { live = false; clearTimeout(t); };
  }, [format, text]);
  return result;
}

function Editor({ dc, keyName, creating, folder }) {
  const remote = useWatch(creating ? "" : `/v1/kv/${enc(keyName)}`);
  const row = remote.data?.[0];
  const [name, setName] = useState("");
  const [text, setText] = useState("");
  const [base, setBase] = useState(null);  // the ModifyIndex our text started from (the cas we save with)
  const [baseText, setBaseText] = useState("");
  const [fmt, setFmt] = useState("auto");
  const [status, setStatus] = useState(null);  // {kind: "saved"|"conflict"|"error", ...}
  const [saving, setSaving] = useState(false);
  const area = useRef(null);
  const dirty = text !== baseText;
  const load = (r) => { const t = decodeValue(r.Value).text; setText(t); setBaseText(t); setBase(r.ModifyIndex); };

  useEffect(() => {  // load the value; follow remote changes while there are no local edits
    if (row && (base === null || (!dirty && row.ModifyIndex !== base))) load(row);
  }, [row?.ModifyIndex]);

  const fullKey = creating ? folder + name : keyName;
  const format = fmt === "auto" ? detectFormat(fullKey, text) : fmt;
  const check = useValidation(format, text);
  const binary = row && decodeValue(row.Value).binary;
  const changedElsewhere = !creating && row && base !== null && row.ModifyIndex !== base;

  const save = async (e, cas = creating ? 0 : base) => {
    e?.preventDefault();
    if (creating && (!name || name.startsWith("/"))) { setStatus({ kind: "error", error: new Error("Give the key a name (without a leading /).") }); return; }
    if (!check.valid && !name.endsWith("/")) { setStatus({ kind: "error", error: new Error(`${format.toUpperCase()} syntax error: fix it, or choose Plain text to save as is.`) }); return; }
    setSaving(true);
    try {
      const res = await request("PUT", `/v1/kv/${enc(fullKey)}`, { query: { cas }, body: fullKey.endsWith("/") ? "" : text, raw: true });
      if (res.data === true) {
        setStatus({ kind: "saved" });
        if (creating) navigate(`${href(dc, "kv")}/${enc(fullKey)}`);
        else { const now = await request("GET", `/v1/kv/${enc(fullKey)}`); setBase(now.data[0].ModifyIndex); setBaseText(text); }
      } else if (creating) {
        setStatus({ kind: "error", error: new Error(`A key called ${fullKey} already exists: open it to edit it.`) });
      } else {
        const now = await request("GET", `/v1/kv/${enc(fullKey)}`).catch(() => null);
        setStatus({ kind: "conflict", theirs: now?.data?.[0] || null });
      }
    } catch (err) {
      setStatus({ kind: "error", error: err });
    } finally {
      setSaving(false);
    }
  };

  const remove = async () => {
    if (!confirm(`Delete ${keyName}?`)) return;
    try {
      const res = await request("DELETE", `/v1/kv/${enc(keyName)}`, { query: { cas: base } });
      if (res.data === true) navigate(`${href(dc, "kv")}/${enc(keyName.split("/").slice(0, -1).join("/") + (keyName.includes("/") ? "/" : ""))}`);
      else {
        const now = await request("GET", `/v1/kv/${enc(keyName)}`).catch(() => null);
        setStatus({ kind: "conflict", theirs: now?.data?.[0] || null, deleting: true });
      }
    } catch (err) { setStatus({ kind: "error", error: err }); }
  };

  const goToLine = (line) => {
    const el = area.current;
    if (!el || !line) return;
    const lines = text.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    el.focus();
    el.setSelectionRange(start, start + (lines[line - 1] || "").length);
  };

  if (!creating && remote.error?.status === 404 && !row) {
    return html`<${Crumbs} dc=${dc} path=${keyName} /><${PageHeader} title=${keyName.split("/").at(-1)} />
      <${Empty}>The key <code>${keyName}</code> does not exist (any more).</${Empty}>`;
  }
  // Until the loaded value is in the editor's state (the effect above runs after the first render with a row),
  // show no textarea: text typed into an empty editor would be overwritten by the value arriving.
  if (!creating && (!row || base === null)) return html`<${Crumbs} dc=${dc} path=${keyName} /><${ErrorBox} error=${remote.error} /><${Loading} what="Loading key" />`;

  return html`
    <${Crumbs} dc=${dc} path=${creating ? folder : keyName} />
    <${PageHeader} title=${creating ? "New key" : keyName.split("/").at(-1)} sub=${creating ? (folder ? `in ${folder}` : "") : html`<code>${keyName}</code>`}>
      ${!creating ? html`<button type="button" class="danger secondary" onClick=${remove}>Delete</button>` : ""}
    </${PageHeader}>
    ${changedElsewhere && !status ? html`<div class="alert warn" role="status">This key was changed elsewhere (index ${row.ModifyIndex}) while you were editing.
      <button type="button" class="secondary small" onClick=${() => load(row)}>Load the new value</button></div>` : ""}
    ${status?.kind === "saved" ? html`<div class="alert ok" role="status">Saved.</div>` : ""}
    ${status?.kind === "error" ? html`<${ErrorBox} error=${status.error} title="Not saved" />` : ""}
    ${status?.kind === "conflict" ? html`<div class="alert error conflict" role="alert">
      <strong>Conflict:</strong> someone else ${status.theirs ? `changed this key (now at index ${status.theirs.ModifyIndex})` : "deleted this key"} since you opened it.
      ${status.deleting ? "It was not deleted." : "Your change was not saved."}
      ${status.theirs ? html`<details><summary>Their value</summary><pre class="output">${decodeValue(status.theirs.Value).text}</pre></details>` : ""}
      <div class="row">
        ${status.theirs ? html`<button type="button" class="secondary" onClick=${() => { load(status.theirs); setStatus(null); }}>Discard mine, load theirs</button>` : ""}
        ${!status.deleting ? html`<button type="button" class="danger" onClick=${() => save(null, status.theirs ? status.theirs.ModifyIndex : 0)}>Overwrite with mine</button>` : ""}
      </div></div>` : ""}
    <form class="editor" onSubmit=${save}>
      ${creating ? html`<div class="field"><label for="kv-name">Key</label>
        <div class="prefixed">${folder ? html`<span class="prefix">${folder}</span>` : ""}<input id="kv-name" required value=${name}
          placeholder="name, or folder/ to make a folder" onInput=${(e) => setName(e.currentTarget.value)} /></div>
        <p class="hint">End with <code>/</code> to create a folder.</p></div>` : ""}
      ${binary ? html`<p class="alert warn">This value is binary (${decodeValue(row.Value).size} bytes): it cannot be edited here.</p>` : html`
      <div class="field">
        <div class="field-head"><label for="kv-value">Value</label>
          <${Select} label="Format" value=${fmt} onChange=${setFmt} options=${FORMATS} />
          <span class=${`validity ${check.valid ? "ok" : "bad"}`} role="status" aria-live="polite">
            ${check.checking ? "checking…" : check.valid ? (format === "plain" ? "plain text" : `✓ valid ${format.toUpperCase()}`) : `✕ ${format.toUpperCase()}`}</span></div>
        <textarea id="kv-value" ref=${area} spellcheck="false" rows=${Math.min(30, Math.max(8, text.split("\n").length + 1))}
          aria-invalid=${!check.valid} aria-describedby="kv-check" value=${text} onInput=${(e) => { setText(e.currentTarget.value); if (status?.kind === "saved") setStatus(null); }}></textarea>
        <p id="kv-check" class=${check.valid ? "hint" : "hint bad"}>${check.valid ? (format === "plain" ? "Saved as it is." : `Checked as ${format.toUpperCase()} before saving.`)
          : html`${check.line ? html`<button type="button" class="link" onClick=${() => goToLine(check.line)}>line ${check.line}</button>: ` : ""}${check.error}`}</p>
      </div>`}
      <div class="row">
        <button type="submit" disabled=${saving || binary}>${saving ? "Saving…" : creating ? "Create" : "Save"}</button>
        <${Link} class="button secondary" to=${`${href(dc, "kv")}/${enc(creating ? folder : keyName.split("/").slice(0, -1).join("/") + (keyName.includes("/") ? "/" : ""))}`}>Cancel</${Link}>
        ${!creating && row ? html`<span class="muted small">index ${base ?? row.ModifyIndex}${dirty ? " · unsaved changes" : ""}</span>` : ""}
      </div>
    </form>`;
}

export function KVPage({ path, route }) {
  const creating = route.query.get("new") === "1";
  if (creating) return html`<${Editor} dc=${route.dc} creating=${true} folder=${path} key=${`new:${path}`} />`;
  if (!path || path.endsWith("/")) return html`<${Folder} dc=${route.dc} prefix=${path} key=${path} />`;
  return html`<${Editor} dc=${route.dc} keyName=${path} key=${path} />`;
}
