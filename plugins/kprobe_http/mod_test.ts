import assert from "node:assert/strict";
import { validatePlugin } from "../../core/plugin.ts";
import {
  decodeHttpRequestEvent,
  encodeHttpRequestEvent,
  HTTP_KERNEL_COUNTERS,
  HttpEventFlag,
  HttpEventKind,
  type HttpRequestEvent,
} from "../../lib/http1_records.ts";
import plugin, { kprobeHttpOptions } from "./mod.ts";

type EventInput = Parameters<typeof encodeHttpRequestEvent>[0];

/** An event as the plugin's decode would give it for a record with these fields. */
function event(fields: EventInput = {}): HttpRequestEvent {
  return plugin.decode(encodeHttpRequestEvent({
    startNs: 5_000_000_000n,
    endNs: 5_020_000_000n,
    tgid: 4242,
    status: 200,
    method: "GET",
    path: "/",
    bodySize: 0,
    ...fields,
  }));
}

/** toObservation with the default options (kprobe-http's does not use them). */
function observe(e: Parameters<typeof plugin.toObservation>[0]) {
  return plugin.toObservation(e, {
    options: kprobeHttpOptions.parse({}),
    buckets: BUCKETS,
  });
}

Deno.test("kprobe-http toObservation() makes an http_server observation of a request", () => {
  assert.deepEqual(
    observe(event({
      tgid: 777,
      method: "POST",
      status: 201,
      path: "/api/items",
      bodySize: 512,
    })),
    {
      kind: "http_server",
      pid: 777,
      durationSeconds: 0.02,
      startNs: 5_000_000_000n,
      method: "POST",
      status: 201,
      route: "/api/items",
      path: "/api/items",
      pathTruncated: false,
      requestSizeBytes: 512,
    },
  );
});

Deno.test("kprobe-http toObservation() takes the duration from start_ns and end_ns", () => {
  const cases: [bigint, bigint, number][] = [
    [1_000_000_000n, 1_250_000_000n, 0.25],
    [7n, 7n, 0],
    [0xffff_fff0n, 0x1_0000_0010n, 32e-9], // across the 32-bit halves
    [86_400n * 10n ** 9n * 400n, 86_400n * 10n ** 9n * 400n + 1_500_000n, 0.0015], // 400 days up
  ];
  for (const [startNs, endNs, seconds] of cases) {
    const o = observe(event({ startNs, endNs }));
    assert.ok(o && o.kind === "http_server");
    assert.ok(
      Math.abs(o.durationSeconds - seconds) < 1e-12,
      `${startNs}->${endNs}: ${o.durationSeconds}`,
    );
  }
});

Deno.test("kprobe-http toObservation() turns the path into a templated route", () => {
  const route = (path: string, flags = 0) => {
    const o = observe(event({ path, flags }));
    assert.ok(o && "route" in o);
    return o.route;
  };
  assert.equal(route("/users/42?x=1"), "/users/{id}");
  assert.equal(route("/users/42/orders/7f3a9b2c4d5e6f70"), "/users/{id}/orders/{id}");
  assert.equal(route("/static/app.js"), "/static/app.js");
  assert.equal(route("http://example.com/a/1"), "/a/{id}");
  assert.equal(route("*"), "*");
});

Deno.test("kprobe-http toObservation() ends the route of a truncated path with /*", () => {
  const long = "/files/" + "x".repeat(200);
  const e = event({ path: long, flags: HttpEventFlag.pathTruncated });
  assert.equal(e.path.length, 96, "the probe kept HTTP_PATH_MAX bytes");
  const o = observe(e);
  assert.ok(o && "route" in o);
  assert.equal(o.route, "/files/*");
  // Without the flag the same path is a route of its own.
  const untruncated = observe(event({ path: "/files/abc" }));
  assert.ok(untruncated && "route" in untruncated);
  assert.equal(untruncated.route, "/files/abc");
  // Other flags do not truncate.
  const timedOut = observe(
    event({ path: "/files/abc", flags: HttpEventFlag.timeout }),
  );
  assert.ok(timedOut && "route" in timedOut);
  assert.equal(timedOut.route, "/files/abc");
});

Deno.test("kprobe-http toObservation() keeps status 0 for a request with no response", () => {
  for (const flag of [HttpEventFlag.timeout, HttpEventFlag.closed, HttpEventFlag.evicted]) {
    const o = observe(event({ status: 0, flags: flag }));
    assert.ok(o && o.kind === "http_server");
    assert.equal(o.status, 0);
  }
});

Deno.test("kprobe-http toObservation() passes _OTHER for an unknown method", () => {
  const o = observe(event({ methodIndex: 0 }));
  assert.ok(o && "method" in o);
  assert.equal(o.method, "_OTHER");
});

Deno.test("kprobe-http toObservation() makes server and client observations, nothing else", () => {
  for (const kind of [0, 3, 255]) {
    assert.equal(observe(event({ kind })), undefined, `kind ${kind}`);
  }
  assert.equal(observe(event({ kind: HttpEventKind.serverRequest }))?.kind, "http_server");
  assert.equal(observe(event({ kind: HttpEventKind.clientRequest }))?.kind, "http_client");
});

Deno.test("kprobe-http is a valid plugin that decodes with decodeHttpRequestEvent", () => {
  assert.equal(validatePlugin(plugin), plugin);
  assert.equal(plugin.id, "kprobe-http");
  assert.equal(plugin.decode, decodeHttpRequestEvent);
  assert.deepEqual(plugin.kernelCounters, HTTP_KERNEL_COUNTERS);
});

Deno.test("kprobe-http options default to 30s and 16384 connections and reject unknown keys", () => {
  assert.deepEqual(kprobeHttpOptions.parse({}), {
    request_timeout: 30_000,
    max_connections: 16384,
    aggregate_in_kernel: true,
    clients: "every_process",
  });
  assert.equal(kprobeHttpOptions.safeParse({ clients: "some" }).success, false);
  assert.deepEqual(kprobeHttpOptions.parse({ request_timeout: "250ms" }).request_timeout, 250);
  assert.equal(kprobeHttpOptions.safeParse({ request_timeout: "soon" }).success, false);
  assert.equal(kprobeHttpOptions.safeParse({ request_timeout: 0 }).success, false);
  assert.equal(kprobeHttpOptions.safeParse({ max_connections: 63 }).success, false);
  assert.equal(kprobeHttpOptions.safeParse({ retries: 1 }).success, false);
});

const BUCKETS = {
  durationSeconds: [0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10],
  sizeBytes: [0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
};

Deno.test("kprobe-http sets request_timeout_ns and the connection table size from its options", () => {
  const options = kprobeHttpOptions.parse({ request_timeout: "1.5s", max_connections: 1024 });
  const constants = plugin.constants?.({ options, buckets: BUCKETS });
  assert.equal(constants?.request_timeout_ns, 1_500_000_000n);
  // The ring is small while histograms are kept in the kernel, large when every request is a
  // record (traces, or aggregate_in_kernel off).
  assert.deepEqual(plugin.maxEntries?.({ options, buckets: BUCKETS }), {
    conns: 1024,
    events: 2 << 20,
  });
  assert.deepEqual(
    plugin.maxEntries?.({ options, buckets: BUCKETS, perRequestEvents: true }),
    { conns: 1024, events: 8 << 20 },
  );
  assert.equal(
    plugin.constants?.({ options, buckets: BUCKETS, perRequestEvents: true })?.aggregate_in_kernel,
    false,
  );
});

Deno.test("kprobe-http gives the kernel the exporter's buckets, in ns and bytes, padded to 15", () => {
  const options = kprobeHttpOptions.parse({});
  const c = plugin.constants!({ options, buckets: BUCKETS });
  assert.equal(c.aggregate_in_kernel, true);
  assert.equal(c.duration_bound_count, 15);
  assert.deepEqual((c.duration_bounds_ns as bigint[]).slice(0, 3), [0n, 5_000_000n, 10_000_000n]);
  assert.equal((c.duration_bounds_ns as bigint[])[14], 10_000_000_000n);
  assert.equal(c.size_bound_count, 10);
  assert.deepEqual(c.size_bounds, [
    0n,
    32n,
    64n,
    128n,
    256n,
    512n,
    1024n,
    2048n,
    4096n,
    8192n,
    0n,
    0n,
    0n,
    0n,
    0n,
  ]);
});

Deno.test("kprobe-http sends records instead of aggregating when the buckets do not fit the kernel's", () => {
  const options = kprobeHttpOptions.parse({});
  const many = { ...BUCKETS, durationSeconds: Array.from({ length: 16 }, (_, i) => i) };
  assert.equal(plugin.constants!({ options, buckets: many }).aggregate_in_kernel, false);
});

Deno.test("kprobe-http turns an in-kernel histogram delta into an aggregate with its route", () => {
  const key = new Uint8Array(40);
  key.set([1, 2, 3, 4, 5, 6, 7, 8], 0); // path hash
  new DataView(key.buffer).setUint32(8, 4242, true);
  new DataView(key.buffer).setUint16(12, 404, true);
  key[14] = 3; // POST
  const path = new Uint8Array(104);
  const text = "/users/17?debug=1";
  path[0] = text.length;
  path.set([...text].map((c) => c.charCodeAt(0)), 8);
  const delta = new Float64Array(34);
  delta[0] = 3_000_000; // 3 ms in all
  delta[1] = 900; // body bytes
  delta[2 + 1] = 3; // three in the 5 ms bucket
  delta[18 + 5] = 3; // three in the 512-byte bucket
  const lookups: string[] = [];
  const aggregate = plugin.aggregates!.decode(key, delta, (map, k) => {
    lookups.push(`${map}:${[...k].join(",")}`);
    return path;
  }, { options: kprobeHttpOptions.parse({}), buckets: BUCKETS });
  assert.deepEqual(lookups, ["paths:1,2,3,4,5,6,7,8"]);
  assert.ok(aggregate && "method" in aggregate);
  assert.equal(aggregate.pid, 4242);
  assert.equal(aggregate.method, "POST");
  assert.equal(aggregate.status, 404);
  assert.equal(aggregate.route, "/users/{id}");
  assert.equal(aggregate.durationSumSeconds, 0.003);
  assert.equal(aggregate.sizeSumBytes, 900);
  assert.deepEqual(Array.from(aggregate.durationBuckets), [0, 3, ...Array(14).fill(0)]);
  assert.deepEqual(Array.from(aggregate.sizeBuckets), [0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0]);
  assert.equal(plugin.aggregates!.pidOf(key), 4242);
});

Deno.test("kprobe-http drops an aggregate whose path it cannot name", () => {
  const aggregate = plugin.aggregates!.decode(
    new Uint8Array(40),
    new Float64Array(34),
    () => undefined,
    {
      options: kprobeHttpOptions.parse({}),
      buckets: BUCKETS,
    },
  );
  assert.equal(aggregate, undefined);
});

Deno.test("kprobe-http client aggregates are http_client, named by the comm the kernel kept", () => {
  const key = new Uint8Array(40);
  new DataView(key.buffer).setUint32(8, 777, true);
  new DataView(key.buffer).setUint16(12, 200, true);
  key[14] = 1; // GET
  key[15] = HttpEventFlag.client;
  const path = new Uint8Array(104);
  path[0] = 6;
  path.set([..."/hello"].map((c) => c.charCodeAt(0)), 8);
  const comm = new Uint8Array(40);
  comm.set([..."curl"].map((c) => c.charCodeAt(0)));
  const aggregate = plugin.aggregates!.decode(
    key,
    new Float64Array(34),
    (map, k) => {
      if (map === "paths") return path;
      assert.equal(map, "proc_names");
      assert.equal(new DataView(k.buffer).getUint32(0, true), 777);
      return comm;
    },
    { options: kprobeHttpOptions.parse({}), buckets: BUCKETS },
  );
  assert.equal(aggregate?.kind, "http_client");
  assert.equal(aggregate?.exe, "curl");
  assert.equal(aggregate?.route, "/hello");
});

Deno.test("kprobe-http tells the kernel which client connections to measure, and its own pid", () => {
  const c = (clients: string) =>
    plugin.constants!({ options: kprobeHttpOptions.parse({ clients }), buckets: BUCKETS });
  assert.equal(c("off").client_mode, 0);
  assert.equal(c("targets").client_mode, 1);
  assert.equal(c("every_process").client_mode, 2);
  assert.equal(c("off").agent_tgid, Deno.pid);
});
