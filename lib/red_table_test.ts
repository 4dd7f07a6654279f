import assert from "node:assert/strict";
import { parsePrometheusText } from "./prom_text.ts";
import {
  aggregate,
  formatPercent,
  formatRate,
  formatSeconds,
  histogramQuantile,
  isError,
  type RedRow,
  redRows,
  renderTable,
  rowKey,
  sortRows,
  truncate,
} from "./red_table.ts";

const BOUNDS = ["0", "0.005", "0.01", "0.025", "0.05", "+Inf"];

/** One histogram series as exposition text: cumulative bucket counts per BOUNDS, then _count. */
function series(name: string, labels: Record<string, string>, cumulative: number[]): string {
  const l = Object.entries(labels).map(([k, v]) => `${k}="${v}"`).join(",");
  const count = cumulative[cumulative.length - 1];
  return [
    ...BOUNDS.map((le, i) => `${name}_bucket{le="${le}",${l}} ${cumulative[i]}`),
    `${name}_sum{${l}} 0.1`,
    `${name}_count{${l}} ${count}`,
  ].join("\n");
}

function http(service: string, method: string, status: string, route: string) {
  return {
    service_name: service,
    service_namespace: "",
    target_instance: "vm:1",
    http_request_method: method,
    http_response_status_code: status,
    http_route: route,
  };
}

function rpc(service: string, method: string, code: string) {
  return {
    service_name: service,
    service_namespace: "",
    target_instance: "vm:2",
    rpc_method: method,
    rpc_system: "grpc",
    rpc_grpc_status_code: code,
  };
}

Deno.test("histogramQuantile() interpolates inside the bucket, as Prometheus does", () => {
  const bounds = [0, 0.005, 0.01, 0.025, 0.05, Infinity];
  const cum = [0, 10, 30, 40, 40, 40];
  // p50: rank 20 falls in (0.005, 0.01], which holds 20 (10..30): 0.005 + 0.005 * 10/20.
  assert.equal(histogramQuantile(0.5, bounds, cum), 0.0075);
  // p99: rank 39.6 in (0.01, 0.025], 10 there (30..40): 0.01 + 0.015 * 9.6/10 = 0.0244.
  assertClose(histogramQuantile(0.99, bounds, cum)!, 0.0244);
  // p25: rank 10 is exactly the top of (0, 0.005].
  assert.equal(histogramQuantile(0.25, bounds, cum), 0.005);
  // The first bucket starts at 0 when its bound is positive: p25, rank 2 of the 4 in (0, 0.1].
  assert.equal(histogramQuantile(0.25, [0.1, 1, Infinity], [4, 8, 8]), 0.05);
  assert.equal(histogramQuantile(0.5, [0.1, 1, Infinity], [4, 8, 8]), 0.1);
  // A rank in the le="0" bucket is 0.
  assert.equal(histogramQuantile(0.5, bounds, [10, 10, 10, 10, 10, 10]), 0);
  // A rank in the +Inf bucket is the highest finite bound.
  assert.equal(histogramQuantile(0.99, bounds, [0, 1, 1, 1, 1, 10]), 0.05);
  assert.equal(histogramQuantile(0.5, bounds, [0, 0, 0, 0, 0, 0]), undefined);
  assert.equal(histogramQuantile(0.5, [0.1, 1], [1, 2]), undefined, "no +Inf bucket");
});

Deno.test("isError() follows OpenTelemetry: server 5xx, client 4xx/5xx, 0, gRPC codes", () => {
  for (
    const [status, server, client] of [
      ["200", false, false],
      ["302", false, false],
      ["404", false, true],
      ["499", false, true],
      ["500", true, true],
      ["503", true, true],
      ["0", true, true],
      ["", false, false],
    ] as const
  ) {
    assert.equal(isError("http server", status), server, `server ${status}`);
    assert.equal(isError("http client", status), client, `client ${status}`);
  }
  // Server side: UNKNOWN 2, DEADLINE_EXCEEDED 4, UNIMPLEMENTED 12, INTERNAL 13, UNAVAILABLE 14,
  // DATA_LOSS 15; not OK 0, CANCELLED 1, INVALID_ARGUMENT 3, NOT_FOUND 5, ... Client: all but 0.
  const serverErrors = [2, 4, 12, 13, 14, 15];
  for (let code = 0; code <= 16; code++) {
    assert.equal(isError("rpc server", String(code)), serverErrors.includes(code), `${code}`);
    assert.equal(isError("rpc client", String(code)), code !== 0, `client ${code}`);
  }
  assert.equal(isError("http server", undefined), false);
});

const FIRST = [
  series("http_server_duration_seconds", http("nginx", "GET", "200", "/a"), [0, 6, 8, 8, 8, 8]),
  series("http_server_duration_seconds", http("nginx", "GET", "500", "/a"), [0, 0, 1, 2, 2, 2]),
  series("http_server_duration_seconds", http("nginx", "GET", "404", "/b/{id}"), [
    0,
    4,
    4,
    4,
    4,
    4,
  ]),
  series("http_client_duration_seconds", http("curl", "GET", "404", "/b/{id}"), [0, 4, 4, 4, 4, 4]),
  series("rpc_server_duration_seconds", rpc("shop", "/shop.Cart/Add", "0"), [0, 0, 9, 9, 9, 9]),
  series("rpc_server_duration_seconds", rpc("shop", "/shop.Cart/Add", "5"), [0, 1, 1, 1, 1, 1]),
  series("rpc_client_duration_seconds", rpc("web", "/shop.Cart/Add", "5"), [0, 1, 1, 1, 1, 1]),
  series("http_server_request_size_bytes", http("nginx", "GET", "500", "/a"), [1, 1, 1, 1, 1, 1]),
  "redprobe_discovered_processes 3",
].join("\n");

Deno.test("aggregate() sums methods, statuses and instances into (service, kind, route)", () => {
  const snap = aggregate(parsePrometheusText(FIRST));
  assert.deepEqual(
    [...snap.keys()].sort(),
    [
      rowKey("curl", "http client", "/b/{id}"),
      rowKey("nginx", "http server", "/a"),
      rowKey("nginx", "http server", "/b/{id}"),
      rowKey("shop", "rpc server", "/shop.Cart/Add"),
      rowKey("web", "rpc client", "/shop.Cart/Add"),
    ].sort(),
  );
  const a = snap.get(rowKey("nginx", "http server", "/a"))!;
  assert.equal(a.count, 10);
  assert.equal(a.errors, 2);
  assert.deepEqual(a.bounds, [0, 0.005, 0.01, 0.025, 0.05, Infinity]);
  assert.deepEqual(a.cumulative, [0, 6, 9, 10, 10, 10]);
  assert.equal(snap.get(rowKey("nginx", "http server", "/b/{id}"))!.errors, 0, "404 on a server");
  assert.equal(snap.get(rowKey("curl", "http client", "/b/{id}"))!.errors, 4, "404 on a client");
  assert.equal(snap.get(rowKey("shop", "rpc server", "/shop.Cart/Add"))!.errors, 0, "NOT_FOUND");
  assert.equal(snap.get(rowKey("web", "rpc client", "/shop.Cart/Add"))!.errors, 1);
});

Deno.test("aggregate() reads the otel naming too, and shows a namespace", () => {
  const text = [
    series(
      "http_server_request_duration_seconds",
      { ...http("api", "GET", "503", "/x"), service_namespace: "prod" },
      [0, 1, 1, 1, 1, 1],
    ),
    series("http_client_request_duration_seconds", http("api", "GET", "200", "/y"), [
      0,
      0,
      0,
      0,
      3,
      3,
    ]),
  ].join("\n");
  const snap = aggregate(parsePrometheusText(text));
  const x = snap.get(rowKey("prod/api", "http server", "/x"))!;
  assert.equal(x.count, 1);
  assert.equal(x.errors, 1);
  assert.equal(snap.get(rowKey("api", "http client", "/y"))!.count, 3);
});

Deno.test("redRows() without a previous scrape: no rate, error % and quantiles since start", () => {
  const rows = redRows(aggregate(parsePrometheusText(FIRST)));
  const a = rows.find((r) => r.service === "nginx" && r.route === "/a")!;
  assert.equal(a.rate, undefined);
  assert.equal(a.total, 10);
  assert.equal(a.requests, 10);
  assert.equal(a.errorRatio, 0.2);
  // Cumulative [0, 6, 9, 10, ...]: p50 rank 5 in (0, 0.005] holding 6: 0.005 * 5/6.
  assertClose(a.p50!, 0.005 * 5 / 6);
  // p99 rank 9.9 in (0.01, 0.025] holding 1 (9..10): 0.01 + 0.015 * 0.9 = 0.0235.
  assertClose(a.p99!, 0.0235);
});

Deno.test("redRows() with a previous scrape: rate, error % and quantiles of the window", () => {
  const before = aggregate(parsePrometheusText(FIRST));
  const later = [
    // /a: +20 requests (18 OK, 2 errors): [0, 6, 9, 10, 10, 10] -> [0, 6, 17, 28, 30, 30].
    series("http_server_duration_seconds", http("nginx", "GET", "200", "/a"), [
      0,
      6,
      16,
      24,
      26,
      26,
    ]),
    series("http_server_duration_seconds", http("nginx", "GET", "500", "/a"), [0, 0, 1, 4, 4, 4]),
    // /b/{id}: no new request.
    series("http_server_duration_seconds", http("nginx", "GET", "404", "/b/{id}"), [
      0,
      4,
      4,
      4,
      4,
      4,
    ]),
    // A new row: 3 requests, all in the window.
    series("http_server_duration_seconds", http("nginx", "POST", "0", "/c"), [0, 3, 3, 3, 3, 3]),
  ].join("\n");
  const rows = redRows(aggregate(parsePrometheusText(later)), {
    previous: { snapshot: before, seconds: 4 },
  });
  const get = (route: string) => rows.find((r) => r.service === "nginx" && r.route === route)!;
  const a = get("/a");
  assert.equal(a.rate, 5, "20 requests in 4 s");
  assert.equal(a.total, 30);
  assert.equal(a.requests, 20);
  assert.equal(a.errorRatio, 0.1, "2 of 20");
  // Window buckets [0, 0, 8, 18, 20, 20]: p50 rank 10 in (0.01, 0.025] holding 10 (8..18):
  // 0.01 + 0.015 * 2/10 = 0.013.
  assertClose(a.p50!, 0.013);
  // p99 rank 19.8 in (0.025, 0.05] holding 2 (18..20): 0.025 + 0.025 * 1.8/2 = 0.0475.
  assertClose(a.p99!, 0.0475);
  const b = get("/b/{id}");
  assert.equal(b.rate, 0);
  assert.equal(b.total, 4);
  assert.equal(b.errorRatio, undefined);
  assert.equal(b.p50, undefined);
  const c = get("/c");
  assert.equal(c.rate, 0.75);
  assert.equal(c.errorRatio, 1, "status 0: no response");
  // p99 rank 2.97 of the 3 in (0, 0.005]: 0.005 * 2.97/3.
  assertClose(c.p99!, 0.00495);

  // cumulative: the rate still comes from the window, the rest from every request.
  const cum = redRows(aggregate(parsePrometheusText(later)), {
    previous: { snapshot: before, seconds: 4 },
    cumulative: true,
  }).find((r) => r.route === "/a" && r.service === "nginx")!;
  assert.equal(cum.rate, 5);
  assert.equal(cum.requests, 30);
  assertClose(cum.errorRatio!, 4 / 30);
});

Deno.test("redRows() treats a count that went down as a reset (agent restarted)", () => {
  const before = aggregate(parsePrometheusText(FIRST));
  const after = series("http_server_duration_seconds", http("nginx", "GET", "200", "/a"), [
    0,
    3,
    3,
    3,
    3,
    3,
  ]);
  const [row] = redRows(aggregate(parsePrometheusText(after)), {
    previous: { snapshot: before, seconds: 2 },
  });
  assert.equal(row.rate, 1.5, "3 requests since the restart, in 2 s");
  assert.equal(row.requests, 3);
  assert.equal(row.errorRatio, 0);
  assertClose(row.p50!, 0.0025);
});

function row(service: string, route: string, rest: Partial<RedRow>): RedRow {
  return { service, kind: "http server", route, requests: 0, total: 0, ...rest };
}

Deno.test("sortRows() by rate, errors or p99, highest first, missing values last", () => {
  const rows = [
    row("a", "/1", { rate: 1, errorRatio: 0.5, p99: 0.1, total: 10 }),
    row("b", "/2", { rate: 10, errorRatio: 0, p99: 0.01, total: 5 }),
    row("c", "/3", { rate: 0, total: 100 }),
    row("d", "/4", { rate: 5, errorRatio: 0.5, p99: 2, total: 1 }),
    row("e", "/5", { rate: 0, total: 50 }),
  ];
  const order = (by: "rate" | "errors" | "p99") => sortRows(rows, by).map((r) => r.service);
  assert.deepEqual(order("rate"), ["b", "d", "a", "c", "e"], "equal rates by total");
  assert.deepEqual(order("errors"), ["d", "a", "b", "c", "e"], "equal error % by rate");
  assert.deepEqual(order("p99"), ["d", "a", "b", "c", "e"]);
  // Without rates (first scrape): by total.
  const noRate = rows.map((r) => ({ ...r, rate: undefined }));
  assert.deepEqual(sortRows(noRate, "rate").map((r) => r.service), ["c", "e", "a", "b", "d"]);
});

Deno.test("the formatters", () => {
  assert.equal(formatRate(undefined), "-");
  assert.equal(formatRate(0), "0.00");
  assert.equal(formatRate(0.5), "0.50");
  assert.equal(formatRate(12.34), "12.3");
  assert.equal(formatRate(1234.5), "1235");
  assert.equal(formatRate(12345.6), "12346");
  assert.equal(formatPercent(undefined), "-");
  assert.equal(formatPercent(0), "0.0%");
  assert.equal(formatPercent(1 / 3), "33.3%");
  assert.equal(formatPercent(1), "100.0%");
  assert.equal(formatSeconds(undefined), "-");
  assert.equal(formatSeconds(0), "0");
  assert.equal(formatSeconds(0.00042), "420µs");
  assert.equal(formatSeconds(0.0025), "2.50ms");
  assert.equal(formatSeconds(0.0475), "47.5ms");
  assert.equal(formatSeconds(0.25), "250ms");
  assert.equal(formatSeconds(1.25), "1.25s");
  assert.equal(formatSeconds(10), "10.00s");
  assert.equal(truncate("abcdef", 6), "abcdef");
  assert.equal(truncate("abcdef", 4), "abc…");
  assert.equal(truncate("abcdef", 0), "");
});

const ROWS: RedRow[] = [
  row("nginx", "/a", { rate: 5, errorRatio: 0.1, p50: 0.01, p99: 0.0475, total: 30 }),
  row("nginx", "/b/{id}", { rate: 0, total: 4 }),
  {
    ...row("shop-backend-service", "/shop.Cart/AddItemWithAVeryLongName", {
      rate: 1234.5,
      errorRatio: 1,
      p50: 0.0025,
      p99: 1.5,
      total: 123456,
    }),
    kind: "rpc server",
  },
];

Deno.test("renderTable() at its natural width: aligned columns, two spaces apart", () => {
  // Widths: SERVICE 20, KIND 11, ROUTE 35, then 6 each for the numbers; 7 gaps of 2: 110.
  const lines = renderTable(ROWS, { width: 200 });
  assert.deepEqual(lines, [
    "SERVICE               KIND         ROUTE                                RATE/s    ERR%     P50     P99   TOTAL",
    "nginx                 http server  /a                                     5.00   10.0%  10.0ms  47.5ms      30",
    "nginx                 http server  /b/{id}                                0.00       -       -       -       4",
    "shop-backend-service  rpc server   /shop.Cart/AddItemWithAVeryLongName    1235  100.0%  2.50ms   1.50s  123456",
  ]);
});

Deno.test("renderTable() fits a narrower width: ROUTE, then SERVICE, then the line is cut", () => {
  // 100: 10 too wide, taken from ROUTE (35 -> 25).
  let lines = renderTable(ROWS, { width: 100 });
  assert.ok(lines.every((l) => [...l].length === 100), lines.join("\n"));
  assert.equal(
    lines[3],
    "shop-backend-service  rpc server   /shop.Cart/AddItemWithAV…    1235  100.0%  2.50ms   1.50s  123456",
  );
  // 80: 30 too wide: ROUTE down to its minimum 12 (-23), then SERVICE 20 -> 13 (-7).
  lines = renderTable(ROWS, { width: 80 });
  assert.deepEqual(lines, [
    "SERVICE        KIND         ROUTE         RATE/s    ERR%     P50     P99   TOTAL",
    "nginx          http server  /a              5.00   10.0%  10.0ms  47.5ms      30",
    "nginx          http server  /b/{id}         0.00       -       -       -       4",
    "shop-backend…  rpc server   /shop.Cart/…    1235  100.0%  2.50ms   1.50s  123456",
  ]);
  // 70: 40 too wide: ROUTE -23, SERVICE -10 (to 10); TOTAL (and its gap) left out: 69.
  lines = renderTable(ROWS, { width: 70 });
  assert.deepEqual(lines, [
    "SERVICE     KIND         ROUTE         RATE/s    ERR%     P50     P99",
    "nginx       http server  /a              5.00   10.0%  10.0ms  47.5ms",
    "nginx       http server  /b/{id}         0.00       -       -       -",
    "shop-back…  rpc server   /shop.Cart/…    1235  100.0%  2.50ms   1.50s",
  ]);
  // 55: then P50 (61) and KIND (48) go too.
  lines = renderTable(ROWS, { width: 55 });
  assert.deepEqual(lines, [
    "SERVICE     ROUTE         RATE/s    ERR%     P99",
    "nginx       /a              5.00   10.0%  47.5ms",
    "nginx       /b/{id}         0.00       -       -",
    "shop-back…  /shop.Cart/…    1235  100.0%   1.50s",
  ]);
});

Deno.test("renderTable() with maxRows says how many rows it left out", () => {
  const lines = renderTable(ROWS, { width: 200, maxRows: 2 });
  assert.equal(lines.length, 3);
  assert.match(lines[1], /^nginx +http server +\/a /);
  assert.equal(lines[2], "… 2 more rows");
  assert.equal(renderTable(ROWS, { width: 200, maxRows: 3 }).length, 4, "all fit");
  // 51 wide, nothing to squeeze: TOTAL, P50, KIND left out (33), then cut.
  assert.deepEqual(renderTable([], { width: 30 }), [
    "SERVICE  ROUTE  RATE/s  ERR% …",
  ]);
});

function assertClose(actual: number, expected: number) {
  assert.ok(Math.abs(actual - expected) < 1e-12, `${actual} != ${expected}`);
}
