// Nodes: the list (with each node's health and services) and one node's services, checks and meta.
import { useWatch } from "../api.js";
import { CheckList, Empty, ErrorBox, Health, Incremental, Kind, Loading, MetaTable, PageHeader, Search, Select, Tags, worstStatus } from "../components.js";
import { html, useMemo, useState } from "../lib.js";
import { href, Link, setQuery } from "../router.js";

export function NodesPage({ route }) {
  const { data, error, loading } = useWatch("/v1/internal/ui/nodes");
  const [q, setQ] = useState(route.query.get("q") || "");
  const [health, setHealth] = useState(route.query.get("health") || "");
  const nodes = data || [];
  const shown = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return nodes.filter((n) => (!health || worstStatus(n.Checks) === health)
      && (!needle || n.Node.toLowerCase().includes(needle) || n.Address.includes(needle)));
  }, [data, q, health]);
  return html`
    <${PageHeader} title="Nodes" sub=${data ? `${nodes.length} node${nodes.length === 1 ? "" : "s"}` : ""} />
    <${ErrorBox} error=${error} />
    <div class="toolbar" role="search">
      <${Search} label="Search nodes by name or address" value=${q} onInput=${(v) => { setQ(v); setQuery({ q: v }); }} />
      <${Select} label="Health" value=${health} onChange=${(v) => { setHealth(v); setQuery({ health: v }); }}
        options=${[["", "Any"], ["passing", "Passing"], ["warning", "Warning"], ["critical", "Critical"]]} />
    </div>
    ${loading && !data ? html`<${Loading} what="Loading nodes" />` : ""}
    ${data && !shown.length ? html`<${Empty}>No node matches.</${Empty}>` : ""}
    ${shown.length ? html`<div class="table-wrap"><table class="list">
      <thead><tr><th scope="col">Node</th><th scope="col">Health</th><th scope="col">Address</th>
        <th scope="col" class="num">Services</th><th scope="col" class="wide">Meta</th></tr></thead>
      <tbody><${Incremental} items=${shown} colSpan=${5} render=${(n) => html`<tr key=${n.Node} data-node=${n.Node}>
        <td><${Link} to=${href(route.dc, "nodes", n.Node)} class="name">${n.Node}</${Link}></td>
        <td><${Health} status=${worstStatus(n.Checks)} /></td>
        <td><code>${n.Address}</code></td>
        <td class="num">${n.Services.length}</td>
        <td class="wide"><${Tags} tags=${Object.entries(n.Meta || {}).map(([k, v]) => `${k}=${v}`)} max=${4} /></td></tr>`} />
      </tbody></table></div>` : ""}`;
}

export function NodePage({ name, dc }) {
  const { data, error, loading } = useWatch(`/v1/internal/ui/node/${encodeURIComponent(name)}`);
  const node = data;
  return html`
    <nav class="crumbs" aria-label="Breadcrumb"><${Link} to=${href(dc, "nodes")}>Nodes</${Link}> <span aria-hidden="true">/</span></nav>
    <${PageHeader} title=${name} sub=${node ? html`<code>${node.Address}</code>` : ""}>
      ${node ? html`<${Health} status=${worstStatus(node.Checks)} />` : ""}
    </${PageHeader}>
    ${error?.status === 404 ? html`<${Empty}>No node called <b>${name}</b> is in the catalog (it may have left).</${Empty}>` : html`<${ErrorBox} error=${error} />`}
    ${loading ? html`<${Loading} what="Loading node" />` : ""}
    ${node ? html`<div class="grid2">
      <section class="card"><h2>Health checks</h2><${CheckList} checks=${node.Checks} /></section>
      <section class="card"><h2>Node</h2><dl class="facts">
        <div><dt>ID</dt><dd><code class="small">${node.ID || "—"}</code></dd></div>
        <div><dt>Datacenter</dt><dd>${node.Datacenter}</dd></div>
        <div><dt>Tagged addresses</dt><dd><${MetaTable} meta=${node.TaggedAddresses} label="Tagged addresses" /></dd></div>
        <div><dt>Meta</dt><dd><${MetaTable} meta=${node.Meta} label="Node meta" /></dd></div></dl></section>
    </div>
    <section><h2>Services <span class="count">${node.Services.length}</span></h2>
      ${node.Services.length ? html`<div class="table-wrap"><table class="list">
        <thead><tr><th scope="col">Service</th><th scope="col">ID</th><th scope="col">Port</th><th scope="col">Health</th><th scope="col" class="wide">Tags</th></tr></thead>
        <tbody>${node.Services.map((s) => {
          const checks = node.Checks.filter((c) => !c.ServiceID || c.ServiceID === s.ID);
          return html`<tr key=${s.ID}><td><${Link} to=${href(dc, "services", s.Service)} class="name">${s.Service}</${Link}>
            ${s.Kind ? html` <${Kind} kind=${s.Kind} />` : ""}</td><td><code>${s.ID}</code></td>
            <td><code>${s.Address || node.Address}:${s.Port}</code></td><td><${Health} status=${worstStatus(checks)} /></td>
            <td class="wide"><${Tags} tags=${s.Tags} /></td></tr>`;
        })}</tbody></table></div>` : html`<p class="muted">No services on this node.</p>`}
    </section>` : ""}`;
}
