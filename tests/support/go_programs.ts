/**
 * The Go programs of the go-http tests, running: the fixture server (plain or TLS), the fixture
 * client (which can wait for a go-ahead so the agent finds it first), and a driver for any
 * other client binary.
 *
 * @module
 */
import { buildGoFixture } from "./go_build.ts";
import { ManagedProcess, releaseWhenReady } from "./managed_process.ts";
import { pollUntil } from "./wait.ts";

export interface GoServer extends AsyncDisposable {
  pid: number;
  port: number;
  /** http(s)://127.0.0.1:PORT */
  baseUrl: string;
  binary: string;
  /** How many requests for `path` the server itself answered (its /stats route). */
  served(path: string): Promise<number>;
  stderr(): string;
  stop(): Promise<void>;
}

/**
 * Starts a fixture server on a free loopback port: tests/fixtures/go_http/server, or with
 * `plain` go_http/plain_server (no TLS server code; no /stats route).
 */
export async function startGoServer(
  options: { stripped?: boolean; tls?: boolean; plain?: boolean } = {},
): Promise<GoServer> {
  const fixture = options.plain ? "go_http/plain_server" : "go_http/server";
  const binary = await buildGoFixture(fixture, { stripped: options.stripped });
  const args = ["-addr", "127.0.0.1:0", ...(options.tls ? ["-tls"] : [])];
  const proc = new ManagedProcess(binary, args);
  let port = 0;
  const up = await pollUntil(() => {
    const m = /listening 127\.0\.0\.1:(\d+)/.exec(proc.stderr);
    if (m) port = Number(m[1]);
    return port > 0 || proc.exited;
  }, { timeoutMs: 10_000 });
  if (!up || !port) {
    await proc.stop();
    throw new Error(`the Go server did not start: ${proc.stderr}`);
  }
  const scheme = options.tls ? "https" : "http";
  const baseUrl = `${scheme}://127.0.0.1:${port}`;
  const stop = () => proc.stop();
  return {
    pid: proc.pid,
    port,
    baseUrl,
    binary,
    async served(path) {
      // Asked over plain HTTP with Deno's fetch would fail for TLS: use curl, which is installed.
      const out = await new Deno.Command("curl", {
        args: ["-sk", `${baseUrl}/stats?path=${encodeURIComponent(path)}`],
        stdout: "piped",
      }).output();
      return Number(new TextDecoder().decode(out.stdout).trim());
    },
    stderr: () => proc.stderr,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

export interface ClientResult {
  /** status -> count, as the client saw them. */
  statuses: Map<number, number>;
  output: string;
}

function parseStatuses(output: string): Map<number, number> {
  const statuses = new Map<number, number>();
  for (const m of output.matchAll(/^status (\d+) (\d+)$/gm)) {
    statuses.set(Number(m[1]), Number(m[2]));
  }
  return statuses;
}

/**
 * Runs the fixture client: it starts, says "ready", and waits until `beforeSending(pid)`
 * resolves (e.g. the agent instruments it) before sending `requests` (`METHOD:PATH:COUNT`).
 */
export async function runGoClient(options: {
  stripped?: boolean;
  baseUrl: string;
  requests: string[];
  keepAlive?: boolean;
  /** HTTP/2 over TLS (the client fails if a response is not HTTP/2). */
  http2?: boolean;
  beforeSending: (pid: number) => Promise<void>;
}): Promise<ClientResult & { pid: number; binary: string }> {
  const binary = await buildGoFixture("go_http/client", { stripped: options.stripped });
  const child = new Deno.Command(binary, {
    args: [
      "-base",
      options.baseUrl,
      "-insecure",
      `-keepalive=${options.keepAlive ?? true}`,
      "-wait",
      ...(options.http2 ? ["-h2"] : []),
      ...options.requests,
    ],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await releaseWhenReady(child, options.beforeSending);
  const out = await child.output();
  const output = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success) throw new Error(`the Go client failed: ${output}`);
  return { statuses: parseStatuses(output), output, pid: child.pid, binary };
}
