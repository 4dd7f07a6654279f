import assert from "node:assert/strict";
import { btfOfElf, structLayout } from "../../lib/btf.ts";
import {
  dbOperation,
  decodeRedisEvent,
  errorType,
  EXE_MAX,
  NAME_MAX,
  parseTimeoutMs,
  REDIS_COMMANDS,
  REDIS_EVENT_SIZE,
  REDIS_KERNEL_COUNTERS,
  RedisOutcome,
} from "./decode.ts";
import plugin from "./mod.ts";

// The committed object keeps struct redis_event in its BTF (redis_event_btf_anchor).
const OBJECT = await Deno.readFile(new URL("./redis.bpf.o", import.meta.url));
const LAYOUT = structLayout(btfOfElf(OBJECT), "redis_event")!;

/** A record laid out by the offsets the object's BTF gives. */
function record(fields: Record<string, (v: DataView, offset: number) => void>): Uint8Array {
  const bytes = new Uint8Array(LAYOUT.size).fill(0xee); // noise where nothing is written
  const view = new DataView(bytes.buffer);
  for (const f of LAYOUT.fields) fields[f.name]?.(view, f.offset);
  return bytes;
}

const ascii = (text: string, size: number) => (v: DataView, offset: number) => {
  for (let i = 0; i < size; i++) v.setUint8(offset + i, i < text.length ? text.charCodeAt(i) : 0);
};

Deno.test("the decoder reads struct redis_event as clang laid it out", () => {
  assert.equal(LAYOUT.size, REDIS_EVENT_SIZE);
  const at = Object.fromEntries(LAYOUT.fields.map((f) => [f.name, [f.offset, f.size]]));
  assert.deepEqual(at.name, [32, NAME_MAX]);
  assert.deepEqual(at.exe, [64, EXE_MAX]);
  const e = decodeRedisEvent(record({
    start_ns: (v, o) => v.setBigUint64(o, 123_456_789_012n, true),
    duration_ns: (v, o) => v.setBigUint64(o, 1_500_000n, true),
    tgid: (v, o) => v.setUint32(o, 4242, true),
    name_total: (v, o) => v.setUint32(o, 4, true),
    outcome: (v, o) => v.setUint8(o, RedisOutcome.error),
    name_len: (v, o) => v.setUint8(o, 4),
    err_len: (v, o) => v.setUint8(o, 9),
    name: ascii("incr", NAME_MAX),
    err: ascii("WRONGTYPE", NAME_MAX),
    exe: ascii("python3.11", EXE_MAX),
  }));
  assert.deepEqual(e, {
    startNs: 123_456_789_012n,
    durationSeconds: 0.0015,
    tgid: 4242,
    outcome: RedisOutcome.error,
    name: "incr",
    nameTotal: 4,
    error: "WRONGTYPE",
    errorTotal: 9,
    exe: "python3.11",
  });
  assert.equal(dbOperation(e.name, e.nameTotal), "INCR");
  assert.equal(errorType(e), "WRONGTYPE");
});

Deno.test("the decoder keeps only name_len bytes and drops an executable name that fills the field", () => {
  const e = decodeRedisEvent(record({
    name_len: (v, o) => v.setUint8(o, 3),
    name: ascii("GETXXXXXXXXXXXXX", NAME_MAX),
    err_len: (v, o) => v.setUint8(o, 0),
    exe: ascii("a".repeat(EXE_MAX - 1), EXE_MAX),
  }));
  assert.equal(e.name, "GET");
  assert.equal(e.error, "");
  assert.equal(e.exe, "");
  assert.throws(() => decodeRedisEvent(new Uint8Array(REDIS_EVENT_SIZE - 1)), RangeError);
  // A record inside a larger buffer (the ring), not at offset 0.
  const inner = record({ tgid: (v, o) => v.setUint32(o, 7, true) });
  const ring = new Uint8Array(inner.length + 16);
  ring.set(inner, 16);
  assert.equal(decodeRedisEvent(ring.subarray(16)).tgid, 7);
});

Deno.test("db_operation is a bounded set: known commands upper-cased, anything else _OTHER", () => {
  assert.equal(dbOperation("get", 3), "GET");
  assert.equal(dbOperation("Set", 3), "SET");
  assert.equal(dbOperation("ZREMRANGEBYSCORE", 16), "ZREMRANGEBYSCORE");
  assert.equal(dbOperation("FOO", 3), "_OTHER");
  assert.equal(dbOperation("", 0), "_OTHER");
  // Cut at 16 bytes: the length on the wire decides between the two GEORADIUSBYMEMBERs.
  assert.equal(dbOperation("georadiusbymembe", 17), "GEORADIUSBYMEMBER");
  assert.equal(dbOperation("GEORADIUSBYMEMBE", 20), "GEORADIUSBYMEMBER_RO");
  assert.equal(dbOperation("GEORADIUSBYMEMBE", 30), "_OTHER");
  // Cut by a buffer boundary (fewer bytes than the length, and fewer than the field holds).
  assert.equal(dbOperation("GE", 3), "_OTHER");
  assert.ok(REDIS_COMMANDS.size >= 240);
  for (const c of REDIS_COMMANDS) assert.match(c, /^[A-Z][A-Z_-]*$/);
});

Deno.test("error_type: empty when OK, Redis's error class, timeout, closed, else _OTHER", () => {
  const ok = { outcome: RedisOutcome.ok, error: "", errorTotal: 0 };
  assert.equal(errorType(ok), "");
  assert.equal(errorType({ outcome: RedisOutcome.error, error: "ERR", errorTotal: 3 }), "ERR");
  assert.equal(
    errorType({ outcome: RedisOutcome.error, error: "WRONGTYPE", errorTotal: 9 }),
    "WRONGTYPE",
  );
  assert.equal(errorType({ outcome: RedisOutcome.error, error: "MOVED", errorTotal: 5 }), "MOVED");
  // Not one of Redis's classes (a proxy's message), or cut: bounded anyway.
  assert.equal(errorType({ outcome: RedisOutcome.error, error: "Weird", errorTotal: 5 }), "_OTHER");
  assert.equal(
    errorType({ outcome: RedisOutcome.error, error: "ERRORXXXXXXXXXXX", errorTotal: 40 }),
    "_OTHER",
  );
  assert.equal(errorType({ outcome: RedisOutcome.timeout, error: "", errorTotal: 0 }), "timeout");
  assert.equal(errorType({ outcome: RedisOutcome.closed, error: "", errorTotal: 0 }), "closed");
  assert.equal(errorType({ outcome: 9, error: "", errorTotal: 0 }), "_OTHER");
});

Deno.test("request_timeout accepts durations and milliseconds", () => {
  assert.equal(parseTimeoutMs("30s"), 30_000);
  assert.equal(parseTimeoutMs("500ms"), 500);
  assert.equal(parseTimeoutMs("2m"), 120_000);
  assert.equal(parseTimeoutMs(250), 250);
  assert.equal(parseTimeoutMs("soon"), undefined);
  assert.equal(parseTimeoutMs(0), undefined);
  assert.equal(parseTimeoutMs("0s"), undefined);
});

Deno.test("the plugin's options: defaults, validation, and the constants they set", () => {
  const schema = plugin.optionsSchema!;
  const defaults = schema.parse({});
  assert.deepEqual(defaults, { ports: [6379], request_timeout: 30_000, max_connections: 2048 });
  assert.throws(() => schema.parse({ ports: [] }));
  assert.throws(() => schema.parse({ ports: [70000] }));
  assert.throws(() => schema.parse({ ports: [1, 2, 3, 4, 5, 6, 7, 8, 9] }));
  assert.throws(() => schema.parse({ request_timeout: "soon" }));
  assert.throws(() => schema.parse({ prots: [6379] }), "unknown keys are rejected");
  const options = schema.parse({ ports: [6379, 6380], request_timeout: "1500ms" });
  const constants = plugin.constants!({
    options,
    buckets: { durationSeconds: [], sizeBytes: [] },
  });
  assert.deepEqual(constants.ports, [6379, 6380, 0, 0, 0, 0, 0, 0]);
  assert.equal(constants.request_timeout_ns, 1_500_000_000n);
  assert.equal(constants.agent_tgid, Deno.pid);
  assert.deepEqual(plugin.kernelCounters, REDIS_KERNEL_COUNTERS);
});

Deno.test("an event becomes a db_client observation", () => {
  const e = decodeRedisEvent(record({
    start_ns: (v, o) => v.setBigUint64(o, 5n, true),
    duration_ns: (v, o) => v.setBigUint64(o, 2_000_000n, true),
    tgid: (v, o) => v.setUint32(o, 99, true),
    name_total: (v, o) => v.setUint32(o, 3, true),
    outcome: (v, o) => v.setUint8(o, RedisOutcome.closed),
    name_len: (v, o) => v.setUint8(o, 3),
    err_len: (v, o) => v.setUint8(o, 0),
    name: ascii("get", NAME_MAX),
    exe: ascii("", EXE_MAX),
  }));
  const ctx = {
    options: plugin.optionsSchema!.parse({}),
    buckets: { durationSeconds: [], sizeBytes: [] },
  };
  assert.deepEqual(plugin.toObservation(e, ctx), {
    kind: "db_client",
    pid: 99,
    durationSeconds: 0.002,
    startNs: 5n,
    dbSystem: "redis",
    dbOperation: "GET",
    errorType: "closed",
    exe: undefined,
  });
});
