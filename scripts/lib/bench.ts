/**
 * What the benchmarks of scripts/ share: their flags, the agent started as a user would start
 * it, CPU time from /proc, wrk and hey run pinned and their output read, the BPF programs' own
 * run statistics, medians and spreads, and the results written as markdown and JSON.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parsePrometheusText, type Sample } from "../../tests/support/prom_text.ts";
import { AGENT_V8_FLAGS } from "./agent_flags.ts";

/** The repository's root directory. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export interface BenchArgs {
  rounds: number;
  seconds: number;
  /** Where the markdown goes (the JSON beside it, `.json` for `.md`); none: stdout only. */
  out?: string;
  /** wrk's and hey's connections. */
  connections: number;
  /** `--tls`: the server speaks HTTPS (benchmarks that support it). */
  tls: boolean;
}

/** `--rounds N --seconds S --out FILE --connections C [--tls]` from `Deno.args`, with `defaults`. */
export function parseBenchArgs(
  defaults: { rounds?: number; seconds?: number; out?: string; connections?: number } = {},
): BenchArgs {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      rounds: { type: "string", default: String(defaults.rounds ?? 5) },
      seconds: { type: "string", default: String(defaults.seconds ?? 10) },
      out: { type: "string", ...(defaults.out !== undefined ? { default: defaults.out } : {}) },
      connections: { type: "string", default: String(defaults.connections ?? 10) },
      tls: { type: "boolean", default: false },
    },
  });
  const positive = (name: string, text: string) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer`);
    return n;
  };
  return {
    rounds: positive("rounds", values.rounds),
    seconds: positive("seconds", values.seconds),
    out: values.out || undefined,
    connections: positive("connections", values.connections),
    tls: values.tls,
  };
}

/** The command line this benchmark was started with, as one would type it from ROOT. */
export function commandLine(script: string): string {
  return ["deno", "run", "-A", script, ...Deno.args].join(" ");
}

/** A TCP port nothing listens on now (127.0.0.1). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Runs `cmd` to its end; stdout and stderr together. Throws when it fails. */
export async function run(cmd: string, cmdArgs: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args: cmdArgs, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`${cmd} ${cmdArgs.join(" ")} failed:\n${text}`);
  return text;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Agent {
  pid: number;
  metricsPort: number;
  /** Everything the agent has logged so far. */
  log(): string;
  /** Milliseconds from spawning the agent to its log matching `until`. */
  startedMs: number;
  stop(): Promise<void>;
}

export interface StartAgentOptions {
  /** Started once its log matches this (e.g. `instrumenting pid 123 `). */
  until: RegExp;
  /** The tree whose main.ts runs (e.g. a {@linkcode snapshotWorkingTree}). Default: ROOT. */
  root?: string;
  /** `--config FILE`. */
  configPath?: string;
  /** Then waits this long more (the other processes of the target attached). Default 1000. */
  settleMs?: number;
  /** `taskset -c` of the agent (default: unpinned). */
  cpu?: string;
  /** More command-line arguments (`--log-level debug`). */
  extraArgs?: string[];
}

/**
 * The agent as a user runs it (main.ts with `deno run -A`, unpinned), its metrics on a free
 * port of 127.0.0.1; resolves once its log matches `until`.
 */
export async function startAgent(options: StartAgentOptions): Promise<Agent> {
  const metricsPort = freePort();
  const spawned = performance.now();
  const child = new Deno.Command(options.cpu ? "taskset" : Deno.execPath(), {
    args: [
      ...(options.cpu ? ["-c", options.cpu, Deno.execPath()] : []),
      "run",
      "-A",
      "--quiet",
      AGENT_V8_FLAGS,
      join(options.root ?? ROOT, "main.ts"),
      "--metrics-address",
      "127.0.0.1",
      "--metrics-port",
      String(metricsPort),
      ...(options.configPath ? ["--config", options.configPath] : []),
      ...(options.extraArgs ?? []),
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  while (!options.until.test(log)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`agent exited:\n${log}`);
    log += value;
  }
  const startedMs = performance.now() - spawned;
  (async () => {
    // Keep the pipe drained, and the log.
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      log += value;
    }
  })();
  await sleep(options.settleMs ?? 1000);
  return {
    pid: child.pid,
    metricsPort,
    log: () => log,
    startedMs,
    stop: async () => {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

export interface TreeSnapshot {
  dir: string;
  /** SHA-256 of the files' paths and contents (the first 12 hex digits). */
  digest: string;
  files: number;
  remove(): Promise<void>;
}

/**
 * A copy of the repository's working tree as it is now (tracked and untracked files, not the
 * ignored ones) in a temporary directory: a benchmark that starts the agent many times then
 * measures one version of the code even while the tree is being edited.
 */
export async function snapshotWorkingTree(): Promise<TreeSnapshot> {
  const out = await new Deno.Command("git", {
    args: ["-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    stdout: "piped",
  }).output();
  if (!out.success) throw new Error("git ls-files failed");
  const paths = [...new Set(new TextDecoder().decode(out.stdout).split("\0").filter(Boolean))]
    .sort();
  const dir = await Deno.makeTempDir({ prefix: "redprobe-bench-tree-" });
  const parts: Uint8Array[] = [];
  const encoder = new TextEncoder();
  let files = 0;
  for (const path of paths) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(join(ROOT, path));
    } catch {
      continue; // deleted in the working tree
    }
    await Deno.mkdir(dirname(join(dir, path)), { recursive: true });
    await Deno.writeFile(join(dir, path), bytes);
    parts.push(encoder.encode(`${path}\0${bytes.length}\0`), bytes);
    files++;
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  const hash = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return {
    dir,
    digest: [...hash.slice(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join(""),
    files,
    remove: () => Deno.remove(dir, { recursive: true }),
  };
}

/** The agent's metrics, parsed. */
export async function scrape(metricsPort: number): Promise<Sample[]> {
  const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
  return parsePrometheusText(await res.text());
}

/** Sum of the samples named `name` whose labels pass `filter`. */
export async function sumMetric(
  metricsPort: number,
  name: string,
  filter: (labels: Record<string, string>) => boolean = () => true,
): Promise<number> {
  return (await scrape(metricsPort))
    .filter((s) => s.name === name && filter(s.labels))
    .reduce((n, s) => n + s.value, 0);
}

/** Nanoseconds `pid` (all its threads) has run on a CPU: /proc/<pid>/task/<tid>/schedstat. */
export function cpuNs(pid: number): number {
  let ns = 0;
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/schedstat`).split(" ")[0]);
    } catch { /* thread exited */ }
  }
  return ns;
}

export interface WrkResult {
  rps: number;
  /** Completed requests (those in flight when wrk stops are not counted). */
  requests: number;
  /** "Non-2xx or 3xx responses". */
  non2xx: number;
  /** connect + read + write + timeout. */
  socketErrors: number;
}

/** Reads wrk's report. */
export function parseWrk(text: string): WrkResult {
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1]);
  const requests = Number(/(\d+) requests in/.exec(text)?.[1]);
  if (!rps) throw new Error(`cannot read wrk output:\n${text}`);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  return {
    rps,
    requests,
    non2xx: Number(/Non-2xx or 3xx responses: (\d+)/.exec(text)?.[1] ?? 0),
    socketErrors: errors ? errors.slice(1).reduce((n, x) => n + Number(x), 0) : 0,
  };
}

export interface LoadOptions {
  url: string;
  seconds: number;
  connections: number;
  /** `taskset -c` of the load generator. Default "1". */
  cpu?: string;
}

/** `wrk -t1 -c<connections> -d<seconds>s URL`, pinned: saturation throughput. */
export async function wrk(options: LoadOptions): Promise<WrkResult> {
  return parseWrk(
    await run("taskset", [
      "-c",
      options.cpu ?? "1",
      "wrk",
      "-t1",
      `-c${options.connections}`,
      `-d${options.seconds}s`,
      options.url,
    ]),
  );
}

/** hey's 99th percentile, in ms. */
export function parseHeyP99Ms(text: string): number {
  return parseHeyLatencyMs(text).p99;
}

/** hey's median and 99th percentile, in ms. */
export function parseHeyLatencyMs(text: string): { p50: number; p99: number } {
  const at = (pct: number) =>
    Number(new RegExp(`${pct}%\\s+in\\s+([\\d.]+)\\s+secs`).exec(text)?.[1]);
  const p50 = at(50), p99 = at(99);
  if (!Number.isFinite(p50) || !Number.isFinite(p99)) {
    throw new Error(`cannot read hey output:\n${text}`);
  }
  return { p50: p50 * 1000, p99: p99 * 1000 };
}

/** A process's resident memory (VmRSS), in MB. */
export function rssMb(pid: number): number {
  const kb = Number(/^VmRSS:\s+(\d+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1]);
  return kb / 1024;
}

/**
 * `hey -z <seconds>s -c <connections> -q <rate/connections>`, pinned: the p99 latency, in ms,
 * at a fixed total rate (hey's -q is per connection).
 */
export async function heyP99(options: LoadOptions & { rate: number }): Promise<number> {
  return (await heyLatency(options)).p99;
}

/**
 * Like {@linkcode heyP99}: the median and the 99th percentile, in ms; and the rate hey reached
 * (its Requests/sec), which is below `rate` when hey, on its one CPU, cannot send that many.
 */
export async function heyLatency(
  options: LoadOptions & { rate: number },
): Promise<{ p50: number; p99: number; rps: number }> {
  const perWorker = Math.max(1, Math.round(options.rate / options.connections));
  const text = await run("taskset", [
    "-c",
    options.cpu ?? "1",
    "hey",
    "-z",
    `${options.seconds}s`,
    "-c",
    String(options.connections),
    "-q",
    String(perWorker),
    options.url,
  ]);
  return { ...parseHeyLatencyMs(text), rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1]) };
}

/** `sysctl kernel.bpf_stats_enabled` (run_cnt and run_time_ns of every BPF program). */
export async function bpfStatsEnabled(): Promise<string> {
  return (await run("sysctl", ["-n", "kernel.bpf_stats_enabled"])).trim();
}

export async function setBpfStatsEnabled(value: string): Promise<void> {
  await run("sysctl", ["-q", "-w", `kernel.bpf_stats_enabled=${value}`]);
}

/** The ids of the BPF programs `pid` holds (a program's fd, or a link's): its fdinfo. */
export function bpfProgramIdsOf(pid: number): Set<number> {
  const ids = new Set<number>();
  for (const fd of Deno.readDirSync(`/proc/${pid}/fdinfo`)) {
    try {
      const m = /^prog_id:\s+(\d+)$/m.exec(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${fd.name}`));
      if (m) ids.add(Number(m[1]));
    } catch { /* closed meanwhile */ }
  }
  return ids;
}

export interface ProgramStats {
  runCnt: number;
  runTimeNs: number;
}

/**
 * run_cnt and run_time_ns of the programs `ids` (`bpftool prog show -j`), summed per program
 * name. Zero unless kernel.bpf_stats_enabled is 1.
 */
export async function bpfProgramStats(ids: Set<number>): Promise<Map<string, ProgramStats>> {
  const all = JSON.parse(await run("bpftool", ["prog", "show", "-j"])) as {
    id: number;
    name?: string;
    run_cnt?: number;
    run_time_ns?: number;
  }[];
  const out = new Map<string, ProgramStats>();
  for (const p of all) {
    if (!ids.has(p.id)) continue;
    const name = p.name ?? `id ${p.id}`;
    const s = out.get(name) ?? { runCnt: 0, runTimeNs: 0 };
    s.runCnt += p.run_cnt ?? 0;
    s.runTimeNs += p.run_time_ns ?? 0;
    out.set(name, s);
  }
  return out;
}

/** `after - before`, per program name. */
export function programStatsDelta(
  before: Map<string, ProgramStats>,
  after: Map<string, ProgramStats>,
): Map<string, ProgramStats> {
  const out = new Map<string, ProgramStats>();
  for (const [name, a] of after) {
    const b = before.get(name) ?? { runCnt: 0, runTimeNs: 0 };
    out.set(name, { runCnt: a.runCnt - b.runCnt, runTimeNs: a.runTimeNs - b.runTimeNs });
  }
  return out;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Smallest and largest. */
export function spread(xs: number[]): { min: number; max: number } {
  return { min: Math.min(...xs), max: Math.max(...xs) };
}

export interface MachineInfo {
  hostname: string;
  nproc: number;
  kernel: string;
  cpuModel: string;
  date: string;
}

export function machineInfo(): MachineInfo {
  let cpuModel = "unknown";
  try {
    cpuModel = /^model name\s*:\s*(.+)$/m.exec(Deno.readTextFileSync("/proc/cpuinfo"))?.[1] ??
      cpuModel;
  } catch { /* not Linux */ }
  return {
    hostname: Deno.hostname(),
    nproc: navigator.hardwareConcurrency,
    kernel: Deno.osRelease(),
    cpuModel,
    date: new Date().toISOString(),
  };
}

/** `markdown` to `out`, `json` (pretty) beside it: `x.md` -> `x.json`. */
export async function writeResults(out: string, markdown: string, json: unknown): Promise<void> {
  await Deno.mkdir(dirname(out), { recursive: true });
  await Deno.writeTextFile(out, markdown);
  await Deno.writeTextFile(out.replace(/\.md$/, ".json"), JSON.stringify(json, null, 2));
}
