/** Buffered reads from a connection where every single read has a deadline. */

import { HttpProtocolError, HttpTimeoutError } from "./http_errors.ts";
import { withDeadline } from "./wait.ts";

const READ_SIZE = 64 * 1024;
const MIN_READ_SPACE = 4 * 1024;

export class DeadlineReader {
  #conn: Deno.Conn;
  #timeoutMs: number;
  #buf = new Uint8Array(READ_SIZE);
  #start = 0;
  #end = 0;
  #eof = false;

  constructor(conn: Deno.Conn, timeoutMs: number) {
    this.#conn = conn;
    this.#timeoutMs = timeoutMs;
  }

  /** Bytes already received but not yet consumed. */
  get buffered(): number {
    return this.#end - this.#start;
  }

  get eof(): boolean {
    return this.#eof;
  }

  /** Reads more bytes into the buffer; false on EOF. */
  async fill(what: string): Promise<boolean> {
    if (this.#eof) return false;
    this.#makeRoom();
    const target = this.#buf.subarray(this.#end);
    // A timed-out read is abandoned by closing the socket, which also makes it settle.
    const read = this.#conn.read(target);
    read.catch(() => {});
    const n = await withDeadline(
      read,
      this.#timeoutMs,
      () => new HttpTimeoutError(`no data within ${this.#timeoutMs} ms while reading ${what}`),
      () => closeQuietly(this.#conn),
    );
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#end += n;
    return true;
  }

  #makeRoom(): void {
    if (this.#buf.length - this.#end >= MIN_READ_SPACE) return;
    const live = this.#buf.subarray(this.#start, this.#end);
    const next = live.length * 2 > this.#buf.length
      ? new Uint8Array(this.#buf.length * 2)
      : this.#buf;
    next.set(live);
    this.#buf = next;
    this.#start = 0;
    this.#end = live.length;
  }

  /**
   * Returns bytes up to and excluding `delimiter`, consuming the delimiter too. null means EOF
   * arrived before any byte; EOF mid-way, or more than maxBytes without the delimiter, throws.
   */
  async readUntil(
    delimiter: Uint8Array,
    maxBytes: number,
    what: string,
  ): Promise<Uint8Array | null> {
    let searchFrom = this.#start;
    for (;;) {
      const at = indexOf(this.#buf, delimiter, searchFrom, this.#end);
      if (at >= 0) {
        const out = this.#buf.slice(this.#start, at);
        this.#start = at + delimiter.length;
        return out;
      }
      if (this.buffered > maxBytes) {
        throw new HttpProtocolError(`${what} longer than ${maxBytes} bytes`);
      }
      searchFrom = Math.max(this.#start, this.#end - delimiter.length + 1);
      const before = this.#start;
      if (!(await this.fill(what))) {
        if (this.buffered === 0) return null;
        throw new HttpProtocolError(`connection closed in the middle of ${what}`);
      }
      // fill() may have compacted the buffer, moving data to offset 0.
      searchFrom -= before - this.#start;
    }
  }

  async readExact(n: number, what: string): Promise<Uint8Array> {
    while (this.buffered < n) {
      if (!(await this.fill(what))) {
        throw new HttpProtocolError(
          `connection closed after ${this.buffered} of ${n} bytes of ${what}`,
        );
      }
    }
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  async readToEnd(what: string, maxBytes = 64 * 1024 * 1024): Promise<Uint8Array> {
    while (await this.fill(what)) {
      if (this.buffered > maxBytes) {
        throw new HttpProtocolError(`${what} longer than ${maxBytes} bytes`);
      }
    }
    const out = this.#buf.slice(this.#start, this.#end);
    this.#start = this.#end;
    return out;
  }
}

function indexOf(hay: Uint8Array, needle: Uint8Array, from: number, to: number): number {
  outer: for (let i = from; i + needle.length <= to; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

export function closeQuietly(conn: Deno.Conn): void {
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}
