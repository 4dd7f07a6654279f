/** Small time-bounded waiting helpers shared by the server and client support code. */

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
