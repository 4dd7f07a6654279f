import assert from "node:assert/strict";
import { structLayout } from "../../lib/btf.ts";
import { headerStructBtf } from "../../tests/support/bpf_layout.ts";
import { hasTool } from "../../tests/support/tools.ts";
import {
  decodeGoAggKey,
  decodeGoHttpEvent,
  decodeGoPath,
  GO_AGG_KEY_SIZE,
  GO_HTTP_EVENT_SIZE,
  GO_HTTP_HOST_MAX,
  GO_HTTP_KERNEL_COUNTERS,
  GO_HTTP_METHOD_MAX,
  GO_HTTP_PATH_MAX,
  GoHttpFlag,
  GoHttpKind,
  peerOf,
} from "./decode.ts";

const HEADER = new URL("./go_http.h", import.meta.url).pathname;
const BTF = hasTool("clang") ? await headerStructBtf(HEADER, "go_http_event") : undefined;
const ignore = BTF === undefined;

/** Writes a record the way the BPF side lays it out, using the offsets the object's BTF gives. */
function record(fields: Record<string, (view: DataView, offset: number) => void>): Uint8Array {
  const layout = structLayout(BTF!, "go_http_event")!;
  const bytes = new Uint8Array(layout.size).fill(0xee); // noise where nothing is written
  const view = new DataView(bytes.buffer);
  for (const f of layout.fields) {
    if (fields[f.name]) fields[f.name](view, f.offset);
    else if (f.name.startsWith("_")) continue;
  }
  return bytes;
}

const ascii = (text: string) => (view: DataView, offset: number) => {
  for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i));
};

Deno.test({ name: "the decoder reads struct go_http_event as clang lays it out", ignore }, () => {
  const layout = structLayout(BTF!, "go_http_event");
  assert.ok(layout);
  assert.equal(layout.size, GO_HTTP_EVENT_SIZE);
  const at = Object.fromEntries(layout.fields.map((f) => [f.name, [f.offset, f.size]]));
  assert.deepEqual(at.method, [40, GO_HTTP_METHOD_MAX]);
  assert.deepEqual(at.path, [56, GO_HTTP_PATH_MAX]);
  const bytes = record({
    start_ns: (v, o) => v.setBigUint64(o, 5n, true),
    duration_ns: (v, o) => v.setBigUint64(o, 1_500_000n, true),
    content_length: (v, o) => v.setBigInt64(o, 100n, true),
    tgid: (v, o) => v.setUint32(o, 4242, true),
    status: (v, o) => v.setUint16(o, 404, true),
    kind: (v, o) => v.setUint8(o, GoHttpKind.client),
    flags: (v, o) => v.setUint8(o, GoHttpFlag.pathTruncated),
    method_len: (v, o) => v.setUint8(o, 4),
    path_len: (v, o) => v.setUint16(o, 9, true),
    exe_index: (v, o) => v.setUint32(o, 2, true),
    method: ascii("POST"),
    path: ascii("/users/42"),
    host: (v, o) => {
      new Uint8Array(v.buffer, o, GO_HTTP_HOST_MAX).fill(0);
      ascii("10.0.0.9:8443")(v, o);
    },
  });
  assert.deepEqual(decodeGoHttpEvent(bytes), {
    kind: GoHttpKind.client,
    tgid: 4242,
    status: 404,
    flags: GoHttpFlag.pathTruncated,
    startNs: 5n,
    durationNs: 1_500_000,
    contentLength: 100,
    method: "POST",
    path: "/users/42",
    exeIndex: 2,
    serverAddress: "10.0.0.9",
    serverPort: 8443,
  });
});

Deno.test("peerOf() reads URL.Host with the scheme's default port, and nothing doubtful", () => {
  const host = (text: string) => {
    const b = new Uint8Array(GO_HTTP_HOST_MAX);
    b.set(new TextEncoder().encode(text));
    return b;
  };
  assert.deepEqual(peerOf(host("example.com"), 0, 0), {
    serverAddress: "example.com",
    serverPort: 80,
  });
  assert.deepEqual(peerOf(host("example.com"), 0, GoHttpFlag.https), {
    serverAddress: "example.com",
    serverPort: 443,
  });
  assert.deepEqual(peerOf(host("[::1]:8443"), 0, 0), { serverAddress: "::1", serverPort: 8443 });
  assert.deepEqual(peerOf(host(""), 0, 0), {});
  assert.deepEqual(peerOf(host("a.example:99"), 0, GoHttpFlag.longHost), {}, "truncated");
  assert.deepEqual(peerOf(host("a:b:c"), 0, 0), {}, "not a host[:port]");
});

Deno.test({ name: "the decoder never reads past the method and path buffers", ignore }, () => {
  const bytes = record({
    method_len: (v, o) => v.setUint8(o, 255),
    path_len: (v, o) => v.setUint16(o, 60000, true),
    method: ascii("X".repeat(GO_HTTP_METHOD_MAX)),
  });
  const e = decodeGoHttpEvent(bytes);
  assert.equal(e.method, "_OTHER", "an unknown or garbled method is _OTHER");
  assert.equal(e.path.length, GO_HTTP_PATH_MAX);
});

Deno.test({ name: "a negative Content-Length (unknown, chunked) decodes as -1", ignore }, () => {
  const e = decodeGoHttpEvent(record({ content_length: (v, o) => v.setBigInt64(o, -1n, true) }));
  assert.equal(e.contentLength, -1);
});

Deno.test("a short record is refused with a RangeError", () => {
  assert.throws(() => decodeGoHttpEvent(new Uint8Array(GO_HTTP_EVENT_SIZE - 1)), RangeError);
});

Deno.test("the kernel counter names follow enum go_http_stat", () => {
  const header = Deno.readTextFileSync(new URL("./go_http.h", import.meta.url));
  const stats = [...header.matchAll(/GO_STAT_(\w+) = (\d+),/g)].filter(([, name]) =>
    name !== "MAX"
  );
  assert.deepEqual(stats.map(([, , n]) => Number(n)), stats.map((_, i) => i + 1));
  assert.equal(stats.length, GO_HTTP_KERNEL_COUNTERS.length);
});

const KEY_BTF = hasTool("clang") ? await headerStructBtf(HEADER, "go_agg_key") : undefined;

Deno.test({
  name: "decodeGoAggKey() reads struct go_agg_key as clang lays it out",
  ignore: KEY_BTF === undefined,
}, () => {
  const layout = structLayout(KEY_BTF!, "go_agg_key")!;
  assert.equal(layout.size, GO_AGG_KEY_SIZE);
  const at = Object.fromEntries(layout.fields.map((f) => [f.name, f.offset]));
  const key = new Uint8Array(layout.size);
  const view = new DataView(key.buffer);
  view.setBigUint64(at.path_hash, 0x1122334455667788n, true);
  view.setUint32(at.tgid, 777, true);
  view.setUint16(at.status, 503, true);
  key[at.kind] = GoHttpKind.client;
  key[at.flags] = GoHttpFlag.pathTruncated;
  key.set(new TextEncoder().encode("DELETE"), at.method);
  view.setUint32(at.exe_index, 3, true);
  const decoded = decodeGoAggKey(key);
  assert.deepEqual({ ...decoded, pathHash: [...decoded.pathHash] }, {
    pathHash: [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11],
    tgid: 777,
    status: 503,
    kind: GoHttpKind.client,
    flags: GoHttpFlag.pathTruncated,
    method: "DELETE",
    exeIndex: 3,
  });
  key[at.flags] = GoHttpFlag.longMethod;
  assert.equal(decodeGoAggKey(key).method, "_OTHER");
  assert.throws(() => decodeGoAggKey(key.subarray(1)), RangeError);
});

Deno.test({
  name: "decodeGoPath() reads struct go_path as clang lays it out",
  ignore: !hasTool("clang"),
}, async () => {
  const layout = structLayout(await headerStructBtf(HEADER, "go_path"), "go_path")!;
  const at = Object.fromEntries(layout.fields.map((f) => [f.name, f.offset]));
  const value = new Uint8Array(layout.size).fill(0x41);
  new DataView(value.buffer).setUint16(at.len, 6, true);
  value.set(new TextEncoder().encode("/a/b/c"), at.path);
  assert.equal(at.path, 8);
  assert.equal(decodeGoPath(value), "/a/b/c");
  new DataView(value.buffer).setUint16(at.len, 60000, true);
  assert.equal(decodeGoPath(value).length, GO_HTTP_PATH_MAX, "never past the buffer");
});
