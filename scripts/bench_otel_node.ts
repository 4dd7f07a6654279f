/**
 * redprobe against the in-process alternative: one Node http server at saturation, bare, with
 * redprobe running, and with the OpenTelemetry Node auto-instrumentation (metrics only), in the
 * same run, rounds interleaved.
 *
 *   deno run -A scripts/bench_otel_node.ts [--rounds 5] [--seconds 10] [--out bench/results/otel_node.md]
 *
 * Setup: a minimal node:http server (200 "hello\n", keep-alive) pinned to CPU 0; wrk -t1
 * -c10 pinned to CPU 1, 2 s of warm-up then `--seconds` measured. Per round, in rotating order:
 * (bare) `node server.mjs`; (redprobe) the same with the agent running (default configuration,
 * `kprobe-http.clients: targets` so wrk is not measured; a snapshot of the working tree,
 * unpinned, started fresh); (otel) `node --require
 * @opentelemetry/auto-instrumentations-node/register server.mjs` with OTEL_TRACES_EXPORTER=none,
 * OTEL_LOGS_EXPORTER=none, OTEL_METRICS_EXPORTER=otlp (http/protobuf every second to a local
 * receiver in this script that accepts and discards, counting the exports). The OpenTelemetry
 * packages are installed, at the pinned versions below, into a temporary directory with
 * `npm install --prefix`.
 *
 * Reported: each one's throughput loss against the bare server of the same round (median over
 * rounds), and redprobe's loss / OTel's loss. Target: redprobe's loss ≤ 1/5 of OTel's.
 *
 * @module
 */
import { join } from "node:path";
import {
  type Agent,
  commandLine,
  cpuNs,
  freePort,
  machineInfo,
  median,
  parseBenchArgs,
  run,
  sleep,
  snapshotWorkingTree,
  spread,
  startAgent,
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
}

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
  for (let i = 0;; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      if (i > 300) throw new Error(`node (${mode}) did not start`);
      await sleep(50);
    }
  }
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

async function measure(mode: Mode): Promise<Measurement> {
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
    const countedBefore = agent
      ? await sumMetric(agent.metricsPort, "http_server_duration_seconds_count")
      : receiver.exports();
    const cpuBefore = cpuNs(server.pid);
    const result: WrkResult = await wrk({
      url,
      seconds: args.seconds,
      connections: args.connections,
    });
    const serverUs = (cpuNs(server.pid) - cpuBefore) / 1000 / result.requests;
    let counted: number | undefined;
    if (agent) {
      counted = (await sumMetric(agent.metricsPort, "http_server_duration_seconds_count")) -
        countedBefore;
    } else if (mode === "otel") {
      counted = receiver.exports() - countedBefore;
    }
    return {
      mode,
      rps: result.rps,
      requests: result.requests,
      serverUsPerRequest: serverUs,
      counted,
    };
  } finally {
    await agent?.stop();
    await server.stop();
  }
}

interface Round {
  order: Mode[];
  bare: Measurement;
  redprobe: Measurement;
  otel: Measurement;
}
const rounds: Round[] = [];
try {
  for (let r = 0; r < args.rounds; r++) {
    const order = MODES.map((_, i) => MODES[(i + r) % MODES.length]);
    const got: Partial<Record<Mode, Measurement>> = {};
    for (const mode of order) got[mode] = await measure(mode);
    const round = { order, bare: got.bare!, redprobe: got.redprobe!, otel: got.otel! };
    rounds.push(round);
    console.error(
      `round ${r + 1} (${order.join(", ")}): bare ${round.bare.rps.toFixed(0)}, redprobe ` +
        `${round.redprobe.rps.toFixed(0)} (${loss(round, "redprobe").toFixed(1)}%, counted ` +
        `${round.redprobe.counted} of ${round.redprobe.requests}), otel ${
          round.otel.rps.toFixed(0)
        } ` +
        `(${loss(round, "otel").toFixed(1)}%, ${round.otel.counted} OTLP exports)`,
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

const redprobeLoss = rounds.map((r) => loss(r, "redprobe"));
const otelLoss = rounds.map((r) => loss(r, "otel"));
const summary = {
  redprobeLossMedianPct: median(redprobeLoss),
  redprobeLossSpreadPct: spread(redprobeLoss),
  otelLossMedianPct: median(otelLoss),
  otelLossSpreadPct: spread(otelLoss),
  /** redprobe's median loss / OTel's median loss. Target ≤ 0.2. */
  lossRatio: median(redprobeLoss) / median(otelLoss),
  /** Per round, then the median: the same ratio, less sensitive to one round's noise. */
  lossRatioPerRoundMedian: median(rounds.map((r) => loss(r, "redprobe") / loss(r, "otel"))),
  serverUsPerRequestMedian: {
    bare: median(rounds.map((r) => r.bare.serverUsPerRequest)),
    redprobe: median(rounds.map((r) => r.redprobe.serverUsPerRequest)),
    otel: median(rounds.map((r) => r.otel.serverUsPerRequest)),
  },
  otelPackages: OTEL_PACKAGES,
  nodeVersion: (await run("node", ["--version"])).trim(),
};
const machine = machineInfo();
const command = commandLine("scripts/bench_otel_node.ts");
const f = (x: number) => x.toFixed(1);
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
  `\`clients: targets\` leaves wrk alone), unpinned. OTel: \`node --require ` +
  `@opentelemetry/auto-instrumentations-node/register\`, OTEL_TRACES_EXPORTER=none, ` +
  `OTEL_LOGS_EXPORTER=none, OTEL_METRICS_EXPORTER=otlp (http/protobuf, every 1 s, to a local ` +
  `receiver that accepts and discards; metrics only). OTel "exports": OTLP requests received ` +
  `during the measured seconds.`,
  ``,
  `| round | bare req/s | redprobe req/s | loss | counted / completed | OTel req/s | loss | ` +
  `exports | server µs/req bare / redprobe / OTel |`,
  `|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.bare.rps.toFixed(0)} | ${r.redprobe.rps.toFixed(0)} | ` +
    `${f(loss(r, "redprobe"))}% | ${r.redprobe.counted} / ${r.redprobe.requests} | ` +
    `${r.otel.rps.toFixed(0)} | ${f(loss(r, "otel"))}% | ${r.otel.counted} | ${
      r.bare.serverUsPerRequest.toFixed(1)
    } / ` +
    `${r.redprobe.serverUsPerRequest.toFixed(1)} / ${r.otel.serverUsPerRequest.toFixed(1)} |`
  ),
  ``,
  `Median throughput loss against the bare server of the same round: redprobe ` +
  `**${f(summary.redprobeLossMedianPct)}%** (${f(summary.redprobeLossSpreadPct.min)} … ` +
  `${f(summary.redprobeLossSpreadPct.max)}), OTel **${f(summary.otelLossMedianPct)}%** ` +
  `(${f(summary.otelLossSpreadPct.min)} … ${
    f(summary.otelLossSpreadPct.max)
  }). redprobe's loss / ` +
  `OTel's: **${summary.lossRatio.toFixed(2)}** (per-round median ` +
  `${summary.lossRatioPerRoundMedian.toFixed(2)}); target ≤ 0.20: ` +
  `**${summary.lossRatio <= 0.2 ? "met" : "not met"}**.`,
  ``,
  `"counted" can exceed "completed" by up to the ${args.connections} requests in flight when ` +
  `wrk stops.`,
  ``,
].join("\n");
console.log(markdown);
if (args.out) await writeResults(args.out, markdown, { command, machine, rounds, summary });
