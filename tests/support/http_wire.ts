/** HTTP/1.1 message framing: request serialisation and strict response parsing. */

import type { DeadlineReader } from "./byte_reader.ts";
import { HttpProtocolError } from "./http_errors.ts";

export interface RequestSpec {
  method: string;
  path: string;
  body?: Uint8Array | string;
  /** Send the body with Transfer-Encoding: chunked instead of Content-Length. */
  chunked?: boolean;
  /** Chunk size for chunked bodies (default 4096); small values give multi-chunk bodies. */
  chunkSize?: number;
  headers?: Record<string, string>;
}

export interface Response {
  status: number;
  reason: string;
  /** "HTTP/1.1" or "HTTP/1.0" */
  version: string;
  headers: Headers;
  body: Uint8Array;
  /** The server will not accept another request on this connection. */
  closesConnection: boolean;
}

const CRLF = new Uint8Array([13, 10]);
const CRLFCRLF = new Uint8Array([13, 10, 13, 10]);
const MAX_HEAD_BYTES = 64 * 1024;
const encoder = new TextEncoder();
const latin1 = new TextDecoder("latin1");

function assertNoLineBreak(value: string, what: string): void {
  if (/[\r\n]/.test(value)) throw new Error(`${what} must not contain CR or LF: ${value}`);
}

export function encodeRequest(
  spec: RequestSpec,
  opts: { port: number; connectionClose: boolean },
): Uint8Array {
  assertNoLineBreak(spec.method, "method");
  assertNoLineBreak(spec.path, "path");
  if (!/^[A-Z]+$/.test(spec.method)) throw new Error(`invalid method ${spec.method}`);
  if (!spec.path.startsWith("/") || /\s/.test(spec.path)) {
    throw new Error(`request path must be origin-form without spaces: ${spec.path}`);
  }
  const body = typeof spec.body === "string" ? encoder.encode(spec.body) : spec.body;
  const headers = new Map<string, [string, string]>();
  const set = (name: string, value: string) => headers.set(name.toLowerCase(), [name, value]);
  set("Host", `127.0.0.1:${opts.port}`);
  for (const [name, value] of Object.entries(spec.headers ?? {})) {
    assertNoLineBreak(name + value, "header");
    set(name, value);
  }
  let payload: Uint8Array = new Uint8Array(0);
  if (spec.chunked) {
    set("Transfer-Encoding", "chunked");
    headers.delete("content-length");
    payload = encodeChunked(body ?? new Uint8Array(0), spec.chunkSize ?? 4096);
  } else if (body !== undefined || ["POST", "PUT", "PATCH"].includes(spec.method)) {
    // An explicit 0 for body-carrying methods keeps every server's framing unambiguous.
    payload = body ?? new Uint8Array(0);
    if (!headers.has("content-length")) set("Content-Length", `${payload.length}`);
  }
  if (opts.connectionClose) set("Connection", "close");
  let head = `${spec.method} ${spec.path} HTTP/1.1\r\n`;
  for (const [name, value] of headers.values()) head += `${name}: ${value}\r\n`;
  return concat([encoder.encode(head + "\r\n"), payload]);
}

function encodeChunked(body: Uint8Array, chunkSize: number): Uint8Array {
  if (!(chunkSize >= 1)) throw new Error(`chunkSize must be >= 1, got ${chunkSize}`);
  const parts: Uint8Array[] = [];
  for (let at = 0; at < body.length; at += chunkSize) {
    const chunk = body.subarray(at, at + chunkSize);
    parts.push(encoder.encode(`${chunk.length.toString(16)}\r\n`), chunk, CRLF);
  }
  parts.push(encoder.encode("0\r\n\r\n"));
  return concat(parts);
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/**
 * Reads one complete response. `requestMethod` matters because a HEAD response carries framing
 * headers but no body. Interim 1xx responses are skipped.
 */
export async function readResponse(
  reader: DeadlineReader,
  requestMethod: string,
): Promise<Response> {
  for (;;) {
    const head = await reader.readUntil(CRLFCRLF, MAX_HEAD_BYTES, "response head");
    if (head === null) {
      throw new HttpProtocolError("server closed the connection without sending a response");
    }
    const { version, status, reason, headers } = parseHead(latin1.decode(head));
    if (status >= 100 && status < 200) continue;
    const hasNoBody = requestMethod === "HEAD" || status === 204 || status === 304;
    const framing = hasNoBody ? "none" : bodyFraming(headers);
    let body: Uint8Array;
    if (framing === "none") body = new Uint8Array(0);
    else if (framing === "chunked") body = await readChunkedBody(reader);
    else if (framing === "close") body = await reader.readToEnd("close-delimited body");
    else body = await reader.readExact(framing, "response body");
    const connection = (headers.get("connection") ?? "").toLowerCase();
    const closesConnection = framing === "close" || /\bclose\b/.test(connection) ||
      (version === "HTTP/1.0" && !/\bkeep-alive\b/.test(connection));
    return { status, reason, version, headers, body, closesConnection };
  }
}

function parseHead(text: string) {
  const lines = text.split("\r\n");
  const statusLine = /^(HTTP\/1\.[01]) ([0-9]{3})(?: (.*))?$/.exec(lines[0]);
  if (!statusLine) {
    throw new HttpProtocolError(`malformed status line: ${JSON.stringify(lines[0])}`);
  }
  const headers = new Headers();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    if (colon <= 0 || /^[ \t]/.test(line) || /\s/.test(line.slice(0, colon))) {
      throw new HttpProtocolError(`malformed header line: ${JSON.stringify(line)}`);
    }
    try {
      headers.append(line.slice(0, colon), line.slice(colon + 1).trim());
    } catch (error) {
      throw new HttpProtocolError(`invalid header ${JSON.stringify(line)}: ${error}`);
    }
  }
  return {
    version: statusLine[1],
    status: Number(statusLine[2]),
    reason: statusLine[3] ?? "",
    headers,
  };
}

function bodyFraming(headers: Headers): number | "chunked" | "close" {
  const transferEncoding = headers.get("transfer-encoding");
  if (transferEncoding !== null) {
    const codings = transferEncoding.toLowerCase().split(",").map((c) => c.trim());
    if (codings.at(-1) === "chunked") return "chunked";
    return "close";
  }
  const contentLength = headers.get("content-length");
  if (contentLength === null) return "close";
  // Headers joins repeated fields with ", "; identical repeats are legal, differing ones are not.
  const values = new Set(contentLength.split(",").map((v) => v.trim()));
  const [value] = values;
  if (values.size !== 1 || !/^[0-9]+$/.test(value)) {
    throw new HttpProtocolError(`invalid Content-Length: ${JSON.stringify(contentLength)}`);
  }
  return Number(value);
}

async function readChunkedBody(reader: DeadlineReader): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for (;;) {
    const line = await reader.readUntil(CRLF, 1024, "chunk size line");
    if (line === null) throw new HttpProtocolError("connection closed before chunk size line");
    const sizeText = latin1.decode(line).split(";", 1)[0].trim();
    if (!/^[0-9a-fA-F]+$/.test(sizeText)) {
      throw new HttpProtocolError(
        `malformed chunk size line: ${JSON.stringify(latin1.decode(line))}`,
      );
    }
    const size = parseInt(sizeText, 16);
    if (size === 0) break;
    parts.push(await reader.readExact(size, "chunk data"));
    const terminator = await reader.readExact(2, "chunk terminator");
    if (terminator[0] !== 13 || terminator[1] !== 10) {
      throw new HttpProtocolError("chunk data not followed by CRLF");
    }
  }
  for (;;) {
    const trailer = await reader.readUntil(CRLF, MAX_HEAD_BYTES, "chunked trailer");
    if (trailer === null) throw new HttpProtocolError("connection closed inside chunked trailer");
    if (trailer.length === 0) return concat(parts);
  }
}
