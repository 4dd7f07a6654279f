/**
 * What the benchmarks of scripts/ share: their flags, the agent started as a user would start
 * it, CPU time from /proc, wrk run pinned (at saturation, or paced for latency at a rate) and its
 * output read, the BPF programs' own run statistics and their per-request table, medians and
 * spreads, and the results written as markdown and JSON.
 *
 * @module
 */
import { testCertificate } from "../../tests/support/tls.ts";
import { nginxArgs } from "../../tests/support/nginx_config.ts";
import { portAccepts, waitFor } from "../../tests/support/wait.ts";
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parsePrometheusText, type Sample } from "../../tests/support/prom_text.ts";
import { AGENT_ENV, AGENT_RUN_FLAGS } from "./agent_flags.ts";

/** The repository's root directory. */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

export interface BenchArgs {
  rounds: number;
  seconds: number;
  /** Where the markdown goes (the JSON beside it, `.json` for `.md`); none: stdout only. */
  out?: string;
  /** wrk's connections at saturation. */
  connections: number;
  /** `--tls`: the server speaks HTTPS (benchmarks that support it). */
  tls: boolean;
  /**
   * `--max-steal P`: a round counts in the summary only if the hypervisor took less than P% of
   * the machine's CPU time during each of its measured runs (see {@linkcode stealDuring});
   * benchmarks that support it run more rounds, up to three times `rounds`, to get `rounds`
   * clean ones.
   */
  maxStealPct: number;
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
      "max-steal": { type: "string", default: "2" },
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
    maxStealPct: (() => {
      const n = Number(values["max-steal"]);
      if (!(n > 0 && n <= 100)) throw new Error("--max-steal must be a percentage in (0, 100]");
      return n;
    })(),
  };
}

/**
 * The steal of one round's measured runs: each run goes through {@linkcode StealLog.measured},
 * and the round is as clean as its worst run.
 */
export class StealLog {
  readonly #pcts: number[] = [];
  /** `fn`'s value; the steal during it is kept for the round. */
  async measured<T>(fn: () => Promise<T>): Promise<T> {
    const { value, stealPct } = await stealDuring(fn);
    this.#pcts.push(stealPct);
    return value;
  }
  /** The most steal of the round's measured runs, %. */
  get pct(): number {
    return Math.max(0, ...this.#pcts);
  }
  /** Whether the round counts in the summary (`--max-steal`). */
  clean(maxStealPct: number): boolean {
    return this.pct < maxStealPct;
  }
}

/** Whether to run another round: fewer than `wanted` clean ones so far, at most 3 × `wanted`. */
export function anotherRound(rounds: readonly { clean: boolean }[], wanted: number): boolean {
  return rounds.filter((r) => r.clean).length < wanted && rounds.length < wanted * 3;
}

/** The rounds a summary is of: the clean ones, or all of them if none was (results say so). */
export function roundsInSummary<R extends { clean: boolean }>(rounds: R[]): R[] {
  return rounds.some((r) => r.clean) ? rounds.filter((r) => r.clean) : rounds;
}

/** The machine's steal time so far (/proc/stat, all CPUs), in clock ticks (USER_HZ, 100/s). */
function stealTicks(): number {
  const cpu = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/);
  return Number(cpu[8] ?? 0); // cpu user nice system idle iowait irq softirq steal
}

/**
 * Runs `fn` and says what share of the machine's CPU time (every CPU, wall time of the call) the
 * hypervisor gave to other guests meanwhile: the "steal" of /proc/stat. On these shared VMs a
 * burst of steal slows one run of a pair and not the other, by far more than the agent costs
 * (rounds of the same benchmark swung from -33% to +137% on a morning with ~16% steal), so the
 * benchmarks report it per run and leave rounds with too much of it out of their summaries.
 */
export async function stealDuring<T>(
  fn: () => Promise<T>,
): Promise<{ value: T; stealPct: number }> {
  const ticks = stealTicks();
  const started = performance.now();
  const value = await fn();
  const seconds = (performance.now() - started) / 1000;
  const cpus = navigator.hardwareConcurrency || 1;
  return { value, stealPct: ((stealTicks() - ticks) / 100) / (seconds * cpus) * 100 };
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

/**
 * The benchmarks' nginx: one worker pinned to CPU 0, keep-alive without limit, sendfile on,
 * access log on, serving the 6-byte file `/hello` on 127.0.0.1 (HTTPS with `tls`: TLS 1.3,
 * the tests' certificate); `worker()` is the worker's pid, whose CPU time is the figure to read.
 */
export async function startBenchNginx(
  options: { tls?: boolean } = {},
): Promise<{ port: number; worker: () => number; stop: () => Promise<void> }> {
  const tls = options.tls ?? false;
  const dir = await Deno.makeTempDir({ prefix: "redprobe-bench-nginx-" });
  const port = freePort();
  await Deno.mkdir(`${dir}/html`);
  await Deno.writeTextFile(`${dir}/html/hello`, "hello\n");
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    `worker_processes 1;
worker_cpu_affinity 01;
user root root;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 1024; }
http {
  access_log ${dir}/access.log;
  sendfile on;
  keepalive_requests 100000000;
  client_body_temp_path ${dir}/tmp; proxy_temp_path ${dir}/tmp; fastcgi_temp_path ${dir}/tmp;
  uwsgi_temp_path ${dir}/tmp; scgi_temp_path ${dir}/tmp;
  server {
    listen 127.0.0.1:${port}${tls ? " ssl" : ""}; root ${dir}/html;${
      tls
        ? `
    ssl_certificate ${testCertificate().cert}; ssl_certificate_key ${testCertificate().key};`
        : ""
    }
  }
}
`,
  );
  const child = new Deno.Command("/usr/sbin/nginx", {
    args: nginxArgs(dir),
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitFor(() => portAccepts(port), { timeoutMs: 5_000, what: `nginx on port ${port}` });
  return {
    port,
    // The one worker (nginx's child): its CPU time per request includes the probes' time.
    worker: () =>
      Number(
        Deno.readTextFileSync(`/proc/${child.pid}/task/${child.pid}/children`).trim().split(" ")[0],
      ),
    stop: async () => {
      child.kill("SIGQUIT");
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

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
  /** Or the configuration itself: written to a temporary file, removed when the agent stops. */
  config?: unknown;
  /** Then waits this long more (the other processes of the target attached). Default 1000. */
  settleMs?: number;
  /** `taskset -c` of the agent (default: unpinned). */
  cpu?: string;
  /** More command-line arguments (`--log-level debug`). */
  extraArgs?: string[];
  /** The Deno executable to run the agent with. Default: this script's (Deno.execPath()). */
  deno?: string;
}

/**
 * The agent as a user runs it (main.ts with `deno run -A`, unpinned), its metrics on a free
 * port of 127.0.0.1; resolves once its log matches `until`.
 */
export async function startAgent(options: StartAgentOptions): Promise<Agent> {
  let configPath = options.configPath;
  let tempConfig: string | undefined;
  if (options.config !== undefined) {
    configPath = tempConfig = await Deno.makeTempFile({
      prefix: "redprobe-bench-",
      suffix: ".json",
    });
    await Deno.writeTextFile(tempConfig, JSON.stringify(options.config));
  }
  const removeTempConfig = () => tempConfig && Deno.remove(tempConfig).catch(() => {});
  const metricsPort = freePort();
  const spawned = performance.now();
  const deno = options.deno ?? Deno.execPath();
  const child = new Deno.Command(options.cpu ? "taskset" : deno, {
    args: [
      ...(options.cpu ? ["-c", options.cpu, deno] : []),
      "run",
      "-A",
      "--quiet",
      ...AGENT_RUN_FLAGS,
      join(options.root ?? ROOT, "main.ts"),
      "--metrics-address",
      "127.0.0.1",
      "--metrics-port",
      String(metricsPort),
      ...(configPath ? ["--config", configPath] : []),
      ...(options.extraArgs ?? []),
    ],
    env: AGENT_ENV,
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  while (!options.until.test(log)) {
    const { value, done } = await reader.read();
    if (done) {
      await removeTempConfig();
      throw new Error(`agent exited:\n${log}`);
    }
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
      await removeTempConfig();
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

/**
 * Sum of the samples named `name` whose labels pass `filter`, once two scrapes 100 ms apart
 * agree (at most 2 s). The client can read a response, count it and stop before the probe at
 * the end of the server's write has counted it: loopback delivers inside the write, and the
 * hypervisor can deschedule the server's vCPU right there. One scrape just after wrk stopped
 * once came out a request short (otel-node, 23% steal).
 */
export async function sumMetric(
  metricsPort: number,
  name: string,
  filter: (labels: Record<string, string>) => boolean = () => true,
): Promise<number> {
  const sum = async () =>
    (await scrape(metricsPort))
      .filter((s) => s.name === name && filter(s.labels))
      .reduce((n, s) => n + s.value, 0);
  let last = await sum();
  for (let i = 0; i < 20; i++) {
    await sleep(100);
    const now = await sum();
    if (now === last) break;
    last = now;
  }
  return last;
}

/** Per process, per thread: the last schedstat read, and what earlier threads of that tid ran. */
const threadTimes = new Map<number, Map<string, { base: number; last: number }>>();

/**
 * Nanoseconds `pid` (all its threads) has run on a CPU: /proc/<pid>/task/<tid>/schedstat.
 * A thread that exits takes its schedstat with it, so each thread's last value read is kept:
 * the difference of two calls is the time of the threads alive at both, plus that of the threads
 * started in between, minus nothing for the threads that exited (only their time since the last
 * call is lost). Without this, the agent's CPU per request came out negative when a worker
 * thread that had run for a while (the x86 decoder's) exited during a measurement.
 */
export function cpuNs(pid: number): number {
  let threads = threadTimes.get(pid);
  if (!threads) threadTimes.set(pid, threads = new Map());
  for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
    let now: number;
    try {
      now = Number(Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/schedstat`).split(" ")[0]);
    } catch {
      continue; // thread exited
    }
    const t = threads.get(task.name);
    if (!t) threads.set(task.name, { base: 0, last: now });
    else {
      if (now < t.last) t.base += t.last; // the tid was reused by a new thread
      t.last = now;
    }
  }
  let ns = 0;
  for (const t of threads.values()) ns += t.base + t.last;
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
  return parseWrk(await runWrk(options));
}

/** `wrk -t1 -c<connections> -d<seconds>s [extra] URL`, pinned; its output. */
function runWrk(options: LoadOptions, extra: string[] = []): Promise<string> {
  return run("taskset", [
    "-c",
    options.cpu ?? "1",
    "wrk",
    "-t1",
    `-c${options.connections}`,
    `-d${options.seconds}s`,
    ...extra,
    options.url,
  ]);
}

/** A process's resident memory (VmRSS), in MB. */
export function rssMb(pid: number): number {
  const kb = Number(/^VmRSS:\s+(\d+)/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1]);
  return kb / 1024;
}

export interface PacedLatency {
  /** The rate asked for, req/s. */
  rate: number;
  /** The rate reached in the measured run (wrk's Requests/sec). */
  rps: number;
  /** wrk's connections in the measured run (from {@linkcode calibratePacing}). */
  connections: number;
  /** Completed requests in the measured run. */
  requests: number;
  /** Median and 99th percentile of wrk's `--latency` distribution, ms (µs resolution). */
  p50Ms: number;
  p99Ms: number;
  non2xx: number;
  socketErrors: number;
}

/** One of wrk's durations ("123.45us", "1.20ms", "2.00s") in ms. */
function wrkDurationMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text);
  if (!m) throw new Error(`cannot read wrk duration "${text}"`);
  const scale = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as "us"];
  return Number(m[1]) * scale;
}

/** p50 and p99 of wrk's "Latency Distribution" block (`wrk --latency`), ms. */
export function parseWrkLatencyMs(text: string): { p50: number; p99: number } {
  const block = /Latency Distribution\n((?:\s+\d+%\s+\S+\n)+)/.exec(text)?.[1];
  const at = (pct: number) => {
    const m = new RegExp(`^\\s+${pct}%\\s+(\\S+)$`, "m").exec(block ?? "");
    if (!m) throw new Error(`cannot read wrk's latency distribution:\n${text}`);
    return wrkDurationMs(m[1]);
  };
  return { p50: at(50), p99: at(99) };
}

/** The Lua script that makes each of wrk's connections wait 1 ms after a response. */
let pacingScript: string | undefined;
async function wrkPacingScript(): Promise<string> {
  if (!pacingScript) {
    const path = await Deno.makeTempFile({ prefix: "redprobe-bench-pace-", suffix: ".lua" });
    // wrk calls delay() after each response; the connection sends its next request that many
    // milliseconds later (a timer of wrk's event loop). Latency is timed from the send.
    await Deno.writeTextFile(path, "function delay()\n  return 1\nend\n");
    pacingScript = path;
    globalThis.addEventListener("unload", () => {
      try {
        Deno.removeSync(path);
      } catch { /* gone */ }
    });
  }
  return pacingScript;
}

/** `wrk -t1 -c<connections> -d<seconds>s --latency -s <1 ms pacing> URL`, pinned. */
async function pacedWrk(
  options: LoadOptions,
): Promise<WrkResult & { p50Ms: number; p99Ms: number }> {
  const text = await runWrk(options, ["--latency", "-s", await wrkPacingScript()]);
  const { p50, p99 } = parseWrkLatencyMs(text);
  return { ...parseWrk(text), p50Ms: p50, p99Ms: p99 };
}

export interface PacingCalibration {
  rate: number;
  /** The connections to use. */
  connections: number;
  /** The calibration runs: connections tried and the rate each reached. */
  tries: { connections: number; rps: number }[];
}

/**
 * How many paced connections (see {@linkcode pacedLatency}) send about `rate` req/s to `url`:
 * first guessed as rate × (1 ms + `expectedLatencyMs`) / 1000, then runs of `seconds` (default
 * 2) measure the rate reached and scale the count by asked / reached, until a run is within 5%
 * of the rate or after `tries` runs (default 3). Run it against the server without the agent
 * and use the count for every configuration: the same offered load for each.
 */
export async function calibratePacing(
  options: Omit<LoadOptions, "connections" | "seconds"> & {
    rate: number;
    seconds?: number;
    tries?: number;
    /** Default 0.3. */
    expectedLatencyMs?: number;
  },
): Promise<PacingCalibration> {
  let connections = Math.max(
    1,
    Math.round(options.rate * (1 + (options.expectedLatencyMs ?? 0.3)) / 1000),
  );
  const tries: { connections: number; rps: number }[] = [];
  for (let i = 0; i < (options.tries ?? 3); i++) {
    const w = await pacedWrk({ ...options, seconds: options.seconds ?? 2, connections });
    tries.push({ connections, rps: w.rps });
    if (Math.abs(w.rps / options.rate - 1) <= 0.05) break;
    connections = Math.min(
      connections * 4,
      Math.max(1, Math.round(connections * options.rate / w.rps)),
    );
  }
  // The try closest to the rate, corrected by its asked / reached (the last one may have
  // overshot).
  const best = tries.reduce((a, b) =>
    Math.abs(b.rps / options.rate - 1) < Math.abs(a.rps / options.rate - 1) ? b : a
  );
  return {
    rate: options.rate,
    connections: Math.abs(best.rps / options.rate - 1) <= 0.05
      ? best.connections
      : Math.max(1, Math.round(best.connections * options.rate / best.rps)),
    tries,
  };
}

/**
 * p50 and p99 at about a fixed total rate, with wrk (C, epoll: one pinned core sends far more
 * than hey, which could not reach the rates asked here, and its latency distribution has µs
 * resolution where hey's has 0.1 ms): the `calibration`'s connections, each sending its next
 * request 1 ms after the previous response (`delay()` in a Lua script), so a closed loop with
 * think time, approximately at the rate {@linkcode calibratePacing} found the count for. wrk's
 * timers have 1 ms resolution: the connections whose responses came in the same millisecond send
 * their next requests together, in bursts. The rate reached is returned with the rate asked:
 * report both.
 */
export async function pacedLatency(
  options: Omit<LoadOptions, "connections"> & { calibration: PacingCalibration },
): Promise<PacedLatency> {
  const connections = options.calibration.connections;
  const w = await pacedWrk({ ...options, connections });
  return {
    rate: options.calibration.rate,
    rps: w.rps,
    connections,
    requests: w.requests,
    p50Ms: w.p50Ms,
    p99Ms: w.p99Ms,
    non2xx: w.non2xx,
    socketErrors: w.socketErrors,
  };
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

export interface ProgramRun {
  hits: number;
  runTimeNs: number;
  hitsPerRequest: number;
  /** run_time_ns / run_cnt: the program only (no trap, no single-step); 0 if it did not run. */
  nsPerHit: number;
}

/** A {@linkcode programStatsDelta} over an interval of `requests` requests, per program name. */
export function programRuns(
  delta: Map<string, ProgramStats>,
  requests: number,
): Record<string, ProgramRun> {
  return Object.fromEntries(
    [...delta].sort(([x], [y]) => x.localeCompare(y)).map(([name, s]) => [name, {
      hits: s.runCnt,
      runTimeNs: s.runTimeNs,
      hitsPerRequest: s.runCnt / requests,
      nsPerHit: s.runCnt ? s.runTimeNs / s.runCnt : 0,
    }]),
  );
}

/**
 * The programs of the agent `agentPid` per request, over a load of their own (`load`, a short
 * wrk run) with `kernel.bpf_stats_enabled` on for that load only: the accounting costs some
 * tens of ns per program run, and the throughput runs must not pay it. Restores the setting.
 */
export async function programRunsOver(
  agentPid: number,
  load: () => Promise<{ requests: number }>,
): Promise<Record<string, ProgramRun>> {
  const old = await bpfStatsEnabled();
  await setBpfStatsEnabled("1");
  try {
    const ids = bpfProgramIdsOf(agentPid);
    const before = await bpfProgramStats(ids);
    const { requests } = await load();
    return programRuns(programStatsDelta(before, await bpfProgramStats(ids)), requests);
  } finally {
    await setBpfStatsEnabled(old);
  }
}

/** Median, smallest and largest. */
export interface Stat {
  median: number;
  min: number;
  max: number;
}

export function stat(xs: number[]): Stat {
  return { median: median(xs), ...spread(xs) };
}

/** `median (min … max)`, or "–" when there was nothing to take the median of. */
export function formatStat(s: Stat, digits = 2, unit = ""): string {
  const f = (x: number) => x.toFixed(digits);
  return Number.isNaN(s.median) ? "–" : `${f(s.median)}${unit} (${f(s.min)} … ${f(s.max)})`;
}

export interface ProgramSummary {
  hitsPerRequest: Stat;
  nsPerHit: Stat;
  nsPerRequest: Stat;
}

/** Per program name, over the rounds' {@linkcode programRuns} (undefined: no agent that round). */
export function summarizePrograms(
  rounds: (Record<string, ProgramRun> | undefined)[],
): Record<string, ProgramSummary> {
  const names = [...new Set(rounds.flatMap((r) => Object.keys(r ?? {})))].sort();
  return Object.fromEntries(
    names.map((name) => {
      const runs = rounds.map((r) => r?.[name]).filter((p): p is ProgramRun => p !== undefined);
      return [name, {
        hitsPerRequest: stat(runs.map((p) => p.hitsPerRequest)),
        // Programs that did not run (the client probes of a server) have no time per hit.
        nsPerHit: stat(runs.filter((p) => p.hits > 0).map((p) => p.nsPerHit)),
        nsPerRequest: stat(runs.map((p) => p.hitsPerRequest * p.nsPerHit)),
      }];
    }),
  );
}

/** The programs' run time per request in one round, all of them or those `names`. */
export function programNsPerRequest(runs: Record<string, ProgramRun>, names?: string[]): number {
  return Object.entries(runs)
    .filter(([name]) => !names || names.includes(name))
    .reduce((n, [, p]) => n + p.hitsPerRequest * p.nsPerHit, 0);
}

/**
 * The "Probe hits per request" section of a report on {@linkcode programRunsOver}'s counts: how
 * they were taken (a `statsSeconds` s wrk run right after `whose` saturation run), the table, and
 * the totals. `uprobes`: say that run_time_ns leaves out the trap around each uprobe hit.
 */
export function probeHitsSection(options: {
  title: string;
  statsSeconds: number;
  whose: string;
  uprobes?: boolean;
  programs: Record<string, ProgramSummary>;
  hitsPerRequest: Stat;
  bpfNsPerRequest: Stat;
}): string[] {
  return [
    `## ${options.title}`,
    ``,
    `The agent's programs (the prog ids its fds hold), \`bpftool prog show -j\` before and after ` +
    `a separate ${options.statsSeconds} s wrk run right after ${options.whose} saturation run ` +
    `(bpf_stats on for that run only), run_cnt and run_time_ns summed per program name, divided ` +
    `by the requests wrk completed. Median (min … max) over the rounds. The socket programs run ` +
    `for wrk's reads and writes too (they leave wrk's at their first filter): their hits count ` +
    `both sides of the connection. run_time_ns is the program only${
      options.uprobes ? " (not the uprobe trap around each uprobe hit)" : ""
    }; the stats accounting adds some tens of ns per run.`,
    ``,
    ...programTable([{ programs: options.programs }], undefined, true),
    ``,
    `All programs: ${formatStat(options.hitsPerRequest, 2)} hits and ` +
    `${formatStat(options.bpfNsPerRequest, 0, " ns")} of program time per request.`,
  ];
}

/**
 * The markdown table of {@linkcode summarizePrograms}: per program, hits per request, ns per hit
 * and ns per request, median (min … max). With `labelHeader`, a first column of each group's
 * label (several configurations in one table).
 */
export function programTable(
  groups: { label?: string; programs: Record<string, ProgramSummary> }[],
  labelHeader?: string,
  /** Leave out the programs that never ran, and name them after the table instead. */
  omitIdle = false,
): string[] {
  if (omitIdle) {
    const idle = [
      ...new Set(
        groups.flatMap((g) =>
          Object.entries(g.programs).filter(([, p]) => p.hitsPerRequest.max === 0).map(([n]) => n)
        ),
      ),
    ].sort();
    const busy = groups.map((g) => ({
      ...g,
      programs: Object.fromEntries(
        Object.entries(g.programs).filter(([, p]) => p.hitsPerRequest.max > 0),
      ),
    }));
    return [
      ...programTable(busy, labelHeader),
      ...(idle.length
        ? [``, `Loaded but not run in any round: ${idle.map((n) => `\`${n}\``).join(", ")}.`]
        : []),
    ];
  }
  const first = labelHeader ? `| ${labelHeader} ` : "";
  return [
    `${first}| program | hits per request | ns per hit | ns per request |`,
    `${labelHeader ? "|---" : ""}|---|---|---|---|`,
    ...groups.flatMap((g) =>
      Object.entries(g.programs).map(([name, p]) =>
        `${labelHeader ? `| ${g.label ?? ""} ` : ""}| \`${name}\` | ` +
        `${formatStat(p.hitsPerRequest, 3)} | ${formatStat(p.nsPerHit, 0)} | ` +
        `${formatStat(p.nsPerRequest, 0)} |`
      )
    ),
  ];
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
  const jsonOut = out.replace(/\.md$/, ".json");
  await Deno.writeTextFile(out, markdown);
  await Deno.writeTextFile(jsonOut, JSON.stringify(json, null, 2) + "\n");
  // As `deno fmt` would have them (tables aligned), so the committed files pass `deno fmt --check`.
  await new Deno.Command(Deno.execPath(), { args: ["fmt", "--quiet", out, jsonOut] }).output();
}
