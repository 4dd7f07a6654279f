/**
 * Overload beyond what the agent takes in (issue 7). The agent reads its ring buffer tens of
 * millions of records a second, faster than nginx can serve here, so the test makes the agent
 * the bottleneck: SIGSTOP, then 100,000 requests to nginx with hey, then SIGCONT.
 *
 * - With per-request records (`plugins.kprobe-http.aggregate_in_kernel: false`) the ring buffer
 *   (8 MiB, not configurable: `events` in bpf/redprobe.bpf.h) holds 47,662 records of 176
 *   bytes; the kernel drops the rest and counts each in `redprobe_events_lost_kernel_total`.
 *   counted + lost == sent, exactly; afterwards the agent counts exactly again, its RSS stays
 *   bounded, and nginx answered every request.
 * - With in-kernel histograms (the default) a stalled agent loses nothing: every request is
 *   counted once it reads the histograms again.
 *
 * Only the test's own nginx is instrumented (tests/support/isolated_agent.ts), so the
 * plugin-wide loss counter is this nginx's alone. Traffic: 127.0.0.1 only, bounded by count
 * (hey -n) and time (each run is killed after 30 s).
 */
import assert from "node:assert/strict";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { type Sample, sumSamples } from "../support/prom_text.ts";
import { startNginx } from "../support/mod.ts";
import { HTTP_EVENT_SIZE } from "../../lib/http1_records.ts";
import { rssBytes } from "../support/raw_client.ts";
import {
  assertAgentHealthy,
  instanceOf,
  mib,
  startIsolatedAgent,
} from "../support/isolated_agent.ts";
import type { AgentHandle } from "../support/agent.ts";
import { pollUntil, settledSamples } from "../support/wait.ts";

const base = { ignore: skipBpf(), sanitizeOps: false, sanitizeResources: false };

/** The ring buffer's data area (bpf/redprobe.bpf.h: `events`, max_entries 8 << 20). */
const RING_BYTES = 8 << 20;
/** A ring record: its 8-byte header, then struct http_request_event, 8-byte aligned. */
const RECORD_BYTES = 8 + Math.ceil(HTTP_EVENT_SIZE / 8) * 8;
/** Records an empty ring holds. */
const RING_RECORDS = Math.floor(RING_BYTES / RECORD_BYTES);

const STALLED = 100_000;

/**
 * `hey -n n -c 20` against `url`; asserts that every request got a 200 (nginx kept serving)
 * and returns hey's requests per second.
 */
async function hey(url: string, n: number): Promise<number> {
  const out = await new Deno.Command("hey", {
    args: ["-n", String(n), "-c", "20", "-t", "10", url],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(30_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `hey failed: ${text}`);
  const statuses = Object.fromEntries(
    [...text.matchAll(/\[(\d{3})\]\s+(\d+) responses/g)].map((m) => [m[1], Number(m[2])]),
  );
  assert.deepEqual(statuses, { "200": n }, `every request answered 200:\n${text}`);
  assert.doesNotMatch(text, /Error distribution/, text);
  return Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1] ?? 0);
}

interface Totals {
  counted: number;
  lost: number;
  read: number;
  dropped: number;
}

function totals(samples: Sample[], instance: Record<string, string>): Totals {
  const plugin = { plugin: "kprobe-http" };
  return {
    counted: sumSamples(samples, "http_server_duration_seconds_count", instance),
    lost: sumSamples(samples, "redprobe_events_lost_kernel_total", plugin),
    read: sumSamples(samples, "redprobe_events_read_total", plugin),
    dropped: sumSamples(samples, "redprobe_events_dropped_total", plugin),
  };
}

function minus(a: Totals, b: Totals): Totals {
  return {
    counted: a.counted - b.counted,
    lost: a.lost - b.lost,
    read: a.read - b.read,
    dropped: a.dropped - b.dropped,
  };
}

/**
 * The totals once `sent` more requests than `since` shows are accounted for (counted or lost),
 * or after a few seconds: hey can read nginx's last responses a moment before the probe that
 * counts them (at the end of nginx's write) has run. The caller asserts the exact numbers.
 */
async function settledTotals(
  agent: AgentHandle,
  instance: Record<string, string>,
  since: Totals,
  sent: number,
): Promise<Totals> {
  const samples = await settledSamples(agent, (s) => {
    const d = minus(totals(s, instance), since);
    return d.counted + d.lost >= sent;
  });
  return totals(samples, instance);
}

/** The state letter in /proc/<pid>/stat (R, S, T for stopped, ...). */
function processState(pid: number): string {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
}

/** Runs `during` with the agent stopped (SIGSTOP), and always continues it (SIGCONT). */
async function whileStopped<T>(agent: AgentHandle, during: () => Promise<T>): Promise<T> {
  Deno.kill(agent.pid, "SIGSTOP");
  try {
    assert.ok(
      await pollUntil(() => processState(agent.pid) === "T", { timeoutMs: 2_000, intervalMs: 5 }),
      "the agent stopped",
    );
    return await during();
  } finally {
    Deno.kill(agent.pid, "SIGCONT");
  }
}

Deno.test({
  ...base,
  name: "overload: with per-request records a stalled agent's ring fills; every loss is " +
    "counted (counted + lost == sent), and it counts exactly again afterwards",
  async fn() {
    assertBpfAvailable();
    await using nginx = await startNginx({ workers: 2, keepalive: true, sendfile: true });
    await using agent = await startIsolatedAgent([nginx], { aggregate_in_kernel: false });
    const url = `http://127.0.0.1:${nginx.port}/hello`;
    const instance = instanceOf(nginx);
    const rssBefore = rssBytes(agent.pid);
    const t0 = totals(await agent.samples(), instance);

    // Running: 20,000 requests, all read.
    const rps = await hey(url, 20_000);
    const t1 = await settledTotals(agent, instance, t0, 20_000);
    const warm = minus(t1, t0);
    console.log(`running: ${Math.round(rps)} req/s, ${JSON.stringify(warm)}`);
    assert.equal(warm.counted + warm.lost, 20_000);
    assert.equal(warm.read, warm.counted, "one record per request");

    // Stalled: 100,000 requests while the agent cannot read; its ring was empty (a scrape
    // drains it first).
    const stalledRps = await whileStopped(agent, () => hey(url, STALLED));
    const resumed = performance.now();
    const t2 = await settledTotals(agent, instance, t1, STALLED);
    const stalled = minus(t2, t1);
    console.log(
      `stalled: ${Math.round(stalledRps)} req/s, ${JSON.stringify(stalled)} (ring: ` +
        `${RING_RECORDS} records), read ${Math.round(performance.now() - resumed)} ms ` +
        `after SIGCONT`,
    );
    assert.equal(stalled.counted + stalled.lost, STALLED, "counted + lost == sent");
    assert.equal(stalled.counted, RING_RECORDS, "the ring held what it could");
    assert.equal(stalled.lost, STALLED - RING_RECORDS);
    assert.equal(stalled.read, stalled.counted);
    assert.equal(stalled.dropped, 0, "the agent used every record it read");

    // Afterwards: exact again, no new loss.
    await hey(url, 10_000);
    const t3 = await settledTotals(agent, instance, t2, 10_000);
    assert.deepEqual(minus(t3, t2), { counted: 10_000, lost: 0, read: 10_000, dropped: 0 });

    const { rss, samples } = await assertAgentHealthy(agent, rssBefore, 10);
    const fill = sumSamples(samples, "redprobe_ring_buffer_fill_ratio", { plugin: "kprobe-http" });
    assert.ok(fill < 0.01, `ring drained: fill ratio ${fill}`);
    console.log(`agent RSS ${mib(rssBefore)} -> ${mib(rss)} MiB`);
  },
});

Deno.test({
  ...base,
  name: "overload: with in-kernel histograms (the default) a stalled agent loses nothing",
  async fn() {
    assertBpfAvailable();
    await using nginx = await startNginx({ workers: 2, keepalive: true, sendfile: true });
    await using agent = await startIsolatedAgent([nginx]);
    const url = `http://127.0.0.1:${nginx.port}/hello`;
    const instance = instanceOf(nginx);
    const rssBefore = rssBytes(agent.pid);
    const t0 = totals(await agent.samples(), instance);
    await whileStopped(agent, () => hey(url, STALLED));
    const t1 = await settledTotals(agent, instance, t0, STALLED);
    assert.deepEqual(minus(t1, t0), { counted: STALLED, lost: 0, read: 0, dropped: 0 });
    const { rss } = await assertAgentHealthy(agent, rssBefore, 10);
    console.log(`agent RSS ${mib(rssBefore)} -> ${mib(rss)} MiB`);
  },
});
