/**
 * An exact raw HTTP/1.1 client for loopback tests. It never uses fetch, so the test decides how
 * many TCP connections exist, which request goes on which connection, and when they close.
 * It only ever connects to 127.0.0.1.
 */

import { closeQuietly, DeadlineReader } from "./byte_reader.ts";
import { HttpProtocolError, HttpTimeoutError } from "./http_errors.ts";
import {
  concat,
  encodeRequest,
  readResponse,
  type RequestSpec,
  type Response,
} from "./http_wire.ts";
import { withDeadline } from "./wait.ts";

export { HttpProtocolError, HttpTimeoutError } from "./http_errors.ts";
export type { RequestSpec, Response } from "./http_wire.ts";

export const DEFAULT_TIMEOUT_MS = 10_000;

export interface ConnectionOptions {
  /** Deadline for connecting and for every single read or write. Default 10 s. */
  timeoutMs?: number;
  /**
   * Speak HTTPS, trusting this PEM certificate (tests/support/tls.ts). Deno's TLS is rustls,
   * not OpenSSL: the test's own requests are never counted as a client's by tls-uprobe.
   */
  caCert?: string;
}

/** Thrown when the server closes a pipelined connection before answering every request. */
export class PipelineIncompleteError extends HttpProtocolError {
  override name = "PipelineIncompleteError";
  constructor(message: string, readonly responses: Response[]) {
    super(message);
  }
}

export class HttpConnection implements AsyncDisposable {
  #conn: Deno.Conn;
  #reader: DeadlineReader;
  #timeoutMs: number;
  #closed = false;
  #serverWillClose = false;

  private constructor(readonly port: number, conn: Deno.Conn, timeoutMs: number) {
    this.#conn = conn;
    this.#timeoutMs = timeoutMs;
    this.#reader = new DeadlineReader(conn, timeoutMs);
  }

  static async open(port: number, opts: ConnectionOptions = {}): Promise<HttpConnection> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const caCert = opts.caCert;
    const conn = await withDeadline<Deno.TcpConn | Deno.TlsConn>(
      caCert === undefined
        ? Deno.connect({ hostname: "127.0.0.1", port })
        : Deno.connectTls({ hostname: "127.0.0.1", port, caCerts: [caCert] }).then(async (c) => {
          await c.handshake();
          return c;
        }),
      timeoutMs,
      () => new HttpTimeoutError(`connect to 127.0.0.1:${port} took over ${timeoutMs} ms`),
    );
    // One write per request already; this just guarantees the kernel never holds bytes back.
    if ("setNoDelay" in conn) conn.setNoDelay(true);
    return new HttpConnection(port, conn, timeoutMs);
  }

  /** False once closed or once the server announced it will close after the last response. */
  get reusable(): boolean {
    return !this.#closed && !this.#serverWillClose;
  }

  /**
   * Sends one request and reads its full response. `seconds` spans from just before the first
   * request byte is written to just after the last response byte is read. With
   * `connectionClose`, the request carries `Connection: close` and, after timing stops, the
   * connection is read until the server closes it.
   */
  async request(
    spec: RequestSpec,
    opts: { connectionClose?: boolean } = {},
  ): Promise<{ response: Response; seconds: number }> {
    const bytes = encodeRequest(spec, { port: this.port, connectionClose: !!opts.connectionClose });
    return await this.#guard(async () => {
      const started = performance.now();
      await this.#write(bytes);
      const response = await readResponse(this.#reader, spec.method);
      const seconds = (performance.now() - started) / 1000;
      if (response.closesConnection) this.#serverWillClose = true;
      if (opts.connectionClose) await this.#expectServerClose();
      return { response, seconds };
    });
  }

  /**
   * Writes all requests in ONE write, then reads the responses in order. `seconds` spans from
   * before the write to after the last response.
   */
  async pipeline(specs: RequestSpec[]): Promise<{ responses: Response[]; seconds: number }> {
    const bytes = concat(
      specs.map((spec) => encodeRequest(spec, { port: this.port, connectionClose: false })),
    );
    return await this.#guard(async () => {
      const started = performance.now();
      await this.#write(bytes);
      const responses: Response[] = [];
      for (const spec of specs) {
        if (this.#serverWillClose) {
          throw new PipelineIncompleteError(
            `server closed the connection after ${responses.length} of ${specs.length} ` +
              `pipelined responses`,
            responses,
          );
        }
        try {
          responses.push(await readResponse(this.#reader, spec.method));
        } catch (error) {
          if (!(error instanceof HttpProtocolError) || !this.#reader.eof) throw error;
          throw new PipelineIncompleteError(
            `connection closed after ${responses.length} of ${specs.length} pipelined ` +
              `responses: ${error.message}`,
            responses,
          );
        }
        if (responses.at(-1)!.closesConnection) this.#serverWillClose = true;
      }
      return { responses, seconds: (performance.now() - started) / 1000 };
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#conn);
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }

  /** Any failure leaves the connection in an unknown state, so it is closed, never reused. */
  async #guard<T>(work: () => Promise<T>): Promise<T> {
    if (!this.reusable) {
      throw new Error(
        this.#closed ? "connection is closed" : "server said it will close this connection",
      );
    }
    if (this.#reader.buffered > 0) {
      this.close();
      throw new HttpProtocolError(`${this.#reader.buffered} unsolicited bytes from the server`);
    }
    try {
      return await work();
    } catch (error) {
      this.close();
      throw error;
    }
  }

  async #write(bytes: Uint8Array): Promise<void> {
    const writeAll = async () => {
      for (let at = 0; at < bytes.length;) at += await this.#conn.write(bytes.subarray(at));
    };
    const writing = writeAll();
    writing.catch(() => {});
    await withDeadline(
      writing,
      this.#timeoutMs,
      () =>
        new HttpTimeoutError(
          `writing ${bytes.length} request bytes took over ${this.#timeoutMs} ms`,
        ),
      () => this.close(),
    );
  }

  async #expectServerClose(): Promise<void> {
    const extra = await this.#reader.readToEnd("bytes after a Connection: close response");
    if (extra.length > 0) {
      throw new HttpProtocolError(`${extra.length} unexpected bytes after the final response`);
    }
    this.close();
  }
}

export interface SendRequestsOptions extends ConnectionOptions {
  port: number;
  spec: RequestSpec;
  count: number;
  /**
   * true: `concurrency` persistent connections, each sending its share sequentially; if the
   * server announces `Connection: close`, the next request goes on a fresh connection (a sent
   * request is never retried, so counts stay exact). false: one connection per request, with
   * `Connection: close`, read until the server closes it.
   */
  keepAlive: boolean;
  /** Parallel connections (keepAlive) or parallel connection-per-request loops. Default 1. */
  concurrency?: number;
  /** Called for every response, e.g. to check bodies; throwing fails the whole run. */
  onResponse?: (response: Response) => void;
}

export interface SendRequestsResult {
  /** status code -> number of responses with it */
  statuses: Map<number, number>;
  /** One entry per request, in completion order. */
  clientSeconds: number[];
  /** TCP connections opened. */
  connections: number;
}

/** Sends exactly `count` requests; throws (after closing every connection) if any fails. */
export async function sendRequests(opts: SendRequestsOptions): Promise<SendRequestsResult> {
  const concurrency = opts.concurrency ?? 1;
  if (!Number.isInteger(opts.count) || opts.count < 0) throw new Error(`bad count ${opts.count}`);
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new Error(`bad concurrency ${concurrency}`);
  }
  const result: SendRequestsResult = { statuses: new Map(), clientSeconds: [], connections: 0 };
  let claimed = 0;
  let failed = false;
  const connect = () => {
    result.connections++;
    return HttpConnection.open(opts.port, opts);
  };
  const record = ({ response, seconds }: { response: Response; seconds: number }) => {
    result.statuses.set(response.status, (result.statuses.get(response.status) ?? 0) + 1);
    result.clientSeconds.push(seconds);
    opts.onResponse?.(response);
  };

  const worker = async () => {
    let conn: HttpConnection | undefined;
    try {
      while (!failed && claimed < opts.count) {
        claimed++;
        if (!opts.keepAlive) {
          conn = await connect();
          record(await conn.request(opts.spec, { connectionClose: true }));
          conn.close();
          continue;
        }
        if (!conn?.reusable) {
          conn?.close();
          conn = await connect();
        }
        record(await conn.request(opts.spec));
      }
    } catch (error) {
      failed = true;
      throw error;
    } finally {
      conn?.close();
    }
  };

  const outcomes = await Promise.allSettled(
    Array.from({ length: Math.min(concurrency, opts.count) }, worker),
  );
  const errors = outcomes.flatMap((o) => o.status === "rejected" ? [o.reason] : []);
  if (errors.length > 0) {
    const first = errors[0];
    if (errors.length > 1 && first instanceof Error) {
      first.message += ` (and ${errors.length - 1} more failing connection(s))`;
    }
    throw first;
  }
  return result;
}
