/**
 * How much of what the agent costs nginx is the tracepoints' own cost, and how much the work of
 * kprobe-http's programs: nginx's CPU time per request and its throughput at saturation, in one
 * run, three ways per round, in rotating order:
 *
 * - bare: no program on the socket tracepoints;
 * - empty: two programs that return at once, on the tracepoints kprobe-http uses for every
 *   socket read and write (tp_btf/sock_recv_length, tp_btf/sock_send_length), compiled here
 *   with clang against the repository's bpf/vmlinux.h, loaded and attached by the agent's own
 *   core (core/bpf/), in this process;
 * - agent: the agent as `bench:http` runs it (kprobe-http, wrk not measured).
 *
 *   deno run -A scripts/bench_tracepoint_floor.ts [--rounds 5] [--seconds 5] [--max-steal 2] [--out bench/results/tracepoint_floor.md]
 *
 * Setup as in `bench:http` (scripts/bench_http.ts): one nginx worker pinned to CPU 0 serving a
 * 6-byte file with sendfile and keep-alive; wrk -t1 -c10 pinned to CPU 1. nginx's worker's CPU
 * time (schedstat) per request is the figure to read: the machine's noise moves throughput far
 * more than it moves that. Rounds with hypervisor steal of `--max-steal`% or more in any of their
 * runs are reported and left out of the summary (stealDuring()).
 *
 * @module
 */
import { join } from "node:path";
import { BpfObject } from "../core/bpf/object.ts";
import { attachBySection } from "../core/bpf/link.ts";
import {
  anotherRound,
  commandLine,
  cpuNs,
  machineInfo,
  median,
  parseBenchArgs,
  roundsInSummary,
  run,
  snapshotWorkingTree,
  spread,
  startAgent,
  startBenchNginx,
  StealLog,
  writeResults,
  wrk,
} from "./lib/bench.ts";

const args = parseBenchArgs({ rounds: 5, seconds: 5 });
const ROOT = join(import.meta.dirname!, "..");
const VARIANTS = ["bare", "empty", "agent"] as const;
type Variant = typeof VARIANTS[number];

const EMPTY_PROGRAMS = `// Programs that do nothing, on kprobe-http's socket tracepoints.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";
SEC("tp_btf/sock_recv_length")
int BPF_PROG(floor_recv, struct sock *sk, int ret, int flags) { return 0; }
SEC("tp_btf/sock_send_length")
int BPF_PROG(floor_send, struct sock *sk, int ret, int flags) { return 0; }
`;

interface Run {
  rps: number;
  nginxNsPerRequest: number;
}
interface Round {
  runs: Record<Variant, Run>;
  stealPct: number;
  clean: boolean;
}

const tmp = await Deno.makeTempDir({ prefix: "redprobe-bench-floor-" });
const object = join(tmp, "floor.bpf.o");
await Deno.writeTextFile(join(tmp, "floor.bpf.c"), EMPTY_PROGRAMS);
await run("clang", [
  "-O2",
  "-g",
  "-target",
  "bpf",
  "-I",
  join(ROOT, "bpf"),
  "-c",
  join(tmp, "floor.bpf.c"),
  "-o",
  object,
]);
/** Attaches the empty programs; resolves to their detach. */
function attachEmpty(): Promise<() => Promise<void>> {
  const bpf = BpfObject.open(Deno.readFileSync(object), "floor");
  bpf.load();
  const links = bpf.programs().map((p) => attachBySection(p));
  if (links.length !== 2) throw new Error(`attached ${links.length} programs, not 2`);
  return Promise.resolve(() => {
    for (const link of links) link.destroy();
    bpf.close();
    return Promise.resolve();
  });
}

const tree = await snapshotWorkingTree();
const nginx = await startBenchNginx();
const url = `http://127.0.0.1:${nginx.port}/hello`;
const rounds: Round[] = [];
try {
  await wrk({ url, seconds: 2, connections: args.connections }); // warm-up
  for (let r = 0; anotherRound(rounds, args.rounds); r++) {
    const order = [...VARIANTS.slice(r % 3), ...VARIANTS.slice(0, r % 3)];
    const steal = new StealLog();
    const runs = {} as Record<Variant, Run>;
    for (const variant of order) {
      let detach = async () => {};
      if (variant === "empty") detach = await attachEmpty();
      if (variant === "agent") {
        const agent = await startAgent({
          until: /instrumenting pid \d+ \/usr\/sbin\/nginx/,
          config: { plugins: { "kprobe-http": { clients: "targets" } } },
          root: tree.dir,
        });
        detach = () => agent.stop();
      }
      try {
        const worker = nginx.worker();
        const before = cpuNs(worker);
        const result = await steal.measured(() =>
          wrk({ url, seconds: args.seconds, connections: args.connections })
        );
        runs[variant] = {
          rps: result.rps,
          nginxNsPerRequest: (cpuNs(worker) - before) / result.requests,
        };
      } finally {
        await detach();
      }
    }
    const round = { runs, stealPct: steal.pct, clean: steal.clean(args.maxStealPct) };
    rounds.push(round);
    console.error(
      `round ${r + 1}: ` +
        VARIANTS.map((v) =>
          `${v} ${runs[v].rps.toFixed(0)} req/s, nginx ${
            (runs[v].nginxNsPerRequest / 1000).toFixed(2)
          } µs/req`
        ).join("; ") + `; steal ${round.stealPct.toFixed(1)}%${round.clean ? "" : " (left out)"}`,
    );
  }
} finally {
  await nginx.stop();
  await Deno.remove(tmp, { recursive: true });
  await tree.remove();
}

const summarized = roundsInSummary(rounds);
const perRound = (v: Variant, f: (run: Run, bare: Run) => number) =>
  summarized.map((r) => f(r.runs[v], r.runs.bare));
const summary = Object.fromEntries(VARIANTS.map((v) => [v, {
  rpsMedian: median(perRound(v, (x) => x.rps)),
  nginxUsPerRequestMedian: median(perRound(v, (x) => x.nginxNsPerRequest / 1000)),
  addedNginxUsPerRequestMedian: median(
    perRound(v, (x, bare) => (x.nginxNsPerRequest - bare.nginxNsPerRequest) / 1000),
  ),
  addedNginxUsPerRequestSpread: spread(
    perRound(v, (x, bare) => (x.nginxNsPerRequest - bare.nginxNsPerRequest) / 1000),
  ),
  throughputChangePctMedian: median(perRound(v, (x, bare) => (x.rps / bare.rps - 1) * 100)),
}]));

const machine = machineInfo();
const command = commandLine("scripts/bench_tracepoint_floor.ts");
const pct = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(1)}%`;
const us = (x: number) => `${x >= 0 ? "+" : ""}${x.toFixed(2)}`;
const markdown = [
  `# The socket tracepoints' own cost against kprobe-http's work, on nginx`,
  ``,
  `Command: \`${command}\`  `,
  `Machine: ${machine.nproc} CPUs (${machine.cpuModel}), Linux ${machine.kernel}, ${machine.date}  `,
  `Rounds: ${rounds.length} run, ${summarized.length} in the summary (steal < ${args.maxStealPct}% ` +
  `in each of their runs); ${args.seconds} s per run, order rotating.`,
  ``,
  `bare: nothing attached. empty: two programs that return at once on tp_btf/sock_recv_length ` +
  `and tp_btf/sock_send_length (the tracepoints kprobe-http hooks for every socket read and ` +
  `write). agent: the agent as \`bench:http\` runs it. nginx: one worker pinned to CPU 0; ` +
  `wrk -t1 -c${args.connections} pinned to CPU 1.`,
  ``,
  `| round | bare req/s | empty req/s | agent req/s | bare nginx µs/req | empty | agent | steal % | in summary |`,
  `|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.runs.bare.rps.toFixed(0)} | ${r.runs.empty.rps.toFixed(0)} | ${
      r.runs.agent.rps.toFixed(0)
    } | ${(r.runs.bare.nginxNsPerRequest / 1000).toFixed(2)} | ${
      (r.runs.empty.nginxNsPerRequest / 1000).toFixed(2)
    } | ${(r.runs.agent.nginxNsPerRequest / 1000).toFixed(2)} | ${r.stealPct.toFixed(1)} | ${
      r.clean ? "yes" : "no"
    } |`
  ),
  ``,
  `Medians of the rounds in the summary:`,
  ``,
  `| | req/s | throughput vs bare | nginx µs/req | added µs/req (min … max) |`,
  `|---|---|---|---|---|`,
  ...VARIANTS.map((v) => {
    const s = summary[v];
    return `| ${v} | ${s.rpsMedian.toFixed(0)} | ${
      v === "bare" ? "" : pct(s.throughputChangePctMedian)
    } | ${s.nginxUsPerRequestMedian.toFixed(2)} | ${
      v === "bare"
        ? ""
        : `${us(s.addedNginxUsPerRequestMedian)} (${us(s.addedNginxUsPerRequestSpread.min)} … ${
          us(s.addedNginxUsPerRequestSpread.max)
        })`
    } |`;
  }),
  ``,
].join("\n");

console.log(markdown);
if (args.out) {
  await writeResults(args.out, markdown, { command, machine, args, rounds, summary });
}
