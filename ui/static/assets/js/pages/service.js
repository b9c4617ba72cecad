// One service: its instances with their checks, and its topology (upstreams and downstreams with the
// decision intentions make for each link), all live.
import { useWatch } from "../api.js";
import { CheckList, Empty, ErrorBox, Health, Kind, Loading, MetaTable, PageHeader, Tags, worstStatus } from "../components.js";
import { html, useRef } from "../lib.js";
import { LinkMetrics, linkMetrics, useServiceMetrics } from "../metrics.js";
import { href, Link, navigate } from "../router.js";

const TABS = [["instances", "Instances"], ["topology", "Topology"]];
const SOURCES = { "proxy-registration": "declared upstream", "specific-intention": "intention" };
const SOURCES_DOWN = { "proxy-registration": "declares it upstream", "specific-intention": "intention" };

function Tabs({ tab, onSelect, counts }) {
  const refs = useRef({});
  const onKey = (e) => {
    const i = TABS.findIndex(([t]) => t === tab);
    const next = e.key === "ArrowRight" ? (i + 1) % TABS.length : e.key === "ArrowLeft" ? (i + TABS.length - 1) % TABS.length : -1;
    if (next >= 0) { e.preventDefault(); onSelect(TABS[next][0]); refs.current[TABS[next][0]]?.focus(); }
  };
  return html`<div class="tabs" role="tablist" aria-label="Service sections" onKeyDown=${onKey}>
    ${TABS.map(([t, label]) => html`<button type="button" role="tab" id=${`tab-${t}`} aria-selected=${tab === t}
      aria-controls=${`panel-${t}`} tabindex=${tab === t ? 0 : -1} ref=${(el) => { refs.current[t] = el; }}
      onClick=${() => onSelect(t)}>${label}${counts[t] !== undefined ? html` <span class="count">${counts[t]}</span>` : ""}</button>`)}
  </div>`;
}

function Instances({ entries, dc }) {
  if (!entries.length) return html`<${Empty}>No instances: the service has been deregistered.</${Empty}>`;
  return html`<ul class="instances">${entries.map(({ Node, Service, Checks }) => {
    const status = worstStatus(Checks);
    return html`<li class="card instance" data-instance=${Service.ID}>
      <div class="card-head"><h3>${Service.ID}</h3><${Health} status=${status} /></div>
      <dl class="facts">
        <div><dt>Node</dt><dd><${Link} to=${href(dc, "nodes", Node.Node)}>${Node.Node}</${Link}></dd></div>
        <div><dt>Address</dt><dd><code>${Service.Address || Node.Address}:${Service.Port}</code></dd></div>
        <div><dt>Tags</dt><dd><${Tags} tags=${Service.Tags} max=${20} /></dd></div>
        ${Service.Kind === "connect-proxy" ? html`<div><dt>Proxy for</dt><dd>${Service.Proxy?.DestinationServiceName}</dd></div>` : ""}
        ${Service.Proxy?.Upstreams?.length ? html`<div><dt>Upstreams</dt><dd>${Service.Proxy.Upstreams.map((u) =>
          html`<span class="tag">${u.DestinationName} → :${u.LocalBindPort}</span>`)}</dd></div>` : ""}
        <div><dt>Meta</dt><dd><${MetaTable} meta=${Service.Meta} label="Service meta" /></dd></div>
      </dl>
      <h4>Health checks</h4>
      <${CheckList} checks=${Checks} />
    </li>`;
  })}</ul>`;
}

function LinkCard({ link, dir, dc, self, watched, state }) {
  const ok = link.Intention.Allowed;
  const l7 = link.Intention.HasPermissions;  // decided request by request: neither allowed nor denied as a whole
  const [src, dst] = dir === "up" ? [self, link.Name] : [link.Name, self];
  return html`<li class="link ${l7 ? "per-request" : ok ? "allowed" : "denied"}" data-link=${`${src}->${dst}`}>
    <div class="link-head">
      ${link.Registered ? html`<${Link} to=${href(dc, "services", link.Name)} class="name">${link.Name}</${Link}>`
        : html`<span class="name">${link.Name}</span> <span class="pill warn" title="No instance is registered">not registered</span>`}
      ${link.Kind ? html`<${Kind} kind=${link.Kind} />` : ""}
    </div>
    <div class="verdict">
      ${l7 ? html`<span class="decision l7">L7 · per request</span>`
        : html`<span class="decision ${ok ? "allow" : "deny"}">${ok ? "✓ allowed" : "✕ denied"}</span>`}
      <span class="pill subtle">${(dir === "down" ? SOURCES_DOWN : SOURCES)[link.Source] || link.Source}</span>
      ${link.Registered ? html`<span class="muted small">${link.InstanceCount} instance${link.InstanceCount === 1 ? "" : "s"}</span>` : ""}
    </div>
    <p class="reason small">${l7 ? `${link.Intention.Reason.split(";")[0]}: each HTTP request is allowed or denied by its permissions.` : link.Intention.Reason}</p>
    <${LinkMetrics} m=${linkMetrics(watched, link, dir)} state=${state} />
  </li>`;
}

function Topology({ name, dc, topo, watched }) {
  if (!topo) return html`<${Loading} what="Loading topology" />`;
  const state = watched || topo.Metrics;  // which proxies were read, and how that went
  const col = (title, links, dir) => html`<section class="topo-col" aria-label=${title}>
    <h3>${title} <span class="count">${links.length}</span></h3>
    ${links.length ? html`<ul class="links">${links.map((l) => html`<${LinkCard} link=${l} dir=${dir} dc=${dc} self=${name} watched=${watched} state=${state} />`)}</ul>`
      : html`<p class="muted small">${dir === "down" ? "Nothing calls this service through the mesh." : "This service calls nothing through the mesh."}</p>`}
  </section>`;
  return html`<div class="topology">
    ${col("Downstreams", topo.Downstreams, "down")}
    <div class="topo-center" aria-hidden="false">
      <div class="arrow" aria-hidden="true">→</div>
      <div class="self card"><strong>${name}</strong><span class="muted small">protocol ${topo.Protocol}</span>
        <span class="muted small">default: ${topo.DefaultAllow ? "allow" : "deny"}</span></div>
      <div class="arrow" aria-hidden="true">→</div>
    </div>
    ${col("Upstreams", topo.Upstreams, "up")}
  </div>
  <p class="small muted">Links come from sidecar registrations (upstreams) and intentions naming this service.
    Rates, success and p99 are read from ${name}'s own sidecar proxies and refresh every 5 s.
    Each decision is the agent's own (<code>/v1/internal/ui/service-topology</code>), the same one
    <code>/v1/agent/connect/authorize</code> enforces. <${Link} to=${href(dc, "intentions", "", `q=${encodeURIComponent(name)}`)}>Edit intentions for ${name}</${Link}></p>`;
}

export function ServicePage({ name, route }) {
  const tab = route.query.get("tab") || "instances";
  const health = useWatch(`/v1/health/service/${encodeURIComponent(name)}`);
  const ixns = useWatch(tab === "topology" ? "/v1/connect/intentions" : "");
  const topo = useWatch(`/v1/internal/ui/service-topology/${encodeURIComponent(name)}`, {}, [ixns.index]);
  const metrics = useServiceMetrics(name, tab === "topology");
  const entries = health.data || [];
  const first = entries[0]?.Service;
  const checks = entries.flatMap((e) => e.Checks);
  const select = (t) => navigate(href(route.dc, "services", name, t === "instances" ? "" : `tab=${t}`), { replace: true });
  return html`
    <nav class="crumbs" aria-label="Breadcrumb"><${Link} to=${href(route.dc, "services")}>Services</${Link}> <span aria-hidden="true">/</span></nav>
    <${PageHeader} title=${name} sub=${first ? html`<${Kind} kind=${first.Kind} /> · ${entries.length} instance${entries.length === 1 ? "" : "s"}` : ""}>
      ${entries.length ? html`<${Health} status=${worstStatus(checks)} />` : ""}
    </${PageHeader}>
    <${ErrorBox} error=${health.error} />
    <${Tabs} tab=${tab} onSelect=${select} counts=${{ instances: health.data ? entries.length : undefined,
      topology: topo.data ? topo.data.Upstreams.length + topo.data.Downstreams.length : undefined }} />
    <div role="tabpanel" id=${`panel-${tab}`} aria-labelledby=${`tab-${tab}`}>
      ${tab === "instances" ? (health.loading ? html`<${Loading} what="Loading instances" />` : html`<${Instances} entries=${entries} dc=${route.dc} />`)
        : html`<${ErrorBox} error=${topo.error} /><${Topology} name=${name} dc=${route.dc} topo=${topo.data} watched=${metrics.data} />`}
    </div>`;
}
