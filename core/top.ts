/**
 * `redprobe top`: a live terminal table of RED per service and route, read from a running
 * agent's Prometheus endpoint. Every interval it scrapes `/metrics`, turns the duration
 * histograms into rows (lib/red_table.ts) and redraws the table in place; on a pipe, or with
 * `--once`, it prints one table and exits.
 *
 * Exit status: 0 after one table or Ctrl-C, 1 when the endpoint cannot be read at the start, 2 for
 * a bad flag or configuration.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "./config.ts";
import type { AnyPlugin } from "./plugin.ts";
import { parseDurationMs } from "../lib/duration.ts";
import { parsePrometheusText } from "../lib/prom_text.ts";
import {
  aggregate,
  type RedRow,
  redRows,
  type RedSnapshot,
  renderTable,
  SORT_KEYS,
  type SortKey,
  sortRows,
  truncate,
} from "../lib/red_table.ts";

export const TOP_USAGE = `Usage: redprobe top [flags]

A live table of RED per service and route, read from a running agent's metrics endpoint:
request rate, error %, p50 and p99 duration and the total count, refreshed every interval
(Ctrl-C to quit). On a pipe, or with --once, it prints one table and exits.

Errors: HTTP server 5xx, HTTP client 4xx and 5xx, no response (status 0); gRPC on the server
UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, on the client any
code but OK. p50 and p99 are interpolated in the histogram buckets, as histogram_quantile does.

Flags:
      --url URL              the agent's metrics endpoint (default: from --metrics-address and
                             --metrics-port, else the configuration: http://127.0.0.1:9400/metrics)
  -c, --config FILE          the agent's configuration, to find its endpoint (env REDPROBE_CONFIG)
      --metrics-address ADDR the agent's metrics address (env REDPROBE_METRICS_ADDRESS; 0.0.0.0
                             connects to 127.0.0.1)
      --metrics-port PORT    the agent's metrics port (env REDPROBE_METRICS_PORT)
      --interval DURATION    time between refreshes, and the rate's window (default 2s)
      --once                 print one table and exit: scrape twice an interval apart (once with
                             --interval 0); error % and quantiles are then since the agent started
      --sort KEY             rate (default), errors (error %) or p99
      --limit N              show at most N rows
  -h, --help                 show this help and exit
`;

/** Where a frame goes when stdout is a terminal. */
export interface TopTerminal {
  write(text: string): void;
  size(): { columns: number; rows: number };
}

export interface TopIo {
  out: (text: string) => void;
  err: (text: string) => void;
  env: Record<string, string | undefined>;
  /** The terminal for a live view; by default Deno's stdout when it is one. null: none. */
  terminal?: TopTerminal | null;
  /** Ends the live view, as SIGINT and SIGTERM do. */
  signal?: AbortSignal;
}

/** Width of the table when stdout is not a terminal. */
export const PIPE_WIDTH = 100;
const FETCH_TIMEOUT_MS = 5_000;
const MIN_LIVE_INTERVAL_MS = 100;

class UsageError extends Error {}

/** A scrape that failed; the message names the URL. */
export class ScrapeError extends Error {}

interface TopOptions {
  url: string;
  intervalMs: number;
  once: boolean;
  sort: SortKey;
  limit?: number;
}

/** The host part of a URL for a listen address: a wildcard address means this host. */
export function connectHost(address: string): string {
  const bare = address.replace(/^\[(.*)\]$/, "$1");
  if (bare === "0.0.0.0" || bare === "") return "127.0.0.1";
  if (bare === "::") return "[::1]";
  return bare.includes(":") ? `[${bare}]` : bare;
}

const FLAGS = {
  url: { type: "string" },
  config: { type: "string", short: "c" },
  "metrics-address": { type: "string" },
  "metrics-port": { type: "string" },
  interval: { type: "string" },
  once: { type: "boolean" },
  sort: { type: "string" },
  limit: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

function parseOptions(args: string[], plugins: readonly AnyPlugin[], env: TopIo["env"]) {
  let parsed;
  try {
    parsed = parseArgs({ args, strict: true, allowPositionals: true, options: FLAGS });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const { values: flags, positionals } = parsed;
  if (flags.help) return "help" as const;
  if (positionals.length) throw new UsageError(`unexpected argument "${positionals[0]}"`);

  const intervalMs = parseDurationMs(flags.interval ?? "2s");
  if (intervalMs === undefined) {
    throw new UsageError(
      `invalid --interval ${
        JSON.stringify(flags.interval)
      }: expected a duration such as 2s or 500ms`,
    );
  }
  const sort = flags.sort ?? "rate";
  if (!(SORT_KEYS as readonly string[]).includes(sort)) {
    throw new UsageError(
      `invalid --sort ${JSON.stringify(sort)}: expected one of ${SORT_KEYS.join(", ")}`,
    );
  }
  let limit: number | undefined;
  if (flags.limit !== undefined) {
    limit = Number(flags.limit);
    if (!/^\d+$/.test(flags.limit) || limit < 1) {
      throw new UsageError(
        `invalid --limit ${JSON.stringify(flags.limit)}: expected a positive integer`,
      );
    }
  }

  let url: string;
  if (flags.url !== undefined) {
    let parsed: URL;
    try {
      parsed = new URL(flags.url);
    } catch {
      throw new UsageError(`invalid --url ${JSON.stringify(flags.url)}: not a URL`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new UsageError(`invalid --url ${JSON.stringify(flags.url)}: expected http or https`);
    }
    if (parsed.pathname === "/") parsed.pathname = "/metrics";
    url = parsed.href;
  } else {
    // The agent's own rules: the configuration file, then the environment, then the flags.
    // Sections of third-party plugins (plugin_modules) are not checked: only metrics is read.
    const config = loadConfig({
      allowUnknownPlugins: true,
      file: flags.config ?? env.REDPROBE_CONFIG,
      env,
      overrides: {
        metricsAddress: flags["metrics-address"],
        metricsPort: flags["metrics-port"],
      },
      plugins,
    });
    url = `http://${connectHost(config.metrics.address)}:${config.metrics.port}/metrics`;
  }
  return { url, intervalMs, once: flags.once ?? false, sort: sort as SortKey, limit };
}

/** The reason in one of fetch's errors: `Connection refused (os error 111)`, not its wrapping. */
function fetchFailure(e: unknown): string {
  if (e instanceof DOMException && e.name === "TimeoutError") {
    return `no answer within ${FETCH_TIMEOUT_MS / 1000} s`;
  }
  const error = e as Error;
  const inner = error.cause instanceof Error ? error.cause.message : error.message;
  const parts = inner.replace(/^error sending request for url \([^)]*\): /, "").split(": ");
  return parts[parts.length - 1] || inner;
}

/** One scrape of `url`, reduced to rows. Throws a ScrapeError naming the URL. */
export async function scrape(url: string): Promise<{ snapshot: RedSnapshot; at: number }> {
  let text: string;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(FETCH_TIMEOUT_MS) });
    text = await res.text();
    if (!res.ok) throw new ScrapeError(`cannot read ${url}: HTTP ${res.status} ${res.statusText}`);
  } catch (e) {
    if (e instanceof ScrapeError) throw e;
    throw new ScrapeError(`cannot read ${url}: ${fetchFailure(e)} (is the agent running?)`);
  }
  const at = performance.now();
  try {
    return { snapshot: aggregate(parsePrometheusText(text)), at };
  } catch (e) {
    throw new ScrapeError(`${url} is not a Prometheus endpoint: ${(e as Error).message}`);
  }
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}

/** The lines above the table: where, when, and what window the numbers cover. */
function titleLines(
  options: TopOptions,
  live: boolean,
  window: { seconds?: number; cumulative: boolean },
  shown: number,
  status?: string,
): string[] {
  const time = new Date().toTimeString().slice(0, 8);
  const first = live
    ? `redprobe top  ${options.url}  ${time}  every ${seconds(options.intervalMs)}  (Ctrl-C quits)`
    : `redprobe top  ${options.url}  ${time}`;
  let what: string;
  if (window.seconds === undefined) {
    what = live
      ? "first scrape: ERR%, P50, P99 since the agent started (cumulative); RATE from the next refresh"
      : "ERR%, P50, P99 since the agent started (cumulative); no RATE with --interval 0";
  } else if (window.cumulative) {
    what = `RATE over ${window.seconds.toFixed(1)} s; ERR%, P50, P99 since the agent started ` +
      "(cumulative)";
  } else {
    what = `RATE, ERR%, P50, P99 over the last ${window.seconds.toFixed(1)} s`;
  }
  const rows = `${shown} row${shown === 1 ? "" : "s"}, by ${options.sort}`;
  return [first, status ?? `${what}; ${rows}`, ""];
}

function frameLines(
  rows: RedRow[],
  options: TopOptions,
  live: boolean,
  window: { seconds?: number; cumulative: boolean },
  size: { columns: number; rows?: number },
  status?: string,
): string[] {
  const sorted = sortRows(rows, options.sort);
  const title = titleLines(options, live, window, sorted.length, status);
  const limited = sorted.slice(0, options.limit ?? sorted.length);
  const note = limited.length < sorted.length
    ? [`… ${sorted.length - limited.length} more rows (--limit ${options.limit})`]
    : [];
  // On a terminal, leave its last line free so that drawing never scrolls.
  const maxRows = size.rows === undefined
    ? undefined
    : Math.max(1, size.rows - title.length - note.length - 2);
  const table = renderTable(limited, { width: size.columns, maxRows });
  if (!sorted.length) table.push("(no request measured yet)");
  return [...title, ...table, ...note].map((l) => truncate(l, size.columns));
}

function defaultTerminal(): TopTerminal | null {
  if (!Deno.stdout.isTerminal()) return null;
  const encoder = new TextEncoder();
  return {
    write: (text) => {
      const bytes = encoder.encode(text);
      let written = 0;
      while (written < bytes.length) written += Deno.stdout.writeSync(bytes.subarray(written));
    },
    size: () => Deno.consoleSize(),
  };
}

function sleep(ms: number, stop: Promise<void>): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const slept = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, ms));
  });
  return Promise.race([slept, stop.then(() => true)]).finally(() => clearTimeout(timer));
}

/** One table: two scrapes an interval apart (one with interval 0), printed once. */
async function once(options: TopOptions, io: TopIo): Promise<number> {
  const first = await scrape(options.url);
  let rows: RedRow[];
  let window: { seconds?: number; cumulative: boolean };
  if (options.intervalMs > 0) {
    await new Promise((r) => setTimeout(r, options.intervalMs));
    const second = await scrape(options.url);
    const secs = (second.at - first.at) / 1000;
    rows = redRows(second.snapshot, {
      previous: { snapshot: first.snapshot, seconds: secs },
      cumulative: true,
    });
    window = { seconds: secs, cumulative: true };
  } else {
    rows = redRows(first.snapshot);
    window = { cumulative: true };
  }
  io.out(frameLines(rows, options, false, window, { columns: PIPE_WIDTH }).join("\n"));
  return 0;
}

const HIDE_CURSOR = "\x1b[?25l";
const SHOW_CURSOR = "\x1b[?25h";
const CLEAR_SCREEN = "\x1b[2J";
const HOME = "\x1b[H";
const CLEAR_LINE_END = "\x1b[K";
const CLEAR_BELOW = "\x1b[J";

/** The live view: redraw every interval until SIGINT or SIGTERM. */
async function live(
  options: TopOptions,
  terminal: TopTerminal,
  signal?: AbortSignal,
): Promise<number> {
  // The first scrape decides whether there is anything to show at all.
  let current = await scrape(options.url);
  let previous: typeof current | undefined;
  let status: string | undefined;

  const stop = Promise.withResolvers<void>();
  const onStop = () => stop.resolve();
  signal?.addEventListener("abort", onStop);
  if (signal?.aborted) onStop();
  const draw = () => {
    const rows = redRows(
      current.snapshot,
      previous
        ? { previous: { snapshot: previous.snapshot, seconds: (current.at - previous.at) / 1000 } }
        : {},
    );
    const window = {
      seconds: previous ? (current.at - previous.at) / 1000 : undefined,
      cumulative: !previous,
    };
    const lines = frameLines(rows, options, true, window, terminal.size(), status);
    terminal.write(HOME + lines.map((l) => l + CLEAR_LINE_END).join("\n") + CLEAR_BELOW);
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, onStop);
  Deno.addSignalListener("SIGWINCH", draw);
  terminal.write(HIDE_CURSOR + CLEAR_SCREEN);
  try {
    let due = performance.now();
    while (true) {
      draw();
      // Refresh on a fixed schedule (a slow scrape does not push the next one back).
      due = Math.max(due + options.intervalMs, performance.now());
      if (await sleep(due - performance.now(), stop.promise)) break;
      try {
        const next = await scrape(options.url);
        previous = current;
        current = next;
        status = undefined;
      } catch (e) {
        // The agent went away (or restarted): keep the last table and say so; keep trying.
        status = `${(e as Error).message}; retrying every ${seconds(options.intervalMs)}`;
      }
    }
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, onStop);
    Deno.removeSignalListener("SIGWINCH", draw);
    signal?.removeEventListener("abort", onStop);
    terminal.write(SHOW_CURSOR + "\n");
  }
  return 0;
}

/** `redprobe top ARGS`; resolves to the exit status. */
export async function runTop(
  args: string[],
  plugins: readonly AnyPlugin[],
  io: TopIo,
): Promise<number> {
  let parsed;
  try {
    parsed = parseOptions(args, plugins, io.env);
  } catch (e) {
    if (e instanceof ConfigError) {
      io.err(`redprobe top: ${e.message}`);
      return 2;
    }
    if (e instanceof UsageError) {
      io.err(`redprobe top: ${e.message}\nRun "redprobe top --help" for the flags.`);
      return 2;
    }
    throw e;
  }
  if (parsed === "help") {
    io.out(TOP_USAGE);
    return 0;
  }
  const options: TopOptions = parsed;
  const terminal = io.terminal === undefined ? defaultTerminal() : io.terminal;
  if (!options.once && terminal && options.intervalMs < MIN_LIVE_INTERVAL_MS) {
    io.err(
      `redprobe top: --interval must be at least ${MIN_LIVE_INTERVAL_MS}ms for the live view ` +
        "(--interval 0 works with --once)",
    );
    return 2;
  }
  try {
    return options.once || !terminal
      ? await once(options, io)
      : await live(options, terminal, io.signal);
  } catch (e) {
    if (e instanceof ScrapeError) {
      io.err(`redprobe top: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
