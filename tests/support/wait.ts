/** Small time-bounded waiting helpers shared by the server and client support code. */
import type { Sample } from "./prom_text.ts";

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Polls `probe` until it returns true or `timeoutMs` elapses. Returns whether it succeeded, so the
 * caller can build an error message that carries its own context.
 */
export async function pollUntil(
  probe: () => boolean | Promise<boolean>,
  opts: { timeoutMs: number; intervalMs?: number },
): Promise<boolean> {
  const deadline = performance.now() + opts.timeoutMs;
  for (;;) {
    if (await probe()) return true;
    if (performance.now() >= deadline) return false;
    await sleep(opts.intervalMs ?? 20);
  }
}

/**
 * Races `promise` against a timer. The timer is always cleared so Deno's op sanitizer never sees a
 * stray timeout. `onTimeout` runs before rejecting; callers use it to abort the underlying I/O
 * (e.g. close a socket) so the losing promise settles instead of leaking.
 */
export async function withDeadline<T>(
  promise: Promise<T>,
  ms: number,
  describe: () => Error,
  onTimeout?: () => void,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout?.();
      reject(describe());
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** True once something accepts TCP connections on 127.0.0.1:port. Sends no bytes. */
export async function portAccepts(port: number): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/** Polls `probe` like {@linkcode pollUntil}, and throws "timed out waiting for <what>" if it never holds. */
export async function waitFor(
  probe: () => boolean | Promise<boolean>,
  opts: { timeoutMs: number; what: string; intervalMs?: number; detail?: () => string },
): Promise<void> {
  if (!await pollUntil(probe, { intervalMs: 100, ...opts })) {
    const detail = opts.detail ? `: ${opts.detail()}` : "";
    throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${opts.what}${detail}`);
  }
}

/** How long {@linkcode settledSamples} waits, at most, for the counts a test expects. */
export const SETTLE_MS = 2_500;

/**
 * The agent's samples once `reached` holds for them, or the last ones read when `timeoutMs` has
 * passed since the first scrape. It never throws on a timeout: the caller's own exact assertions
 * then say what is missing.
 *
 * Why: on loopback a client can read a server's response, and the test scrape /metrics, a moment
 * before the probe that counts the request has run (kprobe-http's runs at the end of the
 * server's write syscall, which has already handed the bytes to the client); that scrape comes
 * up a request short. Scrape again until the counts are there.
 *
 * `reached` must check that the expected counts are there AT LEAST (`>=`, e.g. with
 * {@linkcode countsReached}), never that they are equal: the caller still asserts EXACT equality
 * on what this returns, so a count too high fails at once and a count too low after the wait.
 * Waiting never makes an assertion weaker.
 */
export async function settledSamples(
  agent: { samples(): Promise<Sample[]> },
  reached: (samples: Sample[]) => boolean,
  timeoutMs = SETTLE_MS,
): Promise<Sample[]> {
  let samples = await agent.samples();
  // From the first scrape on: one that is slow (a full ring to drain) still gets a second look.
  const deadline = performance.now() + timeoutMs;
  while (!reached(samples) && performance.now() < deadline) {
    await sleep(100);
    samples = await agent.samples();
  }
  return samples;
}

/**
 * Whether every key of `want` has at least its count in `got` ("METHOD STATUS ROUTE" -> count,
 * say). Keys only `got` has are not looked at: the caller's exact assertion judges them.
 */
export function countsReached(
  got: Record<string, number>,
  want: Record<string, number>,
): boolean {
  return Object.entries(want).every(([key, n]) => (got[key] ?? 0) >= n);
}
