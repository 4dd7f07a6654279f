/**
 * The request methods exported as themselves in `http_request_method`; any other token becomes
 * OpenTelemetry's `_OTHER`, which keeps the label bounded whatever clients send.
 *
 * @module
 */
export const KNOWN_HTTP_METHODS = [
  "GET",
  "HEAD",
  "POST",
  "PUT",
  "DELETE",
  "CONNECT",
  "OPTIONS",
  "TRACE",
  "PATCH",
] as const;

export type KnownHttpMethod = typeof KNOWN_HTTP_METHODS[number];

const known = new Set<string>(KNOWN_HTTP_METHODS);

/** `method` if it is one of {@linkcode KNOWN_HTTP_METHODS} (case-sensitive, as HTTP is), else `_OTHER`. */
export function httpMethodLabel(method: string): KnownHttpMethod | "_OTHER" {
  return known.has(method) ? method as KnownHttpMethod : "_OTHER";
}
