/**
 * go-grpc end to end: a Go gRPC server and client built from Debian's grpc-go 1.33 sources
 * (normal, and stripped with `-ldflags "-s -w"`), a known number of calls per method and
 * status code, unary and streaming; the exported rpc_{server,client}_duration_seconds counts
 * must EQUAL them, label set by label set, and no call may also appear as an HTTP request.
 * Also: buf curl (connect-go over net/http, not grpc-go) and a grpc-go version the offsets
 * table does not know.
 */
import assert from "node:assert/strict";
import { type AgentHandle, startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { findSamples, type Sample } from "../support/prom_text.ts";
import {
  expectedGrpcObserved,
  GRPC_MODULES,
  type GrpcPlan,
  haveGrpcGo,
  runGrpcClient,
  startGrpcServer,
} from "../support/go_grpc.ts";
import { buildGoFixture } from "../support/go_build.ts";
import { npmBinary } from "../support/npm_binaries.ts";
import { ManagedProcess } from "../support/managed_process.ts";
import { countsReached, pollUntil, settledSamples } from "../support/wait.ts";
import { inCi } from "../support/privileges.ts";

const instance = (pid: number) => ({ target_instance: `${Deno.hostname()}:${pid}` });

/** <metric>_count per "rpc_method rpc_grpc_status_code" for process `pid`. */
function rpcCounts(samples: Sample[], metric: string, pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of findSamples(samples, `${metric}_count`, instance(pid))) {
    assert.equal(s.labels.rpc_system, "grpc");
    const key = `${s.labels.rpc_method} ${s.labels.rpc_grpc_status_code}`;
    out[key] = (out[key] ?? 0) + s.value;
  }
  return out;
}

function httpSeries(samples: Sample[], pid: number): number {
  return ["http_server_duration_seconds_count", "http_client_duration_seconds_count"]
    .flatMap((m) => findSamples(samples, m, instance(pid))).length;
}

/** Every kind of call the fixture client makes, a few times each. */
const PLAN: GrpcPlan = {
  empty: 5,
  unary_ok: 3,
  unary_not_found: 2,
  unary_internal: 2,
  unary_deadline: 1,
  unary_cancel: 1,
  health_ok: 4,
  health_not_found: 1,
  server_stream: 2,
  server_stream_abort: 1,
  client_stream: 2,
  bidi: 2,
  unimplemented: 1,
  unknown_method: 1,
};

const ignore = skipBpf() || (!haveGrpcGo() && !inCi());

async function exactCounts(agent: AgentHandle, stripped: boolean): Promise<void> {
  await using server = await startGrpcServer({ stripped });
  await agent.waitForPid(server.pid);
  const client = await runGrpcClient(server.address, PLAN, {
    stripped,
    // A client listens nowhere: discovery selects it as a grpc-go program; calls wait for that.
    beforeCalls: (pid) => agent.waitForPid(pid),
  });
  const expected = expectedGrpcObserved(PLAN);
  assert.deepEqual(client.observed, expected, "the client itself saw the plan");
  // The server ends a call the client gave up on (deadline, cancel) when it notices: maybe after
  // the client has exited. Wait for its counts (and the client's) to be there, then compare.
  const samples = await settledSamples(
    agent,
    (s) =>
      countsReached(rpcCounts(s, "rpc_client_duration_seconds", client.pid), expected) &&
      countsReached(rpcCounts(s, "rpc_server_duration_seconds", server.pid), expected),
  );
  assert.deepEqual(rpcCounts(samples, "rpc_client_duration_seconds", client.pid), expected);
  assert.deepEqual(rpcCounts(samples, "rpc_server_duration_seconds", server.pid), expected);
  // Not also counted as HTTP by go-http or kprobe-http.
  assert.equal(httpSeries(samples, server.pid), 0);
  assert.equal(httpSeries(samples, client.pid), 0);
}

Deno.test({
  name: "go-grpc counts every gRPC call of a Go server and client exactly, per method and code",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    await using agent = await startAgent();
    await t.step("with symbols and DWARF", () => exactCounts(agent, false));
    await t.step(
      "stripped: offsets from the table, by grpc-go's version in the build info",
      () => exactCounts(agent, true),
    );
    await t.step(
      "durations: a deadline-exceeded call lasted about its 100 ms deadline",
      async () => {
        const samples = await agent.samples();
        const sums = findSamples(samples, "rpc_client_duration_seconds_sum", {
          rpc_method: "/grpc.testing.TestService/UnaryCall",
          rpc_grpc_status_code: "4",
        });
        assert.equal(sums.length, 2); // one per client run
        for (const s of sums) assert.ok(s.value >= 0.09 && s.value < 1, `${s.value} s`);
      },
    );
  },
});

Deno.test({
  name: "buf curl (connect-go, not grpc-go): counted by the grpc-go server, not as a client",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    const buf = await npmBinary("@bufbuild/buf-linux-x64", "bin/buf");
    await using agent = await startAgent();
    await using server = await startGrpcServer();
    await agent.waitForPid(server.pid);
    const schema = "/usr/share/gocode/src/google.golang.org/grpc/debian/missing-sources/grpc/" +
      "grpc-proto/master/grpc/health/v1/health.proto";
    const pids: number[] = [];
    for (const service of ["", "", "nope"]) {
      const child = new Deno.Command(buf, {
        args: [
          "curl",
          "--schema",
          schema,
          "--protocol",
          "grpc",
          "--http2-prior-knowledge",
          "-d",
          JSON.stringify({ service }),
          `http://${server.address}/grpc.health.v1.Health/Check`,
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      pids.push(child.pid);
      const out = await child.output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      assert.match(text, service ? /not_found/ : /SERVING/); // the error goes to stderr
    }
    const served = {
      "/grpc.health.v1.Health/Check 0": 2,
      "/grpc.health.v1.Health/Check 5": 1,
    };
    const samples = await settledSamples(
      agent,
      (s) => countsReached(rpcCounts(s, "rpc_server_duration_seconds", server.pid), served),
    );
    // buf's side is not measured (README, go-grpc): connect-go is not grpc-go, so go-grpc has
    // no probe in it; go-http would count each call as an HTTP/2 POST, but buf 1.75 is built
    // with Go 1.27, newer than go-http's offsets table (plugins/go_http/binary_test.ts); and
    // kprobe-http does not parse HTTP/2. Nothing is invented either.
    for (const pid of pids) {
      assert.deepEqual(rpcCounts(samples, "rpc_client_duration_seconds", pid), {});
      assert.equal(httpSeries(samples, pid), 0);
    }
    assert.deepEqual(
      findSamples(samples, "http_client_duration_seconds_count", { service_name: "buf" }),
      [],
    );
    // The grpc-go server side has each call with its gRPC status.
    assert.deepEqual(rpcCounts(samples, "rpc_server_duration_seconds", server.pid), served);
  },
});

Deno.test({
  name: "a grpc-go version outside the offsets table: one log line, a counter, no labels, no crash",
  ignore,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    // The same sources, stripped, but the build info says grpc-go 1.99.0.
    const binary = await buildGoFixture("go_grpc/server", {
      stripped: true,
      gopath: "/usr/share/gocode",
      modules: { ...GRPC_MODULES, "google.golang.org/grpc": "v1.99.0" },
    });
    await using agent = await startAgent();
    const server = new ManagedProcess(binary, ["127.0.0.1:0"]);
    try {
      let address = "";
      await pollUntil(() => {
        address = /^listening (\S+)$/m.exec(server.stderr)?.[1] ?? "";
        return address !== "";
      }, { timeoutMs: 10_000 });
      await agent.waitForPid(server.pid);
      const client = await runGrpcClient(address, { empty: 3, unary_not_found: 1 });
      assert.deepEqual(client.observed, expectedGrpcObserved({ empty: 3, unary_not_found: 1 }));
      const samples = await agent.samples();
      assert.deepEqual(rpcCounts(samples, "rpc_server_duration_seconds", server.pid), {});
      const skipped = findSamples(samples, "redprobe_processes_skipped_total", {
        plugin: "go-grpc",
        reason: "unknown_grpc_version",
      });
      assert.equal(skipped[0]?.value, 1);
      const lines = agent.logs().split("\n").filter((l) =>
        l.includes(`go-grpc: leaving pid ${server.pid} `)
      );
      assert.equal(lines.length, 1, agent.logs());
      assert.match(lines[0], /grpc-go 1\.99\.0/);
      assert.ok(!server.exited, "the server still runs");
    } finally {
      await server.stop();
    }
  },
});
