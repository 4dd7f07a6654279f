/**
 * Hostile input (issue 7): real nginx, Python and Node servers, instrumented by the real agent,
 * get huge headers, very long URLs, binary garbage, malformed requests, half-open and idle
 * connections and slowloris clients, with valid requests interleaved. Throughout:
 *
 * - the agent stays alive and /metrics answers; its RSS grows less than 64 MiB; series stay few;
 * - the servers keep serving, and every valid request is counted EXACTLY (label set by label set);
 * - nothing is invented: garbage and requests that never complete add no `http_*` count;
 * - every response a server gave to a hostile request is accounted for exactly once: counted
 *   with the status the client received, or, when the agent never saw the request's head end
 *   (the server answered mid-head: 400/431 to oversized headers, 414), in
 *   `redprobe_kernel_events_total{event="unmatched_responses"}`.
 *
 * What the agent does, found by these tests (nginx 1.22, Python 3.11, Node 20):
 * - nginx answers 400 to 64 KiB and 1 MiB headers and 414 to a 10 KiB URL before the head ends:
 *   never an `http_*` count, always one `unmatched_responses`;
 * - Python answers 431; when it has read the whole head first (64 KiB in one header line: its
 *   buffered reads reach the blank line) the agent counts `GET 431`, else unmatched;
 * - a path beyond the 96-byte buffer is cut at its last whole segment (`/long/*`): one series
 *   however many distinct long URLs (`paths_truncated` counts each);
 * - a request head of up to 64 KiB arriving in ONE read (Node reads 64 KiB at a time) is
 *   parsed whole (the per-syscall budget is 256 windows of 256 bytes; it was 8 KiB, and such
 *   requests went uncounted: the last test).
 *
 * 100,000 distinct URLs against nginx (routes capped per service, every request counted) are
 * tests/e2e/routes_test.ts's; not repeated here.
 */
import assert from "node:assert/strict";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import type { Sample } from "../support/prom_text.ts";
import {
  HttpConnection,
  sendRequests,
  type ServerHandle,
  startNginx,
  startNode,
  startPython,
} from "../support/mod.ts";
import { seededRandom } from "../support/clients.ts";
import { bytes, rawExchange, type RawExchangeOptions, rssBytes } from "../support/raw_client.ts";
import {
  add,
  assertAgentHealthy,
  countsDelta,
  kernelEvent,
  mib,
  serverCounts,
  startIsolatedAgent,
} from "../support/isolated_agent.ts";
import type { AgentHandle } from "../support/agent.ts";
import { countsReached, settledSamples, sleep } from "../support/wait.ts";

const base = { ignore: skipBpf(), sanitizeOps: false, sanitizeResources: false };

/** Label sets per HTTP family these tests may make (3 servers, a handful of routes each). */
const MAX_SERIES = 60;

interface Setup {
  agent: AgentHandle;
  servers: ServerHandle[];
  rssBefore: number;
}

/** nginx (2 workers), Python and Node, and an agent that instruments only them. */
async function withServers(fn: (s: Setup) => Promise<void>): Promise<void> {
  await using nginx = await startNginx({ workers: 2, keepalive: true, sendfile: true });
  await using python = await startPython();
  await using node = await startNode();
  const servers = [nginx, python, node];
  await using agent = await startIsolatedAgent(servers);
  const rssBefore = rssBytes(agent.pid);
  await fn({ agent, servers, rssBefore });
  const { rss } = await assertAgentHealthy(agent, rssBefore, MAX_SERIES);
  console.log(`agent RSS ${mib(rssBefore)} -> ${mib(rss)} MiB`);
}

/** A hostile exchange with one server: what the agent may count for it. */
interface Hostile {
  server: ServerHandle;
  what: string;
  /** The method and route the agent would count it under, if it counts it. */
  method: string;
  route: string;
  /** The first status line the client received (undefined: none). */
  status?: number;
  /**
   * The status lines the client received that answer requests (a server may answer garbage
   * after a request too: nginx's 404, then 400; that connection is then given up, as
   * `connections_not_http` counts, and the 400 answers no request).
   */
  statuses: number[];
  /** Its first read starts like a request, so the agent tracks the connection. */
  tracked: boolean;
}

/** Valid requests the test sent, per server: "METHOD STATUS ROUTE" -> count. */
class Expected {
  readonly #counts = new Map<ServerHandle, Record<string, number>>();
  of(server: ServerHandle): Record<string, number> {
    let c = this.#counts.get(server);
    if (!c) this.#counts.set(server, c = {});
    return c;
  }
}

/** `n` valid keep-alive GET /hello: all answered 200, and expected to be counted. */
async function valid(server: ServerHandle, expected: Expected, n = 5): Promise<void> {
  const r = await sendRequests({
    port: server.port,
    spec: { method: "GET", path: "/hello" },
    count: n,
    keepAlive: true,
  });
  assert.equal(r.statuses.get(200), n, `${server.kind} kept serving: ${[...r.statuses]}`);
  add(expected.of(server), "GET 200 /hello", n);
}

async function hostile(
  server: ServerHandle,
  what: string,
  chunks: Uint8Array[],
  how:
    & {
      method?: string;
      route: string;
      tracked?: boolean;
      /** How many of the answers are to requests (the rest answer garbage after them). */
      requests?: number;
    }
    & RawExchangeOptions,
): Promise<Hostile> {
  const r = await rawExchange(server.port, chunks, { readMs: 3_000, stopAtHead: true, ...how });
  return {
    server,
    what,
    method: how.method ?? "GET",
    route: how.route,
    status: r.status,
    statuses: r.statuses.slice(0, how.requests ?? r.statuses.length),
    tracked: how.tracked ?? true,
  };
}

/**
 * The accounting every hostile test checks, between two scrapes:
 * - per server, each valid label set grew by exactly what was sent;
 * - any other growth is a hostile exchange's own (method, status received, route), at most
 *   once per such exchange;
 * - the answered hostile exchanges on tracked connections that were not counted are exactly
 *   the `unmatched_responses` (plus up to `unread` answers no client read).
 * Returns how many hostile answers were counted and how many were unmatched.
 */
function assertAccounted(
  before: Sample[],
  after: Sample[],
  servers: ServerHandle[],
  expected: Expected,
  hostiles: Hostile[],
  unread = 0,
): { counted: number; unmatched: number } {
  let counted = 0;
  for (const server of servers) {
    const delta = countsDelta(serverCounts(before, server), serverCounts(after, server));
    const want = expected.of(server);
    for (const [key, n] of Object.entries(want)) {
      assert.equal(delta[key] ?? 0, n, `${server.kind} ${key}: ${JSON.stringify(delta)}`);
      delete delta[key];
    }
    for (const [key, n] of Object.entries(delta)) {
      const candidates = hostiles.filter((h) =>
        h.server === server && h.tracked &&
        h.statuses.some((status) => `${h.method} ${status} ${h.route}` === key)
      );
      assert.ok(
        n > 0 && n <= candidates.length,
        `${server.kind}: ${key} counted ${n} times, but only ${candidates.length} hostile ` +
          `request(s) got that answer: ${JSON.stringify(delta)}`,
      );
      counted += n;
    }
  }
  const answered = hostiles.reduce((n, h) => n + (h.tracked ? h.statuses.length : 0), 0);
  const unmatched = kernelEvent(after, "unmatched_responses") -
    kernelEvent(before, "unmatched_responses");
  assert.ok(
    unmatched >= answered - counted && unmatched <= answered - counted + unread,
    `${answered} hostile requests answered, ${counted} counted: ${answered - counted} ` +
      `(+${unread} unread) should be unmatched responses, ${unmatched} are`,
  );
  return { counted, unmatched };
}

/**
 * Whether every valid request the test sent since `before` shows up, server by server: what
 * {@linkcode settledSamples} waits for before the assertions read the counts (the server's write
 * can reach the client, and the client the next step, a moment before the probe that runs at
 * the end of that write has counted it).
 */
function validCounted(
  before: Sample[],
  servers: ServerHandle[],
  expected: Expected,
): (samples: Sample[]) => boolean {
  return (samples) =>
    servers.every((server) =>
      countsReached(
        countsDelta(serverCounts(before, server), serverCounts(samples, server)),
        expected.of(server),
      )
    );
}

function table(hostiles: Hostile[]): string {
  return hostiles.map((h) => `${h.server.kind} ${h.what}: ${h.statuses.join("+") || "-"}`)
    .join(", ");
}

Deno.test({
  ...base,
  name: "hostile input: 64 KiB and 1 MiB of headers are answered and accounted for once, " +
    "valid requests in between are counted exactly",
  async fn() {
    assertBpfAvailable();
    await withServers(async ({ agent, servers }) => {
      const expected = new Expected();
      const before = await agent.samples();
      const hostiles: Hostile[] = [];
      const pad = (n: number) => "h".repeat(n);
      // One 64 KiB header line; 1 MiB in 256 lines of 4 KiB.
      const h64 = bytes(`GET /h64 HTTP/1.1\r\nHost: x\r\nX-Big: ${pad(64 * 1024)}\r\n\r\n`);
      const h1m = bytes(
        "GET /h1m HTTP/1.1\r\nHost: x\r\n" +
          Array.from({ length: 256 }, (_, i) => `X-H${i}: ${pad(4090)}\r\n`).join("") + "\r\n",
      );
      for (const server of servers) {
        await valid(server, expected);
        hostiles.push(await hostile(server, "64 KiB header", [h64], { route: "/h64" }));
        await valid(server, expected);
        hostiles.push(await hostile(server, "1 MiB of headers", [h1m], { route: "/h1m" }));
        await valid(server, expected);
      }
      const after = await settledSamples(agent, validCounted(before, servers, expected));
      console.log(table(hostiles));
      for (const h of hostiles) {
        assert.ok(
          h.status !== undefined && [400, 413, 431, 494].includes(h.status),
          `${h.server.kind} answered ${h.what} with ${h.status}`,
        );
      }
      const { counted, unmatched } = assertAccounted(before, after, servers, expected, hostiles);
      console.log(`oversized heads: ${counted} counted with their status, ${unmatched} unmatched`);
      // nginx rejects them mid-head (400): the agent never saw a complete request.
      const nginx = countsDelta(serverCounts(before, servers[0]), serverCounts(after, servers[0]));
      assert.deepEqual(Object.keys(nginx), ["GET 200 /hello"]);
    });
  },
});

Deno.test({
  ...base,
  name: "hostile input: URLs beyond the path buffer make bounded routes, counted exactly",
  async fn() {
    assertBpfAvailable();
    await withServers(async ({ agent, servers }) => {
      const expected = new Expected();
      const random = seededRandom(11);
      const word = (n: number) =>
        Array.from({ length: n }, () => String.fromCharCode(97 + Math.floor(random() * 26)))
          .join("");
      const before = await agent.samples();
      const hostiles: Hostile[] = [];
      const LONG = 40;
      const DISTINCT = 10;
      for (const server of servers) {
        await valid(server, expected);
        // 40 distinct 1 KiB URLs that share their first 96 bytes...
        await using conn = await HttpConnection.open(server.port);
        for (let i = 0; i < LONG; i++) {
          const { response } = await conn.request({
            method: "GET",
            path: `/long/${"a".repeat(200)}/${word(800)}/${i}?q=${word(50)}`,
          });
          assert.equal(response.status, 404);
        }
        add(expected.of(server), "GET 404 /long/*", LONG);
        // ...and 10 whose very first segment is longer than the buffer.
        for (let i = 0; i < DISTINCT; i++) {
          const { response } = await conn.request({ method: "GET", path: `/${word(300)}` });
          assert.equal(response.status, 404);
        }
        add(expected.of(server), "GET 404 /*", DISTINCT);
        await valid(server, expected);
        // 10 KiB: beyond nginx's 8 KiB header buffers (414); Python and Node serve it (404),
        // counted as `GET 404 /x/*`.
        hostiles.push(
          await hostile(server, "10 KiB URL", [
            bytes(`GET /x/${word(10 * 1024)} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`),
          ], { route: "/x/*" }),
        );
        await valid(server, expected);
      }
      const after = await settledSamples(agent, validCounted(before, servers, expected));
      console.log(table(hostiles));
      assert.equal(hostiles[0].status, 414, "nginx: 414 Request-URI Too Large");
      assertAccounted(before, after, servers, expected, hostiles);
      // Each long path was cut (and counted as such) once.
      const truncated = kernelEvent(after, "paths_truncated") -
        kernelEvent(before, "paths_truncated");
      assert.equal(truncated, servers.length * (LONG + DISTINCT + 1));
      // Routes stay short and few, whatever the URLs.
      for (const server of servers) {
        const routes = Object.keys(serverCounts(after, server)).map((k) => k.split(" ")[2]);
        assert.ok(routes.length <= 6, `${server.kind}: ${routes}`);
        for (const route of routes) assert.ok(route.length <= 97, route);
      }
    });
  },
});

Deno.test({
  ...base,
  name: "hostile input: binary garbage and malformed requests invent no request; the " +
    "malformed ones are accounted for once",
  async fn() {
    assertBpfAvailable();
    await withServers(async ({ agent, servers }) => {
      const expected = new Expected();
      const random = seededRandom(23);
      const garbage = (n: number) => Uint8Array.from({ length: n }, () => random() * 256);
      const before = await agent.samples();
      const hostiles: Hostile[] = [];
      const tlsHello = Uint8Array.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
      for (const server of servers) {
        await valid(server, expected);
        // Garbage from the first byte: the agent never tracks such a connection.
        for (let i = 0; i < 10; i++) {
          hostiles.push(
            await hostile(server, "garbage", [garbage(4096)], {
              route: "",
              tracked: false,
              readMs: 1_000,
              stopAtHead: false,
            }),
          );
        }
        hostiles.push(
          await hostile(server, "TLS hello", [tlsHello, garbage(512)], {
            route: "",
            tracked: false,
            readMs: 1_000,
          }),
        );
        hostiles.push(
          await hostile(server, "1 MiB garbage", [garbage(1 << 20)], {
            route: "",
            tracked: false,
            readMs: 1_000,
          }),
        );
        await valid(server, expected);
        // A request's first bytes, then garbage: tracked, then given up (connections_not_http).
        for (let i = 0; i < 5; i++) {
          hostiles.push(
            await hostile(server, "GET + garbage", [bytes("GET "), garbage(4096)], {
              route: "",
              readMs: 1_000,
            }),
          );
        }
        await valid(server, expected);
      }
      const afterGarbage = await settledSamples(agent, validCounted(before, servers, expected));
      console.log(table(hostiles));
      // No invented request: exactly the valid ones were counted.
      assertAccounted(before, afterGarbage, servers, expected, hostiles);
      for (const server of servers) {
        assert.deepEqual(
          countsDelta(serverCounts(before, server), serverCounts(afterGarbage, server)),
          expected.of(server),
          `${server.kind}: only the valid requests are counted`,
        );
      }
      const notHttp = kernelEvent(afterGarbage, "connections_not_http") -
        kernelEvent(before, "connections_not_http");
      assert.equal(notHttp, servers.length * 5, "each GET + garbage connection given up once");

      // Malformed but request-shaped: each answer counted with its status, or unmatched.
      const malformed: [string, string, string, string?, number?][] = [
        ["negative Content-Length", "/bad-cl", "Content-Length: -1\r\n"],
        [
          "Content-Length and chunked",
          "/te-cl",
          "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
          "0\r\n\r\n",
        ],
        ["header without colon", "/no-colon", "this is not a header\r\n"],
        ["NUL in a header", "/nul", "X-Nul: a\u0000b\r\n"],
        [
          "bad chunk size",
          "/bad-chunk",
          "Transfer-Encoding: chunked\r\n",
          "zz\r\nhello\r\n0\r\n\r\n",
        ],
        [
          "upgrade, then garbage",
          "/ws",
          "Upgrade: websocket\r\nConnection: Upgrade\r\n",
          "\u0081\u0085",
          1,
        ],
      ];
      const before2 = afterGarbage;
      const expected2 = new Expected();
      const hostiles2: Hostile[] = [];
      for (const server of servers) {
        for (const [what, path, headers, body, requests] of malformed) {
          const method = what.includes("chunked") || what.includes("chunk") ? "POST" : "GET";
          hostiles2.push(
            await hostile(server, what, [
              bytes(`${method} ${path} HTTP/1.1\r\nHost: x\r\n${headers}\r\n${body ?? ""}`),
            ], {
              method,
              route: path,
              requests,
              then: "shutdown",
              readMs: 2_000,
              stopAtHead: false,
            }),
          );
        }
        // An HTTP version the agent does not follow (not HTTP/1.x): the servers reject it.
        hostiles2.push(
          await hostile(server, "HTTP/9.9", [bytes("GET /v9 HTTP/9.9\r\nHost: x\r\n\r\n")], {
            route: "/v9",
            then: "shutdown",
            readMs: 2_000,
            stopAtHead: false,
          }),
        );
        // A body far larger than announced limits, cut short.
        hostiles2.push(
          await hostile(server, "huge Content-Length", [
            bytes("POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nabc"),
          ], {
            method: "POST",
            route: "/submit",
            then: "shutdown",
            readMs: 2_000,
            stopAtHead: false,
          }),
        );
        await valid(server, expected2);
      }
      const after2 = await settledSamples(agent, validCounted(before2, servers, expected2));
      console.log(table(hostiles2));
      const { counted, unmatched } = assertAccounted(
        before2,
        after2,
        servers,
        expected2,
        hostiles2,
      );
      console.log(`malformed: ${counted} counted with their status, ${unmatched} unmatched`);
    });
  },
});

Deno.test({
  ...base,
  name: "hostile input: 500 idle and half-open connections and slowloris clients; valid " +
    "requests meanwhile are counted exactly",
  async fn() {
    assertBpfAvailable();
    await withServers(async ({ agent, servers, rssBefore }) => {
      const [nginx, python, node] = servers;
      const expected = new Expected();
      const before = await agent.samples();
      const HALF = bytes("GET /idle HTTP/1.1\r\nHost: x\r\nX-Wait: ");

      // 500 idle connections (300 to nginx, 100 each to Python and Node); every second one has
      // sent the start of a request head and stays silent.
      const idle: Deno.TcpConn[] = [];
      let halfIdle = 0;
      const share: [ServerHandle, number][] = [[nginx, 300], [python, 100], [node, 100]];
      for (const [server, n] of share) {
        for (let i = 0; i < n; i += 25) {
          const batch = await Promise.all(
            Array.from(
              { length: 25 },
              () => Deno.connect({ hostname: "127.0.0.1", port: server.port }),
            ),
          );
          for (const [j, conn] of batch.entries()) {
            idle.push(conn);
            if (j % 2 === 0) {
              await conn.write(HALF);
              halfIdle++;
            }
          }
        }
      }
      try {
        // Half a request head, then the client shuts down its write side (the server reads
        // EOF) or closes at once.
        const hostiles: Hostile[] = [];
        for (const server of servers) {
          for (const then of ["shutdown", "close"] as const) {
            hostiles.push(
              await hostile(
                server,
                `half + ${then}`,
                [bytes("GET /half HTTP/1.1\r\nHost: x\r\n")],
                {
                  route: "/half",
                  then,
                  readMs: 2_000,
                },
              ),
            );
          }
        }

        // Slowloris, ~10 s at one byte a second: 5 connections per server dribble the request
        // line, 5 a header value; each then finishes its request, which must be counted.
        const slow = (server: ServerHandle, head: string, dribble: string, rest: string) =>
          rawExchange(server.port, [
            bytes(head),
            ...[...dribble].map((ch) => bytes(ch)),
            bytes(rest),
          ], { delayMs: 1_000, readMs: 20_000 });
        const slowlorises = servers.flatMap((server) =>
          Array.from(
            { length: 10 },
            (_, i) =>
              (i % 2 === 0
                ? slow(
                  server,
                  "G",
                  "ET /slow",
                  "/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                : slow(
                  server,
                  "GET /users/7 HTTP/1.1\r\nHost: x\r\nX-Slow: ",
                  "abcdefghi",
                  "\r\nConnection: close\r\n\r\n",
                )).then((r) => ({ server, i, status: r.status })),
          )
        );
        // Meanwhile, valid requests every 250 ms to every server, with all those connections
        // open.
        let slowDone = false;
        const all = Promise.all(slowlorises).finally(() => slowDone = true);
        let rounds = 0;
        while (!slowDone) {
          for (const server of servers) await valid(server, expected, 3);
          rounds++;
          await Promise.race([all, sleep(250)]);
        }
        const results = await all;
        assert.ok(rounds >= 10, `${rounds} rounds of valid requests during the slowloris`);
        for (const { server, i, status } of results) {
          assert.equal(status, i % 2 === 0 ? 404 : 200, `${server.kind} slowloris ${i}`);
          add(expected.of(server), i % 2 === 0 ? "GET 404 /slow/a" : "GET 200 /users/{id}");
        }
        const during = await settledSamples(agent, validCounted(before, servers, expected));
        console.log(table(hostiles));
        // Nothing counted for the half heads; Python and Node answer one that ends in EOF
        // (400/404) mid-head: unmatched. The idle half heads are still open: nothing yet.
        // After "close", Python and Node still write their answer (strace: the write succeeds)
        // to a client that is gone. Over loopback the client's RST usually arrives inside that
        // write, and inet_sock_set_state forgets the connection before the write's probe
        // runs: nothing to count. When the RST's softirq runs later (a loaded CPU, as in a full
        // CI run), the probe sees the answer first: one unmatched response. Both are right;
        // those answers may be unread.
        const unreadAfterClose = hostiles.filter((h) => h.what.endsWith("close")).length;
        assertAccounted(before, during, servers, expected, hostiles, unreadAfterClose);
        const tracked = await assertAgentHealthy(agent, rssBefore, MAX_SERIES);
        console.log(`agent RSS with ${idle.length} connections open: ${mib(tracked.rss)} MiB`);
      } finally {
        for (const conn of idle) {
          try {
            conn.close();
          } catch { /* gone */ }
        }
      }
      // Closing the idle connections adds no count. (Python then answers its 50 half heads, to
      // nobody: unmatched responses, at most one each.)
      await sleep(500);
      const after = await agent.samples();
      for (const server of servers) {
        assert.deepEqual(
          countsDelta(serverCounts(before, server), serverCounts(after, server)),
          expected.of(server),
          `${server.kind}: exactly the valid and the slowloris requests`,
        );
      }
      const unmatchedAtClose = kernelEvent(after, "unmatched_responses");
      assert.ok(unmatchedAtClose - kernelEvent(before, "unmatched_responses") <= 6 + halfIdle);
    });
  },
});

Deno.test({
  // A request head larger than the engine's old per-syscall parse budget (32 windows of 256
  // bytes = 8 KiB, bpf/http1_engine.h), read by the server in ONE syscall (Node reads 64 KiB at
  // a time; nginx and Python at most 8 KiB), sent the parser to ST_RESYNC: the request was
  // never published and its 200 became an unmatched response. The budget is 64 KiB now.
  ...base,
  name: "a valid request whose 9 KiB head arrives in one read is counted",
  async fn() {
    assertBpfAvailable();
    await using node = await startNode();
    await using agent = await startIsolatedAgent([node]);
    const before = await agent.samples();
    const r = await rawExchange(node.port, [
      bytes(
        `GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: ${"p".repeat(9000)}\r\n\r\n`,
      ),
    ]);
    assert.equal(r.status, 200, "Node serves it");
    const want = { "GET 200 /hello": 1 };
    const after = await settledSamples(
      agent,
      (samples) =>
        countsReached(countsDelta(serverCounts(before, node), serverCounts(samples, node)), want),
    );
    assert.deepEqual(
      countsDelta(serverCounts(before, node), serverCounts(after, node)),
      want,
      `parse_limit_reached +${
        kernelEvent(after, "parse_limit_reached") - kernelEvent(before, "parse_limit_reached")
      }, unmatched_responses +${
        kernelEvent(after, "unmatched_responses") - kernelEvent(before, "unmatched_responses")
      }`,
    );
  },
});
