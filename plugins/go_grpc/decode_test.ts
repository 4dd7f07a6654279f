import assert from "node:assert/strict";
import { structLayout } from "../../lib/btf.ts";
import { headerStructBtf } from "../../tests/support/bpf_layout.ts";
import { hasTool } from "../../tests/support/tools.ts";
import {
  decodeGoGrpcAggKey,
  decodeGoGrpcEvent,
  decodeGoGrpcMethod,
  GO_GRPC_AGG_KEY_SIZE,
  GO_GRPC_EVENT_SIZE,
  GO_GRPC_KERNEL_COUNTERS,
  GO_GRPC_METHOD_MAX,
  GoGrpcFlag,
  GoGrpcKind,
  rpcMethodLabel,
} from "./decode.ts";

const HEADER = new URL("./go_grpc.h", import.meta.url).pathname;
const ignore = !hasTool("clang");

Deno.test(
  { name: "decodeGoGrpcEvent reads struct go_grpc_event as clang lays it out", ignore },
  async () => {
    const btf = await headerStructBtf(HEADER, "go_grpc_event");
    const layout = structLayout(btf, "go_grpc_event")!;
    assert.equal(layout.size, GO_GRPC_EVENT_SIZE);
    const at = Object.fromEntries(layout.fields.map((f) => [f.name, f.offset]));
    const bytes = new Uint8Array(layout.size).fill(0xee);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(at.start_ns, 5n, true);
    view.setBigUint64(at.duration_ns, 1_500_000n, true);
    view.setUint32(at.tgid, 4242, true);
    view.setUint16(at.code, 13, true);
    view.setUint8(at.kind, GoGrpcKind.client);
    view.setUint8(at.flags, GoGrpcFlag.noStatus);
    const method = "/grpc.testing.TestService/UnaryCall";
    view.setUint16(at.method_len, method.length, true);
    for (let i = 0; i < method.length; i++) bytes[at.method + i] = method.charCodeAt(i);
    assert.deepEqual(decodeGoGrpcEvent(bytes), {
      kind: GoGrpcKind.client,
      tgid: 4242,
      code: 13,
      flags: GoGrpcFlag.noStatus,
      startNs: 5n,
      durationNs: 1_500_000,
      method,
    });
    assert.throws(() => decodeGoGrpcEvent(bytes.subarray(0, 100)), RangeError);
  },
);

Deno.test(
  { name: "decodeGoGrpcAggKey reads struct go_grpc_agg_key as clang lays it out", ignore },
  async () => {
    const btf = await headerStructBtf(HEADER, "go_grpc_agg_key");
    const layout = structLayout(btf, "go_grpc_agg_key")!;
    assert.equal(layout.size, GO_GRPC_AGG_KEY_SIZE);
    const at = Object.fromEntries(layout.fields.map((f) => [f.name, f.offset]));
    const key = new Uint8Array(layout.size);
    const view = new DataView(key.buffer);
    view.setBigUint64(at.method_hash, 0x0102030405060708n, true);
    view.setUint32(at.tgid, 77, true);
    view.setUint16(at.code, 5, true);
    view.setUint8(at.kind, GoGrpcKind.server);
    view.setUint8(at.flags, GoGrpcFlag.methodTruncated);
    const decoded = decodeGoGrpcAggKey(key);
    assert.deepEqual({ ...decoded, methodHash: [...decoded.methodHash] }, {
      methodHash: [8, 7, 6, 5, 4, 3, 2, 1],
      tgid: 77,
      code: 5,
      kind: GoGrpcKind.server,
      flags: GoGrpcFlag.methodTruncated,
    });
    assert.throws(() => decodeGoGrpcAggKey(new Uint8Array(8)), RangeError);
  },
);

Deno.test({ name: "decodeGoGrpcMethod reads struct go_grpc_method", ignore }, async () => {
  const btf = await headerStructBtf(HEADER, "go_grpc_method");
  const layout = structLayout(btf, "go_grpc_method")!;
  const at = Object.fromEntries(layout.fields.map((f) => [f.name, f.offset]));
  assert.equal(at.method, 8);
  assert.equal(layout.size, 8 + GO_GRPC_METHOD_MAX);
  const value = new Uint8Array(layout.size);
  const name = "/grpc.health.v1.Health/Check";
  value[at.len] = name.length;
  for (let i = 0; i < name.length; i++) value[at.method + i] = name.charCodeAt(i);
  assert.equal(decodeGoGrpcMethod(value), name);
  value[at.len] = 255; // a length beyond the buffer is clamped, never read past it
  assert.equal(decodeGoGrpcMethod(value).length, GO_GRPC_METHOD_MAX);
});

Deno.test("GO_GRPC_KERNEL_COUNTERS names every enum go_grpc_stat index, in order", async () => {
  const text = await Deno.readTextFile(HEADER);
  const body = /enum go_grpc_stat \{([^}]*)\}/.exec(text)?.[1] ?? "";
  const values = [...body.matchAll(/(GRPC_STAT_\w+) = (\d+)/g)].map((m) => [m[1], Number(m[2])]);
  const max = values.find(([n]) => n === "GRPC_STAT_MAX")?.[1];
  assert.equal(GO_GRPC_KERNEL_COUNTERS.length, Number(max) - 1);
});

Deno.test("rpcMethodLabel keeps a full method, and a truncated one's service only", () => {
  assert.equal(rpcMethodLabel("/a.B/C", false), "/a.B/C");
  assert.equal(rpcMethodLabel("/pkg.Service/VeryLongMeth", true), "/pkg.Service/*");
  assert.equal(rpcMethodLabel("/pkg.Servi", true), "_OTHER"); // not even a whole service
  assert.equal(rpcMethodLabel("xyz", true), "_OTHER");
});
