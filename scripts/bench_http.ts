/**
 * What the agent costs nginx: throughput at saturation and p99 latency at a fixed rate, without
 * and with the agent, in one run, alternating, repeated; plus the agent's own CPU per request.
 *
 *   deno run -A scripts/bench_http.ts [--rounds 5] [--seconds 10] [--out bench/results/http.md]
 *   deno run -A scripts/bench_http.ts --tls [--out bench/results/https.md]
 *
 * With `--tls` nginx serves HTTPS (TLS 1.3, keep-alive: one handshake per connection) and the
 * agent measures it with tls-uprobe (uprobes in libssl.so.3) instead of kprobe-http.
 *
 * Setup: nginx (1 worker pinned to CPU 0, keep-alive, sendfile on, access log on) serving a
 * 6-byte file on 127.0.0.1; wrk (1 thread, 10 connections) pinned to CPU 1; the agent
 * unpinned, as a user would run it. Latency: `hey` at half the baseline throughput.
 * These machines are noisy: compare the with/without ratio of the same round, not absolutes.
 *
 * @module
 */
import { testCertificate } from "../tests/support/tls.ts";
import {
  type Agent,
  cpuNs,
  freePort,
  heyLatency,
  median,
  parseBenchArgs,
  rssMb,
  startAgent as startAgentUntil,
  sumMetric,
  writeResults,
  wrk as wrkAt,
} from "./lib/bench.ts";

const args = parseBenchArgs();
const ROUNDS = args.rounds;
const SECONDS = args.seconds;
const CONNECTIONS = args.connections;
const TLS = args.tls;
const SCHEME = TLS ? "https" : "http";

async function startNginx(): Promise<
  { port: number; worker: () => number; stop: () => Promise<void> }
> {
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
    listen 127.0.0.1:${port}${TLS ? " ssl" : ""}; root ${dir}/html;${
      TLS
        ? `
    ssl_certificate ${testCertificate().cert}; ssl_certificate_key ${testCertificate().key};`
        : ""
    }
  }
}
`,
  );
  const child = new Deno.Command("/usr/sbin/nginx", {
    args: [
      "-p",
      `${dir}/`,
      "-c",
      `${dir}/nginx.conf`,
      "-e",
      `${dir}/error.log`,
      "-g",
      "daemon off;",
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 100; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
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

/**
 * The agent with its defaults, except that wrk and hey (clients kprobe-http, tls-uprobe and
 * go-http would measure too) are left alone: this benchmark measures what nginx pays, and probes in wrk would
 * slow the load (with `clients: targets`, tls-uprobe's uprobes are in nginx's worker only).
 */
async function startAgent(): Promise<Agent> {
  const config = await Deno.makeTempFile({ prefix: "redprobe-bench-", suffix: ".json" });
  await Deno.writeTextFile(
    config,
    JSON.stringify({
      plugins: {
        "kprobe-http": { clients: "targets" },
        "tls-uprobe": { clients: "targets" },
        // hey (the latency probe) is a Go client: go-http would measure it with uprobes in
        // hey itself, adding hey's cost to nginx's p99.
        "go-http": { skip_executables: ["/usr/bin/hey"] },
      },
    }),
  );
  return startAgentUntil({
    until: /instrumenting pid \d+ \/usr\/sbin\/nginx/,
    configPath: config,
  });
}

function wrk(port: number): Promise<{ rps: number; requests: number }> {
  return wrkAt({
    url: `${SCHEME}://127.0.0.1:${port}/hello`,
    seconds: SECONDS,
    connections: CONNECTIONS,
  });
}

function latency(port: number, rate: number): Promise<{ p50: number; p99: number }> {
  return heyLatency({
    url: `${SCHEME}://127.0.0.1:${port}/hello`,
    seconds: SECONDS,
    connections: CONNECTIONS,
    rate,
  });
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
    `${r.baselineNginxUs.toFixed(2)} -> ${r.agentNginxUs.toFixed(2)} µs/req, p99 ` +
    `${r.baselineP99Ms.toFixed(2)} -> ${r.agentP99Ms.toFixed(2)} ms, p50 ` +
    `${r.baselineP50Ms.toFixed(2)} -> ${r.agentP50Ms.toFixed(2)} ms, agent ` +
    `${r.agentCpuUsPerRequest.toFixed(2)} µs/req and ${r.agentRssMb.toFixed(0)} MB, counted ` +
    `${r.counted} of ${r.sent}`;
}

interface Round {
  baselineRps: number;
  agentRps: number;
  /** nginx worker CPU time per request, µs: includes the time the probes run in its syscalls. */
  baselineNginxUs: number;
  agentNginxUs: number;
  baselineP99Ms: number;
  agentP99Ms: number;
  baselineP50Ms: number;
  agentP50Ms: number;
  agentCpuUsPerRequest: number;
  /** The agent's VmRSS at the end of its saturation run. */
  agentRssMb: number;
  sent: number;
  counted: number;
}

const nginx = await startNginx();
const rounds: Round[] = [];
try {
  await wrk(nginx.port); // warm-up
  for (let r = 0; r < ROUNDS; r++) {
    // Alternate which configuration goes first, so drift on the machine cancels out.
    const agentFirst = r % 2 === 1;
    let baseline!: { rps: number; requests: number };
    let withAgent!: { rps: number; requests: number };
    let cpu = 0;
    let counted = 0;
    let agentRss = 0;
    let baselineNginxNs = 0;
    let agentNginxNs = 0;
    const worker = nginx.worker();
    const measureBaseline = async () => {
      const before = cpuNs(worker);
      baseline = await wrk(nginx.port);
      baselineNginxNs = cpuNs(worker) - before;
    };
    const measureAgent = async () => {
      const agent = await startAgent();
      try {
        const before = cpuNs(agent.pid);
        const nginxBefore = cpuNs(worker);
        const countedBefore = await countedRequests(agent);
        withAgent = await wrk(nginx.port);
        agentNginxNs = cpuNs(worker) - nginxBefore;
        cpu = (cpuNs(agent.pid) - before) / 1000;
        counted = (await countedRequests(agent)) - countedBefore;
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
    const rate = Math.round(baseline.rps / 2);
    const baselineLatency = await latency(nginx.port, rate);
    const agent = await startAgent();
    let agentLatency: { p50: number; p99: number };
    try {
      agentLatency = await latency(nginx.port, rate);
    } finally {
      await agent.stop();
    }
    const round: Round = {
      baselineRps: baseline.rps,
      agentRps: withAgent.rps,
      baselineNginxUs: baselineNginxNs / 1000 / baseline.requests,
      agentNginxUs: agentNginxNs / 1000 / withAgent.requests,
      baselineP99Ms: baselineLatency.p99,
      agentP99Ms: agentLatency.p99,
      baselineP50Ms: baselineLatency.p50,
      agentP50Ms: agentLatency.p50,
      agentCpuUsPerRequest: cpu / withAgent.requests,
      agentRssMb: agentRss,
      sent: withAgent.requests,
      counted,
    };
    rounds.push(round);
    console.error(`round ${r + 1}: ${describe(round)}`);
  }
} finally {
  await nginx.stop();
}

const ratios = rounds.map((r) => r.agentRps / r.baselineRps);
const summary = {
  throughputLossMedianPct: (1 - median(ratios)) * 100,
  nginxCpuAddedMedianPct: (median(rounds.map((r) => r.agentNginxUs / r.baselineNginxUs)) - 1) * 100,
  nginxCpuAddedMedianUs: median(rounds.map((r) => r.agentNginxUs - r.baselineNginxUs)),
  throughputLossPerRoundPct: ratios.map((x) => +((1 - x) * 100).toFixed(2)),
  p99AddedMedianMs: median(rounds.map((r) => r.agentP99Ms - r.baselineP99Ms)),
  p50AddedMedianMs: median(rounds.map((r) => r.agentP50Ms - r.baselineP50Ms)),
  agentRssMbMedian: median(rounds.map((r) => r.agentRssMb)),
  agentCpuUsPerRequestMedian: median(rounds.map((r) => r.agentCpuUsPerRequest)),
};
const command = `deno run -A scripts/bench_http.ts --rounds ${ROUNDS} --seconds ${SECONDS}${
  TLS ? " --tls" : ""
}`;
const pct = (ratio: number) => `${((ratio - 1) * 100).toFixed(1)}%`;
const table = [
  TLS
    ? `# nginx over HTTPS with and without redprobe (tls-uprobe)`
    : `# nginx with and without redprobe`,
  ``,
  `Command: \`${command}\`  `,
  `Machine: ${Deno.hostname()}, ${navigator.hardwareConcurrency} CPUs, ${Deno.osRelease()}, ` +
  `${new Date().toISOString()}  `,
  `nginx: 1 worker pinned to CPU 0, keep-alive, sendfile on, access log on, 6-byte file` +
  `${TLS ? ", HTTPS (TLS 1.3, ECDSA P-256 certificate)" : ""}. ` +
  `wrk -t1 -c${CONNECTIONS} -d${SECONDS}s pinned to CPU 1; the agent unpinned. ` +
  `p50 and p99: hey at half the round's baseline rate. CPU: /proc/<pid>/task/*/schedstat. ` +
  `Agent RSS: VmRSS at the end of its saturation run.`,
  ``,
  `| round | req/s without | req/s with | change | nginx CPU µs/req without | with | change | ` +
  `p50 ms without | with | p99 ms without | with | agent CPU µs/req | agent RSS MB | ` +
  `counted / completed |`,
  `|---|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ...rounds.map((r, i) =>
    `| ${i + 1} | ${r.baselineRps.toFixed(0)} | ${r.agentRps.toFixed(0)} | ` +
    `${pct(r.agentRps / r.baselineRps)} | ${r.baselineNginxUs.toFixed(2)} | ` +
    `${r.agentNginxUs.toFixed(2)} | ${pct(r.agentNginxUs / r.baselineNginxUs)} | ` +
    `${r.baselineP50Ms.toFixed(2)} | ${r.agentP50Ms.toFixed(2)} | ` +
    `${r.baselineP99Ms.toFixed(2)} | ${r.agentP99Ms.toFixed(2)} | ` +
    `${r.agentCpuUsPerRequest.toFixed(2)} | ${r.agentRssMb.toFixed(0)} | ` +
    `${r.counted} / ${r.sent} |`
  ),
  ``,
  `Medians over the rounds: throughput **${(-summary.throughputLossMedianPct).toFixed(1)}%** ` +
  `(target: no worse than ${TLS ? "-10%" : "-5%"}); nginx CPU per request **+${
    summary.nginxCpuAddedMedianUs.toFixed(2)
  } µs ` +
  `(${summary.nginxCpuAddedMedianPct.toFixed(1)}%)** (the probes run in its syscalls); ` +
  `added p50 **${summary.p50AddedMedianMs.toFixed(2)} ms**, p99 ` +
  `**${summary.p99AddedMedianMs.toFixed(2)} ms**; agent CPU ` +
  `**${summary.agentCpuUsPerRequestMedian.toFixed(2)} µs per request**, agent RSS ` +
  `**${summary.agentRssMbMedian.toFixed(0)} MB**.`,
  ``,
  `"counted" (requests the agent exported) can exceed "completed" (wrk's count) by up to ` +
  `${CONNECTIONS}: wrk does not count the requests in flight when it stops, whose responses ` +
  `nginx still wrote.`,
  ``,
].join("\n");
console.log(table);
if (args.out) await writeResults(args.out, table, { command, rounds, summary });
