/**
 * redprobe against the in-process alternative: one Node http server at saturation, bare, with
 * redprobe running, and with the OpenTelemetry Node auto-instrumentation (metrics only), in the
 * same run, rounds interleaved.
 *
 *   deno run -A scripts/bench_otel_node.ts [--rounds 5] [--seconds 10] [--max-steal 2] [--out bench/results/otel_node.md]
 *
 * Rounds during which the hypervisor took 2% or more of the machine's CPU time (steal, in
 * /proc/stat) are reported but left out of the summary, and more rounds are run (up to three
 * times --rounds) until --rounds clean ones: see stealDuring() in scripts/lib/bench.ts.
 *
 * Setup: a minimal node:http server (200 "hello\n", keep-alive) pinned to CPU 0; wrk -t1
 * -c10 pinned to CPU 1, 2 s of warm-up then `--seconds` measured. Per round, in rotating order:
 * (bare) `node server.mjs`; (redprobe) the same with the agent running (default configuration
 * but for `kprobe-http.clients: targets`, so wrk is not measured; a snapshot of the working
 * tree, unpinned, started fresh); (otel) `node --require
 * @opentelemetry/auto-instrumentations-node/register server.mjs` with OTEL_TRACES_EXPORTER=none,
 * OTEL_LOGS_EXPORTER=none, OTEL_METRICS_EXPORTER=otlp (http/protobuf every second to a local
 * receiver in this script that accepts and discards, counting the exports). The OpenTelemetry
 * packages are installed, at the pinned versions below, into a temporary directory with
 * `npm install --prefix`.
 *
 * Then, per round and in the same order, a fresh server again (and agent), the same warm-up, and
 * p50 and p99 at about half the round's bare throughput for `--seconds`: wrk pinned to CPU 1 with
 * N connections, each sending its next request 1 ms after the previous response (a Lua
 * `delay()`), a closed loop with think time, so only approximately a fixed rate. N comes from
 * the rate (rate × (1 ms + latency) / 1000), corrected by 2 s calibration runs against a fresh
 * bare server (until within 5%, at most 3), and is the same for the three; the rate reached is
 * reported next to the rate asked. Not hey: pinned to one CPU, hey could not send the
 * rates asked (it reached 11–18k req/s of 21–30k), so its "half rate" latencies were at its own
 * ceiling, and it reports latencies to 0.1 ms only; wrk's `--latency` distribution has µs
 * resolution.
 *
 * During redprobe's saturation run: the agent's CPU time (/proc schedstat) per request and its
 * RSS (VmRSS) at the end. Right after it, a separate 2 s wrk run with kernel.bpf_stats_enabled=1
 * for that run only (the accounting costs some tens of ns per program run: the throughput runs
 * do not pay it): the agent's programs' run_cnt and run_time_ns, the probe hits and program time
 * per request.
 *
 * Reported: each one's throughput loss against the bare server of the same round (median over
 * rounds), and redprobe's loss / OTel's loss (target: redprobe's loss ≤ 1/5 of OTel's); the p50
 * and p99 each adds to the bare server's at half rate (median over rounds of the per-round
 * differences); the agent's CPU µs per request and RSS (medians); per program, hits per request,
 * ns per hit and ns per request (medians over rounds).
 *
 * @module
 */
import { join } from "node:path";
import { portAccepts, waitFor } from "../tests/support/wait.ts";
import {
  type Agent,
  anotherRound,
  calibratePacing,
  commandLine,
  cpuNs,
  freePort,
  machineInfo,
  median,
  type PacedLatency,
  pacedLatency,
  type PacingCalibration,
  parseBenchArgs,
  probeHitsSection,
  programNsPerRequest,
  type ProgramRun,
  programRunsOver,
  roundsInSummary,
  rssMb,
  run,
  snapshotWorkingTree,
  spread,
  startAgent,
  stat,
  StealLog,
  summarizePrograms,
  sumMetric,
  writeResults,
  wrk,
  type WrkResult,
} from "./lib/bench.ts";

const args = parseBenchArgs({ rounds: 5, seconds: 10 });
const OTEL_PACKAGES = [
  "@opentelemetry/auto-instrumentations-node@0.82.0",
  "@opentelemetry/sdk-node@0.301.0",
];
const WARMUP_SECONDS = 2;
/** The separate load over which the programs are counted (bpf_stats on: programRunsOver). */
const STATS_SECONDS = 2;

const SERVER = `import { createServer } from "node:http";
const body = Buffer.from("hello\\n");
createServer((req, res) => {
  req.resume();
  res.writeHead(200, { "content-type": "text/plain", "content-length": body.length });
  res.end(body);
}).listen(Number(process.argv[2]), "127.0.0.1");
`;

type Mode = "bare" | "redprobe" | "otel";
const MODES: Mode[] = ["bare", "redprobe", "otel"];

interface Measurement {
  mode: Mode;
  rps: number;
  requests: number;
  /** Server CPU per request, µs. */
  serverUsPerRequest: number;
  /** redprobe: requests it exported (/metrics); OTel: OTLP metric exports the receiver got. */
  counted?: number;
  /** redprobe: the agent's CPU time during the wrk run, per request, µs. */
  agentCpuUsPerRequest?: number;
  /** redprobe: the agent's VmRSS at the end of the wrk run, MB. */
  agentRssMb?: number;
  /** redprobe: the agent's BPF programs over the wrk run, per program name. */
  programs?: Record<string, ProgramRun>;
}

/** Paced wrk at about a fixed rate: median and 99th percentile (ms), rate reached. */
type Latency = PacedLatency;

const tmp = await Deno.makeTempDir({ prefix: "redprobe-bench-otel-" });
const tree = await snapshotWorkingTree();
const serverPath = join(tmp, "server.mjs");
await Deno.writeTextFile(serverPath, SERVER);
console.error(`installing ${OTEL_PACKAGES.join(" ")} into ${tmp} ...`);
await run("npm", [
  "install",
  "--prefix",
  tmp,
  "--no-audit",
  "--no-fund",
  "--loglevel=error",
  ...OTEL_PACKAGES,
]);
const agentConfig = join(tmp, "agent.json");
await Deno.writeTextFile(
  agentConfig,
  JSON.stringify({ plugins: { "kprobe-http": { clients: "targets" } } }),
);

async function startServer(mode: Mode): Promise<
  { pid: number; port: number; stop: () => Promise<void> }
> {
  const port = freePort();

  const nodeArgs = mode === "otel"
    ? ["--require", "@opentelemetry/auto-instrumentations-node/register", serverPath, String(port)]
    : [serverPath, String(port)];
  const child = new Deno.Command("taskset", {
    args: ["-c", "0", "node", ...nodeArgs],
    cwd: tmp,
    env: mode === "otel"
      ? {
        OTEL_SERVICE_NAME: "bench-node",
        OTEL_TRACES_EXPORTER: "none",
        OTEL_LOGS_EXPORTER: "none",
        OTEL_METRICS_EXPORTER: "otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: `http://127.0.0.1:${receiver.port}/v1/metrics`,
        OTEL_METRIC_EXPORT_INTERVAL: "1000",
      }
      : {},
    stdout: "null",
    stderr: "null",
  }).spawn();
  await waitFor(() => portAccepts(port), { timeoutMs: 15_000, what: `node (${mode}) to start` });
  return {
    pid: child.pid,
    port,
    // The OTel SDK's register hooks SIGTERM to shut itself down and does not exit: SIGKILL
    // after a grace period.
    stop: async () => {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
      await child.status;
      clearTimeout(timer);
    },
  };
}

/** A local OTLP/HTTP receiver that accepts and discards, counting the exports it got. */
const receiver = (() => {
  let exports = 0;
  let bytes = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    bytes += (await req.arrayBuffer()).byteLength;
    if (new URL(req.url).pathname === "/v1/metrics") exports++;
    return new Response(new Uint8Array(0), {
      headers: { "content-type": "application/x-protobuf" },
    });
  });
  return { port: server.addr.port, exports: () => exports, bytes: () => bytes, server };
})();

/**
 * A fresh server for `mode` (and, for redprobe, a fresh agent), warmed up with wrk; `body` runs
 * against it, then both are stopped.
 */
async function withServer<T>(
  mode: Mode,
  body: (url: string, server: { pid: number }, agent?: Agent) => Promise<T>,
): Promise<T> {
  const server = await startServer(mode);
  let agent: Agent | undefined;
  try {
    if (mode === "redprobe") {
      agent = await startAgent({
        until: new RegExp(`instrumenting pid ${server.pid} `),
        root: tree.dir,
        configPath: agentConfig,
      });
    }
    const url = `http://127.0.0.1:${server.port}/hello`;
    await wrk({ url, seconds: WARMUP_SECONDS, connections: args.connections });
    return await body(url, server, agent);
  } finally {
    await agent?.stop();
    await server.stop();
  }
}

/** Throughput at saturation (wrk). */
function measure(mode: Mode, steal: StealLog): Promise<Measurement> {
  return withServer(mode, async (url, server, agent) => {
    const countedBefore = agent
      ? await sumMetric(agent.metricsPort, "http_server_duration_seconds_count")
      : receiver.exports();
    const cpuBefore = cpuNs(server.pid);
    const agentCpuBefore = agent ? cpuNs(agent.pid) : 0;
    const result: WrkResult = await steal.measured(() =>
      wrk({ url, seconds: args.seconds, connections: args.connections })
    );
    const serverUs = (cpuNs(server.pid) - cpuBefore) / 1000 / result.requests;
    const measurement: Measurement = {
      mode,
      rps: result.rps,
      requests: result.requests,
      serverUsPerRequest: serverUs,
    };
    if (agent) {
      measurement.agentCpuUsPerRequest = (cpuNs(agent.pid) - agentCpuBefore) / 1000 /
        result.requests;
      measurement.agentRssMb = rssMb(agent.pid);
      measurement.counted =
        (await sumMetric(agent.metricsPort, "http_server_duration_seconds_count")) -
        countedBefore;
      measurement.programs = await programRunsOver(
        agent.pid,
        () => wrk({ url, seconds: STATS_SECONDS, connections: args.connections }),
      );
    } else if (mode === "otel") {
      measurement.counted = receiver.exports() - countedBefore;
    }
    return measurement;
  });
}

/** The paced connections for about `rate` req/s, found against a fresh bare server. */
function calibrate(rate: number): Promise<PacingCalibration> {
  return withServer("bare", (url) => calibratePacing({ url, rate }));
}

/** p50 and p99 at about the calibrated rate (paced wrk). */
function latency(mode: Mode, calibration: PacingCalibration, steal: StealLog): Promise<Latency> {
  return withServer(
    mode,
    (url) => steal.measured(() => pacedLatency({ url, seconds: args.seconds, calibration })),
  );
}

interface Round {
  order: Mode[];
  bare: Measurement;
  redprobe: Measurement;
  otel: Measurement;
  /** The paced runs' rate asked: half of the bare server's req/s in this round. */
  rate: number;
  /** The paced runs' connections (the same for the three). */
  calibration: PacingCalibration;
  latency: Record<Mode, Latency>;
  /** The most steal of the round's six measured runs (stealDuring), and whether it is small. */
  stealPct: number;
  clean: boolean;
}
const rounds: Round[] = [];
try {
  for (let r = 0; anotherRound(rounds, args.rounds); r++) {
    const order = MODES.map((_, i) => MODES[(i + r) % MODES.length]);
    const steal = new StealLog();
    const got: Partial<Record<Mode, Measurement>> = {};
    for (const mode of order) got[mode] = await measure(mode, steal);
    const rate = Math.round(got.bare!.rps / 2);
    const lat: Partial<Record<Mode, Latency>> = {};
    const calibration = await calibrate(rate);
    for (const mode of order) lat[mode] = await latency(mode, calibration, steal);
    const round: Round = {
      order,
      bare: got.bare!,
      redprobe: got.redprobe!,
      otel: got.otel!,
      rate,
      calibration,
      latency: lat as Record<Mode, Latency>,
      stealPct: steal.pct,
      clean: steal.clean(args.maxStealPct),
    };
    rounds.push(round);
    console.error(
      `round ${r + 1} (${order.join(", ")}): bare ${round.bare.rps.toFixed(0)}, redprobe ` +
        `${round.redprobe.rps.toFixed(0)} (${loss(round, "redprobe").toFixed(1)}%, counted ` +
        `${round.redprobe.counted} of ${round.redprobe.requests}), otel ${
          round.otel.rps.toFixed(0)
        } ` +
        `(${loss(round, "otel").toFixed(1)}%, ${round.otel.counted} OTLP exports); agent ` +
        `${round.redprobe.agentCpuUsPerRequest!.toFixed(2)} µs/req, ` +
        `${round.redprobe.agentRssMb!.toFixed(0)} MB; at ${rate} req/s asked p50/p99 ms: ` +
        MODES.map((m) =>
          `${m} ${round.latency[m].p50Ms.toFixed(3)}/${round.latency[m].p99Ms.toFixed(3)} ` +
          `(${round.latency[m].rps.toFixed(0)} req/s)`
        ).join(", ") + `; steal ${round.stealPct.toFixed(1)}%${round.clean ? "" : " (left out)"}`,
    );
  }
} finally {
  await receiver.server.shutdown();
  await Deno.remove(tmp, { recursive: true });
  await tree.remove();
}

function loss(r: Round, mode: "redprobe" | "otel"): number {
  return (1 - r[mode].rps / r.bare.rps) * 100;
}

/** What `mode` adds to the bare server's p50 or p99 at half rate in round `r`, ms. */
function added(r: Round, mode: "redprobe" | "otel", p: "p50Ms" | "p99Ms"): number {
  return r.latency[mode][p] - r.latency.bare[p];
}

const used = roundsInSummary(rounds);
const redprobeLoss = used.map((r) => loss(r, "redprobe"));
const otelLoss = used.map((r) => loss(r, "otel"));
const summary = {
  rounds: rounds.length,
  roundsInSummary: used.length,
  maxStealPct: args.maxStealPct,
  redprobeLossMedianPct: median(redprobeLoss),
  redprobeLossSpreadPct: spread(redprobeLoss),
  otelLossMedianPct: median(otelLoss),
  otelLossSpreadPct: spread(otelLoss),
  /** redprobe's median loss / OTel's median loss. Target ≤ 0.2. */
  lossRatio: median(redprobeLoss) / median(otelLoss),
  /** Per round, then the median: the same ratio, less sensitive to one round's noise. */
  lossRatioPerRoundMedian: median(used.map((r) => loss(r, "redprobe") / loss(r, "otel"))),
  serverUsPerRequestMedian: {
    bare: median(used.map((r) => r.bare.serverUsPerRequest)),
    redprobe: median(used.map((r) => r.redprobe.serverUsPerRequest)),
    otel: median(used.map((r) => r.otel.serverUsPerRequest)),
  },
  /** At about half the bare throughput (paced wrk), ms: per mode, and added to bare. */
  p50MsMedian: {
    bare: median(used.map((r) => r.latency.bare.p50Ms)),
    redprobe: median(used.map((r) => r.latency.redprobe.p50Ms)),
    otel: median(used.map((r) => r.latency.otel.p50Ms)),
  },
  p99MsMedian: {
    bare: median(used.map((r) => r.latency.bare.p99Ms)),
    redprobe: median(used.map((r) => r.latency.redprobe.p99Ms)),
    otel: median(used.map((r) => r.latency.otel.p99Ms)),
  },
  p50AddedMedianMs: {
    redprobe: median(used.map((r) => added(r, "redprobe", "p50Ms"))),
    otel: median(used.map((r) => added(r, "otel", "p50Ms"))),
  },
  p99AddedMedianMs: {
    redprobe: median(used.map((r) => added(r, "redprobe", "p99Ms"))),
    otel: median(used.map((r) => added(r, "otel", "p99Ms"))),
  },
  /** The paced runs' rate: asked (half the bare req/s), and reached, per mode (medians). */
  pacedRateMedian: median(used.map((r) => r.rate)),
  pacedRpsMedian: {
    bare: median(used.map((r) => r.latency.bare.rps)),
    redprobe: median(used.map((r) => r.latency.redprobe.rps)),
    otel: median(used.map((r) => r.latency.otel.rps)),
  },
  agentCpuUsPerRequestMedian: median(used.map((r) => r.redprobe.agentCpuUsPerRequest!)),
  agentRssMbMedian: median(used.map((r) => r.redprobe.agentRssMb!)),
  programs: summarizePrograms(used.map((r) => r.redprobe.programs)),
  bpfNsPerRequest: stat(used.map((r) => programNsPerRequest(r.redprobe.programs ?? {}))),
  hitsPerRequest: stat(
    used.map((r) =>
      Object.values(r.redprobe.programs ?? {}).reduce((n, p) => n + p.hitsPerRequest, 0)
    ),
  ),
  otelPackages: OTEL_PACKAGES,
  nodeVersion: (await run("node", ["--version"])).trim(),
};
const machine = machineInfo();
const command = commandLine("scripts/bench_otel_node.ts");
const f = (x: number) => x.toFixed(1);
const ms = (x: number) => x.toFixed(3);
const signedMs = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(3)} ms`;
/** Paced runs that reached less than 95% of the rate asked. */
const pacedShort = used.flatMap((r) => MODES.filter((m) => r.latency[m].rps < r.rate * 0.95))
  .length;
// A median loss ≤ 0 (the instrumented server faster than the bare one) is the machine's noise:
// their ratio then says nothing.
const verdict = summary.redprobeLossMedianPct <= 0 || summary.otelLossMedianPct <= 0
  ? "inconclusive (a median loss ≤ 0: noise)"
  : summary.lossRatio <= 0.2
  ? "met"
  : "not met";
const markdown = [
  `# A Node http server: bare, with redprobe, with OpenTelemetry's auto-instrumentation`,
  ``,
  `Command: \`${command}\`  `,
  `Machine: ${machine.nproc} CPUs (${machine.cpuModel}), Linux ${machine.kernel}, ${machine.date}  `,
  `Node ${summary.nodeVersion}; ${OTEL_PACKAGES.join(", ")} (npm, installed at bench time). ` +
  `Tree: snapshot ${tree.digest}. Rounds: ${args.rounds}, order rotating.`,
  ``,
  `Server: minimal node:http (200 "hello\\n") pinned to CPU 0; wrk -t1 -c${args.connections} ` +
  `pinned to CPU 1, ${WARMUP_SECONDS} s warm-up then ${args.seconds} s measured, a fresh server ` +
  `per measurement. redprobe: default configuration (kprobe-http measures node; ` +
  `\`clients: targets\` leaves wrk alone), ` +
  `unpinned; its CPU (/proc/<pid>/task/*/schedstat) over the wrk run per request, its RSS ` +
  `(VmRSS) at the end of it. OTel: \`node --require ` +
  `@opentelemetry/auto-instrumentations-node/register\`, OTEL_TRACES_EXPORTER=none, ` +
  `OTEL_LOGS_EXPORTER=none, OTEL_METRICS_EXPORTER=otlp (http/protobuf, every 1 s, to a local ` +
  `receiver that accepts and discards; metrics only). OTel "exports": OTLP requests received ` +
  `during the measured seconds. kernel.bpf_stats_enabled=1 only for the probe-hits run ` +
  `(below), never during the throughput or latency runs.`,
  ``,
  `## Throughput at saturation (wrk)`,
  ``,
  `| round | bare req/s | redprobe req/s | loss | counted / completed | OTel req/s | loss | ` +
  `exports | server µs/req bare / redprobe / OTel | agent CPU µs/req | agent RSS MB | ` +
  `steal % | in summary |`,
  `|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.bare.rps.toFixed(0)} | ${r.redprobe.rps.toFixed(0)} | ` +
    `${f(loss(r, "redprobe"))}% | ${r.redprobe.counted} / ${r.redprobe.requests} | ` +
    `${r.otel.rps.toFixed(0)} | ${f(loss(r, "otel"))}% | ${r.otel.counted} | ${
      r.bare.serverUsPerRequest.toFixed(1)
    } / ` +
    `${r.redprobe.serverUsPerRequest.toFixed(1)} / ${r.otel.serverUsPerRequest.toFixed(1)} | ` +
    `${r.redprobe.agentCpuUsPerRequest!.toFixed(2)} | ${r.redprobe.agentRssMb!.toFixed(0)} | ` +
    `${r.stealPct.toFixed(1)} | ${r.clean ? "yes" : "no"} |`
  ),
  ``,
  `steal %: the most CPU time the hypervisor gave other guests during any of the round's six ` +
  `measured runs (saturation and paced, three configurations), as a share of the machine's ` +
  `CPU time (/proc/stat). Rounds with ${args.maxStealPct}% or more are left out of every ` +
  `summary figure below (and another round is run, up to ${args.rounds * 3} in all): ` +
  `${used.length} of ${rounds.length} rounds are in them${
    rounds.some((r) => r.clean) ? "" : " (none was clean: all of them)"
  }.`,
  ``,
  `Median throughput loss against the bare server of the same round: redprobe ` +
  `**${f(summary.redprobeLossMedianPct)}%** (${f(summary.redprobeLossSpreadPct.min)} … ` +
  `${f(summary.redprobeLossSpreadPct.max)}), OTel **${f(summary.otelLossMedianPct)}%** ` +
  `(${f(summary.otelLossSpreadPct.min)} … ${
    f(summary.otelLossSpreadPct.max)
  }). redprobe's loss / ` +
  `OTel's: **${summary.lossRatio.toFixed(2)}** (per-round median ` +
  `${summary.lossRatioPerRoundMedian.toFixed(2)}); target ≤ 0.20: ` +
  `**${verdict}**. Server CPU per request (medians): bare ` +
  `${f(summary.serverUsPerRequestMedian.bare)}, redprobe ` +
  `${f(summary.serverUsPerRequestMedian.redprobe)}, OTel ` +
  `${f(summary.serverUsPerRequestMedian.otel)} µs. Agent (redprobe): CPU ` +
  `**${summary.agentCpuUsPerRequestMedian.toFixed(2)} µs per request**, RSS ` +
  `**${summary.agentRssMbMedian.toFixed(0)} MB**, ` +
  `**${summary.hitsPerRequest.median.toFixed(2)} probe hits per request** ` +
  `(${summary.bpfNsPerRequest.median.toFixed(0)} ns of program time; medians).`,
  ``,
  `"counted" can exceed "completed" by up to the ${args.connections} requests in flight when ` +
  `wrk stops.`,
  ``,
  `## p50 and p99 at about half the bare throughput (paced wrk)`,
  ``,
  `After the round's saturation runs, in the same order, a fresh server (and agent) each, the ` +
  `same warm-up, then \`wrk -t1 -c<N> -d${args.seconds}s --latency\` pinned to CPU 1 with a ` +
  `Lua \`delay()\` of 1 ms: N connections, each sending its next request 1 ms after the ` +
  `previous response (a closed loop with think time, approximately a fixed rate), aimed at ` +
  `half the round's bare req/s. N: found against a fresh bare server, a first guess of rate × ` +
  `(1 ms + 0.3 ms) / 1000 scaled by asked / reached after 2 s runs until within 5% (at most 3 ` +
  `runs), then the same N for the three. wrk's timers have 1 ms resolution, so connections ` +
  `answered in the same millisecond send together: the load comes in bursts of about ` +
  `rate / 1000 requests. "reached": wrk's Requests/sec of the measured run. ` +
  `p50 and p99: wrk's latency distribution (µs resolution), timed from each request's send.`,
  ``,
  `| round | rate asked | calibration: connections → req/s | connections | ` +
  `reached bare / redprobe / OTel | p50 ms bare | redprobe | OTel | p99 ms bare | redprobe | ` +
  `OTel |`,
  `|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.rate} | ${
      r.calibration.tries.map((t) => `${t.connections} → ${t.rps.toFixed(0)}`).join(", ")
    } | ${r.calibration.connections} | ` +
    `${MODES.map((m) => r.latency[m].rps.toFixed(0)).join(" / ")} | ` +
    `${ms(r.latency.bare.p50Ms)} | ${ms(r.latency.redprobe.p50Ms)} | ` +
    `${ms(r.latency.otel.p50Ms)} | ${ms(r.latency.bare.p99Ms)} | ` +
    `${ms(r.latency.redprobe.p99Ms)} | ${ms(r.latency.otel.p99Ms)} |`
  ),
  ``,
  `Median over the rounds of what each adds to the bare server's latency in the same round: ` +
  `redprobe p50 **${signedMs(summary.p50AddedMedianMs.redprobe)}**, p99 ` +
  `**${signedMs(summary.p99AddedMedianMs.redprobe)}**; OTel p50 ` +
  `**${signedMs(summary.p50AddedMedianMs.otel)}**, p99 ` +
  `**${signedMs(summary.p99AddedMedianMs.otel)}**. Medians: p50 bare ` +
  `${ms(summary.p50MsMedian.bare)}, redprobe ${ms(summary.p50MsMedian.redprobe)}, OTel ` +
  `${ms(summary.p50MsMedian.otel)} ms; p99 bare ${ms(summary.p99MsMedian.bare)}, redprobe ` +
  `${ms(summary.p99MsMedian.redprobe)}, OTel ${ms(summary.p99MsMedian.otel)} ms. Rate ` +
  `(medians): asked ${summary.pacedRateMedian.toFixed(0)}, reached bare ` +
  `${summary.pacedRpsMedian.bare.toFixed(0)}, redprobe ` +
  `${summary.pacedRpsMedian.redprobe.toFixed(0)}, OTel ${
    summary.pacedRpsMedian.otel.toFixed(0)
  } req/s.`,
  ...(pacedShort
    ? [
      ``,
      `The paced run fell short of the rate asked by more than 5% in ${pacedShort} of ` +
      `${rounds.length * MODES.length} runs (the host's noise between the calibration and the ` +
      `measured run, or a slower server): see "reached".`,
    ]
    : []),
  ``,
  ...probeHitsSection({
    title: "Probe hits per request (redprobe; kernel.bpf_stats_enabled=1)",
    statsSeconds: STATS_SECONDS,
    whose: "redprobe's",
    programs: summary.programs,
    hitsPerRequest: summary.hitsPerRequest,
    bpfNsPerRequest: summary.bpfNsPerRequest,
  }),
  ``,
].join("\n");
console.log(markdown);
if (args.out) await writeResults(args.out, markdown, { command, machine, rounds, summary });
