import assert from "node:assert/strict";
type ConstantValue = number | bigint | boolean;
import { writeInteger } from "./object.ts";

/** The bytes writeInteger leaves in a 12-byte buffer pre-filled with 0xaa, writing at 2. */
function written(size: number, value: ConstantValue): number[] {
  const bytes = new Uint8Array(12).fill(0xaa);
  writeInteger(new DataView(bytes.buffer), 2, size, value, "obj.constant");
  assert.equal(bytes[0], 0xaa, "the byte before is untouched");
  assert.equal(bytes[1], 0xaa);
  assert.ok(bytes.subarray(2 + size).every((b) => b === 0xaa), "the bytes after are untouched");
  return [...bytes.subarray(2, 2 + size)];
}

Deno.test("writeInteger() writes 1, 2, 4 and 8-byte values little-endian", () => {
  assert.deepEqual(written(1, 0x7f), [0x7f]);
  assert.deepEqual(written(2, 0x1234), [0x34, 0x12]);
  assert.deepEqual(written(4, 0x12345678), [0x78, 0x56, 0x34, 0x12]);
  assert.deepEqual(written(8, 0x0102030405060708n), [8, 7, 6, 5, 4, 3, 2, 1]);
  assert.deepEqual(written(8, 30_000_000_000), [0x00, 0xac, 0x23, 0xfc, 0x06, 0, 0, 0]);
});

Deno.test("writeInteger() writes the full unsigned range of each size", () => {
  assert.deepEqual(written(1, 255), [0xff]);
  assert.deepEqual(written(2, 0xffff), [0xff, 0xff]);
  assert.deepEqual(written(4, 0xffff_ffff), [0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(written(8, 0xffff_ffff_ffff_ffffn), Array(8).fill(0xff));
  assert.deepEqual(written(4, 0), [0, 0, 0, 0]);
});

Deno.test("writeInteger() writes negative values in two's complement", () => {
  assert.deepEqual(written(1, -1), [0xff]);
  assert.deepEqual(written(1, -128), [0x80]);
  assert.deepEqual(written(2, -2), [0xfe, 0xff]);
  assert.deepEqual(written(4, -2), [0xfe, 0xff, 0xff, 0xff]);
  assert.deepEqual(written(4, -(2 ** 31)), [0, 0, 0, 0x80]);
  assert.deepEqual(written(8, -1n), Array(8).fill(0xff));
  assert.deepEqual(written(8, -(2n ** 63n)), [0, 0, 0, 0, 0, 0, 0, 0x80]);
});

Deno.test("writeInteger() writes booleans as 1 and 0", () => {
  assert.deepEqual(written(1, true), [1]);
  assert.deepEqual(written(1, false), [0]);
  assert.deepEqual(written(4, true), [1, 0, 0, 0]);
});

Deno.test("writeInteger() accepts bigint and number alike", () => {
  assert.deepEqual(written(4, 123456n), written(4, 123456));
  assert.deepEqual(written(8, 2n ** 53n + 1n), [1, 0, 0, 0, 0, 0, 0x20, 0]);
});

Deno.test("writeInteger() throws a RangeError naming the constant for a value that does not fit", () => {
  const cases: [number, ConstantValue][] = [
    [1, 256],
    [1, -129],
    [2, 0x1_0000],
    [2, -0x8001],
    [4, 2 ** 32],
    [4, -(2 ** 31) - 1],
    [8, 2n ** 64n],
    [8, -(2n ** 63n) - 1n],
  ];
  for (const [size, value] of cases) {
    const bytes = new Uint8Array(8).fill(0xaa);
    assert.throws(
      () =>
        writeInteger(new DataView(bytes.buffer), 0, size, value, "kprobe_http.request_timeout_ns"),
      (e: unknown) =>
        e instanceof RangeError && e.message.includes("kprobe_http.request_timeout_ns") &&
        e.message.includes(String(value)),
      `${size} bytes, ${value}`,
    );
    assert.ok(bytes.every((b) => b === 0xaa), "nothing written on error");
  }
});

Deno.test("writeInteger() throws a RangeError for sizes over 8 bytes", () => {
  assert.throws(() => writeInteger(new DataView(new ArrayBuffer(16)), 0, 16, 1, "big"), RangeError);
});

Deno.test("writeInteger() throws a RangeError for a fractional or non-finite number", () => {
  for (const value of [1.5, Number.NaN, Number.POSITIVE_INFINITY]) {
    assert.throws(
      () => writeInteger(new DataView(new ArrayBuffer(8)), 0, 8, value, "x"),
      RangeError,
      String(value),
    );
  }
});
