/**
 * The Go gRPC programs of the go-grpc tests (grpc-go 1.33.3 from Debian's
 * golang-google-grpc-dev, built in module mode with the Debian sources vendored, so their
 * build info lists grpc-go's version as a real program's does): the fixture server
 * (tests/fixtures/go_grpc/server) and the fixture client (tests/fixtures/go_grpc/client), which
 * makes a known number of calls per kind and reports what it saw per "METHOD CODE".
 *
 * @module
 */
import { fileExists, haveGo } from "./go_binaries.ts";
import { buildGoFixture } from "./go_build.ts";
import { ManagedProcess, releaseWhenReady } from "./managed_process.ts";
import { pollUntil } from "./wait.ts";

/** Where Debian installs golang-google-grpc-dev and its dependencies. */
export const GRPC_GOPATH = "/usr/share/gocode";

/** The grpc-go version the fixtures are built with (Debian's golang-google-grpc-dev). */
export const GRPC_GO_VERSION = "1.33.3";

export const TEST_SERVICE = "/grpc.testing.TestService/";
export const HEALTH_CHECK = "/grpc.health.v1.Health/Check";

/**
 * The kinds of call the fixture client makes (its PLAN), each with the full method it calls and
 * the numeric gRPC status code it must end with, on the client and (for the fixture server's
 * handlers) on the server alike. Keep in step with tests/fixtures/go_grpc/client/main.go.
 */
export const GRPC_CALL_KINDS = {
  empty: { method: `${TEST_SERVICE}EmptyCall`, code: 0 },
  unary_ok: { method: `${TEST_SERVICE}UnaryCall`, code: 0 },
  unary_not_found: { method: `${TEST_SERVICE}UnaryCall`, code: 5 },
  unary_internal: { method: `${TEST_SERVICE}UnaryCall`, code: 13 },
  /**
   * The server waits; the client's 100 ms deadline expires. The server's handler answers
   * DEADLINE_EXCEEDED too (a plain grpc-go handler would race CANCELED against it).
   */
  unary_deadline: { method: `${TEST_SERVICE}UnaryCall`, code: 4 },
  /** The server waits; the client cancels after 100 ms. The server's handler answers CANCELED. */
  unary_cancel: { method: `${TEST_SERVICE}UnaryCall`, code: 1 },
  health_ok: { method: HEALTH_CHECK, code: 0 },
  health_not_found: { method: HEALTH_CHECK, code: 5 },
  /** Server streaming: 3 responses. */
  server_stream: { method: `${TEST_SERVICE}StreamingOutputCall`, code: 0 },
  /** Server streaming: 3 responses, then ABORTED. */
  server_stream_abort: { method: `${TEST_SERVICE}StreamingOutputCall`, code: 10 },
  /** Client streaming: 3 requests. */
  client_stream: { method: `${TEST_SERVICE}StreamingInputCall`, code: 0 },
  /** Bidi streaming: 3 requests, each echoed. */
  bidi: { method: `${TEST_SERVICE}FullDuplexCall`, code: 0 },
  /** A registered method whose handler answers UNIMPLEMENTED. */
  unimplemented: { method: `${TEST_SERVICE}HalfDuplexCall`, code: 12 },
  /** A method the server does not know: grpc itself answers UNIMPLEMENTED. */
  unknown_method: { method: `${TEST_SERVICE}NoSuchMethod`, code: 12 },
} as const;

export type GrpcCallKind = keyof typeof GRPC_CALL_KINDS;

/** How many calls of each kind (missing kinds: none). Done in the object's key order. */
export type GrpcPlan = Partial<Record<GrpcCallKind, number>>;

/** The client's PLAN argument: `empty=5,unary_ok=3`. */
export function grpcPlanArg(plan: GrpcPlan): string {
  return Object.entries(plan).map(([kind, count]) => `${kind}=${count}`).join(",");
}

/**
 * What the client reports when every call of `plan` ends as intended: calls per
 * "METHOD CODE" (e.g. `"/grpc.testing.TestService/UnaryCall 5": 2`), zero counts left out.
 */
export function expectedGrpcObserved(plan: GrpcPlan): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [kind, count] of Object.entries(plan)) {
    if (!count) continue;
    const { method, code } = GRPC_CALL_KINDS[kind as GrpcCallKind];
    const key = `${method} ${code}`;
    out[key] = (out[key] ?? 0) + count;
  }
  return out;
}

/** Whether Go and Debian's golang-google-grpc-dev are installed (to build the fixtures). */
export function haveGrpcGo(): boolean {
  return haveGo() && fileExists(`${GRPC_GOPATH}/src/google.golang.org/grpc/version.go`);
}

/** The modules of the fixtures, at the versions of the Debian packages that ship them. */
export const GRPC_MODULES: Record<string, string> = {
  "google.golang.org/grpc": `v${GRPC_GO_VERSION}`,
  "google.golang.org/genproto": "v0.0.0-20200413115906-b5235f65be36", // 0.0~git20200413.b5235f6
  "github.com/golang/protobuf": "v1.3.5",
  "golang.org/x/net": "v0.7.0",
  "golang.org/x/sys": "v0.3.0",
  "golang.org/x/text": "v0.7.0",
};

/** Builds the fixture server or client (cached under .cache/go) and returns its path. */
export function buildGrpcFixture(
  which: "server" | "client" | "load",
  options: { stripped?: boolean } = {},
): Promise<string> {
  return buildGoFixture(`go_grpc/${which}`, {
    stripped: options.stripped,
    gopath: GRPC_GOPATH,
    modules: GRPC_MODULES,
  });
}

export interface GrpcServer extends AsyncDisposable {
  pid: number;
  /** 127.0.0.1:PORT */
  address: string;
  port: number;
  binary: string;
  stderr(): string;
  /** SIGTERM (the server stops gracefully), SIGKILL if it lingers. */
  stop(): Promise<void>;
}

/** Starts the fixture server on a free loopback port and waits until it accepts connections. */
export async function startGrpcServer(options: { stripped?: boolean } = {}): Promise<GrpcServer> {
  const binary = await buildGrpcFixture("server", options);
  // The server prints "listening ADDR" on stdout and on stderr; ManagedProcess captures stderr.
  const proc = new ManagedProcess(binary, ["127.0.0.1:0"]);
  let address = "";
  const up = await pollUntil(() => {
    const m = /^listening (127\.0\.0\.1:\d+)$/m.exec(proc.stderr);
    if (m) address = m[1];
    return address !== "" || proc.exited;
  }, { timeoutMs: 10_000 });
  if (!up || !address) {
    await proc.stop();
    throw new Error(`the gRPC server did not start: ${proc.stderr}`);
  }
  const stop = () => proc.stop();
  return {
    pid: proc.pid,
    address,
    port: Number(address.slice(address.lastIndexOf(":") + 1)),
    binary,
    stderr: () => proc.stderr,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

export interface GrpcClientResult {
  pid: number;
  binary: string;
  /** Calls per "METHOD CODE" as the client saw them, e.g. `"/grpc.health.v1.Health/Check 0": 4`. */
  observed: Record<string, number>;
}

/**
 * Runs the fixture client against `address` (HOST:PORT) with `plan` (a {@link GrpcPlan} or the
 * PLAN string itself) and returns what it observed. Throws, with its stderr, if it exits non-zero
 * (some call did not end with the status its kind intends). With `beforeCalls` the client
 * starts (grpc connects in the background) but makes no call until `beforeCalls(pid)` resolves
 * (e.g. the agent instruments it).
 */
export async function runGrpcClient(
  address: string,
  plan: GrpcPlan | string,
  options: { stripped?: boolean; beforeCalls?: (pid: number) => Promise<void> } = {},
): Promise<GrpcClientResult> {
  const binary = await buildGrpcFixture("client", options);
  const planArg = typeof plan === "string" ? plan : grpcPlanArg(plan);
  const wait = options.beforeCalls !== undefined;
  const child = new Deno.Command(binary, {
    args: [...(wait ? ["-wait"] : []), address, planArg],
    stdin: wait ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (options.beforeCalls) await releaseWhenReady(child, options.beforeCalls);
  const out = await child.output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  if (!out.success) {
    throw new Error(
      `the gRPC client failed (exit ${out.code}) for ${planArg}:\n${stderr}\nstdout: ${stdout}`,
    );
  }
  const json = stdout.split("\n").find((line) => line.startsWith("{"));
  if (!json) throw new Error(`the gRPC client printed no JSON: ${stdout}\n${stderr}`);
  return { pid: child.pid, binary, observed: JSON.parse(json) as Record<string, number> };
}
