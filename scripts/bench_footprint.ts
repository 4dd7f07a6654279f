/**
 * The agent's footprint: memory with ten instrumented processes, time from start to the first
 * exported series, and the time to attach to a large stripped Go binary (Debian's prometheus).
 *
 *   deno run -A scripts/bench_footprint.ts [--rounds 5] [--out bench/results/footprint.md]
 *
 * (a) RSS: 4 nginx (1 worker each), 3 python http.server and 3 node servers
 *     (tests/support/servers.ts), each sent 200 requests; the agent (default configuration,
 *     every built-in plugin) started fresh per round; VmRSS and VmHWM from /proc once every
 *     server is instrumented and its requests exported. The agent runs a private copy of the
 *     Deno executable, as on a host where it is the only Deno program: the kernel leaves the
 *     pages of a file that another process (this script's Deno) also maps in the agent's RSS
 *     when the agent returns its start-up pages (core/agent.ts, #compactSoon).
 * (b) Start to first series: one nginx under light traffic (a request every 5 ms); the agent
 *     is spawned and /metrics polled every 20 ms until an http_server_duration_seconds_count
 *     sample appears. Reported: spawn -> "plugins running" in its log, spawn -> first series.
 * (c) Attach to /usr/bin/prometheus (stripped Go, ~100 MB): a fresh agent (--log-level debug,
 *     discovery every 50 ms); prometheus starts on 127.0.0.1 with a temp config and data dir.
 *     Reported: prometheus's port accepting -> the agent's "instrumenting pid ... with go-http"
 *     line (discovery, the binary's analysis and the attach; discovery adds ≤ 50 ms), and the
 *     go-http attach alone as the agent logs it ("attached to pid ... in N ms").
 *
 * Each part runs `--rounds` times; medians and spread. The agent runs from a snapshot of the
 * working tree, unpinned.
 *
 * @module
 */
import { join } from "node:path";
import {
  type Agent,
  commandLine,
  freePort,
  machineInfo,
  median,
  parseBenchArgs,
  scrape,
  sleep,
  snapshotWorkingTree,
  spread,
  startAgent,
  writeResults,
} from "./lib/bench.ts";
import { type ServerHandle, startNginx, startNode, startPython } from "../tests/support/servers.ts";

const args = parseBenchArgs({ rounds: 5 });
const TARGETS = { rssMb: 80, firstSeriesMs: 2000, attachMs: 1000 };
const REQUESTS_PER_SERVER = 200;
/** The settled reading is taken this long after the first (bench/results/README.md). */
const SETTLE_MS = 15_000;

function statusKb(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(
    Deno.readTextFileSync(`/proc/${pid}/status`),
  );
  if (!m) throw new Error(`no ${field} for pid ${pid}`);
  return Number(m[1]);
}

async function get(url: string): Promise<void> {
  const res = await fetch(url);
  await res.arrayBuffer();
}

async function traffic(server: ServerHandle, n: number): Promise<void> {
  for (let i = 0; i < n; i++) await get(`${server.baseUrl}/users/${i % 10}`);
}

async function waitFor<T>(
  what: string,
  timeoutMs: number,
  everyMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const until = performance.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (performance.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

const tree = await snapshotWorkingTree();
const tmp = await Deno.makeTempDir({ prefix: "redprobe-bench-footprint-" });
/** A private copy of the Deno executable for (a): see the comment at the top. */
const privateDeno = join(tmp, "deno");
await Deno.copyFile(Deno.execPath(), privateDeno);
await Deno.chmod(privateDeno, 0o755);
const machine = machineInfo();

interface RssRound {
  vmRssMb: number;
  /** vmRssMb's anonymous and file-backed parts. */
  firstAnonMb: number;
  firstFileMb: number;
  /** VmRSS SETTLE_MS later: once V8 has returned the pages it pools (~8 s) to the system. */
  vmRssSettledMb: number;
  vmHwmMb: number;
  /** VmRSS's parts: anonymous (heaps), file-backed (code, mapped files), shared (BPF maps). */
  rssAnonMb: number;
  rssFileMb: number;
  rssShmemMb: number;
  instrumented: number;
  exported: number;
}
interface StartRound {
  pluginsRunningMs: number;
  firstSeriesMs: number;
}
interface AttachRound {
  /** prometheus's port accepting -> the agent's "instrumenting ... with go-http" line. */
  listenToInstrumentedMs: number;
  /** go-http's add() as the agent logs it. */
  attachLoggedMs: number;
  /** The plugins that took it, from the same line. */
  plugins: string;
}

const rssRounds: RssRound[] = [];
const startRounds: StartRound[] = [];
const attachRounds: AttachRound[] = [];

// (a) RSS with ten instrumented servers.
{
  const servers: ServerHandle[] = [];
  try {
    for (let i = 0; i < 4; i++) {
      servers.push(await startNginx({ workers: 1, keepalive: true, sendfile: true }));
    }
    for (let i = 0; i < 3; i++) servers.push(await startPython());
    for (let i = 0; i < 3; i++) servers.push(await startNode());
    const pids = (await Promise.all(servers.map((s) => s.pids()))).flat();
    for (let r = 0; r < args.rounds; r++) {
      const agent = await startAgent({
        until: /plugins running/,
        root: tree.dir,
        settleMs: 0,
        deno: privateDeno,
      });
      try {
        const instrumented = await waitFor("every server instrumented", 20_000, 100, async () => {
          const n = (await scrape(agent.metricsPort))
            .filter((s) => s.name === "redprobe_instrumented_processes")
            .reduce((a, s) => Math.max(a, s.value), 0);
          return pids.every((p) => new RegExp(`instrumenting pid ${p} `).test(agent.log()))
            ? n
            : undefined;
        });
        await Promise.all(servers.map((s) => traffic(s, REQUESTS_PER_SERVER)));
        const exported = await waitFor("requests exported", 10_000, 200, async () => {
          const n = (await scrape(agent.metricsPort))
            .filter((s) => s.name === "http_server_duration_seconds_count")
            .reduce((a, s) => a + s.value, 0);
          return n >= servers.length * REQUESTS_PER_SERVER ? n : undefined;
        });
        await sleep(2000); // a few discovery polls and scrapes more
        await scrape(agent.metricsPort);
        const vmRssMb = statusKb(agent.pid, "VmRSS") / 1024;
        const firstAnonMb = statusKb(agent.pid, "RssAnon") / 1024;
        const firstFileMb = statusKb(agent.pid, "RssFile") / 1024;
        await sleep(SETTLE_MS);
        await scrape(agent.metricsPort);
        const round = {
          vmRssMb,
          firstAnonMb,
          firstFileMb,
          vmRssSettledMb: statusKb(agent.pid, "VmRSS") / 1024,
          vmHwmMb: statusKb(agent.pid, "VmHWM") / 1024,
          rssAnonMb: statusKb(agent.pid, "RssAnon") / 1024,
          rssFileMb: statusKb(agent.pid, "RssFile") / 1024,
          rssShmemMb: statusKb(agent.pid, "RssShmem") / 1024,
          instrumented,
          exported,
        };
        rssRounds.push(round);
        console.error(
          `rss round ${r + 1}: VmRSS ${round.vmRssMb.toFixed(1)} MB (anon ${
            firstAnonMb.toFixed(1)
          }, file ${firstFileMb.toFixed(1)}; settled ${
            round.vmRssSettledMb.toFixed(1)
          } MB), VmHWM ` +
            `${round.vmHwmMb.toFixed(1)} MB (anon ${round.rssAnonMb.toFixed(1)}, file ` +
            `${round.rssFileMb.toFixed(1)}, shmem ${
              round.rssShmemMb.toFixed(1)
            }), ${pids.length} server processes ` +
            `(redprobe_instrumented_processes max ${instrumented}), ${exported} requests exported`,
        );
      } finally {
        await agent.stop();
      }
    }
  } finally {
    for (const s of servers) await s.stop();
  }
}

// (b) Start to first series.
{
  const nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
  let stop = false;
  const load = (async () => {
    while (!stop) {
      await get(`${nginx.baseUrl}/hello`).catch(() => {});
      await sleep(5);
    }
  })();
  try {
    for (let r = 0; r < args.rounds; r++) {
      const agent = await startAgent({ until: /plugins running/, root: tree.dir, settleMs: 0 });
      const returned = performance.now();
      try {
        await waitFor("a first series", 10_000, 20, async () => {
          const text = await (await fetch(`http://127.0.0.1:${agent.metricsPort}/metrics`))
            .text();
          return /^http_server_duration_seconds_count\{/m.test(text) ? true : undefined;
        });
        const round = {
          pluginsRunningMs: agent.startedMs,
          firstSeriesMs: agent.startedMs + (performance.now() - returned),
        };
        startRounds.push(round);
        console.error(
          `start round ${r + 1}: plugins running after ${round.pluginsRunningMs.toFixed(0)} ms, ` +
            `first series after ${round.firstSeriesMs.toFixed(0)} ms`,
        );
      } finally {
        await agent.stop();
      }
      await sleep(500);
    }
  } finally {
    stop = true;
    await load;
    await nginx.stop();
  }
}

// (c) Attach to Debian's stripped prometheus.
{
  const config = join(tmp, "agent.json");
  await Deno.writeTextFile(config, JSON.stringify({ discovery: { poll_interval: "50ms" } }));
  const promConfig = join(tmp, "prometheus.yml");
  await Deno.writeTextFile(promConfig, "global:\n  scrape_interval: 1m\nscrape_configs: []\n");
  try {
    for (let r = 0; r < args.rounds; r++) {
      // A fresh agent each round: go-http caches a binary's analysis, and a cold one is what a
      // new executable costs.
      const agent: Agent = await startAgent({
        until: /plugins running/,
        root: tree.dir,
        configPath: config,
        extraArgs: ["--log-level", "debug"],
        settleMs: 1000,
      });
      const port = freePort();
      const data = await Deno.makeTempDir({ dir: tmp, prefix: "prometheus-" });
      const prometheus = new Deno.Command("/usr/bin/prometheus", {
        args: [
          `--config.file=${promConfig}`,
          `--storage.tsdb.path=${data}`,
          `--web.listen-address=127.0.0.1:${port}`,
        ],
        stdout: "null",
        stderr: "null",
      }).spawn();
      try {
        const listening = await waitFor("prometheus listening", 30_000, 5, async () => {
          try {
            (await Deno.connect({ hostname: "127.0.0.1", port })).close();
            return Date.now();
          } catch {
            return undefined;
          }
        });
        const pid = prometheus.pid;
        const line = await waitFor("prometheus instrumented", 30_000, 20, () => {
          const m = new RegExp(`^(\\S+) INFO  instrumenting pid ${pid} .*$`, "m").exec(
            agent.log(),
          );
          return Promise.resolve(m ?? undefined);
        });
        const attached = new RegExp(`go-http: attached to pid ${pid} in ([\\d.]+) ms`).exec(
          agent.log(),
        );
        const plugins = / with (.+)$/.exec(line[0])?.[1] ?? "none";
        const round = {
          listenToInstrumentedMs: Date.parse(line[1]) - listening,
          attachLoggedMs: attached ? Number(attached[1]) : NaN,
          plugins,
        };
        attachRounds.push(round);
        console.error(
          `attach round ${r + 1}: listening -> instrumented (${plugins}) ` +
            `${round.listenToInstrumentedMs} ms; go-http attach ${round.attachLoggedMs} ms`,
        );
      } finally {
        prometheus.kill("SIGTERM");
        await prometheus.status;
        await agent.stop();
      }
    }
  } finally {
    await Deno.remove(tmp, { recursive: true });
    await tree.remove();
  }
}

const col = (xs: number[], digits = 1) => {
  const s = spread(xs);
  return `**${median(xs).toFixed(digits)}** (${s.min.toFixed(digits)} … ${s.max.toFixed(digits)})`;
};
const summary = {
  vmRssMbMedian: median(rssRounds.map((r) => r.vmRssMb)),
  vmRssMbSpread: spread(rssRounds.map((r) => r.vmRssMb)),
  vmRssSettledMbMedian: median(rssRounds.map((r) => r.vmRssSettledMb)),
  vmRssSettledMbSpread: spread(rssRounds.map((r) => r.vmRssSettledMb)),
  vmHwmMbMedian: median(rssRounds.map((r) => r.vmHwmMb)),
  vmHwmMbSpread: spread(rssRounds.map((r) => r.vmHwmMb)),
  rssAnonMbMedian: median(rssRounds.map((r) => r.rssAnonMb)),
  rssFileMbMedian: median(rssRounds.map((r) => r.rssFileMb)),
  rssShmemMbMedian: median(rssRounds.map((r) => r.rssShmemMb)),
  pluginsRunningMsMedian: median(startRounds.map((r) => r.pluginsRunningMs)),
  firstSeriesMsMedian: median(startRounds.map((r) => r.firstSeriesMs)),
  firstSeriesMsSpread: spread(startRounds.map((r) => r.firstSeriesMs)),
  listenToInstrumentedMsMedian: median(attachRounds.map((r) => r.listenToInstrumentedMs)),
  listenToInstrumentedMsSpread: spread(attachRounds.map((r) => r.listenToInstrumentedMs)),
  attachLoggedMsMedian: median(attachRounds.map((r) => r.attachLoggedMs)),
  targets: TARGETS,
};
const met = (ok: boolean) => ok ? "met" : "**not met**";
const command = commandLine("scripts/bench_footprint.ts");
const markdown = [
  `# Agent footprint`,
  ``,
  `Command: \`${command}\`  `,
  `Machine: ${machine.nproc} CPUs (${machine.cpuModel}), Linux ${machine.kernel}, ${machine.date}  `,
  `Tree: snapshot ${tree.digest}. Rounds: ${args.rounds} per part; medians (min … max).`,
  ``,
  `## (a) Memory with ten instrumented servers`,
  ``,
  `4 nginx (1 worker each: master and worker both instrumented), 3 python http.server, 3 node ` +
  `servers on 127.0.0.1, ${REQUESTS_PER_SERVER} requests each; the agent with its default ` +
  `configuration (every built-in plugin), fresh each round, read 2 s after every request was ` +
  `exported, and again ${SETTLE_MS / 1000} s later ("settled": V8 keeps the pages it freed in ` +
  `a pool for ~8 s before it returns them to the system). The agent runs a private copy of the ` +
  `Deno executable, as on a host where it is the only Deno program (the kernel does not reclaim ` +
  `pages another process maps too). Anon/file: RssAnon and RssFile; those of the settled ` +
  `reading, with RssShmem, in the columns after VmHWM.`,
  ``,
  `| round | VmRSS MB | anon / file | settled VmRSS MB | VmHWM MB | RssAnon | RssFile | ` +
  `RssShmem | instrumented (max per plugin) | requests exported |`,
  `|---|---|---|---|---|---|---|---|---|---|`,
  ...rssRounds.map((r, i) =>
    `| ${i + 1} | ${r.vmRssMb.toFixed(1)} | ${r.firstAnonMb.toFixed(1)} / ${
      r.firstFileMb.toFixed(1)
    } | ${r.vmRssSettledMb.toFixed(1)} | ${r.vmHwmMb.toFixed(1)} | ${r.rssAnonMb.toFixed(1)} | ` +
    `${r.rssFileMb.toFixed(1)} | ${r.rssShmemMb.toFixed(1)} | ${r.instrumented} | ` +
    `${r.exported} |`
  ),
  ``,
  `VmRSS ${col(rssRounds.map((r) => r.vmRssMb))} MB, settled ${
    col(rssRounds.map((r) => r.vmRssSettledMb))
  } MB, VmHWM ${col(rssRounds.map((r) => r.vmHwmMb))} MB; target ≤ ${TARGETS.rssMb} MB: ${
    met(summary.vmRssMbMedian <= TARGETS.rssMb)
  } (settled: ${met(summary.vmRssSettledMbMedian <= TARGETS.rssMb)}; peak: ${
    met(summary.vmHwmMbMedian <= TARGETS.rssMb)
  }).`,
  ``,
  `## (b) Start to first exported series`,
  ``,
  `One nginx, a request every 5 ms; the agent spawned, /metrics polled every 20 ms.`,
  ``,
  `| round | spawn -> plugins running ms | spawn -> first series ms |`,
  `|---|---|---|`,
  ...startRounds.map((r, i) =>
    `| ${i + 1} | ${r.pluginsRunningMs.toFixed(0)} | ${r.firstSeriesMs.toFixed(0)} |`
  ),
  ``,
  `Plugins running after ${col(startRounds.map((r) => r.pluginsRunningMs), 0)} ms; first series ` +
  `after ${
    col(startRounds.map((r) => r.firstSeriesMs), 0)
  } ms; target ≤ ${TARGETS.firstSeriesMs} ` +
  `ms: ${met(summary.firstSeriesMsMedian <= TARGETS.firstSeriesMs)}.`,
  ``,
  `## (c) Attach to /usr/bin/prometheus (Debian, stripped Go)`,
  ``,
  `A fresh agent each round (--log-level debug, discovery every 50 ms; go-http's analysis ` +
  `of the binary is not cached yet); prometheus started on ` +
  `127.0.0.1 with a temp config and data dir. "listening -> instrumented": from prometheus's ` +
  `port accepting to the agent's "instrumenting pid ..." line (discovery ≤ 50 ms, the binary's ` +
  `analysis, every plugin's attach). "go-http attach": the agent's own debug line for go-http's ` +
  `attach step (after the analysis). Log timestamps have 1 ms resolution and the port is ` +
  `polled every 5 ms, so a few ms either way (discovery can see the listening socket first).`,
  ``,
  `| round | listening -> instrumented ms | go-http attach ms | plugins |`,
  `|---|---|---|---|`,
  ...attachRounds.map((r, i) =>
    `| ${i + 1} | ${r.listenToInstrumentedMs} | ${r.attachLoggedMs} | ${r.plugins} |`
  ),
  ``,
  `Listening -> instrumented ${col(attachRounds.map((r) => r.listenToInstrumentedMs), 0)} ms; ` +
  `go-http attach ${col(attachRounds.map((r) => r.attachLoggedMs))} ms; target ≤ ` +
  `${TARGETS.attachMs} ms: ${met(summary.listenToInstrumentedMsMedian <= TARGETS.attachMs)}.`,
  ``,
].join("\n");
console.log(markdown);
if (args.out) {
  await writeResults(args.out, markdown, {
    command,
    machine,
    rss: rssRounds,
    start: startRounds,
    attach: attachRounds,
    summary,
  });
}
