// The app shell: navigation, the datacenter switcher, the token box, and which page a route shows.
import { get, session } from "./api.js";
import { html, render, useEffect, useState } from "./lib.js";
import { BASE, href, Link, navigate, useRoute } from "./router.js";
import { IntentionsPage } from "./pages/intentions.js";
import { KVPage } from "./pages/kv.js";
import { NodePage, NodesPage } from "./pages/nodes.js";
import { ServicePage } from "./pages/service.js";
import { ServicesPage } from "./pages/services.js";

const SECTIONS = [
  ["services", "Services"],
  ["nodes", "Nodes"],
  ["kv", "Key/Value"],
  ["intentions", "Intentions"],
];

function DatacenterSwitcher({ dc, section }) {
  const [dcs, setDcs] = useState([]);
  useEffect(() => { get("/v1/catalog/datacenters").then((r) => setDcs(r.data || [])).catch(() => setDcs([])); }, []);
  if (dcs.length <= 1) return html`<span class="dc" title="Datacenter">${dc}</span>`;
  return html`<label class="dc-switch"><span class="sr-only">Datacenter</span>
    <select aria-label="Datacenter" value=${dc} onChange=${(e) => navigate(href(e.currentTarget.value, section || "services"))}>
      ${dcs.map((d) => html`<option value=${d} selected=${d === dc}>${d}</option>`)}
    </select></label>`;
}

function TokenBox() {
  const [open, setOpen] = useState(false);
  const [value, setValue] = useState(session.token);
  const save = (e) => {
    e.preventDefault();
    session.setToken(value);
    setOpen(false);
    location.reload();  // every open watch restarts with the new token
  };
  return html`<div class="token">
    <button type="button" class="ghost" aria-expanded=${open} aria-controls="token-form" onClick=${() => setOpen(!open)}>
      ${session.token ? "Token ●" : "Token"}</button>
    ${open ? html`<form id="token-form" class="popover" onSubmit=${save}>
      <label for="token-input">ACL token <span class="muted small">(sent as X-Consul-Token, kept in this browser)</span></label>
      <input id="token-input" type="password" autocomplete="off" value=${value} onInput=${(e) => setValue(e.currentTarget.value)} />
      <div class="row"><button type="submit">Save</button>
        <button type="button" class="secondary" onClick=${() => { setValue(""); session.setToken(""); setOpen(false); location.reload(); }}>Clear</button></div>
    </form>` : ""}
  </div>`;
}

function Page({ route }) {
  switch (route.section) {
    case "services":
      return route.rest ? html`<${ServicePage} name=${route.rest} route=${route} />` : html`<${ServicesPage} route=${route} />`;
    case "nodes":
      return route.rest ? html`<${NodePage} name=${route.rest} dc=${route.dc} />` : html`<${NodesPage} route=${route} />`;
    case "kv":
      return html`<${KVPage} path=${route.rest} route=${route} />`;
    case "intentions":
      return html`<${IntentionsPage} route=${route} />`;
    default:
      return html`<p>Unknown page. <${Link} to=${href(route.dc, "services")}>Go to services</${Link}></p>`;
  }
}

function App() {
  const route = useRoute();
  const [menu, setMenu] = useState(false);
  session.dc = route.dc;
  useEffect(() => {
    if (!route.dc || !SECTIONS.some(([s]) => s === route.section)) {
      navigate(href(route.dc || session.localDc, route.section && route.dc ? route.section : "services"), { replace: true });
    }
  }, [route.dc, route.section]);
  useEffect(() => { setMenu(false); }, [route.section, route.rest]);
  if (!route.dc) return null;
  const title = SECTIONS.find(([s]) => s === route.section)?.[1] || "Proconsul";
  document.title = `${route.rest ? `${route.rest} · ` : ""}${title} · Proconsul`;
  return html`
    <header class="top">
      <${Link} to=${href(route.dc, "services")} class="brand" aria-label="Proconsul home">
        <span class="logo" aria-hidden="true"></span>Proconsul</${Link}>
      <button type="button" class="ghost menu-toggle" aria-expanded=${menu} aria-controls="main-nav" onClick=${() => setMenu(!menu)}>Menu</button>
      <nav id="main-nav" class=${menu ? "open" : ""} aria-label="Main">
        <ul>${SECTIONS.map(([s, label]) => html`<li><${Link} to=${href(route.dc, s)}
          aria-current=${route.section === s ? "page" : undefined}>${label}</${Link}></li>`)}</ul>
      </nav>
      <div class="top-right"><${DatacenterSwitcher} dc=${route.dc} section=${route.section} /><${TokenBox} /></div>
    </header>
    <main id="main"><${Page} route=${route} /></main>`;
}

async function boot() {
  performance.mark("app:start");
  // The datacenter is in the URL (/ui/<dc>/…); only a bare /ui/ asks the agent which one is its own.
  const dc = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length).split("/")[0] : "";
  if (!dc) {
    try {
      const self = await get("/v1/agent/self");
      session.localDc = self.data?.Config?.Datacenter || "dc1";
    } catch {
      session.localDc = "dc1";
    }
  }
  const root = document.getElementById("app");
  root.textContent = "";  // the "Loading…" placeholder
  render(html`<${App} />`, root);
}

boot();
