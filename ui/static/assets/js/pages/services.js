// Services: every service with its health summary, live (a blocking query on /v1/internal/ui/services).
import { useWatch } from "../api.js";
import { CheckCounts, Empty, ErrorBox, Health, Incremental, Kind, Loading, PageHeader, Search, Select, summaryStatus, Tags } from "../components.js";
import { html, useMemo, useState } from "../lib.js";
import { href, Link, setQuery } from "../router.js";

const RANK = { critical: 0, warning: 1, passing: 2 };
const SORTS = {
  name: (a, b) => a.Name.localeCompare(b.Name),
  "-name": (a, b) => b.Name.localeCompare(a.Name),
  health: (a, b) => RANK[summaryStatus(a)] - RANK[summaryStatus(b)] || a.Name.localeCompare(b.Name),
  instances: (a, b) => b.InstanceCount - a.InstanceCount || a.Name.localeCompare(b.Name),
};

export function ServicesPage({ route }) {
  const { data, error, loading } = useWatch("/v1/internal/ui/services");
  const [q, setQ] = useState(route.query.get("q") || "");
  const [health, setHealth] = useState(route.query.get("health") || "");
  const [kind, setKind] = useState(route.query.get("kind") || "");
  const [sort, setSort] = useState(route.query.get("sort") || "name");
  const update = (setter, key) => (v) => { setter(v); setQuery({ [key]: v === "name" && key === "sort" ? "" : v }); };

  const services = data || [];
  const totals = useMemo(() => {
    const t = { passing: 0, warning: 0, critical: 0, instances: 0 };
    for (const s of services) { t[summaryStatus(s)] += 1; t.instances += s.InstanceCount; }
    return t;
  }, [data]);
  const shown = useMemo(() => {
    const needle = q.trim().toLowerCase();
    const tagOnly = needle.startsWith("tag:") ? needle.slice(4) : null;
    const out = services.filter((s) => {
      if (health && summaryStatus(s) !== health) return false;
      if (kind && (s.Kind || "service") !== kind) return false;
      if (!needle) return true;
      if (tagOnly !== null) return s.Tags.some((t) => t.toLowerCase().includes(tagOnly));
      return s.Name.toLowerCase().includes(needle) || s.Tags.some((t) => t.toLowerCase().includes(needle));
    });
    return out.sort(SORTS[sort] || SORTS.name);
  }, [data, q, health, kind, sort]);

  const kinds = [...new Set(services.map((s) => s.Kind || "service"))].sort();
  return html`
    <${PageHeader} title="Services" sub=${data ? `${services.length} services, ${totals.instances} instances` : ""} />
    <${ErrorBox} error=${error} />
    ${data ? html`<section class="summary" aria-label="Health summary">
      <button type="button" class="stat ${health === "" ? "on" : ""}" onClick=${() => update(setHealth, "health")("")}>
        <b>${services.length}</b> all</button>
      ${["passing", "warning", "critical"].map((st) => html`<button type="button" class="stat ${st} ${health === st ? "on" : ""}"
        aria-pressed=${health === st} onClick=${() => update(setHealth, "health")(health === st ? "" : st)}>
        <b>${totals[st]}</b> ${st}</button>`)}
    </section>` : ""}
    <div class="toolbar" role="search">
      <${Search} label="Search services by name or tag" placeholder="Search by name or tag (tag:v2)" value=${q} onInput=${update(setQ, "q")} />
      <${Select} label="Health" value=${health} onChange=${update(setHealth, "health")}
        options=${[["", "Any"], ["passing", "Passing"], ["warning", "Warning"], ["critical", "Critical"]]} />
      <${Select} label="Kind" value=${kind} onChange=${update(setKind, "kind")} options=${[["", "Any"], ...kinds.map((k) => [k, k])]} />
      <${Select} label="Sort" value=${sort} onChange=${update(setSort, "sort")}
        options=${[["name", "Name A–Z"], ["-name", "Name Z–A"], ["health", "Unhealthy first"], ["instances", "Most instances"]]} />
    </div>
    <p class="sr-only" aria-live="polite">${data ? `${shown.length} of ${services.length} services shown` : ""}</p>
    ${loading && !data ? html`<${Loading} what="Loading services" />` : ""}
    ${data && !services.length ? html`<${Empty}><p>No services are registered yet.</p>
      <p class="small">Register one: <code>curl -X PUT localhost:8500/v1/agent/service/register -d '{"Name":"web","Port":8080}'</code></p></${Empty}>` : ""}
    ${data && services.length && !shown.length ? html`<${Empty}>No service matches these filters.</${Empty}>` : ""}
    ${shown.length ? html`<div class="table-wrap"><table class="list services-table">
      <thead><tr><th scope="col">Service</th><th scope="col">Health</th><th scope="col" class="wide">Checks</th>
        <th scope="col" class="num">Instances</th><th scope="col" class="wide">Tags</th></tr></thead>
      <tbody>
      <${Incremental} items=${shown} colSpan=${5} render=${(s) => html`<tr key=${s.Name} data-service=${s.Name}>
        <td><${Link} to=${href(route.dc, "services", s.Name)} class="name">${s.Name}</${Link}>
          ${s.Kind ? html` <${Kind} kind=${s.Kind} />` : ""}
          ${s.ConnectedWithProxy ? html` <span class="pill mesh" title="Has a sidecar proxy">in mesh</span>` : ""}</td>
        <td><${Health} status=${summaryStatus(s)} /></td>
        <td class="wide"><${CheckCounts} s=${s} /></td>
        <td class="num">${s.InstanceCount}</td>
        <td class="wide"><${Tags} tags=${s.Tags} /></td></tr>`} />
      </tbody></table></div>` : ""}`;
}
