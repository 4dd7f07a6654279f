/**
 * What the agent costs nginx: throughput at saturation and p50/p99 latency at about half that
 * rate, without and with the agent, in one run, alternating, repeated; plus the agent's own CPU
 * per request and RSS, and its BPF programs' hits and run time per request.
 *
 *   deno run -A scripts/bench_http.ts [--rounds 5] [--seconds 10] [--max-steal 2] [--out bench/results/http.md]
 *   deno run -A scripts/bench_http.ts --tls [--out bench/results/https.md]
 *
 * Rounds during which the hypervisor took 2% or more of the machine's CPU time (steal, in
 * /proc/stat) are reported but left out of the summary, and more rounds are run (up to three
 * times --rounds) until --rounds clean ones: see stealDuring() in scripts/lib/bench.ts.
 *
 * With `--tls` nginx serves HTTPS (TLS 1.3, keep-alive: one handshake per connection) and the
 * agent measures it with tls-uprobe (uprobes in libssl.so.3) instead of kprobe-http.
 *
 * Setup: nginx (1 worker pinned to CPU 0, keep-alive, sendfile on, access log on) serving a
 * 6-byte file on 127.0.0.1; wrk (1 thread, 10 connections) pinned to CPU 1; the agent
 * unpinned, as a user would run it. Probe hits and program time per request: the agent's
 * programs' run_cnt and run_time_ns around a separate 2 s wrk run after its saturation run, with
 * kernel.bpf_stats_enabled=1 for that run only (the accounting costs some tens of ns per program
 * run: the throughput runs do not pay it).
 *
 * Latency: wrk pinned to CPU 1 with N connections, each sending its next request 1 ms after the
 * previous response (a Lua `delay()`): a closed loop with think time, so only approximately a
 * fixed rate, aimed at half the round's baseline throughput. N comes from the rate (rate × (1 ms
 * + latency) / 1000), corrected by 2 s calibration runs without the agent (until within 5%, at
 * most 3), and is the same with and without; the rate reached is reported next to the rate
 * asked. Not hey: pinned to one CPU, hey could not send the rates asked (it reached
 * 11–18k req/s of 21–36k), so its "half rate" latencies were at its own ceiling, and it reports
 * latencies to 0.1 ms only; wrk's `--latency` distribution has µs resolution.
 *
 * These machines are noisy: compare the with/without ratio of the same round, not absolutes.
 *
 * @module
 */
import {
  type Agent,
  anotherRound,
  calibratePacing,
  cpuNs,
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
  snapshotWorkingTree,
  startAgent as startAgentUntil,
  startBenchNginx,
  stat,
  StealLog,
  summarizePrograms,
  sumMetric,
  writeResults,
  wrk as wrkAt,
} from "./lib/bench.ts";

const args = parseBenchArgs();
const ROUNDS = args.rounds;
const MAX_STEAL = args.maxStealPct;
const SECONDS = args.seconds;
/** The separate load over which the programs are counted (bpf_stats on: programRunsOver). */
const STATS_SECONDS = 2;
const CONNECTIONS = args.connections;
const TLS = args.tls;
const SCHEME = TLS ? "https" : "http";

/**
 * The agent with its defaults, except that wrk (a client kprobe-http and tls-uprobe would
 * measure too) is left alone: this benchmark measures what nginx pays, and probes in wrk would
 * slow the load (with `clients: targets`, tls-uprobe's uprobes are in nginx's worker only).
 */
function startAgent(): Promise<Agent> {
  return startAgentUntil({
    until: /instrumenting pid \d+ \/usr\/sbin\/nginx/,
    config: {
      plugins: {
        "kprobe-http": { clients: "targets" },
        "tls-uprobe": { clients: "targets" },
      },
    },
    root: tree.dir,
  });
}

function wrk(port: number, seconds = SECONDS): Promise<{ rps: number; requests: number }> {
  return wrkAt({
    url: `${SCHEME}://127.0.0.1:${port}/hello`,
    seconds,
    connections: CONNECTIONS,
  });
}

const url = (port: number) => `${SCHEME}://127.0.0.1:${port}/hello`;

function latency(port: number, calibration: PacingCalibration): Promise<PacedLatency> {
  return pacedLatency({ url: url(port), seconds: SECONDS, calibration });
}

function countedRequests(agent: Agent): Promise<number> {
  return sumMetric(
    agent.metricsPort,
    "http_server_duration_seconds_count",
    (labels) => labels.service_name === "nginx",
  );
}

function describe(r: Round): string {
  return `${r.baselineRps.toFixed(0)} -> ${r.agentRps.toFixed(0)} req/s ` +
    `(${((r.agentRps / r.baselineRps - 1) * 100).toFixed(1)}%), nginx CPU ` +
    `${r.baselineNginxUs.toFixed(2)} -> ${r.agentNginxUs.toFixed(2)} µs/req; at ${r.rate} ` +
    `req/s asked (${r.baselinePacedRps.toFixed(0)} / ${r.agentPacedRps.toFixed(0)} reached) p99 ` +
    `${r.baselineP99Ms.toFixed(3)} -> ${r.agentP99Ms.toFixed(3)} ms, p50 ` +
    `${r.baselineP50Ms.toFixed(3)} -> ${r.agentP50Ms.toFixed(3)} ms; agent ` +
    `${r.agentCpuUsPerRequest.toFixed(2)} µs/req and ${r.agentRssMb.toFixed(0)} MB, counted ` +
    `${r.counted} of ${r.sent}; steal ${r.stealPct.toFixed(1)}%${r.clean ? "" : " (left out)"}`;
}

interface Round {
  baselineRps: number;
  agentRps: number;
  /** nginx worker CPU time per request, µs: includes the time the probes run in its syscalls. */
  baselineNginxUs: number;
  agentNginxUs: number;
  /** The paced runs' rate asked: half of baselineRps. */
  rate: number;
  /** The rate the paced runs reached (wrk's Requests/sec), and their connections. */
  baselinePacedRps: number;
  agentPacedRps: number;
  /** The paced runs' connections, and the calibration runs that found the count. */
  pacedConnections: number;
  calibration: PacingCalibration;
  baselineP99Ms: number;
  agentP99Ms: number;
  baselineP50Ms: number;
  agentP50Ms: number;
  agentCpuUsPerRequest: number;
  /** The agent's VmRSS at the end of its saturation run. */
  agentRssMb: number;
  sent: number;
  counted: number;
  /** The agent's programs over its saturation run, per program name. */
  programs: Record<string, ProgramRun>;
  /** The most steal of the round's four measured runs (stealDuring), and whether it is < MAX_STEAL. */
  stealPct: number;
  clean: boolean;
}

// The agent runs from a copy of the working tree taken now: the rounds measure one version of
// the code even if the tree is edited during the run.
const tree = await snapshotWorkingTree();
const nginx = await startBenchNginx({ tls: TLS });
const rounds: Round[] = [];
try {
  await wrk(nginx.port); // warm-up
  for (let r = 0; anotherRound(rounds, ROUNDS); r++) {
    // Alternate which configuration goes first, so drift on the machine cancels out.
    const agentFirst = r % 2 === 1;
    let baseline!: { rps: number; requests: number };
    let withAgent!: { rps: number; requests: number };
    let cpu = 0;
    let counted = 0;
    let agentRss = 0;
    let baselineNginxNs = 0;
    let agentNginxNs = 0;
    let programs: Record<string, ProgramRun> = {};
    const steal = new StealLog();
    const measured = <T>(fn: () => Promise<T>) => steal.measured(fn);
    const worker = nginx.worker();
    const measureBaseline = async () => {
      const before = cpuNs(worker);
      baseline = await measured(() => wrk(nginx.port));
      baselineNginxNs = cpuNs(worker) - before;
    };
    const measureAgent = async () => {
      const agent = await startAgent();
      try {
        // Counted first: sumMetric scrapes until the count settles, agent CPU not to be measured.
        const countedBefore = await countedRequests(agent);
        const before = cpuNs(agent.pid);
        const nginxBefore = cpuNs(worker);
        withAgent = await measured(() => wrk(nginx.port));
        agentNginxNs = cpuNs(worker) - nginxBefore;
        cpu = (cpuNs(agent.pid) - before) / 1000;
        counted = (await countedRequests(agent)) - countedBefore;
        agentRss = rssMb(agent.pid);
        programs = await programRunsOver(agent.pid, () => wrk(nginx.port, STATS_SECONDS));
      } finally {
        await agent.stop();
      }
    };
    if (agentFirst) {
      await measureAgent();
      await measureBaseline();
    } else {
      await measureBaseline();
      await measureAgent();
    }
    const rate = Math.round(baseline.rps / 2);
    // The paced connections, found without the agent; the same count with it.
    const calibration = await calibratePacing({ url: url(nginx.port), rate });
    let baselineLatency!: PacedLatency;
    let agentLatency!: PacedLatency;
    const latencyWithAgent = async () => {
      const agent = await startAgent();
      try {
        agentLatency = await measured(() => latency(nginx.port, calibration));
      } finally {
        await agent.stop();
      }
    };
    // The same alternation as the saturation runs.
    if (agentFirst) {
      await latencyWithAgent();
      baselineLatency = await measured(() => latency(nginx.port, calibration));
    } else {
      baselineLatency = await measured(() => latency(nginx.port, calibration));
      await latencyWithAgent();
    }
    const round: Round = {
      baselineRps: baseline.rps,
      agentRps: withAgent.rps,
      baselineNginxUs: baselineNginxNs / 1000 / baseline.requests,
      agentNginxUs: agentNginxNs / 1000 / withAgent.requests,
      rate,
      baselinePacedRps: baselineLatency.rps,
      agentPacedRps: agentLatency.rps,
      pacedConnections: calibration.connections,
      calibration,
      baselineP99Ms: baselineLatency.p99Ms,
      agentP99Ms: agentLatency.p99Ms,
      baselineP50Ms: baselineLatency.p50Ms,
      agentP50Ms: agentLatency.p50Ms,
      agentCpuUsPerRequest: cpu / withAgent.requests,
      agentRssMb: agentRss,
      sent: withAgent.requests,
      counted,
      programs,
      stealPct: steal.pct,
      clean: steal.clean(MAX_STEAL),
    };
    rounds.push(round);
    console.error(`round ${r + 1}: ${describe(round)}`);
  }
} finally {
  await nginx.stop();
  await tree.remove();
}

const used = roundsInSummary(rounds);
const ratios = used.map((r) => r.agentRps / r.baselineRps);
const summary = {
  rounds: rounds.length,
  roundsInSummary: used.length,
  maxStealPct: MAX_STEAL,
  throughputLossMedianPct: (1 - median(ratios)) * 100,
  nginxCpuAddedMedianPct: (median(used.map((r) => r.agentNginxUs / r.baselineNginxUs)) - 1) * 100,
  nginxCpuAddedMedianUs: median(used.map((r) => r.agentNginxUs - r.baselineNginxUs)),
  throughputLossPerRoundPct: ratios.map((x) => +((1 - x) * 100).toFixed(2)),
  p99AddedMedianMs: median(used.map((r) => r.agentP99Ms - r.baselineP99Ms)),
  p50AddedMedianMs: median(used.map((r) => r.agentP50Ms - r.baselineP50Ms)),
  agentRssMbMedian: median(used.map((r) => r.agentRssMb)),
  agentCpuUsPerRequestMedian: median(used.map((r) => r.agentCpuUsPerRequest)),
  /** The paced runs: rate asked and reached (medians). */
  pacedRateMedian: median(used.map((r) => r.rate)),
  pacedRpsMedian: {
    baseline: median(used.map((r) => r.baselinePacedRps)),
    agent: median(used.map((r) => r.agentPacedRps)),
  },
  programs: summarizePrograms(used.map((r) => r.programs)),
  bpfNsPerRequest: stat(used.map((r) => programNsPerRequest(r.programs))),
  hitsPerRequest: stat(
    used.map((r) => Object.values(r.programs).reduce((n, p) => n + p.hitsPerRequest, 0)),
  ),
};
const command = `deno run -A scripts/bench_http.ts --rounds ${ROUNDS} --seconds ${SECONDS}${
  TLS ? " --tls" : ""
} --max-steal ${MAX_STEAL}`;
const pct = (ratio: number) => `${((ratio - 1) * 100).toFixed(1)}%`;
const table = [
  TLS
    ? `# nginx over HTTPS with and without redprobe (tls-uprobe)`
    : `# nginx with and without redprobe`,
  ``,
  `Command: \`${command}\`  `,
  `Machine: ${Deno.hostname()}, ${navigator.hardwareConcurrency} CPUs, ${Deno.osRelease()}, ` +
  `${new Date().toISOString()}  `,
  `Tree: the agent ran from a snapshot of the working tree taken at the start (${tree.files} ` +
  `files, digest ${tree.digest}).  `,
  `nginx: 1 worker pinned to CPU 0, keep-alive, sendfile on, access log on, 6-byte file` +
  `${TLS ? ", HTTPS (TLS 1.3, ECDSA P-256 certificate)" : ""}. ` +
  `wrk -t1 -c${CONNECTIONS} -d${SECONDS}s pinned to CPU 1; the agent unpinned. ` +
  `CPU: /proc/<pid>/task/*/schedstat. Agent RSS: VmRSS at the end of its saturation run. ` +
  `kernel.bpf_stats_enabled=1 only for the probe-hits run (below), never during the ` +
  `throughput or latency runs.`,
  ``,
  `## Throughput at saturation (wrk)`,
  ``,
  `| round | req/s without | req/s with | change | nginx CPU µs/req without | with | change | ` +
  `agent CPU µs/req | agent RSS MB | counted / completed | steal % | in summary |`,
  `|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.baselineRps.toFixed(0)} | ${r.agentRps.toFixed(0)} | ` +
    `${pct(r.agentRps / r.baselineRps)} | ${r.baselineNginxUs.toFixed(2)} | ` +
    `${r.agentNginxUs.toFixed(2)} | ${pct(r.agentNginxUs / r.baselineNginxUs)} | ` +
    `${r.agentCpuUsPerRequest.toFixed(2)} | ${r.agentRssMb.toFixed(0)} | ` +
    `${r.counted} / ${r.sent} | ${r.stealPct.toFixed(1)} | ${r.clean ? "yes" : "no"} |`
  ),
  ``,
  `steal %: the most CPU time the hypervisor gave other guests during any of the round's four ` +
  `measured runs (saturation and paced, without and with), as a share of the machine's CPU ` +
  `time (/proc/stat). A round with ${MAX_STEAL}% or more is left out of the summary (and ` +
  `another is run, up to ${ROUNDS * 3} in all): on these shared VMs steal slows one run of a ` +
  `pair and not the other by far more than the agent costs.`,
  ``,
  `## p50 and p99 at about half the maximum rate (paced wrk)`,
  ``,
  `After the round's saturation runs: \`wrk -t1 -c<N> -d${SECONDS}s --latency\` pinned to ` +
  `CPU 1 with a Lua \`delay()\` of 1 ms: N connections, each sending its next request 1 ms ` +
  `after the previous response (a closed loop with think time, approximately a fixed rate), ` +
  `aimed at half the round's baseline req/s; without and with a fresh agent, in the ` +
  `saturation runs' order. N: found ` +
  `without the agent, a first guess of rate × (1 ms + 0.3 ms) / 1000 scaled by asked / ` +
  `reached after 2 s runs until within 5% (at most 3 runs), then the same N without and ` +
  `with. wrk's timers have 1 ms resolution, so connections answered in the same millisecond ` +
  `send together: the load comes in bursts of about rate / 1000 requests. ` +
  `"reached": wrk's Requests/sec of the measured run. p50 and p99: wrk's latency ` +
  `distribution (µs resolution), timed from each request's send.`,
  ``,
  `| round | rate asked | calibration: connections → req/s | connections | reached without | with | ` +
  `p50 ms without | with | p99 ms without | with |`,
  `|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.rate} | ${
      r.calibration.tries.map((t) => `${t.connections} → ${t.rps.toFixed(0)}`).join(", ")
    } | ${r.pacedConnections} | ${r.baselinePacedRps.toFixed(0)} | ` +
    `${r.agentPacedRps.toFixed(0)} | ${r.baselineP50Ms.toFixed(3)} | ` +
    `${r.agentP50Ms.toFixed(3)} | ${r.baselineP99Ms.toFixed(3)} | ` +
    `${r.agentP99Ms.toFixed(3)} |`
  ),
  ``,
  ...probeHitsSection({
    title: "Probe hits per request (kernel.bpf_stats_enabled=1)",
    statsSeconds: STATS_SECONDS,
    whose: "its",
    uprobes: TLS,
    programs: summary.programs,
    hitsPerRequest: summary.hitsPerRequest,
    bpfNsPerRequest: summary.bpfNsPerRequest,
  }),
  ``,
  `## Summary`,
  ``,
  `Medians over the ${used.length} rounds ${
    !rounds.some((r) => r.clean)
      ? `(none had less than ${MAX_STEAL}% steal: all of them)`
      : `with less than ${MAX_STEAL}% steal (of ${rounds.length})`
  }: throughput **${(-summary.throughputLossMedianPct).toFixed(1)}%** ` +
  `(target: no worse than ${TLS ? "-10%" : "-5%"}); nginx CPU per request **+${
    summary.nginxCpuAddedMedianUs.toFixed(2)
  } µs ` +
  `(${summary.nginxCpuAddedMedianPct.toFixed(1)}%)** (the probes run in its syscalls); ` +
  `added p50 **${summary.p50AddedMedianMs.toFixed(3)} ms**, p99 ` +
  `**${summary.p99AddedMedianMs.toFixed(3)} ms** at ` +
  `${summary.pacedRpsMedian.baseline.toFixed(0)} / ${summary.pacedRpsMedian.agent.toFixed(0)} ` +
  `req/s reached without / with (${summary.pacedRateMedian.toFixed(0)} asked); agent CPU ` +
  `**${summary.agentCpuUsPerRequestMedian.toFixed(2)} µs per request**, agent RSS ` +
  `**${summary.agentRssMbMedian.toFixed(0)} MB**; ` +
  `**${summary.hitsPerRequest.median.toFixed(2)} probe hits per request** ` +
  `(${summary.bpfNsPerRequest.median.toFixed(0)} ns of program time).`,
  ``,
  `"counted" (requests the agent exported) can exceed "completed" (wrk's count) by up to ` +
  `${CONNECTIONS}: wrk does not count the requests in flight when it stops, whose responses ` +
  `nginx still wrote.`,
  ``,
].join("\n");
console.log(table);
if (args.out) await writeResults(args.out, table, { command, rounds, summary });
