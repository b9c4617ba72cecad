// Syntax checks for KV values before they are saved: JSON in the browser, YAML with the vendored js-yaml
// (loaded only when needed), HCL by the agent's own parser (POST /v1/internal/ui/validate?format=hcl).
import { request } from "./api.js";
import { BASE } from "./router.js";

export const FORMATS = [["auto", "Detect"], ["plain", "Plain text"], ["json", "JSON"], ["yaml", "YAML"], ["hcl", "HCL"]];

/** The format a value most likely is, from its key's extension and its first characters. */
export function detectFormat(key, text) {
  const ext = (key.match(/\.([a-z]+)$/i) || [])[1]?.toLowerCase();
  if (ext === "json") return "json";
  if (ext === "yaml" || ext === "yml") return "yaml";
  if (ext === "hcl" || ext === "tf") return "hcl";
  const t = text.trim();
  if (t.startsWith("{") || t.startsWith("[")) return "json";
  if (/^---(\s|$)/.test(t)) return "yaml";
  if (/^[A-Za-z_][\w-]*\s*(=|"[^"]*"\s*\{|\{)/.test(t) && /[={]/.test(t.split("\n")[0])) return "hcl";
  if (/^[A-Za-z_][\w-]*:\s/.test(t) || /^- /.test(t)) return "yaml";
  return "plain";
}

function lineOf(text, offset) {
  return text.slice(0, offset).split("\n").length;
}

/** {valid, error, line} for `text` in `format` ("plain" is always valid). */
export async function validate(format, text) {
  if (format === "plain" || !text.trim()) return { valid: true, error: "", line: 0 };
  if (format === "json") {
    try {
      JSON.parse(text);
      return { valid: true, error: "", line: 0 };
    } catch (e) {
      const m = /position (\d+)/.exec(e.message);
      const lm = /line (\d+)/.exec(e.message);
      return { valid: false, error: e.message, line: lm ? Number(lm[1]) : m ? lineOf(text, Number(m[1])) : 0 };
    }
  }
  if (format === "yaml") {
    const yaml = await import(`${BASE}assets/vendor/lazy/js-yaml.mjs`);
    try {
      yaml.load(text);
      return { valid: true, error: "", line: 0 };
    } catch (e) {
      return { valid: false, error: (e.reason || e.message).split("\n")[0], line: e.mark ? e.mark.line + 1 : 0 };
    }
  }
  const res = await request("POST", "/v1/internal/ui/validate", { query: { format }, body: text, raw: true });
  return { valid: res.data.Valid, error: res.data.Error, line: res.data.Line };
}
