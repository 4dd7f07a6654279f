/** A spawned server process whose stderr is captured and whose whole process tree can be stopped. */

import { isAlive, processTree } from "./procfs.ts";
import { pollUntil, withDeadline } from "./wait.ts";

const STDERR_KEEP_BYTES = 32 * 1024;
const EXIT_GRACE_MS = 5_000;

export class ManagedProcess {
  readonly pid: number;
  #child: Deno.ChildProcess;
  #stderr = "";
  #stderrReader: ReadableStreamDefaultReader<Uint8Array>;
  #stderrDone: Promise<void>;
  #exited = false;
  readonly status: Promise<Deno.CommandStatus>;

  /**
   * `keepStdinOpen`: give the process a stdin pipe that stays open until it exits (servers such
   * as `esbuild --serve` stop when stdin closes).
   */
  constructor(
    command: string,
    args: string[],
    opts: { cwd?: string; keepStdinOpen?: boolean; env?: Record<string, string> } = {},
  ) {
    this.#child = new Deno.Command(command, {
      args,
      cwd: opts.cwd,
      env: opts.env,
      stdin: opts.keepStdinOpen ? "piped" : "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    this.pid = this.#child.pid;
    this.status = this.#child.status.then((status) => {
      this.#exited = true;
      return status;
    });
    // stderr must be drained continuously or a chatty server would block on a full pipe.
    this.#stderrReader = this.#child.stderr.getReader();
    this.#stderrDone = this.#drainStderr();
  }

  async #drainStderr(): Promise<void> {
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await this.#stderrReader.read();
        if (done) break;
        this.#stderr = (this.#stderr + decoder.decode(value, { stream: true }))
          .slice(-STDERR_KEEP_BYTES);
      }
    } catch {
      // Cancelled during stop(); whatever was captured is enough for diagnostics.
    }
  }

  get exited(): boolean {
    return this.#exited;
  }

  get stderr(): string {
    return this.#stderr;
  }

  /** Main pid plus descendants (nginx workers), read from /proc. */
  tree(): number[] {
    return processTree(this.pid);
  }

  /**
   * SIGTERM, wait, then SIGKILL anything (including descendants) that is still around. Resolves
   * only when every pid seen before the stop is gone; throws if some refuse to die.
   */
  async stop(): Promise<void> {
    const pids = this.tree();
    this.#signal(this.pid, "SIGTERM");
    const exitedInTime = await withDeadline(
      this.status.then(() => true),
      EXIT_GRACE_MS,
      () => new Error(`pid ${this.pid} ignored SIGTERM`),
    ).catch(() => false);
    if (!exitedInTime) {
      for (const pid of [this.pid, ...pids]) this.#signal(pid, "SIGKILL");
      await this.status;
    }
    let gone = await pollUntil(() => pids.every((pid) => !isAlive(pid)), {
      timeoutMs: EXIT_GRACE_MS,
    });
    if (!gone) {
      for (const pid of pids) if (isAlive(pid)) this.#signal(pid, "SIGKILL");
      gone = await pollUntil(() => pids.every((pid) => !isAlive(pid)), { timeoutMs: 2_000 });
    }
    // Descendants may still hold the stderr pipe; don't let that keep the reader pending forever.
    await withDeadline(this.#stderrDone, 1_000, () => new Error("stderr drain timeout"), () => {
      this.#stderrReader.cancel().catch(() => {});
    }).catch(() => {});
    if (!gone) {
      const left = pids.filter(isAlive);
      throw new Error(`processes survived SIGKILL: ${left.join(", ")}`);
    }
  }

  #signal(pid: number, signal: Deno.Signal): void {
    try {
      if (pid === this.pid) {
        if (!this.#exited) this.#child.kill(signal);
      } else {
        Deno.kill(pid, signal);
      }
    } catch {
      // Already gone: exactly what we want.
    }
  }
}

/**
 * Lets a child that waits for "go" on its stdin (the Go fixtures' `-wait`) start once
 * `before(pid)` resolved (e.g. the agent instruments it). When `before` throws, the child is
 * killed and reaped, and the error goes on.
 */
export async function releaseWhenReady(
  child: Deno.ChildProcess,
  before: (pid: number) => Promise<void>,
): Promise<void> {
  const writer = child.stdin.getWriter();
  try {
    await before(child.pid);
    await writer.write(new TextEncoder().encode("go\n"));
    await writer.close();
  } catch (e) {
    child.kill("SIGKILL");
    await child.output().catch(() => {});
    throw e;
  }
}
