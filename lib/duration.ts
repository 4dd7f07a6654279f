/**
 * Durations in configuration: `250ms`, `30s`, `2m`, `1h`, or a bare number of seconds.
 *
 * @module
 */
const UNITS: Record<string, number> = {
  ns: 1e-6,
  us: 1e-3,
  "µs": 1e-3,
  ms: 1,
  s: 1e3,
  m: 60e3,
  h: 3600e3,
};
const PATTERN = /^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$/;

/** Milliseconds in `text`, or undefined when it is not a duration. */
export function parseDurationMs(text: string | number): number | undefined {
  if (typeof text === "number") return Number.isFinite(text) && text >= 0 ? text * 1000 : undefined;
  const m = PATTERN.exec(text);
  if (!m) return undefined;
  return Number(m[1]) * UNITS[m[2] ?? "s"];
}
