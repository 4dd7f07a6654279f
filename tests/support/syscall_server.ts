/**
 * Drives tests/fixtures/scripted_server.py: a real server process whose reads and writes are
 * scripted syscall by syscall, so a test decides exactly how the HTTP byte stream is split and
 * which syscalls (recvfrom, read, readv, recvmsg / sendto, write, writev, sendmsg, sendfile)
 * carry it. That is what the kprobe-http BPF parser sees.
 *
 * @module
 */
import { dirname, fromFileUrl, join } from "./paths.ts";
import { freePort } from "./ports.ts";

const SCRIPT = join(dirname(fromFileUrl(import.meta.url)), "..", "fixtures", "scripted_server.py");

export type RecvVia = "recvfrom" | "read" | "readv" | "recvmsg";
export type SendVia = "sendto" | "write" | "writev" | "sendmsg";

export type Step =
  | { op: "recv"; n: number; via?: RecvVia }
  | { op: "send"; data: string; via?: SendVia; split?: number[] }
  | { op: "sendfile"; data: string }
  | { op: "sleep"; ms: number }
  | { op: "close" };

const encoder = new TextEncoder();

function toBase64(text: string): string {
  let binary = "";
  for (const b of encoder.encode(text)) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** Reads exactly `n` bytes of `text` (as the client will send them) with one syscall. */
export function recv(text: string | number, via: RecvVia = "recvfrom"): Step {
  return { op: "recv", n: typeof text === "number" ? text : encoder.encode(text).length, via };
}

/** Sends `text` with one syscall; `split` gives iovec boundaries for writev/sendmsg. */
export function send(text: string, via: SendVia = "sendto", split?: number[]): Step {
  return { op: "send", data: toBase64(text), via, split };
}

export function sendfile(text: string): Step {
  return { op: "sendfile", data: toBase64(text) };
}

export class SyscallServer implements AsyncDisposable {
  readonly port: number;
  readonly #child: Deno.ChildProcess;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #lines: AsyncIterator<string>;
  #stderr = "";

  private constructor(port: number, child: Deno.ChildProcess) {
    this.port = port;
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.#lines = lines(child.stdout)[Symbol.asyncIterator]();
    (async () => {
      for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
        this.#stderr += chunk;
      }
    })();
  }

  get pid(): number {
    return this.#child.pid;
  }

  /** Starts the server; `serviceName` becomes its OTEL_SERVICE_NAME (its `service_name`). */
  static async start(serviceName = "scripted"): Promise<SyscallServer> {
    const port = freePort();
    const child = new Deno.Command("python3", {
      args: [SCRIPT, String(port)],
      env: { OTEL_SERVICE_NAME: serviceName, PYTHONUNBUFFERED: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const server = new SyscallServer(port, child);
    const first = await server.#nextLine();
    if (first !== "listening") {
      throw new Error(`scripted server did not start: ${first} ${server.#stderr}`);
    }
    return server;
  }

  async #nextLine(): Promise<string> {
    const timeout = new Promise<string>((_, reject) =>
      setTimeout(
        () => reject(new Error(`scripted server timed out; stderr: ${this.#stderr}`)),
        15_000,
      )
    );
    const next = this.#lines.next().then((r) => (r.done ? "eof" : r.value));
    return await Promise.race([next, timeout]);
  }

  /**
   * Runs one connection: the server follows `steps` while `client` talks to it over a fresh
   * TCP connection. Throws when the server reports an error (e.g. a read returned fewer bytes).
   */
  async run(steps: Step[], client: (conn: Deno.TcpConn) => Promise<void>): Promise<void> {
    await this.#stdin.write(encoder.encode(JSON.stringify({ steps }) + "\n"));
    const ready = await this.#nextLine();
    if (ready !== "ready") throw new Error(`scripted server: expected ready, got ${ready}`);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: this.port });
    try {
      await client(conn);
    } finally {
      try {
        conn.close();
      } catch { /* closed by the client function */ }
    }
    const done = await this.#nextLine();
    if (done !== "done") throw new Error(`scripted server: ${done}; stderr: ${this.#stderr}`);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#stdin.close().catch(() => {});
    try {
      this.#child.kill("SIGTERM");
    } catch { /* gone */ }
    await this.#child.status;
  }
}

/** Writes `text` to the connection, then reads until the server closes; returns what it read. */
export async function exchange(conn: Deno.TcpConn, ...parts: string[]): Promise<string> {
  for (const part of parts) {
    const bytes = encoder.encode(part);
    for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
  }
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  let out = "";
  for (const c of chunks) for (const b of c) out += String.fromCharCode(b);
  return out;
}

async function* lines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  let pending = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      yield pending.slice(0, nl);
      pending = pending.slice(nl + 1);
    }
  }
  if (pending) yield pending;
}
