/**
 * A small parser for the Prometheus text format, enough for tests to find samples by name and
 * labels: `name{a="x",b="y"} 12`.
 *
 * @module
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$/;

function parseLabels(text: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf("=", i);
    if (eq < 0) break;
    const name = text.slice(i, eq).trim().replace(/^,/, "").trim();
    let j = eq + 2; // past ="
    let value = "";
    while (j < text.length && text[j] !== '"') {
      if (text[j] === "\\") {
        const next = text[j + 1];
        value += next === "n" ? "\n" : next;
        j += 2;
      } else {
        value += text[j++];
      }
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ",") i++;
  }
  return labels;
}

export function parsePrometheusText(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) throw new Error(`Cannot parse exposition line: ${line}`);
    const raw = m[4];
    const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
    out.push({ name: m[1], labels: m[3] ? parseLabels(m[3]) : {}, value });
  }
  return out;
}

/** Samples named `name` whose labels include every pair of `match`. */
export function findSamples(
  samples: Sample[],
  name: string,
  match: Record<string, string> = {},
): Sample[] {
  return samples.filter((s) =>
    s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v)
  );
}

/** Sum of the values of the matching samples (0 when none). */
export function sumSamples(
  samples: Sample[],
  name: string,
  match: Record<string, string> = {},
): number {
  return findSamples(samples, name, match).reduce((a, s) => a + s.value, 0);
}

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
