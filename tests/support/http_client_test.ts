/** Framing and failure behaviour of the raw HTTP client, against byte-exact scripted servers. */

import assert from "node:assert/strict";
import {
  HttpConnection,
  HttpProtocolError,
  HttpTimeoutError,
  PipelineIncompleteError,
  sendRequests,
} from "./http_client.ts";
import { ScriptedServer, writeText } from "./scripted_server.ts";

const decoder = new TextDecoder();
const OK = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

Deno.test("request bytes: Host, Content-Length, chunked body, Connection: close", async () => {
  await using server = new ScriptedServer(async (request, conn) => {
    await writeText(conn, OK);
    return request.raw.includes("Connection: close") ? "close" : "keep";
  });
  await using conn = await HttpConnection.open(server.port);
  await conn.request({ method: "GET", path: "/hello", headers: { "X-Test": "1" } });
  await conn.request({ method: "POST", path: "/submit", body: "abc" });
  await conn.request({
    method: "POST",
    path: "/submit",
    body: "abcdef",
    chunked: true,
    chunkSize: 4,
  });
  await conn.request({ method: "POST", path: "/submit" });
  const last = await conn.request({ method: "GET", path: "/x" }, { connectionClose: true });
  assert.equal(last.response.status, 200);
  assert.equal(conn.reusable, false, "closed after reading until the server's EOF");
  const host = `Host: 127.0.0.1:${server.port}\r\n`;
  assert.deepEqual(server.requests.map((r) => r.raw), [
    `GET /hello HTTP/1.1\r\n${host}X-Test: 1\r\n\r\n`,
    `POST /submit HTTP/1.1\r\n${host}Content-Length: 3\r\n\r\nabc`,
    `POST /submit HTTP/1.1\r\n${host}Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n`,
    `POST /submit HTTP/1.1\r\n${host}Content-Length: 0\r\n\r\n`,
    `GET /x HTTP/1.1\r\n${host}Connection: close\r\n\r\n`,
  ]);
  assert.equal(server.connections, 1);
});

Deno.test("chunked response with extensions and trailers", async () => {
  await using server = new ScriptedServer(async (_, conn) => {
    await writeText(
      conn,
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" +
        "5;ext=1\r\nhello\r\n1\r\n \r\nB\r\nworld+chunk\r\n0\r\nX-Trailer: yes\r\n\r\n",
    );
    return "keep";
  });
  await using conn = await HttpConnection.open(server.port);
  const { response } = await conn.request({ method: "GET", path: "/" });
  assert.equal(decoder.decode(response.body), "hello world+chunk");
  assert.equal(response.closesConnection, false);
  assert.equal((await conn.request({ method: "GET", path: "/" })).response.status, 200);
});

Deno.test("close-delimited response body is read to EOF", async () => {
  await using server = new ScriptedServer(async (_, conn) => {
    await writeText(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end");
    return "close";
  });
  await using conn = await HttpConnection.open(server.port);
  const { response } = await conn.request({ method: "GET", path: "/" });
  assert.equal(decoder.decode(response.body), "until the end");
  assert.equal(response.closesConnection, true);
  assert.equal(conn.reusable, false);
});

Deno.test("HEAD, 204, 304 and 1xx carry no body and keep the connection usable", async () => {
  const replies = [
    "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", // answer to HEAD
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
  ];
  await using server = new ScriptedServer(async (_, conn) => {
    await writeText(conn, replies.shift()!);
    return "keep";
  });
  await using conn = await HttpConnection.open(server.port);
  const head = await conn.request({ method: "HEAD", path: "/" });
  assert.deepEqual([head.response.status, head.response.body.length], [200, 0]);
  assert.equal(head.response.headers.get("content-length"), "100");
  assert.equal((await conn.request({ method: "GET", path: "/" })).response.status, 204);
  assert.equal((await conn.request({ method: "GET", path: "/" })).response.status, 304);
  const created = await conn.request({ method: "POST", path: "/", body: "x" });
  assert.deepEqual([created.response.status, decoder.decode(created.response.body)], [201, "new"]);
  assert.equal(server.connections, 1);
});

for (
  const [name, reply] of [
    ["malformed status line", "HTTP/1.1 OK\r\n\r\n"],
    [
      "conflicting Content-Length",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
    ["bad chunk size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
    ["truncated body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
    ["no response at all", ""],
  ]
) {
  Deno.test(`malformed response is rejected: ${name}`, async () => {
    await using server = new ScriptedServer(async (_, conn) => {
      await writeText(conn, reply);
      return "close";
    });
    await using conn = await HttpConnection.open(server.port);
    await assert.rejects(conn.request({ method: "GET", path: "/" }), HttpProtocolError);
    assert.equal(conn.reusable, false);
  });
}

Deno.test("a silent server hits the read deadline", async () => {
  await using server = new ScriptedServer(() => Promise.resolve("hang"));
  await using conn = await HttpConnection.open(server.port, { timeoutMs: 200 });
  const started = performance.now();
  await assert.rejects(conn.request({ method: "GET", path: "/" }), HttpTimeoutError);
  assert.ok(performance.now() - started < 2_000);
});

Deno.test("pipeline writes all requests and reads responses in order", async () => {
  let n = 0;
  await using server = new ScriptedServer(async (_, conn) => {
    n++;
    await writeText(conn, `HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nr${n}`);
    return "keep";
  });
  await using conn = await HttpConnection.open(server.port);
  const { responses } = await conn.pipeline([
    { method: "GET", path: "/a" },
    { method: "POST", path: "/b", body: "xyz", chunked: true },
    { method: "HEAD", path: "/c" },
  ]);
  assert.deepEqual(responses.map((r) => decoder.decode(r.body)), ["r1", "r2", ""]);
  assert.deepEqual(server.requests.map((r) => r.raw.split(" ", 2)[1]), ["/a", "/b", "/c"]);
});

Deno.test("pipeline reports the responses received before the server closed", async () => {
  await using server = new ScriptedServer(async (_, conn) => {
    await writeText(conn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    return "close";
  });
  await using conn = await HttpConnection.open(server.port);
  const error = await conn.pipeline([{ method: "GET", path: "/a" }, { method: "GET", path: "/b" }])
    .catch((e) => e);
  assert.ok(error instanceof PipelineIncompleteError);
  assert.equal(error.responses.length, 1);
});

Deno.test("sendRequests: connection accounting for keep-alive, close, and server closes", async () => {
  await using server = new ScriptedServer(async (request, conn) => {
    const clientCloses = /\r\nConnection: close\r\n/i.test(request.raw);
    const serverCloses = request.raw.startsWith("GET /bye");
    await writeText(
      conn,
      `HTTP/1.1 200 OK\r\nContent-Length: 2\r\n${
        serverCloses ? "Connection: close\r\n" : ""
      }\r\nok`,
    );
    return clientCloses || serverCloses ? "close" : "keep";
  });
  const run = async (path: string, keepAlive: boolean, concurrency: number) => {
    const before = server.connections;
    const result = await sendRequests({
      port: server.port,
      spec: { method: "GET", path },
      count: 10,
      keepAlive,
      concurrency,
    });
    assert.deepEqual(result.statuses, new Map([[200, 10]]));
    assert.equal(result.clientSeconds.length, 10);
    assert.equal(server.connections - before, result.connections);
    return result.connections;
  };
  assert.equal(await run("/", true, 1), 1);
  assert.equal(await run("/", true, 3), 3);
  assert.equal(await run("/", false, 3), 10);
  assert.equal(await run("/bye", true, 2), 10);
  assert.equal(server.requests.length, 40);
});

Deno.test("sendRequests fails loudly and stops on a broken server", async () => {
  await using server = new ScriptedServer(async (_, conn) => {
    await writeText(conn, "garbage\r\n\r\n");
    return "close";
  });
  await assert.rejects(
    sendRequests({
      port: server.port,
      spec: { method: "GET", path: "/" },
      count: 5,
      keepAlive: true,
    }),
    HttpProtocolError,
  );
  assert.equal(server.requests.length, 1);
});
