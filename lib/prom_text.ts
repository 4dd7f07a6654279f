/**
 * A small parser for the Prometheus text exposition format (what the agent serves on
 * `/metrics`): one sample a line, `name{a="x",b="y"} 12 [timestamp]`, with `# HELP` / `# TYPE`
 * comments skipped. Enough to find samples by name and labels; used by `redprobe top` and by
 * the tests.
 *
 * @module
 */

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+-?\d+)?$/;

/** The labels between the braces: `a="x",b="y\"z"` (escapes `\\`, `\"` and `\n`). */
function parseLabels(text: string, line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < text.length) {
    const eq = text.indexOf("=", i);
    if (eq < 0) {
      if (text.slice(i).trim() === "") break; // a trailing comma
      throw new Error(`Cannot parse exposition line: ${line}`);
    }
    const name = text.slice(i, eq).trim();
    if (!/^[a-zA-Z_][a-zA-Z0-9_]*$/.test(name) || text[eq + 1] !== '"') {
      throw new Error(`Cannot parse exposition line: ${line}`);
    }
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
    if (j >= text.length) throw new Error(`Cannot parse exposition line: ${line}`);
    labels[name] = value;
    i = j + 1;
    while (text[i] === " ") i++;
    if (text[i] === ",") i++;
  }
  return labels;
}

/** Every sample of an exposition, in order; throws on a line that is not one. */
export function parsePrometheusText(text: string): Sample[] {
  const out: Sample[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const m = LINE.exec(line);
    if (!m) throw new Error(`Cannot parse exposition line: ${line}`);
    const v = m[4];
    const value = v === "+Inf" ? Infinity : v === "-Inf" ? -Infinity : Number(v);
    if (Number.isNaN(value) && v !== "NaN") {
      throw new Error(`Cannot parse exposition line: ${line}`);
    }
    out.push({ name: m[1], labels: m[3] ? parseLabels(m[3], line) : {}, value });
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
