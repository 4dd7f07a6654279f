/**
 * Real HTTP clients run by the client-side tests (curl, Python, wrk), and the checks their runs
 * share: what wrk completed versus what the agent counted.
 */
import assert from "node:assert/strict";

/** Runs `cmd` to its end; throws with its output if it fails. */
export async function runClient(
  cmd: string,
  args: string[],
): Promise<{ pid: number; out: string }> {
  const child = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).spawn();
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `${cmd} failed: ${text}`);
  return { pid: child.pid, out: text };
}

/**
 * Runs `wrk -t1 -c<connections> -d1s url` and returns its pid and the requests it completed.
 * wrk's own count is not exact at its deadline: up to `connections` requests are in flight when
 * it stops, each either answered and read (the agent counts a 200 wrk leaves out) or not
 * (status 0); {@linkcode assertWrkCounted} checks the agent's counts against that.
 */
export async function runWrk(
  url: string,
  connections = 2,
): Promise<{ pid: number; completed: number }> {
  const wrk = await runClient("wrk", ["-t1", `-c${connections}`, "-d1s", url]);
  const completed = Number(/(\d+) requests in/.exec(wrk.out)?.[1]);
  assert.ok(completed > 0, wrk.out);
  return { pid: wrk.pid, completed };
}

/** Everything wrk completed was counted as `okKey`; at most `connections` more, ok or 0. */
export function assertWrkCounted(
  counts: Record<string, number>,
  completed: number,
  okKey: string,
  unansweredKey: string,
  connections = 2,
): void {
  const ok = counts[okKey] ?? 0;
  const unanswered = counts[unansweredKey] ?? 0;
  assert.ok(ok >= completed, `${ok} < ${completed}: ${JSON.stringify(counts)}`);
  assert.ok(
    ok + unanswered <= completed + connections,
    `${JSON.stringify(counts)} vs ${completed}`,
  );
  assert.deepEqual(Object.keys(counts).filter((k) => k !== okKey && k !== unansweredKey), []);
}

/** A seeded generator of numbers in [0, 1) (mulberry32): the same sequence for a seed. */
export function seededRandom(seed: number): () => number {
  let state = seed | 0;
  return () => {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), 1 | state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
