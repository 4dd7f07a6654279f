/**
 * What the agent costs a Go gRPC server (grpc-go 1.33, measured by go-grpc): unary calls per
 * second at saturation, and p99 latency at half that rate, without and with the agent, in one
 * run, alternating, repeated; plus the server's CPU per call and the agent's.
 *
 *   deno run -A scripts/bench_grpc.ts [--rounds 5] [--seconds 10] [--connections 10]
 *                                     [--max-steal 2] [--out bench/results/grpc.md]
 *
 * Setup: tests/fixtures/go_grpc/server (stripped, module build, GOMAXPROCS=1) pinned to CPU 0;
 * the load generator tests/fixtures/go_grpc/load (C goroutines of UnaryCall on one connection)
 * pinned to CPU 1 and left alone by the agent (`go-grpc.skip_executables`), so the run
 * measures what the server pays. These machines are noisy: compare the with/without ratio of
 * the same round. Rounds during which the hypervisor took --max-steal % or more of the
 * machine's CPU time in any measured run are reported but left out of the summary, and more
 * rounds run (up to three times --rounds) until --rounds clean ones, as in bench_http.ts.
 *
 * @module
 */
import {
  type Agent,
  anotherRound,
  bpfProgramIdsOf,
  bpfProgramStats,
  bpfStatsEnabled,
  cpuNs,
  machineInfo,
  median,
  parseBenchArgs,
  programStatsDelta,
  roundsInSummary,
  rssMb,
  run,
  setBpfStatsEnabled,
  spread,
  startAgent as startAgentUntil,
  StealLog,
  sumMetric,
  writeResults,
} from "./lib/bench.ts";
import { buildGrpcFixture } from "../tests/support/go_grpc.ts";

const args = parseBenchArgs({ out: undefined });
const server = await buildGrpcFixture("server", { stripped: true });
const load = await buildGrpcFixture("load", { stripped: true });

const child = new Deno.Command("taskset", {
  args: ["-c", "0", server, "127.0.0.1:0"],
  env: { GOMAXPROCS: "1" },
  stdout: "piped",
  stderr: "null",
}).spawn();
const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
const address = /listening (\S+)/.exec((await reader.read()).value ?? "")?.[1];
reader.releaseLock();
if (!address) throw new Error("the gRPC server did not start");
// taskset execs the server: same pid.
const serverPid = child.pid;

interface LoadResult {
  calls: number;
  errors: number;
  seconds: number;
  p50_ms: number;
  p99_ms: number;
}

async function loadRun(rate?: number): Promise<LoadResult> {
  const out = await run("taskset", [
    "-c",
    "1",
    load,
    address!,
    String(args.seconds),
    String(args.connections),
    ...(rate ? [String(rate)] : []),
  ]);
  return JSON.parse(out.trim().split("\n").pop()!) as LoadResult;
}

function startAgent(): Promise<Agent> {
  return startAgentUntil({
    until: new RegExp(`instrumenting pid ${serverPid} .*go-grpc`),
    config: {
      plugins: {
        "kprobe-http": { clients: "targets" },
        "tls-uprobe": { clients: "targets" },
        "go-grpc": { skip_executables: [load] },
      },
    },
  });
}

function counted(agent: Agent): Promise<number> {
  return sumMetric(
    agent.metricsPort,
    "rpc_server_duration_seconds_count",
    (labels) => labels.target_instance?.endsWith(`:${serverPid}`) ?? false,
  );
}

interface Round {
  baselineCps: number;
  agentCps: number;
  baselineServerUs: number;
  agentServerUs: number;
  baselineP99Ms: number;
  agentP99Ms: number;
  baselineP50Ms: number;
  agentP50Ms: number;
  agentCpuUsPerCall: number;
  /** The agent's VmRSS at the end of its saturation run. */
  agentRssMb: number;
  sent: number;
  counted: number;
  /** The most steal of the round's four measured runs (StealLog), and whether it is clean. */
  stealPct: number;
  clean: boolean;
}

/**
 * The probes' own run time, steadier than throughput on a noisy host: one more run with the
 * agent and kernel.bpf_stats_enabled=1, per go-grpc program: hits and run time per call (the
 * uprobe trap itself, ~1 µs per emulated hit here, is not in it).
 */
async function probeCosts(): Promise<{ program: string; hitsPerCall: number; nsPerHit: number }[]> {
  const previous = await bpfStatsEnabled();
  const agent = await startAgent();
  try {
    await setBpfStatsEnabled("1");
    const ids = bpfProgramIdsOf(agent.pid);
    const before = await bpfProgramStats(ids);
    const result = await loadRun();
    const delta = programStatsDelta(before, await bpfProgramStats(ids));
    const calls = result.calls + result.errors;
    return [...delta].filter(([name, st]) => name.startsWith("grpc_") && st.runCnt > 0)
      .map(([program, st]) => ({
        program,
        hitsPerCall: st.runCnt / calls,
        nsPerHit: st.runTimeNs / st.runCnt,
      }));
  } finally {
    await setBpfStatsEnabled(previous);
    await agent.stop();
  }
}

let costs: Awaited<ReturnType<typeof probeCosts>> = [];

const rounds: Round[] = [];
try {
  await loadRun(); // warm-up
  for (let r = 0; anotherRound(rounds, args.rounds); r++) {
    const agentFirst = r % 2 === 1;
    const steal = new StealLog();
    let baseline!: LoadResult, withAgent!: LoadResult;
    let baselineServerNs = 0, agentServerNs = 0, agentNs = 0, countedCalls = 0, agentRss = 0;
    const measureBaseline = async () => {
      const before = cpuNs(serverPid);
      baseline = await steal.measured(() => loadRun());
      baselineServerNs = cpuNs(serverPid) - before;
    };
    const measureAgent = async () => {
      const agent = await startAgent();
      try {
        // Counted first: sumMetric scrapes until the count settles, agent CPU not to be measured.
        const countedBefore = await counted(agent);
        const before = cpuNs(agent.pid), serverBefore = cpuNs(serverPid);
        withAgent = await steal.measured(() => loadRun());
        agentServerNs = cpuNs(serverPid) - serverBefore;
        agentNs = cpuNs(agent.pid) - before;
        countedCalls = (await counted(agent)) - countedBefore;
        agentRss = rssMb(agent.pid);
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
    const rate = Math.round(baseline.calls / baseline.seconds / 2);
    const baselineHalf = await steal.measured(() => loadRun(rate));
    const agent = await startAgent();
    let agentHalf: LoadResult;
    try {
      agentHalf = await steal.measured(() => loadRun(rate));
    } finally {
      await agent.stop();
    }
    const round: Round = {
      baselineCps: baseline.calls / baseline.seconds,
      agentCps: withAgent.calls / withAgent.seconds,
      baselineServerUs: baselineServerNs / 1000 / baseline.calls,
      agentServerUs: agentServerNs / 1000 / withAgent.calls,
      baselineP99Ms: baselineHalf.p99_ms,
      agentP99Ms: agentHalf.p99_ms,
      baselineP50Ms: baselineHalf.p50_ms,
      agentP50Ms: agentHalf.p50_ms,
      agentCpuUsPerCall: agentNs / 1000 / withAgent.calls,
      agentRssMb: agentRss,
      sent: withAgent.calls + withAgent.errors,
      counted: countedCalls,
      stealPct: steal.pct,
      clean: steal.clean(args.maxStealPct),
    };
    rounds.push(round);
    console.error(
      `round ${r + 1}: ${round.baselineCps.toFixed(0)} -> ${round.agentCps.toFixed(0)} calls/s ` +
        `(${((round.agentCps / round.baselineCps - 1) * 100).toFixed(1)}%), server CPU ` +
        `${round.baselineServerUs.toFixed(2)} -> ${round.agentServerUs.toFixed(2)} µs/call, p99 ` +
        `${round.baselineP99Ms.toFixed(2)} -> ${round.agentP99Ms.toFixed(2)} ms, counted ` +
        `${round.counted} of ${round.sent}; steal ${round.stealPct.toFixed(1)}%` +
        (round.clean ? "" : " (left out)"),
    );
  }
  costs = await probeCosts();
} finally {
  child.kill("SIGTERM");
  await child.status;
}

const used = roundsInSummary(rounds);
const ratios = used.map((r) => r.agentCps / r.baselineCps);
const summary = {
  roundsInSummary: used.length,
  throughputLossMedianPct: (1 - median(ratios)) * 100,
  throughputLossSpreadPct: (({ min, max }) => [(1 - max) * 100, (1 - min) * 100])(spread(ratios)),
  serverCpuAddedMedianUs: median(used.map((r) => r.agentServerUs - r.baselineServerUs)),
  p99AddedMedianMs: median(used.map((r) => r.agentP99Ms - r.baselineP99Ms)),
  p50AddedMedianMs: median(used.map((r) => r.agentP50Ms - r.baselineP50Ms)),
  agentRssMbMedian: median(used.map((r) => r.agentRssMb)),
  agentCpuUsPerCallMedian: median(used.map((r) => r.agentCpuUsPerCall)),
};
const command =
  `deno run -A scripts/bench_grpc.ts --rounds ${args.rounds} --seconds ${args.seconds}` +
  ` --connections ${args.connections} --max-steal ${args.maxStealPct}`;
const m = machineInfo();
const pct = (ratio: number) => `${((ratio - 1) * 100).toFixed(1)}%`;
const table = [
  `# A Go gRPC server with and without redprobe (go-grpc)`,
  ``,
  `Command: \`${command}\`  `,
  `Machine: ${m.hostname}, ${m.nproc} CPUs (${m.cpuModel}), ${m.kernel}, ${m.date}  `,
  `Server: tests/fixtures/go_grpc/server (grpc-go 1.33.3, Debian's Go 1.19, stripped, ` +
  `GOMAXPROCS=1) pinned to CPU 0. Load: tests/fixtures/go_grpc/load, ${args.connections} ` +
  `goroutines of unary UnaryCall on one connection, ${args.seconds} s, pinned to CPU 1 and not ` +
  `instrumented. p50 and p99: the same load paced at half the round's baseline rate. Agent ` +
  `RSS: VmRSS at the end of its saturation run.`,
  ``,
  `| round | calls/s without | with | change | server CPU µs/call without | with | p50 ms ` +
  `without | with | p99 ms without | with | agent CPU µs/call | agent RSS MB | counted / sent | ` +
  `steal % | in summary |`,
  `|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.baselineCps.toFixed(0)} | ${r.agentCps.toFixed(0)} | ` +
    `${pct(r.agentCps / r.baselineCps)} | ${r.baselineServerUs.toFixed(2)} | ` +
    `${r.agentServerUs.toFixed(2)} | ${r.baselineP50Ms.toFixed(2)} | ${
      r.agentP50Ms.toFixed(2)
    } | ` +
    `${r.baselineP99Ms.toFixed(2)} | ${r.agentP99Ms.toFixed(2)} | ` +
    `${r.agentCpuUsPerCall.toFixed(2)} | ${r.agentRssMb.toFixed(0)} | ${r.counted} / ${r.sent} | ` +
    `${r.stealPct.toFixed(1)} | ${r.clean ? "yes" : "no"} |`
  ),
  ``,
  `steal %: the most CPU time the hypervisor gave other guests during any of the round's four ` +
  `measured runs (saturation and half load, without and with), as a share of the machine's CPU ` +
  `time (/proc/stat). A round with ${args.maxStealPct}% or more is left out of the summary (and ` +
  `another is run, up to ${args.rounds * 3} in all).`,
  ``,
  `Medians over the ${used.length} rounds ${
    !rounds.some((r) => r.clean)
      ? `(none had less than ${args.maxStealPct}% steal: all of them)`
      : `with less than ${args.maxStealPct}% steal (of ${rounds.length})`
  }: throughput **${(-summary.throughputLossMedianPct).toFixed(1)}%** ` +
  `(target: no worse than -15%); server CPU per call **+${
    summary.serverCpuAddedMedianUs.toFixed(2)
  } µs**; added at half load: p50 **${summary.p50AddedMedianMs.toFixed(2)} ms**, p99 ` +
  `**${summary.p99AddedMedianMs.toFixed(2)} ms**; agent CPU ` +
  `**${summary.agentCpuUsPerCallMedian.toFixed(2)} µs per call**, agent RSS ` +
  `**${summary.agentRssMbMedian.toFixed(0)} MB**.`,
  ``,
  `The probes' run time (\`kernel.bpf_stats_enabled=1\`, one more ${args.seconds} s run with the ` +
  `agent; the uprobe trap around each hit is extra):`,
  ``,
  `| program | hits per call | ns per hit |`,
  `|---|---|---|`,
  ...costs.map((c) =>
    `| \`${c.program}\` | ${c.hitsPerCall.toFixed(2)} | ${c.nsPerHit.toFixed(0)} |`
  ),
  ``,
].join("\n");
console.log(table);
if (args.out) await writeResults(args.out, table, { command, rounds, summary, costs });
