/**
 * Runs the real agent (`main.ts`, as `scripts/run.sh` does) as a child process for end-to-end
 * tests, with a test configuration, and reads its metrics and logs.
 *
 * @module
 */
import { dirname, fromFileUrl, join } from "./paths.ts";
import { freePort } from "./ports.ts";
import { parsePrometheusText, type Sample } from "./prom_text.ts";
import { AGENT_ENV, AGENT_RUN_FLAGS } from "../../scripts/lib/agent_flags.ts";

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..", "..");

export interface AgentHandle extends AsyncDisposable {
  pid: number;
  port: number;
  /** The exposition text (the agent drains its ring buffers before answering). */
  metricsText(): Promise<string>;
  samples(): Promise<Sample[]>;
  /** Resolves once the agent logged that it instruments `pid`. */
  waitForPid(pid: number, timeoutMs?: number): Promise<void>;
  /** Resolves once the agent logged that it released `pid`. */
  waitForRelease(pid: number, timeoutMs?: number): Promise<void>;
  logs(): string;
  /** SIGTERM, then the exit status and logs. */
  stop(): Promise<{ code: number; logs: string }>;
}

export interface StartAgentOptions {
  /** Configuration merged over the defaults (written as a YAML/JSON file). */
  config?: Record<string, unknown>;
  args?: string[];
  env?: Record<string, string>;
  timeoutMs?: number;
  /** The script to run instead of the repository's `main.ts` (e.g. the bundled `redprobe.js`). */
  entry?: string;
  /** Working directory of the agent (default: the test's). */
  cwd?: string;
  /** A command that execs the agent (e.g. `["setpriv", "--bounding-set=..."]`). */
  wrapper?: string[];
}

export async function startAgent(options: StartAgentOptions = {}): Promise<AgentHandle> {
  const port = freePort();
  const configFile = await Deno.makeTempFile({ prefix: "redprobe-test-", suffix: ".yaml" });
  await Deno.writeTextFile(configFile, JSON.stringify(options.config ?? {}));
  const [command, ...prefix] = [...(options.wrapper ?? []), Deno.execPath()];
  const child = new Deno.Command(command, {
    args: [
      ...prefix,
      "run",
      "-A",
      "--quiet",
      ...AGENT_RUN_FLAGS,
      options.entry ?? join(ROOT, "main.ts"),
      "--config",
      configFile,
      "--metrics-address",
      "127.0.0.1",
      "--metrics-port",
      String(port),
      "--log-level",
      "debug",
      ...(options.args ?? []),
    ],
    env: { ...AGENT_ENV, ...options.env },
    cwd: options.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  let logs = "";
  const waiters: { test: () => boolean; resolve: () => void }[] = [];
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      logs += decoder.decode(chunk, { stream: true });
      for (const w of waiters.splice(0)) {
        if (w.test()) w.resolve();
        else waiters.push(w);
      }
    }
  };
  const collecting = Promise.all([collect(child.stdout), collect(child.stderr)]);
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    for (const w of waiters.splice(0)) w.resolve();
    return s;
  });

  const waitFor = (test: () => boolean, what: string, timeoutMs: number) => {
    if (test()) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    waiters.push({ test, resolve });
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`Timed out waiting for the agent to ${what}. Logs:\n${logs}`)),
        timeoutMs,
      );
    });
    return Promise.race([promise, timeout]).then(() => {
      clearTimeout(timer);
      if (!test()) throw new Error(`The agent exited before it could ${what}. Logs:\n${logs}`);
    });
  };

  const stop = async () => {
    if (!exited) {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
    }
    const s = await status;
    await collecting;
    await Deno.remove(configFile).catch(() => {});
    return { code: s.code, logs };
  };

  try {
    // Every enabled plugin has loaded (or failed) once this line is out.
    await waitFor(
      () => /plugins running: |No plugin/.test(logs),
      "load its plugins",
      options.timeoutMs ?? 30_000,
    );
    if (!/plugin kprobe-http loaded/.test(logs)) {
      throw new Error(`The agent did not start. Logs:\n${logs}`);
    }
  } catch (e) {
    await stop();
    throw e;
  }

  const handle: AgentHandle = {
    pid: child.pid,
    port,
    async metricsText() {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`);
      if (!res.ok) throw new Error(`GET /metrics: ${res.status}`);
      return await res.text();
    },
    async samples() {
      return parsePrometheusText(await handle.metricsText());
    },
    waitForPid: (pid, timeoutMs = 10_000) =>
      waitFor(() => logs.includes(`instrumenting pid ${pid} `), `instrument pid ${pid}`, timeoutMs),
    waitForRelease: (pid, timeoutMs = 10_000) =>
      waitFor(() => logs.includes(`released pid ${pid} `), `release pid ${pid}`, timeoutMs),
    logs: () => logs,
    stop,
    [Symbol.asyncDispose]: async () => {
      await stop();
    },
  };
  return handle;
}
