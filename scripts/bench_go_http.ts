/**
 * What the agent costs a Go net/http server, and what go-http costs compared with kprobe-http
 * on the same server: in one run, alternating per round,
 *
 *   (a) no agent;
 *   (b) the agent's default configuration (but for kprobe-http's `clients: targets`, so that
 *       wrk is not measured too): this server can serve TLS, so go-http measures it
 *       (uprobes on net/http) and kprobe-http leaves it alone;
 *   (c) the agent with `plugins.go-http.servers: never`: kprobe-http measures the same server
 *       (what the default does for a Go server without TLS code).
 *
 *   deno run -A scripts/bench_go_http.ts [--rounds 5] [--seconds 10] [--connections 10]
 *                                        [--out bench/results/go_http.md]   (--out "": stdout)
 *
 * Setup: the fixture server tests/fixtures/go_http/server built stripped with the machine's Go,
 * GOMAXPROCS=1, pinned to CPU 0 (comparable to the 1-worker nginx of bench_http.ts); route
 * `/users/1` (200, small body), keep-alive; wrk -t1 -c10 pinned to CPU 1; the agent unpinned,
 * started fresh for every measured interval. Throughput at saturation (wrk); p50 and p99 at half
 * of (a)'s throughput of the round; agent and server CPU from /proc schedstat; the agent's BPF
 * programs' run_cnt and run_time_ns per request, over a separate 2 s wrk run right after the
 * saturation run with kernel.bpf_stats_enabled=1 for that run only (programRunsOver: the stats'
 * accounting costs tens of ns per program run, which the measured runs do not pay); and, per
 * interval, whether the agent counted exactly the requests the server says it answered (its
 * /stats route). A benchmark: differences are reported, not asserted.
 *
 * Rounds during which the hypervisor took --max-steal % (default 2) or more of the machine's CPU
 * time in any measured run are reported but left out of the summary, and more rounds run (up to
 * three times --rounds) until --rounds clean ones: see stealDuring() in scripts/lib/bench.ts.
 *
 * Latency at half rate: wrk pinned to CPU 1 with N connections, each sending its next request
 * 1 ms after the previous response (a Lua `delay()`): a closed loop with think time, so only
 * approximately a fixed rate. N comes from the rate (rate × (1 ms + latency) / 1000), corrected
 * by 2 s calibration runs against the server without the agent (until within 5%, at most 3),
 * and is the same for (a), (b) and (c); the rate reached is reported next to the rate asked.
 * Not hey: pinned to one CPU, hey could not send the rates asked (it reached 11–18k req/s of
 * 21–36k), so its "half rate" latencies were at its own ceiling, and it reports latencies to
 * 0.1 ms only; wrk's `--latency` distribution has µs resolution. (hey, a Go client, was also
 * instrumented by go-http in (b).)
 *
 * @module
 */
import { isAbsolute, join, resolve } from "node:path";
import { buildGoFixture, machineGoVersion } from "../tests/support/go_build.ts";
import { analyzeGoBinary, GO_FUNCTIONS, type ProbeSite } from "../plugins/go_http/binary.ts";
import type { Sample } from "../tests/support/prom_text.ts";
import {
  type Agent,
  anotherRound,
  bpfStatsEnabled,
  calibratePacing,
  commandLine,
  cpuNs,
  formatStat,
  machineInfo,
  type PacedLatency,
  pacedLatency,
  type PacingCalibration,
  parseBenchArgs,
  programNsPerRequest,
  type ProgramRun,
  programRunsOver,
  programTable,
  ROOT,
  roundsInSummary,
  rssMb,
  run,
  scrape,
  sleep,
  snapshotWorkingTree,
  startAgent,
  type Stat,
  stat,
  StealLog,
  summarizePrograms,
  writeResults,
  wrk,
  type WrkResult,
} from "./lib/bench.ts";

const args = parseBenchArgs({ out: "bench/results/go_http.md" });
const OUT = args.out && (isAbsolute(args.out) ? args.out : resolve(ROOT, args.out));
const PATH = "/users/1";
/** The separate load over which the programs are counted (bpf_stats on: programRunsOver). */
const STATS_SECONDS = 2;
const COMMAND = commandLine("scripts/bench_go_http.ts");

type Config = "a" | "b" | "c";
const CONFIGS: Config[] = ["a", "b", "c"];
const LABEL: Record<Config, string> = {
  a: "(a) no agent",
  b: "(b) agent, default (go-http: the server can serve TLS)",
  c: "(c) agent, go-http servers: never (kprobe-http)",
};
/** The plugin each configuration must instrument the server with. */
const EXPECTED_PLUGIN: Record<Config, string | undefined> = {
  a: undefined,
  b: "go-http",
  // go-http still attaches its client probes (this server can make calls); none fire here.
  c: "go-http, kprobe-http",
};

interface GoServer {
  pid: number;
  port: number;
  url: string;
  /** How many requests for `path` the server has answered (/stats is not counted). */
  served(path: string): Promise<number>;
  stop(): Promise<void>;
}

async function startGoServer(binary: string): Promise<GoServer> {
  // taskset execs the server: the child's pid is the server's.
  const child = new Deno.Command("taskset", {
    args: ["-c", "0", binary, "-addr", "127.0.0.1:0"],
    env: { GOMAXPROCS: "1" },
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  let m: RegExpExecArray | null;
  while (!(m = /listening 127\.0\.0\.1:(\d+)/.exec(log))) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the Go server exited:\n${log}`);
    log += value;
  }
  (async () => {
    while (!(await reader.read()).done) { /* keep the pipe drained */ }
  })();
  const port = Number(m[1]);
  return {
    pid: child.pid,
    port,
    url: `http://127.0.0.1:${port}`,
    async served(path) {
      const res = await fetch(`http://127.0.0.1:${port}/stats?path=${encodeURIComponent(path)}`);
      return Number((await res.text()).trim());
    },
    async stop() {
      child.kill("SIGTERM");
      await child.status;
    },
  };
}

interface Interval extends WrkResult {
  /** The server's CPU time (all threads) per completed request, µs. */
  serverCpuUsPerRequest: number;
  agentCpuUsPerRequest?: number;
  /** What the agent's log says it instrumented the server with. */
  instrumentedWith?: string;
  /** Per program name of the agent's programs. */
  programs?: Record<string, ProgramRun>;
  /** Requests for /users/1 the server answered during the interval (its /stats). */
  served?: number;
  /** http_server_duration_seconds_count of the server's target_instance, /stats excluded. */
  counted?: number;
  /**
   * The agent's own counters that moved during the interval (ring buffer losses, events it
   * dropped, its BPF programs' event counters), `name{labels}` -> increase.
   */
  agentCounters?: Record<string, number>;
  /** Other processes the agent instrumented during the interval (its log): `pid exe plugins`. */
  othersInstrumented?: string[];
  /** The agent's VmRSS at the end of the interval. */
  agentRssMb?: number;
}

interface Round {
  order: Config[];
  intervals: Record<Config, Interval>;
  /** The paced runs' rate asked: half of (a)'s req/s in this round. */
  rate: number;
  p99Ms: Record<Config, number>;
  p50Ms: Record<Config, number>;
  /** The paced runs: rate reached, connections. */
  paced: Record<Config, PacedLatency>;
  /** The paced runs' connections, found against the server without the agent. */
  calibration: PacingCalibration;
  /** The most steal of the round's six measured runs (stealDuring), and whether it is small. */
  stealPct: number;
  clean: boolean;
}

const binary = await buildGoFixture("go_http/server", { stripped: true });
const goVersion = await machineGoVersion();
const instance = (pid: number) => `${Deno.hostname()}:${pid}`;
const configDir = await Deno.makeTempDir({ prefix: "redprobe-bench-go-" });
const noGoHttp = join(configDir, "no-go-http.json");
const defaults = join(configDir, "defaults.json");
// The load generator (wrk) is a client the agent would measure too (kprobe-http's client
// side): its probes would slow the load, not the server. Only the server's cost is measured
// here, so client connections of non-targets are left alone.
const noLoadGenerators = { "kprobe-http": { clients: "targets" } };
// JSON is YAML: what the agent's --config reads.
await Deno.writeTextFile(
  noGoHttp,
  JSON.stringify({ plugins: { ...noLoadGenerators, "go-http": { servers: "never" } } }),
);
await Deno.writeTextFile(defaults, JSON.stringify({ plugins: noLoadGenerators }));

// The agent runs from a copy of the working tree taken now: the rounds measure one version of
// the code even if the tree is edited during the run.
const tree = await snapshotWorkingTree();

const agentFor = (config: Config, serverPid: number): Promise<Agent> =>
  startAgent({
    until: new RegExp(`instrumenting pid ${serverPid} [^\\n]*\\n`),
    configPath: config === "c" ? noGoHttp : defaults,
    root: tree.dir,
  });

function instrumentedWith(agent: Agent, pid: number): string {
  const line = new RegExp(`instrumenting pid ${pid} [^\\n]*`).exec(agent.log())?.[0] ?? "";
  return / with (.+)$/.exec(line)?.[1] ?? (line ? "no plugin" : "not instrumented");
}

function counted(samples: Sample[], serverPid: number): number {
  return samples
    .filter((s) =>
      s.name === "http_server_duration_seconds_count" &&
      s.labels.target_instance === instance(serverPid) && s.labels.http_route !== "/stats"
    )
    .reduce((n, s) => n + s.value, 0);
}

const AGENT_COUNTERS = [
  "redprobe_events_read_total",
  "redprobe_events_lost_kernel_total",
  "redprobe_events_dropped_total",
  "redprobe_kernel_events_total",
  "redprobe_series_overflow_total",
];
/** Counters that move with every request: not a sign of trouble. */
const ROUTINE_COUNTERS =
  /events_read_total|go_server_starts|go_client_starts|requests_aggregated|connections_opened/;

function agentCounters(samples: Sample[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of samples) {
    if (!AGENT_COUNTERS.includes(s.name)) continue;
    const labels = Object.entries(s.labels).map(([k, v]) => `${k}="${v}"`).join(",");
    out.set(`${s.name}{${labels}}`, s.value);
  }
  return out;
}

let live: { server?: GoServer; agent?: Agent } = {};
let oldBpfStats: string | undefined;
const onSigint = () => {
  // Ctrl-C: put the sysctl back and stop what this started, then leave.
  if (oldBpfStats !== undefined) {
    Deno.writeTextFileSync("/proc/sys/kernel/bpf_stats_enabled", `${oldBpfStats}\n`);
  }
  for (const pid of [live.agent?.pid, live.server?.pid]) {
    if (pid) {
      try {
        Deno.kill(pid, "SIGTERM");
      } catch { /* gone */ }
    }
  }
  Deno.removeSync(tree.dir, { recursive: true });
  Deno.exit(130);
};
Deno.addSignalListener("SIGINT", onSigint);

/** One saturated wrk interval of `config`, with everything measured around it. */
async function measure(config: Config, server: GoServer, steal: StealLog): Promise<Interval> {
  const agent = config === "a" ? undefined : await agentFor(config, server.pid);
  live.agent = agent;
  try {
    const servedBefore = agent ? await server.served(PATH) : 0;
    const samplesBefore = agent ? await scrape(agent.metricsPort) : [];
    const serverCpuBefore = cpuNs(server.pid);
    const agentCpuBefore = agent ? cpuNs(agent.pid) : 0;
    const logBefore = agent ? agent.log().length : 0;
    const w = await steal.measured(() =>
      wrk({ url: server.url + PATH, seconds: args.seconds, connections: args.connections })
    );
    const serverCpu = cpuNs(server.pid) - serverCpuBefore;
    const agentCpu = agent ? cpuNs(agent.pid) - agentCpuBefore : 0;
    const interval: Interval = { ...w, serverCpuUsPerRequest: serverCpu / 1000 / w.requests };
    if (!agent) return interval;

    interval.othersInstrumented = [
      ...agent.log().slice(logBefore).matchAll(
        /instrumenting pid (\d+) (\S+)[^\n]*?(?: with (.+))?$/gm,
      ),
    ].filter((m) => Number(m[1]) !== server.pid).map((m) => `${m[1]} ${m[2]} ${m[3] ?? "-"}`);
    interval.agentCpuUsPerRequest = agentCpu / 1000 / w.requests;
    interval.agentRssMb = rssMb(agent.pid);
    interval.instrumentedWith = instrumentedWith(agent, server.pid);
    // Requests in flight when wrk stopped finish right after: give them (and the agent) up to
    // 2 s to agree before reporting a difference.
    let samples: Sample[] = [];
    for (let i = 0; i < 20; i++) {
      await sleep(100);
      interval.served = (await server.served(PATH)) - servedBefore;
      samples = await scrape(agent.metricsPort);
      interval.counted = counted(samples, server.pid) - counted(samplesBefore, server.pid);
      if (interval.served === interval.counted) break;
    }
    const before = agentCounters(samplesBefore);
    interval.agentCounters = Object.fromEntries(
      [...agentCounters(samples)]
        .map(([k, v]) => [k, v - (before.get(k) ?? 0)] as const)
        .filter(([, v]) => v !== 0),
    );
    interval.programs = await programRunsOver(
      agent.pid,
      () => wrk({ url: server.url + PATH, seconds: STATS_SECONDS, connections: args.connections }),
    );
    return interval;
  } finally {
    live.agent = undefined;
    await agent?.stop();
  }
}

/** p50 and p99 at about the calibrated rate (total; paced wrk) under `config`. */
async function measureLatency(
  config: Config,
  server: GoServer,
  calibration: PacingCalibration,
  steal: StealLog,
): Promise<PacedLatency> {
  const agent = config === "a" ? undefined : await agentFor(config, server.pid);
  live.agent = agent;
  try {
    return await steal.measured(() =>
      pacedLatency({ url: server.url + PATH, seconds: args.seconds, calibration })
    );
  } finally {
    live.agent = undefined;
    await agent?.stop();
  }
}

function describeRound(r: Round): string {
  const { a, b, c } = r.intervals;
  const exact = (i: Interval) =>
    `${i.counted}/${i.served}${i.counted === i.served ? "" : " DIFFERENT"}`;
  return `${r.order.join("")}: req/s a ${a.rps.toFixed(0)}, b ${b.rps.toFixed(0)} ` +
    `(${pct(b.rps / a.rps)}), c ${c.rps.toFixed(0)} (${pct(c.rps / a.rps)}); p99 ms ` +
    `${r.p99Ms.a.toFixed(2)} / ${r.p99Ms.b.toFixed(2)} / ${r.p99Ms.c.toFixed(2)}; ` +
    `counted/served b ${exact(b)}, c ${exact(c)}; steal ${r.stealPct.toFixed(1)}%` +
    (r.clean ? "" : " (left out)");
}

const pct = (ratio: number) => `${ratio >= 1 ? "+" : ""}${((ratio - 1) * 100).toFixed(1)}%`;

const rounds: Round[] = [];
oldBpfStats = await bpfStatsEnabled();
const server = await startGoServer(binary);
live.server = server;
const started = Date.now();
try {
  await wrk({ url: server.url + PATH, seconds: args.seconds, connections: args.connections }); // warm-up
  for (let r = 0; anotherRound(rounds, args.rounds); r++) {
    const steal = new StealLog();
    // Rotate the order, so that drift on the machine spreads over the three configurations.
    const order = [...CONFIGS.slice(r % 3), ...CONFIGS.slice(0, r % 3)];
    const intervals = {} as Record<Config, Interval>;
    for (const config of order) intervals[config] = await measure(config, server, steal);
    for (const config of ["b", "c"] as const) {
      const i = intervals[config];
      if (i.instrumentedWith !== EXPECTED_PLUGIN[config]) {
        console.error(
          `!! round ${r + 1} ${LABEL[config]}: the server was instrumented with ` +
            `"${i.instrumentedWith}", expected "${EXPECTED_PLUGIN[config]}"`,
        );
      }
      if (i.counted !== i.served) {
        console.error(
          `!! round ${r + 1} ${LABEL[config]}: the agent counted ${i.counted} requests, ` +
            `the server answered ${i.served}; agent counters: ` +
            JSON.stringify(
              Object.fromEntries(
                Object.entries(i.agentCounters ?? {}).filter(([k]) => !ROUTINE_COUNTERS.test(k)),
              ),
            ) + `; also instrumented meanwhile: ${JSON.stringify(i.othersInstrumented)}`,
        );
      }
    }
    const rate = Math.round(intervals.a.rps / 2);
    const p99Ms = {} as Record<Config, number>;
    const p50Ms = {} as Record<Config, number>;
    const paced = {} as Record<Config, PacedLatency>;
    const calibration = await calibratePacing({ url: server.url + PATH, rate });
    for (const config of order) {
      const p = await measureLatency(config, server, calibration, steal);
      p99Ms[config] = p.p99Ms;
      p50Ms[config] = p.p50Ms;
      paced[config] = p;
    }
    const round: Round = {
      order,
      intervals,
      rate,
      p99Ms,
      p50Ms,
      paced,
      calibration,
      stealPct: steal.pct,
      clean: steal.clean(args.maxStealPct),
    };
    rounds.push(round);
    console.error(`round ${r + 1} ${describeRound(round)}`);
  }
} finally {
  live.server = undefined;
  await server.stop();
  oldBpfStats = undefined;
  Deno.removeSignalListener("SIGINT", onSigint);
  live = {};
  await Deno.remove(configDir, { recursive: true });
  await tree.remove();
}
const elapsedSeconds = Math.round((Date.now() - started) / 1000);
const used = roundsInSummary(rounds);

// ---- Summary ---------------------------------------------------------------------------------

const of = (config: Config, f: (i: Interval) => number) => used.map((r) => f(r.intervals[config]));

const ratio = (config: Config) => used.map((r) => r.intervals[config].rps / r.intervals.a.rps);
const programSummary = (config: Config) =>
  summarizePrograms(used.map((r) => r.intervals[config].programs));
const bpfNsPerRequest = (config: Config, names?: string[]) =>
  used.map((r) => programNsPerRequest(r.intervals[config].programs ?? {}, names));
const UPROBES = [
  "go_server_start",
  "go_server_status",
  "go_server_end",
  "go_client_start",
  "go_client_end",
];

const summary = {
  rps: Object.fromEntries(CONFIGS.map((c) => [c, stat(of(c, (i) => i.rps))])),
  throughputChangePct: {
    b: stat(ratio("b").map((x) => (x - 1) * 100)),
    c: stat(ratio("c").map((x) => (x - 1) * 100)),
  },
  throughputChangePerRoundPct: {
    b: ratio("b").map((x) => +((x - 1) * 100).toFixed(2)),
    c: ratio("c").map((x) => +((x - 1) * 100).toFixed(2)),
  },
  p99Ms: Object.fromEntries(CONFIGS.map((c) => [c, stat(used.map((r) => r.p99Ms[c]))])),
  p99AddedMs: {
    b: stat(used.map((r) => r.p99Ms.b - r.p99Ms.a)),
    c: stat(used.map((r) => r.p99Ms.c - r.p99Ms.a)),
  },
  p50AddedMs: {
    b: stat(used.map((r) => r.p50Ms.b - r.p50Ms.a)),
    c: stat(used.map((r) => r.p50Ms.c - r.p50Ms.a)),
  },
  /** The paced runs: rate asked, and reached per configuration. */
  pacedRateAsked: stat(used.map((r) => r.rate)),
  pacedRps: Object.fromEntries(CONFIGS.map((c) => [c, stat(used.map((r) => r.paced[c].rps))])),
  agentRssMb: {
    b: stat(of("b", (i) => i.agentRssMb ?? 0)),
    c: stat(of("c", (i) => i.agentRssMb ?? 0)),
  },
  serverCpuUsPerRequest: Object.fromEntries(
    CONFIGS.map((c) => [c, stat(of(c, (i) => i.serverCpuUsPerRequest))]),
  ),
  serverCpuAddedUsPerRequest: {
    b: stat(
      used.map((r) => r.intervals.b.serverCpuUsPerRequest - r.intervals.a.serverCpuUsPerRequest),
    ),
    c: stat(
      used.map((r) => r.intervals.c.serverCpuUsPerRequest - r.intervals.a.serverCpuUsPerRequest),
    ),
  },
  agentCpuUsPerRequest: {
    b: stat(of("b", (i) => i.agentCpuUsPerRequest ?? 0)),
    c: stat(of("c", (i) => i.agentCpuUsPerRequest ?? 0)),
  },
  programs: { b: programSummary("b"), c: programSummary("c") },
  bpfNsPerRequest: {
    b: stat(bpfNsPerRequest("b")),
    bUprobes: stat(bpfNsPerRequest("b", UPROBES)),
    c: stat(bpfNsPerRequest("c")),
  },
  exact: {
    b: used.map((r) => r.intervals.b.counted === r.intervals.b.served),
    c: used.map((r) => r.intervals.c.counted === r.intervals.c.served),
  },
};

// The uprobe sites go-http puts in this binary, and how the kernel handles each.
const analysis = analyzeGoBinary(Deno.readFileSync(binary));
const sitesOf: Record<string, { fn: string; sites: ProbeSite[] }[]> = {
  go_server_start: [{ fn: GO_FUNCTIONS.serverStart, sites: [analysis.server!.start] }],
  go_server_status: [
    { fn: GO_FUNCTIONS.serverStatus, sites: [analysis.server!.status] },
    ...(analysis.server?.http2
      ? [{ fn: GO_FUNCTIONS.http2Status, sites: [analysis.server.http2.status] }]
      : []),
  ],
  go_server_end: [
    { fn: GO_FUNCTIONS.serverEnd, sites: [analysis.server!.end] },
    ...(analysis.server?.http2
      ? [{ fn: GO_FUNCTIONS.http2End, sites: [analysis.server.http2.end] }]
      : []),
  ],
  ...(analysis.client
    ? {
      go_client_start: [{ fn: GO_FUNCTIONS.clientRoundTrip, sites: [analysis.client.start] }],
      go_client_end: [{
        fn: `${GO_FUNCTIONS.clientRoundTrip} (each RET)`,
        sites: analysis.client.returns,
      }],
    }
    : {}),
};
const siteKinds = (sites: ProbeSite[]) => {
  const emulated = sites.filter((s) => s.emulated).length;
  const stepped = sites.length - emulated;
  return [emulated ? `${emulated} emulated` : "", stepped ? `${stepped} single-stepped` : ""]
    .filter(Boolean).join(", ");
};

// ---- Report ----------------------------------------------------------------------------------

const machine = machineInfo();
const commit = (await run("git", ["-C", ROOT, "rev-parse", "--short", "HEAD"])).trim() +
  ((await run("git", ["-C", ROOT, "status", "--porcelain"])).trim()
    ? " + uncommitted changes"
    : "");
const f = (x: number, digits = 2) => x.toFixed(digits);
const range = (s: Stat, digits = 2, unit = "") => formatStat(s, digits, unit);
const signed = (x: number, digits = 1) => `${x >= 0 ? "+" : ""}${x.toFixed(digits)}`;
const srange = (s: Stat, digits = 1, unit = "%") =>
  `${signed(s.median, digits)}${unit} (${signed(s.min, digits)} … ${signed(s.max, digits)})`;
const exactCell = (i: Interval) =>
  `${i.counted} / ${i.served} ${i.counted === i.served ? "equal" : "**DIFFERENT**"}`;
const troubleCell = (i: Interval) =>
  [
    ...Object.entries(i.agentCounters ?? {}).filter(([k]) => !ROUTINE_COUNTERS.test(k))
      .map(([k, v]) => `\`${k.replace(/^redprobe_/, "")}\` +${v}`),
    ...(i.othersInstrumented?.length
      ? [`also instrumented meanwhile: ${i.othersInstrumented.map((o) => `\`${o}\``).join(", ")}`]
      : []),
  ].join("<br>") || "none";
const wrkErrors = rounds.flatMap((r, n) =>
  CONFIGS.filter((c) => r.intervals[c].non2xx || r.intervals[c].socketErrors).map((c) =>
    `round ${n + 1} ${c}: ${r.intervals[c].non2xx} non-2xx, ` +
    `${r.intervals[c].socketErrors} socket errors`
  )
);
const bAdded = summary.serverCpuAddedUsPerRequest.b.median;
const bUprobeHits = UPROBES.reduce(
  (n, name) => n + (summary.programs.b[name]?.hitsPerRequest.median ?? 0),
  0,
);
const outsidePrograms = bAdded * 1000 - summary.bpfNsPerRequest.bUprobes.median;

const md = [
  `# Go net/http server with and without redprobe (go-http vs kprobe-http)`,
  ``,
  `Command: \`${COMMAND}\`  `,
  `Machine: ${machine.hostname}, ${machine.nproc} CPUs (nproc), ${machine.cpuModel}, ` +
  `Linux ${machine.kernel}; ${machine.date}; ${args.rounds} rounds of ${args.seconds} s, ` +
  `${(elapsedSeconds / 60).toFixed(1)} min in all.  `,
  `Code: ${commit}; the agent ran from a copy of the working tree taken at the start ` +
  `(${tree.files} files, digest ${tree.digest}), so every interval measured the same code.  `,
  `Server: tests/fixtures/go_http/server built stripped (\`-ldflags "-s -w"\`) with ` +
  `${goVersion}, GOMAXPROCS=1, pinned to CPU 0; route \`${PATH}\` (200, 7-byte body), ` +
  `keep-alive. Load: \`wrk -t1 -c${args.connections} -d${args.seconds}s\` pinned to CPU 1. The ` +
  `agent unpinned, started fresh for each measured interval (main.ts, \`deno run -A\`), ` +
  `measured once it logs \`instrumenting pid <server>\` and 1 s more.  `,
  `Configurations, alternated in each round (the order rotates from round to round): ` +
  `**(a)** no agent; **(b)** the agent's default configuration (but for kprobe-http's ` +
  `\`clients: targets\`, which keeps wrk itself out of the measurement): this server has TLS server ` +
  `code, so go-http instruments it (\`servers: auto\`) and kprobe-http leaves it alone; ` +
  `**(c)** the agent with \`plugins: { go-http: { servers: never } }\` (\`--config\`): ` +
  `kprobe-http measures the server, which is what the default does for a Go server without ` +
  `TLS server code.`,
  ``,
  `These machines are noisy (other work shares the host): read the medians of the per-round ` +
  `ratios, with their spread (min … max over the rounds), not single values.`,
  ``,
  `## Throughput at saturation (wrk)`,
  ``,
  `| round | order | (a) req/s | (b) req/s | (b) vs (a) | (c) req/s | (c) vs (a) | ` +
  `server CPU µs/req (a) | (b) | (c) | agent CPU µs/req (b) | (c) | steal % | in summary |`,
  `|---|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, n) => {
    const { a, b, c } = r.intervals;
    return `| ${n + 1} | ${r.order.join(" ")} | ${f(a.rps, 0)} | ${f(b.rps, 0)} | ` +
      `${pct(b.rps / a.rps)} | ${f(c.rps, 0)} | ${pct(c.rps / a.rps)} | ` +
      `${f(a.serverCpuUsPerRequest)} | ${f(b.serverCpuUsPerRequest)} | ` +
      `${f(c.serverCpuUsPerRequest)} | ${f(b.agentCpuUsPerRequest ?? 0)} | ` +
      `${f(c.agentCpuUsPerRequest ?? 0)} | ${f(r.stealPct, 1)} | ${r.clean ? "yes" : "no"} |`;
  }),
  ``,
  `steal %: the most CPU time the hypervisor gave other guests during any of the round's six ` +
  `measured runs, as a share of the machine's CPU time (/proc/stat). Rounds with ` +
  `${args.maxStealPct}% or more are left out of every figure below: ${used.length} of ` +
  `${rounds.length} rounds are in them${
    rounds.some((r) => r.clean) ? "" : " (none was clean: all of them)"
  }.`,
  ``,
  `Median (min … max) over those rounds:`,
  ``,
  `- req/s: (a) ${range(summary.rps.a, 0)}, (b) ${range(summary.rps.b, 0)}, ` +
  `(c) ${range(summary.rps.c, 0)}.`,
  `- **Throughput vs (a): (b) go-http ${srange(summary.throughputChangePct.b)}; ` +
  `(c) kprobe-http ${srange(summary.throughputChangePct.c)}.**`,
  `- Server CPU per request (all its threads, schedstat): (a) ` +
  `${range(summary.serverCpuUsPerRequest.a)} µs, (b) ${range(summary.serverCpuUsPerRequest.b)}` +
  ` µs, (c) ${range(summary.serverCpuUsPerRequest.c)} µs; added vs (a) in the same round: ` +
  `(b) ${srange(summary.serverCpuAddedUsPerRequest.b, 2, " µs")}, ` +
  `(c) ${srange(summary.serverCpuAddedUsPerRequest.c, 2, " µs")}.`,
  `- Agent CPU per request: (b) ${range(summary.agentCpuUsPerRequest.b)} µs, ` +
  `(c) ${range(summary.agentCpuUsPerRequest.c)} µs.`,
  `- Agent RSS (VmRSS after each interval): (b) ${range(summary.agentRssMb.b, 0, " MB")}, ` +
  `(c) ${range(summary.agentRssMb.c, 0, " MB")}.`,
  ...(wrkErrors.length ? [`- wrk reported errors: ${wrkErrors.join("; ")}.`] : []),
  ``,
  `## p50 and p99 latency at about half the maximum rate (paced wrk)`,
  ``,
  `\`wrk -t1 -c<N> -d${args.seconds}s --latency\` pinned to CPU 1 with a Lua \`delay()\` of ` +
  `1 ms: N connections, each sending its next request 1 ms after the previous response (a ` +
  `closed loop with think time, approximately a fixed rate), aimed at half of (a)'s ` +
  `throughput in the same round. N: found against the server without the agent, a first ` +
  `guess of rate × (1 ms + 0.3 ms) / 1000 scaled by asked / reached after 2 s runs until ` +
  `within 5% (at most 3 runs), then the same N for (a), (b) and (c). wrk's timers have 1 ms ` +
  `resolution, so connections answered in the same millisecond send together: the load comes ` +
  `in bursts of about rate / 1000 requests. "reached": wrk's Requests/sec of the measured run. ` +
  `p50 and p99: wrk's latency distribution (µs resolution), timed from each request's send.`,
  ``,
  `| round | rate asked | calibration: connections → req/s | connections | reached (a) | ` +
  `(b) | (c) | p50 ms (a) | (b) | (c) | p99 ms (a) | (b) | (c) |`,
  `|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, n) =>
    `| ${n + 1} | ${r.rate} | ${
      r.calibration.tries.map((t) => `${t.connections} → ${f(t.rps, 0)}`).join(", ")
    } | ${r.calibration.connections} | ${f(r.paced.a.rps, 0)} | ${f(r.paced.b.rps, 0)} | ` +
    `${f(r.paced.c.rps, 0)} | ` +
    `${f(r.p50Ms.a, 3)} | ${f(r.p50Ms.b, 3)} | ${f(r.p50Ms.c, 3)} | ` +
    `${f(r.p99Ms.a, 3)} | ${f(r.p99Ms.b, 3)} | ${f(r.p99Ms.c, 3)} |`
  ),
  ``,
  `Median (min … max): rate asked ${range(summary.pacedRateAsked, 0)} req/s, reached ` +
  `(a) ${range(summary.pacedRps.a, 0)}, (b) ${range(summary.pacedRps.b, 0)}, ` +
  `(c) ${range(summary.pacedRps.c, 0)}; p99 (a) ${range(summary.p99Ms.a, 3, " ms")}, ` +
  `(b) ${range(summary.p99Ms.b, 3, " ms")}, (c) ${range(summary.p99Ms.c, 3, " ms")}; ` +
  `added vs (a): **(b) ${srange(summary.p99AddedMs.b, 3, " ms")}, ` +
  `(c) ${srange(summary.p99AddedMs.c, 3, " ms")}**; p50 added: ` +
  `(b) ${srange(summary.p50AddedMs.b, 3, " ms")}, (c) ${srange(summary.p50AddedMs.c, 3, " ms")}.`,
  ``,
  `## Probe hits per request (kernel.bpf_stats_enabled=1)`,
  ``,
  `The agent's programs (the prog ids its fds hold), \`bpftool prog show -j\` before and after ` +
  `a separate ${STATS_SECONDS} s wrk run right after each (b) and (c) saturation run, with ` +
  `bpf_stats on for that run only; run_cnt and run_time_ns summed per program name, divided ` +
  `by the requests wrk completed. Median (min … max) over the rounds in the summary.`,
  ``,
  ...programTable([
    { label: "b", programs: summary.programs.b },
    { label: "c", programs: summary.programs.c },
  ], "config"),
  ``,
  `Program time per request: (b) ${range(summary.bpfNsPerRequest.b, 0, " ns")}, of which ` +
  `the uprobes ${range(summary.bpfNsPerRequest.bUprobes, 0, " ns")}; ` +
  `(c) ${range(summary.bpfNsPerRequest.c, 0, " ns")}.`,
  ``,
  `- **run_time_ns counts only the BPF program's own run time.** A uprobe hit also costs the ` +
  `breakpoint trap, the uprobe lookup and then either the emulation of the probed ` +
  `instruction (cheap) or its single-step out of line (a second trap: much more expensive). ` +
  `None of that is in run_time_ns. Where it shows is the server's CPU per request: (b) added ` +
  `${f(bAdded)} µs per request in the median round, of which the uprobe programs account for ` +
  `${f(summary.bpfNsPerRequest.bUprobes.median / 1000)} µs; the rest, ` +
  `~${f(outsidePrograms / 1000)} µs (~${f(bUprobeHits ? outsidePrograms / bUprobeHits : 0, 0)} ` +
  `ns per uprobe hit), is the uprobe machinery, the tracepoint programs' share in the ` +
  `server's syscalls, and noise.`,
  `- The sites go-http probes in this binary (from plugins/go_http/binary.ts), and how the ` +
  `kernel handles the instruction there:`,
  ``,
  `| program | function | sites |`,
  `|---|---|---|`,
  ...Object.entries(sitesOf).flatMap(([program, fns]) =>
    fns.map(({ fn, sites }) =>
      `| \`${program}\` | \`${fn}\` | ${sites.length}: ${siteKinds(sites)} at ` +
      `${sites.map((s) => `0x${s.address.toString(16)}`).join(", ")} |`
    )
  ),
  ``,
  `- An HTTP/1 request to \`${PATH}\` hits the three server entries once each ` +
  `(\`WriteHeader\` is called by the first write when the handler does not call it).`,
  `- The kprobe-http programs (\`on_sock_*\`, tracepoints) are loaded in (b) as well and run ` +
  `for every socket send and receive on the machine, wrk's included; in (b) they leave the Go ` +
  `server's traffic at their first filter. Their hits count both sides of the connection.`,
  `- bpf_stats accounting itself adds some tens of ns per program run; it is on only for ` +
  `the separate runs these figures come from, never during the throughput or latency runs.`,
  ``,
  `## Exactness: counted by the agent vs answered by the server`,
  ``,
  `After each (b) and (c) interval: the sum of \`http_server_duration_seconds_count\` for ` +
  `\`target_instance="<host>:<server pid>"\` (route \`/stats\` excluded) against the server's ` +
  `own count (\`/stats?path=${PATH}\`, which does not count itself), both as differences ` +
  `over the interval. Reported, not asserted.`,
  ``,
  `| round | (b) instrumented with | (b) counted / served | (b) agent's trouble counters, other processes | ` +
  `(c) instrumented with | (c) counted / served | (c) agent's trouble counters, other processes |`,
  `|---|---|---|---|---|---|---|`,
  ...rounds.map((r, n) =>
    `| ${n + 1} | ${r.intervals.b.instrumentedWith} | ${exactCell(r.intervals.b)} | ` +
    `${troubleCell(r.intervals.b)} | ${r.intervals.c.instrumentedWith} | ` +
    `${exactCell(r.intervals.c)} | ${troubleCell(r.intervals.c)} |`
  ),
  ``,
  `Trouble counters: the agent's \`redprobe_events_lost_kernel_total\` (ring buffer full), ` +
  `\`redprobe_events_dropped_total\`, \`redprobe_series_overflow_total\` and ` +
  `\`redprobe_kernel_events_total\` (unpaired ends, full tables, evictions, ...) that increased ` +
  `during the interval; the routine ones (starts, records read, requests aggregated, ` +
  `connections opened) are in the JSON. "Also instrumented meanwhile": processes (pid, ` +
  `executable, plugins) the agent started instrumenting during the interval, from its log: ` +
  `other work on the host.`,
  ``,
  summary.exact.b.every(Boolean) && summary.exact.c.every(Boolean)
    ? `Every interval: counted = served.`
    : `**Counted and served DIFFER** in ${summary.exact.b.filter((x) => !x).length} (b) and ` +
      `${summary.exact.c.filter((x) => !x).length} (c) intervals.`,
  ``,
].join("\n");

console.log(md);
if (OUT) {
  await writeResults(OUT, md, {
    command: COMMAND,
    machine,
    commit,
    tree: { files: tree.files, digest: tree.digest },
    goVersion,
    rounds: args.rounds,
    seconds: args.seconds,
    connections: args.connections,
    path: PATH,
    elapsedSeconds,
    summary,
    sites: sitesOf,
    perRound: rounds,
  });
  // As `deno fmt --check` (deno task ok) wants them.
  await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", OUT, OUT.replace(/\.md$/, ".json")],
    cwd: ROOT,
  }).output();
  console.error(`written: ${OUT} and ${OUT.replace(/\.md$/, ".json")}`);
}
