/**
 * The kprobe-http BPF parser against byte fixtures, through real syscalls: a scripted server
 * reads and writes exactly as each scenario says (split request lines, pipelining, bodies that
 * look like requests, every read/write syscall kind, ...), the real agent watches it, and the
 * exported counts must EQUAL what each scenario implies, label set by label set.
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { findSamples, type Sample } from "../support/prom_text.ts";
import {
  exchange,
  recv,
  send,
  sendfile,
  type Step,
  SyscallServer,
} from "../support/syscall_server.ts";

const SERVICE = "scripted";

/** "HTTP/1.1 <status> X\r\nContent-Length: n\r\n<headers>\r\n<body>" */
function response(status: number, body = "", headers = ""): string {
  return `HTTP/1.1 ${status} X\r\nContent-Length: ${body.length}\r\n${headers}\r\n${body}`;
}

function get(path: string, headers = ""): string {
  return `GET ${path} HTTP/1.1\r\nHost: t\r\n${headers}\r\n`;
}

function post(path: string, body: string, headers = ""): string {
  return `POST ${path} HTTP/1.1\r\nHost: t\r\nContent-Length: ${body.length}\r\n${headers}\r\n${body}`;
}

/** Splits `text` at the given offsets. */
function cut(text: string, ...at: number[]): string[] {
  const points = [0, ...at, text.length];
  return points.slice(0, -1).map((p, i) => text.slice(p, points[i + 1]));
}

type Key = string; // "METHOD STATUS ROUTE"

function counts(samples: Sample[], metric: string): Map<Key, number> {
  const out = new Map<Key, number>();
  for (const s of findSamples(samples, metric, { service_name: SERVICE })) {
    const l = s.labels;
    out.set(`${l.http_request_method} ${l.http_response_status_code} ${l.http_route}`, s.value);
  }
  return out;
}

for (const aggregate of [true, false]) {
  Deno.test({
    name: `kprobe-http parses byte-exact HTTP/1.x scenarios and counts each request exactly once (${
      aggregate ? "histograms in the kernel" : "one record per request"
    })`,
    ignore: skipBpf(),
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      assertBpfAvailable();
      await using agent = await startAgent({
        config: {
          // Server-side scenarios: the kernel counters checked below are global, so client
          // connections (this test process's own) are left out.
          plugins: {
            "kprobe-http": {
              request_timeout: "1s",
              aggregate_in_kernel: aggregate,
              clients: "off",
            },
          },
        },
      });
      await using server = await SyscallServer.start(SERVICE);
      await agent.waitForPid(server.pid);

      const expected = new Map<Key, number>();
      const expectedSizes = new Map<Key, number>();
      const want = (method: string, status: number, route: string, n = 1, bodyBytes = 0) => {
        const key = `${method} ${status} ${route}`;
        expected.set(key, (expected.get(key) ?? 0) + n);
        expectedSizes.set(key, (expectedSizes.get(key) ?? 0) + bodyBytes);
      };
      const scenario = async (name: string, steps: Step[], ...clientBytes: string[]) => {
        await t.step(name, async () => {
          await server.run(steps, (conn) => exchange(conn, ...clientBytes).then(() => {}));
        });
      };

      const simple = get("/p/simple");
      await scenario("a request read at once", [recv(simple), send(response(200, "hi"))], simple);
      want("GET", 200, "/p/simple");

      const splitLine = get("/p/split-line");
      await scenario(
        "a request line split across three reads",
        [...cut(splitLine, 2, 18).map((part) => recv(part)), send(response(200))],
        splitLine,
      );
      want("GET", 200, "/p/split-line");

      const splitHeader = post("/p/split-header", "hello");
      const at = splitHeader.indexOf("Length");
      await scenario(
        "a Content-Length header split inside its name, and the body in its own read",
        [
          ...cut(splitHeader, at + 3, splitHeader.length - 5).map((part) => recv(part)),
          send(response(201)),
        ],
        splitHeader,
      );
      want("POST", 201, "/p/split-header", 1, 5);

      const three = get("/p/pipe/a") + get("/p/pipe/b") + get("/p/pipe/c");
      await scenario(
        "three pipelined requests in one read, answered one write each",
        [recv(three), send(response(200)), send(response(404)), send(response(500))],
        three,
      );
      want("GET", 200, "/p/pipe/a");
      want("GET", 404, "/p/pipe/b");
      want("GET", 500, "/p/pipe/c");

      const two = get("/p/batch/one") + get("/p/batch/two");
      await scenario(
        "two pipelined responses written in one write",
        [recv(two), send(response(200, "abc") + response(404, "nope"))],
        two,
      );
      want("GET", 200, "/p/batch/one");
      want("GET", 404, "/p/batch/two");

      const smuggled = post("/p/smuggle", get("/p/fake"));
      await scenario(
        "a request body that starts with GET is body, not a request",
        [recv(smuggled), send(response(200))],
        smuggled,
      );
      want("POST", 200, "/p/smuggle", 1, get("/p/fake").length);

      const chunked = "POST /p/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" +
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
      await scenario(
        "a chunked body (with an extension and a trailer) split across reads",
        [...cut(chunked, 40, 70, 75, 90).map((part) => recv(part)), send(response(200))],
        chunked,
      );
      want("POST", 200, "/p/chunked", 1, 11);

      const garbage = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03GET / HTTP/1.1\r\n\r\n";
      await scenario(
        "binary garbage is not a request",
        [recv(garbage), send("\x15\x03\x01\x00\x02")],
        garbage,
      );

      const thenGarbage = get("/p/before-garbage");
      await scenario(
        "garbage after a request on a keep-alive connection counts only the request",
        [recv(thenGarbage), send(response(200)), recv(6), send("\x00\x00")],
        thenGarbage,
        "\x00\x01GET ",
      );
      want("GET", 200, "/p/before-garbage");

      for (const via of ["read", "readv", "recvmsg"] as const) {
        const r = get(`/p/recv/${via}`);
        await scenario(`a request read with ${via}`, [recv(r, via), send(response(200))], r);
        want("GET", 200, `/p/recv/${via}`);
      }
      for (const via of ["write", "writev", "sendmsg"] as const) {
        const r = get(`/p/send/${via}`);
        await scenario(`a response written with ${via} in three iovecs`, [
          recv(r),
          send(response(200, "body"), via, [5, 20]),
        ], r);
        want("GET", 200, `/p/send/${via}`);
      }
      const sf = get("/p/sendfile") + get("/p/after-sendfile");
      await scenario(
        "a body sent with sendfile keeps the framing of the next pipelined response",
        [
          recv(sf),
          send("HTTP/1.1 200 X\r\nContent-Length: 300\r\n\r\n"),
          sendfile("x".repeat(300)),
          send(response(202)),
        ],
        sf,
      );
      want("GET", 200, "/p/sendfile");
      want("GET", 202, "/p/after-sendfile");

      const splitStatus = get("/p/split-status");
      await scenario(
        "a status line split across two writes",
        [recv(splitStatus), send("HTTP/1.1 2"), send("03 X\r\nContent-Length: 0\r\n\r\n")],
        splitStatus,
      );
      want("GET", 203, "/p/split-status");

      const expect100 =
        "POST /p/continue HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
      await scenario(
        "100 Continue is not the response; the final one is",
        [recv(expect100), send("HTTP/1.1 100 Continue\r\n\r\n"), recv("body"), send(response(200))],
        expect100,
        "body",
      );
      want("POST", 200, "/p/continue", 1, 4);

      const slow = get("/p/slow");
      await scenario(
        "no response before the timeout counts status 0; the late response is not counted again",
        [recv(slow), { op: "sleep", ms: 1600 }, send(response(200))],
        slow,
      );
      want("GET", 0, "/p/slow");

      const unanswered = get("/p/unanswered");
      await scenario("a connection closed without a response counts status 0", [recv(unanswered), {
        op: "close",
      }], unanswered);
      want("GET", 0, "/p/unanswered");

      const head = "HEAD /p/head HTTP/1.1\r\nHost: t\r\n\r\n" + get("/p/after-head");
      await scenario(
        "a HEAD response has no body even with Content-Length",
        [recv(head), send("HTTP/1.1 200 X\r\nContent-Length: 100\r\n\r\n" + response(200, "ok"))],
        head,
      );
      want("HEAD", 200, "/p/head");
      want("GET", 200, "/p/after-head");

      const noBody = get("/p/nocontent") + get("/p/notmodified") + get("/p/after-304");
      await scenario(
        "204 and 304 responses have no body",
        [
          recv(noBody),
          send(
            "HTTP/1.1 204 X\r\n\r\n" + "HTTP/1.1 304 X\r\nContent-Length: 10\r\n\r\n" +
              response(200, "after"),
          ),
        ],
        noBody,
      );
      want("GET", 204, "/p/nocontent");
      want("GET", 304, "/p/notmodified");
      want("GET", 200, "/p/after-304");

      const decoy = get("/p/decoy") + get("/p/real");
      const decoyBody = "HTTP/1.1 500 Bad\r\n";
      await scenario(
        "a response body written on its own that looks like a status line is body",
        [
          recv(decoy),
          send(`HTTP/1.1 200 X\r\nContent-Length: ${decoyBody.length}\r\n\r\n`),
          send(decoyBody),
          send(response(404)),
        ],
        decoy,
      );
      want("GET", 200, "/p/decoy");
      want("GET", 404, "/p/real");

      const longPath = "/p/long/" + "a".repeat(120);
      const long = get(longPath);
      await scenario("a path longer than the probe keeps is truncated to a bounded route", [
        recv(long),
        send(response(200)),
      ], long);
      want("GET", 200, "/p/long/*");

      const ids = get("/p/users/123?x=1&y=2");
      await scenario("the query string is dropped and numeric segments become {id}", [
        recv(ids),
        send(response(200)),
      ], ids);
      want("GET", 200, "/p/users/{id}");

      const brew = get("/p/first") + "BREW /p/pot HTTP/1.1\r\nHost: t\r\n\r\n";
      await scenario(
        "an unknown method on an HTTP connection is _OTHER",
        [recv(brew), send(response(200)), send(response(418))],
        brew,
      );
      want("GET", 200, "/p/first");
      want("_OTHER", 418, "/p/pot");

      const upgrade = get("/p/ws", "Upgrade: websocket\r\nConnection: Upgrade\r\n");
      await scenario(
        "an upgraded connection counts the 101 and ignores the frames that follow",
        [
          recv(upgrade),
          send("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
          recv(6),
          send("HTTP/1.1 200 X\r\nContent-Length: 0\r\n\r\n"),
        ],
        upgrade,
        "GET / ",
      );
      want("GET", 101, "/p/ws");

      const many = Array.from({ length: 40 }, () => get("/p/keepalive")).join("");
      await scenario(
        "40 requests on one keep-alive connection, read and answered one by one",
        Array.from({ length: 40 }, () => [recv(get("/p/keepalive")), send(response(200, "k"))])
          .flat(),
        many,
      );
      want("GET", 200, "/p/keepalive", 40);

      const ten = Array.from(
        { length: 10 },
        (_, i) => get(`/p/queue/${String.fromCharCode(97 + i)}`),
      )
        .join("");
      await scenario(
        "more pipelined requests than the queue holds: the oldest are counted as errors, the rest pair right",
        [recv(ten), ...Array.from({ length: 10 }, () => send(response(200)))],
        ten,
      );
      want("GET", 0, "/p/queue/a");
      want("GET", 0, "/p/queue/b");
      for (let i = 2; i < 10; i++) want("GET", 200, `/p/queue/${String.fromCharCode(97 + i)}`);

      await t.step("every request is counted exactly once, with its body size", async () => {
        const samples = await agent.samples();
        const actual = counts(samples, "http_server_duration_seconds_count");
        assert.deepEqual(
          Object.fromEntries([...actual].sort()),
          Object.fromEntries([...expected].sort()),
        );
        const sizes = counts(samples, "http_server_request_size_bytes_sum");
        assert.deepEqual(
          Object.fromEntries([...sizes].sort()),
          Object.fromEntries([...expectedSizes].sort()),
        );
        const kernel = (event: string) =>
          findSamples(samples, "redprobe_kernel_events_total", { plugin: "kprobe-http", event })[0]
            ?.value;
        assert.equal(
          kernel("late_responses"),
          3,
          "the slow response and the two evicted requests' responses",
        );
        assert.equal(kernel("requests_timed_out"), 1);
        assert.equal(kernel("requests_evicted"), 2);
        assert.equal(findSamples(samples, "redprobe_events_lost_kernel_total")[0]?.value, 0);
        const records = findSamples(samples, "redprobe_events_read_total", {
          plugin: "kprobe-http",
        })[0]?.value;
        const requests = [...expected.values()].reduce((a, b) => a + b, 0);
        if (aggregate) {
          assert.equal(records, 0, "every request went into a histogram");
          assert.equal(kernel("requests_aggregated"), requests);
        } else {
          assert.equal(records, requests, "one record per request");
        }
      });
    },
  });
}
