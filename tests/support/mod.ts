/**
 * Test support for redprobe end-to-end tests: real loopback HTTP servers plus an exact raw
 * HTTP/1.1 client, so tests know precisely how many requests of each kind were sent.
 */

export { freePort } from "./ports.ts";
export {
  type ServerHandle,
  type ServerKind,
  type ServerOptions,
  type ServerSecondsOptions,
  startNginx,
  startNode,
  startPython,
} from "./servers.ts";
export type { NginxOptions } from "./nginx_config.ts";
export { type TestCertificate, testCertificate } from "./tls.ts";
export {
  DEFAULT_TIMEOUT_MS,
  HttpConnection,
  HttpProtocolError,
  HttpTimeoutError,
  PipelineIncompleteError,
  type RequestSpec,
  type Response,
  sendRequests,
  type SendRequestsOptions,
  type SendRequestsResult,
} from "./http_client.ts";
export { isAlive, processTree } from "./procfs.ts";
export { BIG_BODY, HELLO_BODY, SUBMIT_BODY, USER_BODY } from "./routes.ts";
