import assert from "node:assert/strict";
import { type Btf, btfOfElf, findType, structLayout, typeSize } from "./btf.ts";
import { hasTool } from "../tests/support/tools.ts";
import { headerStructBtf } from "../tests/support/bpf_layout.ts";
import {
  decodeHttpRequestEvent,
  encodeHttpRequestEvent,
  HTTP_EVENT_SIZE,
  HTTP_KERNEL_COUNTERS,
  HTTP_METHODS,
  HTTP_PATH_MAX,
  HttpEventFlag,
  HttpEventKind,
  type HttpRequestEvent,
} from "./http1_records.ts";

const HEADER_URL = new URL("../bpf/http1.h", import.meta.url);
/** The objects whose records this module decodes. */
const OBJECT_URLS = [
  new URL("../plugins/kprobe_http/kprobe_http.bpf.o", import.meta.url),
  new URL("../plugins/tls_uprobe/tls_uprobe.bpf.o", import.meta.url),
];

/** The fields of a decoded event as plain data (the event itself computes some lazily). */
function fields(e: HttpRequestEvent) {
  return {
    kind: e.kind,
    tgid: e.tgid,
    connId: e.connId,
    startNs: e.startNs,
    endNs: e.endNs,
    bodySize: e.bodySize,
    status: e.status,
    method: e.method,
    path: e.path,
    flags: e.flags,
  };
}

type EventFields = ReturnType<typeof fields>;

const EVENT: EventFields = {
  kind: HttpEventKind.serverRequest,
  tgid: 0xa1b2c3d4,
  connId: 0xfedcba9876543210n,
  startNs: 0x0102030405060708n,
  endNs: 0x1112131415161718n,
  bodySize: 2 ** 40 + 5,
  status: 503,
  method: "DELETE",
  path: "/users/42/orders?id=7&x=%20",
  flags: HttpEventFlag.timeout | HttpEventFlag.closed,
};

// --- Round trip ------------------------------------------------------------------------------

Deno.test("decodeHttpRequestEvent() reads back every field encodeHttpRequestEvent() wrote", () => {
  const bytes = encodeHttpRequestEvent(EVENT);
  assert.equal(bytes.length, HTTP_EVENT_SIZE);
  assert.deepEqual(fields(decodeHttpRequestEvent(bytes)), EVENT);
});

Deno.test("decodeHttpRequestEvent() round-trips every method", () => {
  for (const method of HTTP_METHODS) {
    assert.equal(decodeHttpRequestEvent(encodeHttpRequestEvent({ method })).method, method);
  }
});

Deno.test("decodeHttpRequestEvent() round-trips the extremes of every field", () => {
  for (
    const e of [
      {
        ...EVENT,
        tgid: 0,
        connId: 0n,
        startNs: 0n,
        endNs: 0n,
        bodySize: 0,
        status: 0,
        flags: 0,
        path: "",
      },
      {
        ...EVENT,
        tgid: 0xffff_ffff,
        connId: 2n ** 64n - 1n,
        startNs: 2n ** 64n - 1n,
        endNs: 2n ** 64n - 1n,
        bodySize: Number.MAX_SAFE_INTEGER,
        status: 0xffff,
        flags: 0xff,
        kind: 0xff,
        path: "/" + "p".repeat(HTTP_PATH_MAX - 1),
      },
    ]
  ) {
    assert.deepEqual(fields(decodeHttpRequestEvent(encodeHttpRequestEvent(e))), e);
  }
});

Deno.test("decodeHttpRequestEvent() reads a record inside a larger buffer (a ring-buffer view)", () => {
  const ring = new Uint8Array(HTTP_EVENT_SIZE + 24).fill(0xcc);
  ring.set(encodeHttpRequestEvent(EVENT), 8);
  assert.deepEqual(fields(decodeHttpRequestEvent(ring.subarray(8, 8 + HTTP_EVENT_SIZE))), EVENT);
});

Deno.test("decodeHttpRequestEvent() copies what it keeps: the ring may be reused at once", () => {
  const bytes = encodeHttpRequestEvent(EVENT);
  const event = decodeHttpRequestEvent(bytes);
  bytes.fill(0);
  assert.deepEqual(fields(event), EVENT);
  assert.equal(event.durationNs, Number(EVENT.endNs - EVENT.startNs));
});

Deno.test("decodeHttpRequestEvent() computes durationNs exactly from start_ns and end_ns", () => {
  const cases: [bigint, bigint][] = [
    [1_000_000_000n, 1_250_000_000n],
    [0xffff_ffffn, 0x1_0000_0000n], // borrow across the 32-bit halves
    [0x1_ffff_fff0n, 0x3_0000_0010n],
    [2n ** 63n - 5n, 2n ** 63n + 1_000_000n], // near the top of the clock, still exact
    [123_456_789_012_345n, 123_456_789_012_345n],
  ];
  for (const [startNs, endNs] of cases) {
    const e = decodeHttpRequestEvent(encodeHttpRequestEvent({ startNs, endNs }));
    assert.equal(e.durationNs, Number(endNs - startNs), `${startNs} -> ${endNs}`);
    assert.equal(e.startNs, startNs);
    assert.equal(e.endNs, endNs);
  }
});

Deno.test("decodeHttpRequestEvent() throws a RangeError on a record of the wrong size", () => {
  for (const size of [0, 1, HTTP_EVENT_SIZE - 1, HTTP_EVENT_SIZE + 1, HTTP_EVENT_SIZE + 8]) {
    assert.throws(
      () => decodeHttpRequestEvent(new Uint8Array(size)),
      (e: unknown) => e instanceof RangeError && e.message.includes(String(size)),
      String(size),
    );
  }
});

Deno.test("decodeHttpRequestEvent() clamps a path_len larger than HTTP_PATH_MAX", () => {
  const bytes = encodeHttpRequestEvent({ path: "/" + "a".repeat(200) });
  assert.equal(bytes[40], HTTP_PATH_MAX, "encode keeps HTTP_PATH_MAX bytes");
  for (const pathLen of [HTTP_PATH_MAX + 1, 200, 255]) {
    bytes[40] = pathLen;
    const { path } = decodeHttpRequestEvent(bytes);
    assert.equal(path.length, HTTP_PATH_MAX, `path_len ${pathLen}`);
    assert.equal(path, "/" + "a".repeat(HTTP_PATH_MAX - 1));
  }
});

Deno.test("decodeHttpRequestEvent() reads only path_len bytes of the path", () => {
  const bytes = encodeHttpRequestEvent({ path: "/abcdef" });
  bytes[40] = 3;
  assert.equal(decodeHttpRequestEvent(bytes).path, "/ab");
});

Deno.test("decodeHttpRequestEvent() keeps non-UTF-8 path bytes as latin1 chars", () => {
  const raw = [0x2f, 0xff, 0xfe, 0x80, 0x00, 0xc3, 0x28, 0x7f]; // invalid UTF-8 and a NUL
  const bytes = encodeHttpRequestEvent({ path: "" });
  bytes.set(raw, 48);
  bytes[40] = raw.length;
  const { path } = decodeHttpRequestEvent(bytes);
  assert.equal(path, String.fromCharCode(...raw));
  assert.ok(!path.includes("\ufffd"), "no replacement chars");
  // And back: the encoder writes the same bytes.
  assert.deepEqual([...encodeHttpRequestEvent({ path }).subarray(48, 48 + raw.length)], raw);
});

Deno.test("decodeHttpRequestEvent() shows a UTF-8 path as its latin1 bytes", () => {
  const bytes = encodeHttpRequestEvent({ path: "" });
  const utf8 = new TextEncoder().encode("/café");
  bytes.set(utf8, 48);
  bytes[40] = utf8.length;
  assert.equal(decodeHttpRequestEvent(bytes).path, "/caf\xc3\xa9");
});

Deno.test("encodeHttpRequestEvent() refuses a path char that is not one byte", () => {
  assert.throws(() => encodeHttpRequestEvent({ path: "/\u20ac" }), RangeError);
});

Deno.test("decodeHttpRequestEvent() maps an unknown method index to _OTHER", () => {
  for (const methodIndex of [0, HTTP_METHODS.length, 42, 255]) {
    assert.equal(
      decodeHttpRequestEvent(encodeHttpRequestEvent({ methodIndex })).method,
      "_OTHER",
      String(methodIndex),
    );
  }
  assert.equal(decodeHttpRequestEvent(encodeHttpRequestEvent({ method: "BREW" })).method, "_OTHER");
});

// --- The header is the single source of the layout and the enums ------------------------------

const headerText = await Deno.readTextFile(HEADER_URL);

function defines(prefix: string): Map<string, number> {
  const out = new Map<string, number>();
  for (
    const m of headerText.matchAll(
      new RegExp(`#define (${prefix}\\w*)\\s+(0x[0-9a-f]+|\\d+)`, "gi"),
    )
  ) {
    out.set(m[1], Number(m[2]));
  }
  return out;
}

function enumValues(name: string): Map<string, number> {
  const body = new RegExp(`enum ${name} \\{([^}]*)\\}`).exec(headerText)?.[1];
  assert.ok(body, `enum ${name} in bpf/http1.h`);
  return new Map([...body.matchAll(/(\w+)\s*=\s*(\d+)/g)].map((m) => [m[1], Number(m[2])]));
}

Deno.test("HTTP_PATH_MAX and the kind and flag values match bpf/http1.h", () => {
  assert.equal(defines("HTTP_PATH_MAX").get("HTTP_PATH_MAX"), HTTP_PATH_MAX);
  assert.deepEqual(Object.fromEntries(defines("HTTP_EVENT_")), {
    HTTP_EVENT_SERVER_REQUEST: HttpEventKind.serverRequest,
    HTTP_EVENT_CLIENT_REQUEST: HttpEventKind.clientRequest,
  });
  const flags = defines("HTTP_FLAG_");
  assert.deepEqual(
    Object.fromEntries(flags),
    {
      HTTP_FLAG_PATH_TRUNCATED: HttpEventFlag.pathTruncated,
      HTTP_FLAG_TIMEOUT: HttpEventFlag.timeout,
      HTTP_FLAG_CLOSED: HttpEventFlag.closed,
      HTTP_FLAG_EVICTED: HttpEventFlag.evicted,
      HTTP_FLAG_PARSE_LOST: HttpEventFlag.parseLost,
      HTTP_FLAG_CLIENT: HttpEventFlag.client,
    },
  );
});

Deno.test("HTTP_METHODS is enum http_method of bpf/http1.h, in order", () => {
  const methods = enumValues("http_method");
  assert.equal(methods.size, HTTP_METHODS.length);
  for (const [name, value] of methods) {
    const expected = name.replace("HTTP_METHOD_", "");
    assert.equal(HTTP_METHODS[value], expected === "OTHER" ? "_OTHER" : expected, name);
  }
});

Deno.test("HTTP_KERNEL_COUNTERS names every enum http_stat index of bpf/http1.h", () => {
  const stats = enumValues("http_stat");
  const max = stats.get("HTTP_STAT_MAX");
  stats.delete("HTTP_STAT_MAX");
  assert.equal(HTTP_KERNEL_COUNTERS.length, max! - 1);
  assert.deepEqual([...stats.values()], HTTP_KERNEL_COUNTERS.map((_, i) => i + 1));
});

/** C member -> how to check the decoder reads it: the value written, the field and its value. */
const MEMBERS: Record<
  string,
  { write: (view: DataView, at: number) => void; field: keyof HttpRequestEvent; value: unknown }
> = {
  start_ns: {
    write: (v, at) => v.setBigUint64(at, 0x0102030405060708n, true),
    field: "startNs",
    value: 0x0102030405060708n,
  },
  end_ns: {
    write: (v, at) => v.setBigUint64(at, 0x1112131415161718n, true),
    field: "endNs",
    value: 0x1112131415161718n,
  },
  body_size: {
    write: (v, at) => v.setBigUint64(at, 0x0000_0102_0304_0506n, true),
    field: "bodySize",
    value: 0x0000_0102_0304_0506,
  },
  conn_id: {
    write: (v, at) => v.setBigUint64(at, 0x2122232425262728n, true),
    field: "connId",
    value: 0x2122232425262728n,
  },
  tgid: { write: (v, at) => v.setUint32(at, 0xa1b2c3d4, true), field: "tgid", value: 0xa1b2c3d4 },
  status: { write: (v, at) => v.setUint16(at, 0xbeef, true), field: "status", value: 0xbeef },
  method: { write: (v, at) => v.setUint8(at, 9), field: "method", value: "PATCH" },
  flags: { write: (v, at) => v.setUint8(at, 0x5a), field: "flags", value: 0x5a },
  path_len: { write: (v, at) => v.setUint8(at, 5), field: "path", value: "/path" },
  kind: { write: (v, at) => v.setUint8(at, 0x77), field: "kind", value: 0x77 },
  path: {
    write: (v, at) => new TextEncoder().encodeInto("/path-and-more", new Uint8Array(v.buffer, at)),
    field: "path",
    value: "/path",
  },
  // struct http_peer: addr[16] @0, port @16, family @18 (AF_INET here: the first 4 bytes).
  peer: {
    write: (v, at) => {
      new Uint8Array(v.buffer, at, 16).set([10, 1, 2, 3]);
      v.setUint16(at + 16, 8443, true);
      v.setUint8(at + 18, 2);
    },
    field: "serverAddress",
    value: "10.1.2.3",
  },
};

/** Checks the decoder against `struct http_request_event` as BTF describes it. */
function assertDecoderMatchesBtf(btf: Btf): void {
  const layout = structLayout(btf, "http_request_event");
  assert.ok(layout, "struct http_request_event is in the BTF");
  assert.equal(layout.size, HTTP_EVENT_SIZE, "sizeof(struct http_request_event)");
  const names = layout.fields.map((f) => f.name).filter((n) => !n.startsWith("_"));
  assert.deepEqual(names.sort(), Object.keys(MEMBERS).sort(), "every member is decoded");

  const path = layout.fields.find((f) => f.name === "path")!;
  assert.equal(path.size, HTTP_PATH_MAX, "char path[HTTP_PATH_MAX]");
  for (const f of layout.fields) assert.equal(f.bitfieldSize, 0, `${f.name} is not a bitfield`);

  // Each member written at its C offset, in a record otherwise full of 0xff noise; the decoder
  // must find every value, with the C member's width.
  const bytes = new Uint8Array(layout.size);
  const view = new DataView(bytes.buffer);
  for (const f of layout.fields) {
    if (f.name.startsWith("_")) bytes.fill(0xff, f.offset, f.offset + f.size);
  }
  for (const f of layout.fields) {
    if (f.name.startsWith("_")) continue;
    MEMBERS[f.name].write(view, f.offset);
  }
  const event = decodeHttpRequestEvent(bytes);
  for (const [name, { field, value }] of Object.entries(MEMBERS)) {
    assert.deepEqual(event[field], value, `${name} -> ${field}`);
  }
  // The integer widths the decoder assumes.
  const widths: Record<string, number> = {
    start_ns: 8,
    end_ns: 8,
    body_size: 8,
    conn_id: 8,
    tgid: 4,
    status: 2,
    method: 1,
    flags: 1,
    path_len: 1,
    kind: 1,
  };
  for (const f of layout.fields) {
    if (widths[f.name] !== undefined) assert.equal(f.size, widths[f.name], `sizeof(${f.name})`);
  }
}

Deno.test({
  name:
    "decodeHttpRequestEvent() offsets match struct http_request_event as clang lays out bpf/http1.h",
  ignore: !hasTool("clang"),
  async fn() {
    const btf = await headerStructBtf(
      HEADER_URL.pathname,
      "http_request_event",
    );
    assertDecoderMatchesBtf(btf);
    // The anchor variable is exactly one event.
    const anchor = findType(btf, "var", "layout_anchor");
    assert.ok(anchor);
    assert.equal(typeSize(btf, anchor.id), HTTP_EVENT_SIZE);
  },
});

// Each object keeps the struct in its BTF through the anchor in http1_engine.h (it is otherwise
// only reached through the pointer bpf_ringbuf_reserve() returns, which clang does not describe).
for (const url of OBJECT_URLS) {
  const name = url.pathname.split("/").pop();
  Deno.test(`decodeHttpRequestEvent() offsets match struct http_request_event in the committed ${name}`, async () => {
    const btf = btfOfElf(await Deno.readFile(url));
    assert.ok(
      findType(btf, "struct", "http_request_event"),
      `${name} has no struct http_request_event`,
    );
    assertDecoderMatchesBtf(btf);
  });
}
