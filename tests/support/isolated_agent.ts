/**
 * An agent for tests that need exact totals of the agent's own, plugin-wide counters
 * (`redprobe_kernel_events_total`, `redprobe_events_lost_kernel_total`): only kprobe-http runs,
 * it instruments only the test's own servers (by port: `discovery.select`) and measures no
 * client connections, so no other process on the shared machine adds to those counters.
 * Plus the checks every robustness test makes of the agent itself: alive, answering, bounded.
 *
 * @module
 */
import assert from "node:assert/strict";
import { type AgentHandle, startAgent } from "./agent.ts";
import { isAlive } from "./procfs.ts";
import { countsByRequest, findSamples, type Sample, sumSamples } from "./prom_text.ts";
import type { ServerHandle } from "./servers.ts";
import { rssBytes } from "./raw_client.ts";

/** Starts the agent on `servers` only and waits until every process of theirs is instrumented. */
export async function startIsolatedAgent(
  servers: ServerHandle[],
  kprobeHttp: Record<string, unknown> = {},
): Promise<AgentHandle> {
  const agent = await startAgent({
    config: {
      discovery: { poll_interval: "200ms", select: servers.map((s) => ({ ports: [s.port] })) },
      plugins: {
        "kprobe-http": { clients: "off", ...kprobeHttp },
        "tls-uprobe": { enabled: false },
        "go-http": { enabled: false },
        "go-grpc": { enabled: false },
      },
    },
  });
  try {
    for (const s of servers) for (const pid of await s.pids()) await agent.waitForPid(pid);
  } catch (e) {
    await agent.stop();
    throw e;
  }
  return agent;
}

/** `target_instance` of a server (its top process). */
export function instanceOf(server: ServerHandle): { target_instance: string } {
  return { target_instance: `${Deno.hostname()}:${server.pid}` };
}

/** The server's `http_server_duration_seconds_count` per "METHOD STATUS ROUTE". */
export function serverCounts(samples: Sample[], server: ServerHandle): Record<string, number> {
  return countsByRequest(samples, "http_server_duration_seconds_count", instanceOf(server));
}

/** One of kprobe-http's `redprobe_kernel_events_total` counters. */
export function kernelEvent(samples: Sample[], event: string): number {
  return sumSamples(samples, "redprobe_kernel_events_total", { plugin: "kprobe-http", event });
}

/** `after - before`, key by key, leaving out keys that did not change. */
export function countsDelta(
  before: Record<string, number>,
  after: Record<string, number>,
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key of new Set([...Object.keys(before), ...Object.keys(after)])) {
    const d = (after[key] ?? 0) - (before[key] ?? 0);
    if (d !== 0) out[key] = d;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}

/** Adds `n` to `counts[key]`. */
export function add(counts: Record<string, number>, key: string, n = 1): void {
  counts[key] = (counts[key] ?? 0) + n;
}

/** Growth of the agent's RSS a test allows, whatever it threw at the agent. */
export const RSS_GROWTH_LIMIT = 64 * 1024 * 1024;

/**
 * The agent is alive (not even a zombie), /metrics answers, its RSS grew less than
 * {@linkcode RSS_GROWTH_LIMIT} since `rssBefore`, and each HTTP family has at most
 * `maxSeries` label sets. Returns the RSS now and the samples read.
 */
export async function assertAgentHealthy(
  agent: AgentHandle,
  rssBefore: number,
  maxSeries: number,
): Promise<{ rss: number; samples: Sample[] }> {
  assert.ok(isAlive(agent.pid), `the agent (pid ${agent.pid}) died. Logs:\n${agent.logs()}`);
  const samples = await agent.samples();
  const rss = rssBytes(agent.pid);
  assert.ok(
    rss - rssBefore < RSS_GROWTH_LIMIT,
    `agent RSS grew from ${mib(rssBefore)} to ${mib(rss)} MiB`,
  );
  for (
    const name of ["http_server_duration_seconds_count", "http_server_request_size_bytes_count"]
  ) {
    const series = findSamples(samples, name).length;
    assert.ok(series <= maxSeries, `${series} series of ${name} (at most ${maxSeries})`);
  }
  return { rss, samples };
}

export function mib(bytes: number): string {
  return (bytes / 1024 / 1024).toFixed(1);
}
