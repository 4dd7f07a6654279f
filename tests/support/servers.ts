/**
 * Starts real HTTP servers (nginx, python http.server, node:http) on 127.0.0.1, each in its own
 * temp dir, all serving the route set in routes.ts, and each recording how long it thinks every
 * request took so tests can compare server-side and client-side timings.
 */

import { ManagedProcess } from "./managed_process.ts";
import { nginxArgs, type NginxOptions, writeNginxTree } from "./nginx_config.ts";
import { freePort } from "./ports.ts";
import { pollUntil, portAccepts } from "./wait.ts";
import { testCertificate } from "./tls.ts";

/** Options of the Python and Node servers. */
export interface ServerOptions {
  /** Serve HTTPS with the test certificate (tests/support/tls.ts) instead of HTTP. */
  tls?: boolean;
}

export type ServerKind = "nginx" | "python" | "node";

export interface ServerSecondsOptions {
  /**
   * Wait (up to timeoutMs) until at least this many records exist. nginx writes its access log
   * line AFTER sending the response, so a client can finish before the line lands; python and
   * node record before writing the status line, so for them this never actually waits.
   */
  atLeast?: number;
  /** Default 3000 ms. */
  timeoutMs?: number;
}

export interface ServerHandle extends AsyncDisposable {
  kind: ServerKind;
  port: number;
  /** http://127.0.0.1:PORT, or https:// for a TLS server */
  baseUrl: string;
  /** Main process pid (nginx master). */
  pid: number;
  /** Temp dir holding config, docroot, logs and pid file; removed by stop(). */
  dir: string;
  /** Main pid plus all live descendants (nginx workers), from /proc. */
  pids(): Promise<number[]>;
  /** Per-request durations measured by the server itself, in seconds, in log order. */
  serverSeconds(opts?: ServerSecondsOptions): Promise<number[]>;
  /** Captured stderr of the main process, for diagnostics. */
  stderr(): string;
  /** Idempotent; resolves once every process is gone and the temp dir is removed. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 10_000;
const START_ATTEMPTS = 3;

interface LaunchPlan {
  command: string;
  args: string[];
  /** File with one record per request; its first whitespace-separated field is seconds. */
  logFile: string;
  /** Extra readiness condition on top of "port accepts connections". */
  isReady?: (proc: ManagedProcess) => boolean;
  /** Extra text for start-up failure messages (e.g. nginx's error.log). */
  diagnostics?: () => Promise<string>;
}

type Planner = (dir: string, port: number) => Promise<LaunchPlan>;

function supportFile(name: string): string {
  return decodeURIComponent(new URL(`./${name}`, import.meta.url).pathname);
}

export async function startNginx(opts: NginxOptions): Promise<ServerHandle> {
  if (!Number.isInteger(opts.workers) || opts.workers < 1) {
    throw new Error(`nginx workers must be a positive integer, got ${opts.workers}`);
  }
  return await launch("nginx", async (dir, port) => {
    await writeNginxTree(dir, port, opts);
    return {
      command: "/usr/sbin/nginx",
      args: nginxArgs(dir),
      logFile: `${dir}/access.log`,
      // The port is bound by the master before workers exist; wait for all of them so pids()
      // is complete as soon as the handle is returned.
      isReady: (proc) => proc.tree().length >= opts.workers + 1,
      diagnostics: () => Deno.readTextFile(`${dir}/error.log`).catch(() => ""),
    };
  }, opts.tls !== undefined);
}

/** The extra arguments of the Python and Node servers: certificate and key files for TLS. */
function tlsArgs(opts: ServerOptions): string[] {
  if (!opts.tls) return [];
  const { cert, key } = testCertificate();
  return [cert, key];
}

export function startPython(opts: ServerOptions = {}): Promise<ServerHandle> {
  return launch("python", async (dir, port) => {
    const logFile = `${dir}/server_seconds.log`;
    await Deno.writeTextFile(logFile, "");
    return {
      command: "python3",
      args: [supportFile("python_server.py"), `${port}`, logFile, ...tlsArgs(opts)],
      logFile,
    };
  }, opts.tls);
}

export function startNode(opts: ServerOptions = {}): Promise<ServerHandle> {
  return launch("node", async (dir, port) => {
    const logFile = `${dir}/server_seconds.log`;
    await Deno.writeTextFile(logFile, "");
    return {
      command: "node",
      args: [supportFile("node_server.mjs"), `${port}`, logFile, ...tlsArgs(opts)],
      logFile,
    };
  }, opts.tls);
}

async function launch(kind: ServerKind, plan: Planner, tls = false): Promise<ServerHandle> {
  for (let attempt = 1;; attempt++) {
    const dir = await Deno.makeTempDir({ prefix: `redprobe-${kind}-` });
    const port = freePort();
    let proc: ManagedProcess | undefined;
    let failure: string;
    try {
      const launchPlan = await plan(dir, port);
      proc = new ManagedProcess(launchPlan.command, launchPlan.args, { cwd: dir });
      failure = await waitUntilServing(proc, port, launchPlan.isReady);
      if (failure === "") {
        return new RunningServer(kind, port, dir, proc, launchPlan.logFile, tls);
      }
      await proc.stop();
      failure += `\n--- stderr ---\n${proc.stderr}`;
      const extra = await launchPlan.diagnostics?.();
      if (extra) failure += `\n--- diagnostics ---\n${extra}`;
    } catch (error) {
      await proc?.stop().catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      throw error;
    }
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    // freePort() closes its probe socket before the server binds, so another process may win
    // the port in between; that is the one failure worth retrying.
    if (/address already in use|EADDRINUSE/i.test(failure) && attempt < START_ATTEMPTS) continue;
    throw new Error(`${kind} server failed to start on 127.0.0.1:${port}: ${failure}`);
  }
}

/** Returns "" when ready, otherwise a description of why not. */
async function waitUntilServing(
  proc: ManagedProcess,
  port: number,
  isReady?: (proc: ManagedProcess) => boolean,
): Promise<string> {
  // Readiness is a bare TCP connect with no request bytes, so it never shows up in access logs
  // or serverSeconds() and cannot disturb the exact request counts tests rely on.
  const ready = await pollUntil(
    async () => proc.exited || (await portAccepts(port) && (isReady?.(proc) ?? true)),
    { timeoutMs: START_TIMEOUT_MS, intervalMs: 25 },
  );
  if (proc.exited) {
    const status = await proc.status;
    return `process exited early (code ${status.code}, signal ${status.signal})`;
  }
  return ready ? "" : `not ready after ${START_TIMEOUT_MS} ms`;
}

class RunningServer implements ServerHandle {
  readonly baseUrl: string;
  readonly pid: number;
  #proc: ManagedProcess;
  #logFile: string;
  #stopping: Promise<void> | undefined;

  constructor(
    readonly kind: ServerKind,
    readonly port: number,
    readonly dir: string,
    proc: ManagedProcess,
    logFile: string,
    tls: boolean,
  ) {
    this.baseUrl = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
    this.pid = proc.pid;
    this.#proc = proc;
    this.#logFile = logFile;
  }

  pids(): Promise<number[]> {
    return Promise.resolve(this.#proc.tree());
  }

  stderr(): string {
    return this.#proc.stderr;
  }

  async serverSeconds(opts: ServerSecondsOptions = {}): Promise<number[]> {
    if (this.#stopping) throw new Error(`${this.kind} server already stopped; its logs are gone`);
    let seconds = await this.#readLog();
    if (opts.atLeast !== undefined && seconds.length < opts.atLeast) {
      await pollUntil(async () => (seconds = await this.#readLog()).length >= opts.atLeast!, {
        timeoutMs: opts.timeoutMs ?? 3_000,
        intervalMs: 10,
      });
    }
    return seconds;
  }

  async #readLog(): Promise<number[]> {
    const text = await Deno.readTextFile(this.#logFile);
    // Only complete lines: a concurrent writer may have appended half a record.
    const lines = text.slice(0, text.lastIndexOf("\n") + 1).split("\n").filter((l) => l !== "");
    return lines.map((line) => {
      const value = Number(line.split(" ", 1)[0]);
      if (!Number.isFinite(value)) {
        throw new Error(`${this.kind}: unparsable timing record ${JSON.stringify(line)}`);
      }
      return value;
    });
  }

  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      try {
        await this.#proc.stop();
      } finally {
        await Deno.remove(this.dir, { recursive: true }).catch(() => {});
      }
    })();
    return this.#stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.stop();
  }
}
