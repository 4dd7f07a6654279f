/**
 * A small parser for the Prometheus text format, enough for tests to find samples by name and
 * labels: `name{a="x",b="y"} 12`.
 *
 * The parser itself lives in lib/prom_text.ts (`redprobe top` uses it too); this module
 * re-exports it for the tests and adds what only tests need.
 *
 * @module
 */
import { findSamples, type Sample } from "../../lib/prom_text.ts";

export { findSamples, parsePrometheusText, type Sample, sumSamples } from "../../lib/prom_text.ts";

/**
 * The values of `metric` matching `match`, summed per `"METHOD STATUS ROUTE"` (the HTTP labels
 * end-to-end tests compare with what they sent), keys sorted for readable diffs.
 */
export function countsByRequest(
  samples: Sample[],
  metric: string,
  match: Record<string, string> = {},
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of findSamples(samples, metric, match)) {
    const key =
      `${s.labels.http_request_method} ${s.labels.http_response_status_code} ${s.labels.http_route}`;
    out[key] = (out[key] ?? 0) + s.value;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}
