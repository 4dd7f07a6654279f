/**
 * The example third-party plugin (examples/redis/), loaded through `plugin_modules` as a user
 * would load their own, against Debian's real redis-server: the commands of redis-cli (one at a
 * time, and `--pipe`'s pipelining) and of Python (redis-py from Debian, its pipelines and
 * transactions, and raw sockets for a command that times out and one whose connection closes
 * unanswered) must be counted EXACTLY, per (service_name, db_operation, error_type).
 *
 * And a plugin module that is broken (an invalid definition, one that throws on import) is
 * reported clearly in the logs while the built-in plugins still run.
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, inCi, skipBpf } from "../support/privileges.ts";
import { findSamples, type Sample, sumSamples } from "../support/prom_text.ts";
import { ManagedProcess } from "../support/managed_process.ts";
import { freePort, sendRequests, startNginx } from "../support/mod.ts";
import { runClient } from "../support/clients.ts";
import { hasTool } from "../support/tools.ts";
import { pollUntil, portAccepts, settledSamples, waitFor } from "../support/wait.ts";

const MODULE = decodeURIComponent(new URL("../../examples/redis/mod.ts", import.meta.url).pathname);
/** Debian's Python, which has Debian's python3-redis (another python3 on PATH may not). */
const PYTHON = "/usr/bin/python3";

/** Debian's redis-server, redis-tools and python3-redis (scripts/test.sh installs them). */
const haveRedis = hasTool("redis-server") && hasTool("redis-cli") &&
  hasTool(PYTHON) && new Deno.Command(PYTHON, { args: ["-c", "import redis"], stderr: "null" })
  .outputSync().success;

type Counts = Record<string, number>;

/** db_client_duration_seconds_count per "service_name db_operation error_type" for `match`. */
function dbCounts(samples: Sample[], match: Record<string, string> = {}): Counts {
  const out: Counts = {};
  for (const s of findSamples(samples, "db_client_duration_seconds_count", match)) {
    const key = `${s.labels.service_name} ${s.labels.db_operation} ${s.labels.error_type}`.trim();
    out[key] = (out[key] ?? 0) + s.value;
  }
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
}

const instance = (pid: number) => ({ target_instance: `${Deno.hostname()}:${pid}` });

function kernelEvent(samples: Sample[], event: string): number {
  return sumSamples(samples, "redprobe_kernel_events_total", { plugin: "redis", event });
}

/** A real redis-server on a free port of 127.0.0.1, nothing saved to disk. */
async function startRedis(): Promise<{ port: number } & AsyncDisposable> {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "redprobe-redis-" });
  const proc = new ManagedProcess("redis-server", [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--dir",
    dir,
  ]);
  const stop = async () => {
    await proc.stop();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  // portAccepts sends no bytes: no command of the test's own before the counted ones.
  if (!await pollUntil(() => portAccepts(port), { timeoutMs: 10_000, intervalMs: 50 })) {
    await stop();
    throw new Error(`redis-server did not listen on ${port}: ${proc.stderr}`);
  }
  return { port, [Symbol.asyncDispose]: stop };
}

/** `redis-cli --pipe` fed `input` on stdin (its pipelining mode). */
async function redisPipe(port: number, input: Uint8Array): Promise<{ pid: number; out: string }> {
  const child = new Deno.Command("redis-cli", {
    args: ["-p", String(port), "--pipe"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(input);
  await writer.close();
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.ok(out.success, `redis-cli --pipe failed: ${text}`);
  return { pid: child.pid, out: text };
}

/** A command in RESP, as clients send it. */
function resp(...args: string[]): string {
  return `*${args.length}\r\n` + args.map((a) => `$${a.length}\r\n${a}\r\n`).join("");
}

const REDIS_PY = `
import redis, sys
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
for i in range(20):
    r.set("py:%d" % i, "v")
p = r.pipeline(transaction=False)          # 105 commands in one write
for i in range(100):
    p.get("py:%d" % (i % 20))
for i in range(5):
    p.incr("k")                            # k holds "v": ERR (redis-py sends INCRBY)
res = p.execute(raise_on_error=False)
assert sum(isinstance(x, redis.ResponseError) for x in res) == 5, res
p = r.pipeline(transaction=True)           # MULTI, SET, GET, EXEC
p.set("t", "1")
p.get("t")
assert p.execute() == [True, b"1"]
big = b"x" * 100_000                       # several writes, several reads
r.set("big", big)
assert r.get("big") == big
r.lpush("list", "a")
try:
    r.get("list")
    raise SystemExit("expected WRONGTYPE")
except redis.ResponseError as e:
    assert str(e).startswith("WRONGTYPE"), e
`;

const RAW_PY = `
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def cmd(*args):
    return b"*%d\\r\\n" % len(args) + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(a), a) for a in args)
def expect(ending):
    data = b""
    while not data.endswith(ending):
        data += s.recv(65536)
    return data
s.sendall(b"PING\\r\\n")                   # an inline command
expect(b"+PONG\\r\\n")
s.sendall(b"*1\\r\\n$4\\r\\nPI")           # a name split between two writes
time.sleep(0.05)
s.sendall(b"NG\\r\\n")
expect(b"+PONG\\r\\n")
s.sendall(cmd(b"HELLO", b"3"))             # RESP3 from here: maps, nested
expect(b"modules\\r\\n*0\\r\\n")
s.sendall(cmd(b"HSET", b"h", b"a", b"1"))
expect(b":1\\r\\n")
s.sendall(cmd(b"HGETALL", b"h"))
assert expect(b"\\r\\n").startswith(b"%1\\r\\n")
s.sendall(cmd(b"INCR", b"h"))
assert expect(b"\\r\\n").startswith(b"-WRONGTYPE")
s.sendall(cmd(b"SET", b"x", b"1") + cmd(b"GET", b"x") + cmd(b"DEL", b"x"))  # one write
expect(b"+OK\\r\\n$1\\r\\n1\\r\\n:1\\r\\n")
s.close()
`;

const PIPELINE_PY = `
import redis, sys
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]))
p = r.pipeline(transaction=False)          # 40 runs of one command: 8 beyond the queue's 32
for i in range(20):
    p.set("alt:%d" % i, "v")
    p.get("alt:%d" % i)
assert len(p.execute()) == 40
`;

const UNANSWERED_PY = `
import socket, sys, time
port = int(sys.argv[1])
def cmd(*args):
    return b"*%d\\r\\n" % len(args) + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(a), a) for a in args)
# Closed before its reply: BLPOP on an empty list blocks until the client goes.
s = socket.create_connection(("127.0.0.1", port))
s.sendall(cmd(b"BLPOP", b"nothing", b"0"))
time.sleep(0.3)
s.close()
# Answered after request_timeout (1 s): the server's null reply comes after 3 s.
t = socket.create_connection(("127.0.0.1", port))
t.sendall(cmd(b"BLPOP", b"nothing", b"3"))
reply = t.recv(100)
assert reply.startswith(b"*-1"), reply
t.close()
`;

Deno.test({
  name: "the redis example plugin counts redis-cli's and Python's commands exactly",
  // Without redis: skipped, except in CI, where the test then fails.
  ignore: skipBpf() || (!haveRedis && !inCi()),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn(t) {
    assertBpfAvailable();
    assert.ok(haveRedis, "needs redis-server, redis-tools and python3-redis (Debian)");
    await using redis = await startRedis();
    await using agent = await startAgent({
      config: {
        plugin_modules: [MODULE],
        plugins: { redis: { ports: [redis.port], request_timeout: "1s" } },
      },
    });
    assert.match(agent.logs(), /plugin redis loaded/);
    const cli = (...args: string[]) => runClient("redis-cli", ["-p", String(redis.port), ...args]);

    await t.step("redis-cli: SET, GET and an erroring INCR, a process each", async () => {
      const set = await cli("-r", "50", "SET", "k", "v");
      const get = await cli("-r", "30", "GET", "k");
      const incr = await cli("-r", "10", "INCR", "k"); // "v" is no integer: ERR
      assert.match(incr.out, /ERR value is not an integer/);
      const samples = await agent.samples();
      assert.deepEqual(dbCounts(samples, instance(set.pid)), { "redis-cli SET": 50 });
      assert.deepEqual(dbCounts(samples, instance(get.pid)), { "redis-cli GET": 30 });
      assert.deepEqual(dbCounts(samples, instance(incr.pid)), { "redis-cli INCR ERR": 10 });
      assert.deepEqual(dbCounts(samples, { service_name: "redis-cli" }), {
        "redis-cli GET": 30,
        "redis-cli INCR ERR": 10,
        "redis-cli SET": 50,
      });
      const sum = sumSamples(samples, "db_client_duration_seconds_sum", instance(set.pid));
      assert.ok(sum > 0 && sum < 5, `duration sum ${sum}`);
      const labels = findSamples(samples, "db_client_duration_seconds_count", instance(set.pid))[0]
        .labels;
      assert.equal(labels.db_system, "redis");
    });

    await t.step("redis-cli --pipe: 2000 pipelined SETs (and its final ECHO)", async () => {
      const input = new TextEncoder().encode(
        Array.from({ length: 2000 }, (_, i) => resp("SET", `pipe:${i}`, "x".repeat(i % 50)))
          .join(""),
      );
      const pipe = await redisPipe(redis.port, input);
      assert.match(pipe.out, /errors: 0, replies: 2000/);
      const samples = await agent.samples();
      assert.deepEqual(dbCounts(samples, instance(pipe.pid)), {
        "redis-cli ECHO": 1,
        "redis-cli SET": 2000,
      });
    });

    await t.step("Python (Debian's redis-py): commands, a pipeline, a transaction", async () => {
      const py = await runClient(PYTHON, ["-c", REDIS_PY, String(redis.port)]);
      const samples = await agent.samples();
      const version = findSamples(samples, "db_client_duration_seconds_count", instance(py.pid))[0]
        ?.labels.service_name;
      assert.match(version ?? "", /^python3\.\d+$/, "service_name is the executable's name");
      assert.deepEqual(dbCounts(samples, instance(py.pid)), {
        [`${version} EXEC`]: 1,
        [`${version} GET`]: 102,
        [`${version} GET WRONGTYPE`]: 1,
        [`${version} INCRBY ERR`]: 5,
        [`${version} LPUSH`]: 1,
        [`${version} MULTI`]: 1,
        [`${version} SET`]: 22,
      });
    });

    await t.step(
      "raw RESP: inline, a name split between writes, RESP3, one-write pipeline",
      async () => {
        const py = await runClient(PYTHON, ["-c", RAW_PY, String(redis.port)]);
        const samples = await agent.samples();
        const name = findSamples(samples, "db_client_duration_seconds_count", instance(py.pid))[0]
          .labels.service_name;
        assert.deepEqual(dbCounts(samples, instance(py.pid)), {
          [`${name} DEL`]: 1,
          [`${name} GET`]: 1,
          [`${name} HELLO`]: 1,
          [`${name} HGETALL`]: 1,
          [`${name} HSET`]: 1,
          [`${name} INCR WRONGTYPE`]: 1,
          [`${name} PING`]: 2,
          [`${name} SET`]: 1,
        });
      },
    );

    await t.step(
      "a pipeline of more runs than the queue holds: the excess is counted, untimed",
      async () => {
        const py = await runClient(PYTHON, ["-c", PIPELINE_PY, String(redis.port)]);
        const samples = await agent.samples();
        const name = findSamples(samples, "db_client_duration_seconds_count", instance(py.pid))[0]
          .labels.service_name;
        assert.deepEqual(dbCounts(samples, instance(py.pid)), {
          [`${name} GET`]: 16,
          [`${name} SET`]: 16,
        });
        assert.equal(kernelEvent(samples, "commands_untimed"), 8);
      },
    );

    await t.step("no reply: closed first, or after request_timeout (then late)", async () => {
      const py = await runClient(PYTHON, ["-c", UNANSWERED_PY, String(redis.port)]);
      let samples: Sample[] = [];
      await waitFor(async () => {
        samples = await agent.samples();
        return Object.keys(dbCounts(samples, instance(py.pid))).length >= 2;
      }, { timeoutMs: 5_000, what: "the BLPOPs to be counted" });
      const name = findSamples(samples, "db_client_duration_seconds_count", instance(py.pid))[0]
        .labels.service_name;
      assert.deepEqual(dbCounts(samples, instance(py.pid)), {
        [`${name} BLPOP closed`]: 1,
        [`${name} BLPOP timeout`]: 1,
      });
      assert.equal(kernelEvent(samples, "timeouts"), 1);
      assert.equal(kernelEvent(samples, "closed_pending"), 1);
      assert.equal(kernelEvent(samples, "replies_late"), 1);
    });

    await t.step("nothing was lost or unmatched", async () => {
      const samples = await agent.samples();
      for (const event of ["framing_lost", "commands_lost", "replies_unmatched"]) {
        assert.equal(kernelEvent(samples, event), 0, event);
      }
      assert.equal(
        sumSamples(samples, "redprobe_events_lost_kernel_total", { plugin: "redis" }),
        0,
      );
      assert.equal(
        sumSamples(samples, "redprobe_events_dropped_total", { plugin: "redis" }),
        0,
      );
      // Every connection: 3 + 1 redis-cli, 1 + 1 redis-py, 1 + 2 raw.
      assert.equal(kernelEvent(samples, "connections"), 9);
    });

    const { logs } = await agent.stop();
    assert.doesNotMatch(logs, /redis: .*(error|threw)/i);
  },
});

Deno.test({
  name: "a broken plugin module is reported by name and the built-in plugins still run",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    const dir = await Deno.makeTempDir({ prefix: "redprobe-modules-" });
    try {
      const invalid = `${dir}/not_a_plugin.ts`;
      const throwing = `${dir}/throws_on_import.ts`;
      await Deno.writeTextFile(
        invalid,
        `export default { id: "Not Valid", description: "", decode: 42 };\n`,
      );
      await Deno.writeTextFile(throwing, `throw new Error("boom at import");\n`);
      await using agent = await startAgent({
        config: {
          plugin_modules: [invalid, throwing],
          plugins: { "not-valid": { anything: 1 } },
        },
      });
      const logs = agent.logs();
      assert.match(
        logs,
        new RegExp(`ERROR.*plugin module \\S*not_a_plugin\\.ts not loaded: .*id.*`),
      );
      assert.match(
        logs,
        new RegExp(`ERROR.*plugin module \\S*throws_on_import\\.ts not loaded: .*boom at import`),
      );
      assert.match(logs, /plugins running: kprobe-http/);

      await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: false });
      for (const pid of await nginx.pids()) await agent.waitForPid(pid);
      const sent = await sendRequests({
        port: nginx.port,
        spec: { method: "GET", path: "/users/7" },
        count: 5,
        keepAlive: true,
      });
      assert.deepEqual([...sent.statuses], [[200, 5]]);
      const served = (samples: Sample[]) =>
        sumSamples(samples, "http_server_duration_seconds_count", instance(nginx.pid));
      const samples = await settledSamples(agent, (s) => served(s) >= 5);
      assert.equal(served(samples), 5);
      assert.equal(
        sumSamples(samples, "redprobe_attach_failures_total", { reason: "module_error" }),
        2,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
