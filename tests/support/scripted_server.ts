/**
 * A tiny raw TCP "HTTP server" whose responses are scripted byte for byte, used to test the
 * client against framings the real servers never produce (chunked, close-delimited, garbage).
 */

import { closeQuietly, DeadlineReader } from "./byte_reader.ts";

export interface ReceivedRequest {
  /** Raw bytes of the request as received, decoded as latin1. */
  raw: string;
  connection: number;
}

/** What to do with the connection after the handler wrote its response. */
export type AfterResponse = "keep" | "close" | "hang";

export type ScriptedHandler = (
  request: ReceivedRequest,
  conn: Deno.Conn,
) => Promise<AfterResponse>;

const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");
const CRLF = encoder.encode("\r\n");
const CRLFCRLF = encoder.encode("\r\n\r\n");

export async function writeText(conn: Deno.Conn, text: string): Promise<void> {
  const bytes = encoder.encode(text);
  for (let at = 0; at < bytes.length;) at += await conn.write(bytes.subarray(at));
}

export class ScriptedServer implements AsyncDisposable {
  readonly port: number;
  readonly requests: ReceivedRequest[] = [];
  connections = 0;
  #listener: Deno.Listener;
  #open = new Set<Deno.Conn>();
  #tasks: Promise<void>[] = [];
  #acceptLoop: Promise<void>;

  constructor(handler: ScriptedHandler) {
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.#listener = listener;
    this.port = (listener.addr as Deno.NetAddr).port;
    this.#acceptLoop = (async () => {
      try {
        for await (const conn of listener) {
          const id = ++this.connections;
          this.#open.add(conn);
          this.#tasks.push(this.#serve(conn, id, handler).catch(() => {}));
        }
      } catch {
        // listener closed
      }
    })();
  }

  async #serve(conn: Deno.Conn, id: number, handler: ScriptedHandler): Promise<void> {
    const reader = new DeadlineReader(conn, 5_000);
    for (;;) {
      const raw = await readRawRequest(reader);
      if (raw === null) break;
      const request = { raw, connection: id };
      this.requests.push(request);
      const after = await handler(request, conn);
      if (after === "hang") return;
      if (after === "close") break;
    }
    this.#open.delete(conn);
    closeQuietly(conn);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    for (const conn of this.#open) closeQuietly(conn);
    await this.#acceptLoop;
    await Promise.all(this.#tasks);
  }
}

async function readRawRequest(reader: DeadlineReader): Promise<string | null> {
  const headBytes = await reader.readUntil(CRLFCRLF, 64 * 1024, "request head");
  if (headBytes === null) return null;
  const head = latin1.decode(headBytes) + "\r\n\r\n";
  let body = "";
  const length = /\r\ncontent-length: *([0-9]+)/i.exec(head);
  if (length) body = latin1.decode(await reader.readExact(Number(length[1]), "request body"));
  if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
    for (;;) {
      const line = latin1.decode((await reader.readUntil(CRLF, 1024, "chunk size"))!);
      body += line + "\r\n";
      const size = parseInt(line, 16);
      if (size === 0) break;
      body += latin1.decode(await reader.readExact(size + 2, "chunk"));
    }
    body += latin1.decode(await reader.readExact(2, "final CRLF"));
  }
  return head + body;
}
