/** Error types the raw HTTP client throws, so tests can tell a hung server from a broken one. */

/** A read or write did not complete within its deadline. */
export class HttpTimeoutError extends Error {
  override name = "HttpTimeoutError";
}

/** The server sent something that is not valid HTTP/1.1, or closed the connection mid-message. */
export class HttpProtocolError extends Error {
  override name = "HttpProtocolError";
}
