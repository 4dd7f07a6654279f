/**
 * The gRPC fixtures (tests/fixtures/go_grpc) end to end, without root or BPF: the client makes
 * exactly the calls of its plan against the server and sees each end with the intended status,
 * built normally and stripped. The first run builds grpc-go (cached in .cache/go afterwards).
 * Run: deno test -A tests/support/go_grpc_test.ts
 */
import assert from "node:assert/strict";
import { needs } from "./go_binaries.ts";
import {
  buildGrpcFixture,
  expectedGrpcObserved,
  GRPC_CALL_KINDS,
  GRPC_GO_VERSION,
  type GrpcCallKind,
  type GrpcPlan,
  grpcPlanArg,
  haveGrpcGo,
  runGrpcClient,
  startGrpcServer,
} from "./go_grpc.ts";
import { isAlive } from "./procfs.ts";

/** Every kind, 1 to 5 calls each, so a swapped count shows. */
const PLAN: GrpcPlan = Object.fromEntries(
  (Object.keys(GRPC_CALL_KINDS) as GrpcCallKind[]).map((kind, i) => [kind, 1 + (i * 3) % 5]),
);

Deno.test("expectedGrpcObserved() adds kinds of the same method and code, drops zeros", () => {
  assert.equal(grpcPlanArg({ empty: 2, unary_ok: 0 }), "empty=2,unary_ok=0");
  assert.deepEqual(expectedGrpcObserved({ empty: 2, unary_ok: 0, health_ok: 1 }), {
    "/grpc.testing.TestService/EmptyCall 0": 2,
    "/grpc.health.v1.Health/Check 0": 1,
  });
  assert.deepEqual(expectedGrpcObserved({ unimplemented: 1, unknown_method: 2, unary_ok: 3 }), {
    "/grpc.testing.TestService/HalfDuplexCall 12": 1,
    "/grpc.testing.TestService/NoSuchMethod 12": 2,
    "/grpc.testing.TestService/UnaryCall 0": 3,
  });
});

for (const stripped of [false, true]) {
  const flavour = stripped ? "stripped" : "with symbols";
  Deno.test(`the gRPC client sees exactly its plan (${flavour})`, needs(haveGrpcGo()), async () => {
    const [, client] = await Promise.all([
      buildGrpcFixture("server", { stripped }),
      buildGrpcFixture("client", { stripped }),
    ]);
    // GOPATH builds carry no module versions; grpc.Version survives only in the client's
    // user-agent ("grpc-go/1.33.3"), which the server does not link.
    const text = new TextDecoder("latin1").decode(Deno.readFileSync(client));
    assert.ok(
      text.includes(`grpc-go/${GRPC_GO_VERSION}`),
      `${client}: no grpc-go/${GRPC_GO_VERSION}`,
    );

    await using srv = await startGrpcServer({ stripped });
    assert.match(srv.address, /^127\.0\.0\.1:\d+$/);
    const first = await runGrpcClient(srv.address, PLAN, { stripped });
    assert.deepEqual(first.observed, expectedGrpcObserved(PLAN));

    // The same again, with the client held back until the test lets it go.
    let heldPid = 0;
    const second = await runGrpcClient(
      srv.address,
      "health_ok=2,empty=1,bidi=0,health_not_found=1",
      {
        stripped,
        beforeCalls: (pid) => {
          heldPid = pid;
          return Promise.resolve();
        },
      },
    );
    assert.equal(second.pid, heldPid);
    assert.deepEqual(second.observed, {
      "/grpc.health.v1.Health/Check 0": 2,
      "/grpc.health.v1.Health/Check 5": 1,
      "/grpc.testing.TestService/EmptyCall 0": 1,
    });

    await srv.stop();
    assert.ok(!isAlive(srv.pid), "the server survived stop()");
  });
}

Deno.test("runGrpcClient() throws on a plan the client rejects", needs(haveGrpcGo()), async () => {
  await using srv = await startGrpcServer();
  await assert.rejects(
    runGrpcClient(srv.address, "empty=1,no_such_kind=2"),
    /unknown kind "no_such_kind"/,
  );
});

Deno.test("the gRPC server exits 0 on SIGTERM", needs(haveGrpcGo()), async () => {
  const binary = await buildGrpcFixture("server");
  const child = new Deno.Command(binary, {
    args: ["127.0.0.1:0"],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  // Both pipes are read to the end: a Go program writing to a closed pipe dies of SIGPIPE.
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  while (!stdout.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) break;
    stdout += value;
  }
  assert.match(stdout.split("\n")[0], /^listening 127\.0\.0\.1:\d+$/);
  child.kill("SIGTERM");
  for (;;) {
    const { done } = await reader.read();
    if (done) break;
  }
  const status = await child.status;
  assert.equal(status.code, 0, `signal ${status.signal}; stderr: ${await stderr}`);
});
