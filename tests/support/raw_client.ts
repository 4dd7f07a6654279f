/**
 * Raw TCP clients for hostile-input tests: they send exactly the bytes given (malformed,
 * oversized, slow or partial), read whatever comes back, and never throw on what a hostile
 * client provokes (resets, broken pipes). Only ever 127.0.0.1.
 *
 * @module
 */
import { sleep } from "./wait.ts";

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

export interface RawExchangeOptions {
  /** Pause before each chunk after the first, in ms (a slow client). Default 0. */
  delayMs?: number;
  /**
   * What the client does once every chunk is written: `shutdown` its write side (the server
   * reads EOF), `close` the whole connection at once, or `read` (default): keep it open and read.
   */
  then?: "read" | "shutdown" | "close";
  /** Stop reading after this long (ms) from the connect, answered or not. Default 5000. */
  readMs?: number;
  /** Stop reading once a complete response head has arrived. Default false: read to EOF. */
  stopAtHead?: boolean;
}

export interface RawExchangeResult {
  /** Everything the server sent. */
  received: Uint8Array;
  /** The status code of the first response, if one arrived. */
  status?: number;
  /** The status code of every status line that arrived, in order. */
  statuses: number[];
  /** How many status lines arrived (a keep-alive server may answer several requests). */
  responses: number;
  /** The server closed (EOF or reset) before readMs elapsed. */
  serverClosed: boolean;
  /** The first write error (EPIPE, ECONNRESET), if the server stopped reading. */
  writeError?: string;
}

/** Bytes of a string, one byte per char code (latin1), for hand-made requests. */
export function bytes(text: string): Uint8Array {
  return encoder.encode(text);
}

/** The status codes of every `HTTP/1.x NNN` status line at the start of a line in `data`. */
export function statusLines(data: Uint8Array): number[] {
  const text = latin1.decode(data);
  return [...text.matchAll(/(?:^|\r\n)HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1]));
}

/**
 * Connects to 127.0.0.1:port, writes `chunks` (with `delayMs` between them) while reading
 * what the server sends, then does `then`. Never throws for the server's behaviour.
 */
export async function rawExchange(
  port: number,
  chunks: Uint8Array[],
  opts: RawExchangeOptions = {},
): Promise<RawExchangeResult> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const deadline = performance.now() + (opts.readMs ?? 5_000);
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    try {
      conn.close();
    } catch { /* already closed */ }
  };
  const parts: Uint8Array[] = [];
  let serverClosed = false;
  let total = 0;
  const headDone = () => {
    if (!opts.stopAtHead) return false;
    const text = latin1.decode(concatBytes(parts, total));
    return /^HTTP\/1\.[01] \d{3}[^]*?\r\n\r\n/.test(text);
  };
  const reading = (async () => {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) {
          serverClosed = true;
          return;
        }
        parts.push(buf.slice(0, n));
        total += n;
        if (headDone()) return;
      }
    } catch (e) {
      // A reset counts as the server closing; our own close (deadline) does not.
      if (!closed) serverClosed = true;
      void e;
    }
  })();

  let writeError: string | undefined;
  for (let i = 0; i < chunks.length && writeError === undefined && !closed; i++) {
    if (i > 0 && opts.delayMs) await sleep(opts.delayMs);
    try {
      for (let at = 0; at < chunks[i].length;) at += await conn.write(chunks[i].subarray(at));
    } catch (e) {
      writeError = (e as Error).name + ": " + (e as Error).message;
    }
  }
  if (opts.then === "close") {
    close();
  } else if (opts.then === "shutdown" && writeError === undefined) {
    try {
      await conn.closeWrite();
    } catch (e) {
      writeError ??= (e as Error).message;
    }
  }
  // Read until EOF, the head (stopAtHead) or the deadline, whichever comes first.
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    reading,
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, Math.max(0, deadline - performance.now()));
    }),
  ]);
  clearTimeout(timer);
  close();
  await reading;
  const received = concatBytes(parts, total);
  const statuses = statusLines(received);
  return {
    received,
    status: statuses[0],
    statuses,
    responses: statuses.length,
    serverClosed,
    writeError,
  };
}

function concatBytes(parts: Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The resident set size of `pid` in bytes (VmRSS in /proc/<pid>/status). */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}
