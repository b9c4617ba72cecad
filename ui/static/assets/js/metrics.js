// ============================================================================================
// METRICS HOOK — golden metrics per topology link (request rate, success rate, p99 latency).
//
// The sidecar proxies' metrics are being built (the proxy engineer's issue). When the agent can
// answer them (Consul's UI reads them through /v1/internal/ui/metrics-proxy/), make `linkMetrics`
// fetch them and resolve to {requestRate, successRate, p99Ms} for one link, or null when unknown.
// Until then it resolves to null and the topology view says "no metrics yet": the UI never shows
// invented numbers.
// ============================================================================================
import { html, useEffect, useState } from "./lib.js";

/** Golden metrics of traffic source → destination, or null while the proxies export none. */
export async function linkMetrics(_source, _destination) {
  return null;
}

export function LinkMetrics({ source, destination }) {
  const [m, setM] = useState(null);
  useEffect(() => {
    let live = true;
    linkMetrics(source, destination).then((x) => live && setM(x)).catch(() => live && setM(null));
    return () => { live = false; };
  }, [source, destination]);
  if (!m) return html`<span class="metrics none" data-metrics="pending">no metrics yet</span>`;
  return html`<span class="metrics" data-metrics="live">
    <span title="requests per second">${m.requestRate.toFixed(1)} rps</span>
    <span title="success rate">${(m.successRate * 100).toFixed(1)}% ok</span>
    <span title="99th percentile latency">p99 ${m.p99Ms.toFixed(0)} ms</span></span>`;
}
