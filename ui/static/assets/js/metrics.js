// Golden metrics per topology link: request rate, success rate and p99 latency.
//
// The agent reads them from the service's own sidecar proxies (their /stats: inbound links are its
// downstreams, upstream links its upstreams), or from Prometheus with ui_config.metrics_provider, and serves them as a watch over 5-second periods
// (/v1/internal/ui/service-metrics/:service), so every open tab shares one request and a page that
// is not showing the topology asks for nothing. The UI never shows invented numbers: a link without
// figures says why (measuring, no traffic, proxy unreachable, no sidecar).
import { useWatch } from "./api.js";
import { html } from "./lib.js";

/** The service's per-link metrics, followed while `active`. */
export function useServiceMetrics(name, active) {
  return useWatch(active ? `/v1/internal/ui/service-metrics/${encodeURIComponent(name)}` : "");
}

/** One link's figures from the metrics watch, else from the topology answer while the watch starts. */
export function linkMetrics(watched, link, dir) {
  const side = dir === "up" ? "Upstreams" : "Downstreams";
  if (watched) return watched[side]?.[link.Name] ?? null;
  return link.Metrics ?? null;
}

/** Why a link has no figures, from the state of the proxies that were read. */
function absence(state) {
  if (!state) return ["loading", "loading metrics…"];
  if (state.Provider === "prometheus") {
    return state.Error ? ["unreachable", "no metrics: Prometheus did not answer", state.Error] : ["idle", "no traffic"];
  }
  const proxies = state.Proxies || [];
  if (!proxies.length) return ["no-proxy", state.Error ? "no metrics: no sidecar proxy" : "no metrics"];
  const by = (s) => proxies.filter((p) => p.Status === s);
  if (by("ok").length) return ["idle", "no traffic"];
  if (by("measuring").length) return ["measuring", "measuring…"];
  const why = proxies.map((p) => `${p.ID}: ${p.Error}`).join("\n");
  return ["unreachable", "no metrics: proxy unreachable", why];
}

const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(x >= 0.9995 || x === 0 ? 0 : 1)}%`);
const ms = (x) => (x === null || x === undefined ? "–" : x < 10 ? `${x.toFixed(1)} ms` : `${Math.round(x)} ms`);
const rate = (x) => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

export function LinkMetrics({ m, state }) {
  if (!m) {
    const [kind, text, title] = absence(state);
    return html`<span class="metrics none" data-metrics=${kind} title=${title || ""}>${text}</span>`;
  }
  const unit = m.Protocol === "http" ? "req/s" : "conn/s";
  const bad = m.SuccessRate !== null && m.SuccessRate < 0.99;
  return html`<span class="metrics" data-metrics="live" data-rate=${m.RequestRate} data-success=${m.SuccessRate ?? ""}
      data-p99=${m.P99Ms ?? ""} title=${`over the last ${Math.round(m.Window)} s, from ${m.Proxies} proxy(ies)`}>
    <span class="metric" title="${m.Protocol === "http" ? "requests" : "connections"} per second"><b>${rate(m.RequestRate)}</b> ${unit}</span>
    <span class="metric ${bad ? "bad" : ""}" title="success rate (${m.Protocol === "http" ? "responses not 5xx" : "connections not failed"})"><b>${pct(m.SuccessRate)}</b> ok</span>
    <span class="metric" title="99th percentile latency">p99 <b>${ms(m.P99Ms)}</b></span></span>`;
}
