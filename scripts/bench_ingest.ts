/**
 * The ingest ceiling: how many ring-buffer records per second the agent handles on one core
 * with nothing lost, through its real path (PluginHost's ring reader -> the plugin's decode ->
 * toObservation -> route mapping -> the exporter's histograms).
 *
 *   deno run -A scripts/bench_ingest.ts [--rounds 5] [--seconds 2] [--out bench/results/ingest.md]
 *
 * The event source is synthetic: bench/ingest/ingest.bpf.c writes 64-byte HTTP-shaped records
 * (RECORDS_PER_CALL of them) per getppid() call of an instrumented process; bench/ingest/mod.ts is the plugin that reads
 * them, loaded by the agent (main.ts, a snapshot of the working tree) through `plugin_modules`
 * with every built-in plugin disabled. The generator (bench/ingest/gen.c, built with clang) is
 * pinned to CPU 1 and makes the calls at a paced rate; the agent is pinned to CPU 0 (all its
 * threads: "one core"). The generator is selected by executable (`discovery.select`), so the
 * agent instruments it like any target (the `targets` bitmap).
 *
 * Per round (a fresh agent each): paced steps of `--seconds` at increasing rates, then a
 * bisection between the highest rate with zero loss and the lowest with loss, then one step
 * unpaced (saturation). A step has zero loss when redprobe_events_lost_kernel_total did not
 * move and redprobe_events_read_total grew by exactly the records written. The ring holds ~116k
 * records (8 MiB / 72 bytes), so a step of 2 s at 1 M/s can only pass if the agent sustains at
 * least ~94% of that rate. The ceiling of a round is the highest achieved rate (events /
 * generator's elapsed time) of a zero-loss step; the result is the median over rounds.
 *
 * @module
 */
import { join } from "node:path";
import {
  type Agent,
  commandLine,
  cpuNs,
  machineInfo,
  median,
  parseBenchArgs,
  ROOT,
  run,
  scrape,
  sleep,
  snapshotWorkingTree,
  spread,
  startAgent,
  writeResults,
} from "./lib/bench.ts";

const args = parseBenchArgs({ rounds: 5, seconds: 2 });
const COARSE_RATES = [500_000, 750_000, 1_000_000, 1_250_000, 1_500_000, 2_000_000, 3_000_000];
/**
 * Records per getppid() call: one generator on one core makes ~1.3 M calls/s at most with the
 * program attached (each call runs it), less than the agent can take; four records per call
 * let the source outrun the agent so the ceiling measured is the agent's.
 */
const RECORDS_PER_CALL = 4;
const BISECT_STEPS = 3;
/** Calls of the unpaced (saturation) step. */
const SATURATION_SECONDS = args.seconds;
const TARGET = 1_000_000;
const PLUGIN = "ingest-bench";

interface Step {
  /** Requested events/s; 0: unpaced. */
  rate: number;
  /** Records the kernel wrote (or lost): calls * RECORDS_PER_CALL. */
  events: number;
  /** events / the generator's elapsed time. */
  achievedRate: number;
  elapsedMs: number;
  read: number;
  lost: number;
  /** http_server_duration_seconds_count gained: the observations reached the exporter. */
  exported: number;
  /** Agent CPU per record read, ns (during the step and the drain after it). */
  agentNsPerEvent: number;
  /** Agent CPU busy fraction while the generator ran (1 = one full core). */
  agentBusy: number;
  zeroLoss: boolean;
}

interface Round {
  steps: Step[];
  /** Highest achieved rate of a zero-loss step (0 if none). */
  ceiling: number;
  saturation: Step;
}

class Generator {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  constructor(path: string) {
    this.#child = new Deno.Command("taskset", {
      args: ["-c", "1", path],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#lines = lines(this.#child.stdout)[Symbol.asyncIterator]();
  }
  get pid(): number {
    return this.#child.pid;
  }
  async line(): Promise<string> {
    const { value, done } = await this.#lines.next();
    if (done) throw new Error("generator exited");
    return value;
  }
  /** `calls` getppid() at `rate`/s (0: unpaced); the generator's elapsed ns. */
  async burst(calls: number, rate: number): Promise<number> {
    await this.#writer.write(new TextEncoder().encode(`${calls} ${rate}\n`));
    const m = /^done (\d+) (\d+)$/.exec(await this.line());
    if (!m) throw new Error("unexpected generator output");
    return Number(m[2]);
  }
  async stop(): Promise<void> {
    await this.#writer.close();
    await this.#child.status;
  }
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncIterable<string> {
  let buffered = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buffered += chunk;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
    }
  }
}

interface Counters {
  read: number;
  lost: number;
  exported: number;
}

async function counters(agent: Agent): Promise<Counters> {
  const samples = await scrape(agent.metricsPort);
  const sum = (name: string, filter: (l: Record<string, string>) => boolean) =>
    samples.filter((s) => s.name === name && filter(s.labels)).reduce((n, s) => n + s.value, 0);
  return {
    read: sum("redprobe_events_read_total", (l) => l.plugin === PLUGIN),
    lost: sum("redprobe_events_lost_kernel_total", (l) => l.plugin === PLUGIN),
    exported: sum("http_server_duration_seconds_count", () => true),
  };
}

async function step(agent: Agent, gen: Generator, rate: number, events: number): Promise<Step> {
  const calls = Math.round(events / RECORDS_PER_CALL);
  events = calls * RECORDS_PER_CALL;
  const before = await counters(agent);
  const cpuBefore = cpuNs(agent.pid);
  const elapsedNs = await gen.burst(calls, rate / RECORDS_PER_CALL);
  const cpuDuring = cpuNs(agent.pid) - cpuBefore;
  // What is still in the ring is drained by the agent's loop (or the next scrape): wait until
  // every call is accounted for, read or lost.
  let after = await counters(agent);
  for (
    let i = 0;
    i < 100 && after.read - before.read + after.lost - before.lost < events;
    i++
  ) {
    await sleep(100);
    after = await counters(agent);
  }
  const cpu = cpuNs(agent.pid) - cpuBefore;
  const read = after.read - before.read;
  const lost = after.lost - before.lost;
  return {
    rate,
    events,
    achievedRate: events / (elapsedNs / 1e9),
    elapsedMs: elapsedNs / 1e6,
    read,
    lost,
    exported: after.exported - before.exported,
    agentNsPerEvent: read ? cpu / read : 0,
    agentBusy: cpuDuring / elapsedNs,
    zeroLoss: lost === 0 && read === events,
  };
}

function describe(s: Step): string {
  return `${s.rate ? `${(s.rate / 1e6).toFixed(3)} M/s` : "unpaced"}: achieved ` +
    `${(s.achievedRate / 1e6).toFixed(3)} M/s, read ${s.read} lost ${s.lost} of ${s.events}, ` +
    `exported ${s.exported}, agent ${s.agentNsPerEvent.toFixed(0)} ns/event, busy ` +
    `${(s.agentBusy * 100).toFixed(0)}%${s.zeroLoss ? "" : " LOSS"}`;
}

const tree = await snapshotWorkingTree();
const tmp = await Deno.makeTempDir({ prefix: "redprobe-bench-ingest-" });
const genPath = join(tmp, "ingest_gen");
await run("clang", ["-O2", "-Wall", "-Werror", "-o", genPath, join(ROOT, "bench/ingest/gen.c")]);
const configPath = join(tmp, "config.json");
await Deno.writeTextFile(
  configPath,
  JSON.stringify({
    plugin_modules: [join(tree.dir, "bench/ingest/mod.ts")],
    discovery: { poll_interval: "100ms", select: [{ exe: genPath, name: "ingest-gen" }] },
    plugins: {
      "kprobe-http": { enabled: false },
      "tls-uprobe": { enabled: false },
      "go-http": { enabled: false },
      "go-grpc": { enabled: false },
      [PLUGIN]: { records_per_call: RECORDS_PER_CALL },
    },
  }),
);

const gen = new Generator(genPath);
const rounds: Round[] = [];
try {
  if ((await gen.line()) !== "ready") throw new Error("generator did not start");
  for (let r = 0; r < args.rounds; r++) {
    const agent = await startAgent({
      until: new RegExp(`instrumenting pid ${gen.pid} .* with ${PLUGIN}`),
      root: tree.dir,
      configPath,
      cpu: "0",
      settleMs: 500,
    });
    try {
      const steps: Step[] = [];
      const paced = async (rate: number) => {
        const s = await step(agent, gen, rate, Math.round(rate * args.seconds));
        steps.push(s);
        console.error(`round ${r + 1}: ${describe(s)}`);
        return s;
      };
      await gen.burst(100_000, 0); // warm-up (JIT)
      await sleep(300);
      let good = 0;
      let bad = 0;
      for (const rate of COARSE_RATES) {
        const s = await paced(rate);
        if (s.zeroLoss) good = Math.max(good, rate);
        else {
          bad = rate;
          break;
        }
      }
      if (bad) {
        for (let i = 0; i < BISECT_STEPS; i++) {
          const mid = Math.round((good + bad) / 2 / 10_000) * 10_000;
          if (mid <= good || mid >= bad) break;
          if ((await paced(mid)).zeroLoss) good = mid;
          else bad = mid;
        }
      }
      // Saturation: as fast as the generator can, as many events as the last rate's step.
      const saturation = await step(
        agent,
        gen,
        0,
        Math.round(Math.max(bad, good, TARGET) * SATURATION_SECONDS),
      );
      console.error(`round ${r + 1}: ${describe(saturation)}`);
      const ceiling = Math.max(0, ...steps.filter((s) => s.zeroLoss).map((s) => s.achievedRate));
      rounds.push({ steps, ceiling, saturation });
      console.error(`round ${r + 1}: zero-loss ceiling ${(ceiling / 1e6).toFixed(3)} M events/s`);
    } finally {
      await agent.stop();
    }
  }
} finally {
  await gen.stop();
  await Deno.remove(tmp, { recursive: true });
  await tree.remove();
}

const ceilings = rounds.map((r) => r.ceiling);
const satDrained = rounds.map((r) => (r.saturation.read / r.saturation.elapsedMs) * 1000);
const satGen = rounds.map((r) => r.saturation.achievedRate);
const nsAtCeiling = rounds.map((r) => {
  const best = r.steps.filter((s) => s.zeroLoss).sort((a, b) => b.achievedRate - a.achievedRate)[0];
  return best?.agentNsPerEvent ?? 0;
});
const summary = {
  ceilingMedianEventsPerSecond: median(ceilings),
  ceilingSpread: spread(ceilings),
  targetEventsPerSecond: TARGET,
  targetMet: median(ceilings) >= TARGET,
  saturationGeneratorRateMedian: median(satGen),
  saturationDrainedDuringRunMedian: median(satDrained),
  saturationLossFractionMedian: median(
    rounds.map((r) => r.saturation.lost / r.saturation.events),
  ),
  recordsPerCall: RECORDS_PER_CALL,
  agentNsPerEventAtCeilingMedian: median(nsAtCeiling),
  /** What one core of the agent could take, from saturation: drained rate / busy fraction. */
  agentCapacityAtSaturationMedian: median(
    rounds.map((r, i) => satDrained[i] / Math.max(r.saturation.agentBusy, 0.01)),
  ),
  agentNsPerEventAtSaturationMedian: median(rounds.map((r) => r.saturation.agentNsPerEvent)),
};
const machine = machineInfo();
const command = commandLine("scripts/bench_ingest.ts");
const m = (x: number) => (x / 1e6).toFixed(3);
const markdown = [
  `# Ingest ceiling: ring-buffer records per second through the agent, zero loss`,
  ``,
  `Command: \`${command}\`  `,
  `Machine: ${machine.nproc} CPUs (${machine.cpuModel}), Linux ${machine.kernel}, ${machine.date}  `,
  `Tree: snapshot ${tree.digest} (${tree.files} files). Rounds: ${args.rounds}, ` +
  `${args.seconds} s per step.`,
  ``,
  `Source: bench/ingest/ingest.bpf.c, ${RECORDS_PER_CALL} records of 64 bytes per getppid() of ` +
  `the generator (bench/ingest/gen.c, pinned to CPU 1, paced; one record per call cannot ` +
  `outrun the agent: ~1.3 M calls/s at most with the program attached). Agent: main.ts pinned to CPU 0 (every thread), ` +
  `only the plugin bench/ingest/mod.ts (loaded with plugin_modules), default 8 MiB ring and ` +
  `wakeup policy; each record is decoded, turned into an http_server observation with a path ` +
  `(route mapped by the core) and recorded in the exporter's histograms. Zero loss: ` +
  `redprobe_events_lost_kernel_total unchanged and redprobe_events_read_total == events written.`,
  ``,
  `| round | zero-loss ceiling (M events/s) | agent ns/event there | saturation: generator M/s | ` +
  `drained M/s | lost at saturation |`,
  `|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${m(r.ceiling)} | ${nsAtCeiling[i].toFixed(0)} | ${
      m(r.saturation.achievedRate)
    } | ${m(satDrained[i])} | ${(r.saturation.lost / r.saturation.events * 100).toFixed(1)}% |`
  ),
  ``,
  `Median zero-loss ceiling: **${m(summary.ceilingMedianEventsPerSecond)} M events/s** ` +
  `(spread ${m(summary.ceilingSpread.min)} … ${m(summary.ceilingSpread.max)}); target ` +
  `≥ ${m(TARGET)} M/s: **${summary.targetMet ? "met" : "not met"}**. At saturation the ` +
  `generator wrote ${m(summary.saturationGeneratorRateMedian)} M events/s (median) and the agent ` +
  `read ${m(summary.saturationDrainedDuringRunMedian)} M/s over the same time ` +
  `(${(summary.saturationLossFractionMedian * 100).toFixed(1)}% lost), using ` +
  `${summary.agentNsPerEventAtSaturationMedian.toFixed(0)} ns of CPU per event: one core of ` +
  `the agent could take ~${m(summary.agentCapacityAtSaturationMedian)} M events/s (drained ` +
  `rate / busy fraction). When the agent's core is not ~100% busy at saturation, the ceiling ` +
  `above is the source's, not the agent's.`,
  ``,
  `Every step, per round:`,
  ``,
  `| round | requested M/s | achieved M/s | events | read | lost | exported | agent ns/event | ` +
  `agent busy |`,
  `|---|---|---|---|---|---|---|---|---|`,
  ...rounds.flatMap((r, i) =>
    [...r.steps, r.saturation].map((s) =>
      `| ${i + 1} | ${s.rate ? m(s.rate) : "unpaced"} | ${m(s.achievedRate)} | ${s.events} | ` +
      `${s.read} | ${s.lost} | ${s.exported} | ${s.agentNsPerEvent.toFixed(0)} | ` +
      `${(s.agentBusy * 100).toFixed(0)}% |`
    )
  ),
  ``,
].join("\n");
console.log(markdown);
if (args.out) {
  await writeResults(args.out, markdown, { command, machine, rounds, summary });
}
