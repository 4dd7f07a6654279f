import assert from "node:assert/strict";
import { drainRecords } from "./ring_buffer.ts";

const BUSY = 0x8000_0000;
const DISCARD = 0x4000_0000;
const HEADER = 8;

/**
 * A BPF ring buffer's data area as the agent maps it: `size` bytes, once, so a byte written at
 * position p appears at p % size. Records are laid out as the kernel does: an 8-byte header
 * {len | BUSY | DISCARD, pg_off}, the data, padding to 8 bytes. The view ends with the ring:
 * a read past the end throws.
 */
class FakeRing {
  readonly size: number;
  readonly bytes: Uint8Array;
  readonly data: DataView;
  producer: number;

  /** `prefix` bytes before the data area, like the producer page before it in the real map. */
  constructor(size: number, options: { start?: number; prefix?: number } = {}) {
    this.size = size;
    const prefix = options.prefix ?? 0;
    const buffer = new ArrayBuffer(prefix + size + 64);
    new Uint8Array(buffer).fill(0xee); // never-written memory is not zero
    this.bytes = new Uint8Array(buffer, prefix, size);
    this.data = new DataView(buffer, prefix, size);
    this.producer = options.start ?? 0;
  }

  write(position: number, bytes: Uint8Array): void {
    for (let i = 0; i < bytes.length; i++) {
      const at = (position + i) % this.size;
      this.bytes[at] = bytes[i];
    }
  }

  writeHeader(position: number, word: number): void {
    const header = new Uint8Array(HEADER);
    new DataView(header.buffer).setUint32(0, word, true);
    new DataView(header.buffer).setUint32(4, 0x1234, true); // pg_off: not ours to read
    this.write(position, header);
  }

  /** Reserves and writes a record; returns its position. */
  add(payload: Uint8Array, flags: { busy?: boolean; discard?: boolean } = {}): number {
    const position = this.producer;
    this.write(position + HEADER, payload);
    this.writeHeader(
      position,
      payload.length | (flags.busy ? BUSY : 0) | (flags.discard ? DISCARD : 0),
    );
    this.producer += (payload.length + HEADER + 7) & ~7;
    return position;
  }

  /** Commits a BUSY record (the kernel clears the bit). */
  commit(position: number, length: number): void {
    this.writeHeader(position, length);
  }

  drain(consumer: number, seen: Uint8Array[] = []) {
    const result = drainRecords(this.data, this.size, consumer, this.producer, (r) => {
      seen.push(r.slice()); // copy: the view is only valid during the call
    });
    return { ...result, seen };
  }
}

const payload = (length: number, seed: number) =>
  Uint8Array.from({ length }, (_, i) => (seed + i * 7) & 0xff);

Deno.test("drainRecords() hands every committed record to the callback, in order", () => {
  const ring = new FakeRing(4096);
  const records = [payload(144, 1), payload(144, 2), payload(16, 3)];
  for (const r of records) ring.add(r);
  const { consumer, records: n, seen } = ring.drain(0);
  assert.equal(n, 3);
  assert.deepEqual(seen, records);
  assert.equal(consumer, ring.producer);
  assert.equal(consumer, 152 + 152 + 24);
});

Deno.test("drainRecords() does nothing when the consumer has caught up", () => {
  const ring = new FakeRing(4096);
  ring.add(payload(8, 0));
  let calls = 0;
  const result = drainRecords(ring.data, ring.size, ring.producer, ring.producer, () => calls++);
  assert.deepEqual(result, { consumer: ring.producer, records: 0 });
  assert.equal(calls, 0);
});

Deno.test("drainRecords() advances by the header plus the length rounded up to 8 bytes", () => {
  for (
    const [length, step] of [[0, 8], [1, 16], [7, 16], [8, 16], [9, 24], [13, 24], [16, 24]]
  ) {
    const ring = new FakeRing(256);
    ring.add(payload(length, length));
    ring.add(payload(4, 99));
    const { consumer, seen } = ring.drain(0);
    assert.equal(seen[0].length, length, `length ${length}`);
    assert.deepEqual(seen[1], payload(4, 99), `the record after a ${length}-byte one`);
    assert.equal(consumer, step + 16, `length ${length}`);
  }
});

Deno.test("drainRecords() stops at a BUSY record and resumes there once it is committed", () => {
  const ring = new FakeRing(4096);
  ring.add(payload(20, 1));
  const busy = ring.add(payload(30, 2), { busy: true });
  ring.add(payload(40, 3)); // committed, but after the busy one
  const first = ring.drain(0);
  assert.equal(first.records, 1);
  assert.deepEqual(first.seen, [payload(20, 1)]);
  assert.equal(first.consumer, busy, "stops at the busy record's header");

  ring.commit(busy, 30);
  const second = ring.drain(first.consumer);
  assert.equal(second.records, 2);
  assert.deepEqual(second.seen, [payload(30, 2), payload(40, 3)]);
  assert.equal(second.consumer, ring.producer);
});

Deno.test("drainRecords() skips DISCARD records but consumes them", () => {
  const ring = new FakeRing(4096);
  ring.add(payload(10, 1));
  ring.add(payload(50, 2), { discard: true });
  ring.add(payload(12, 3));
  ring.add(payload(3, 4), { discard: true });
  const { consumer, records, seen } = ring.drain(0);
  assert.equal(records, 2);
  assert.deepEqual(seen, [payload(10, 1), payload(12, 3)]);
  assert.equal(consumer, ring.producer, "a trailing discarded record is consumed too");
});

Deno.test("drainRecords() treats a record with both BUSY and DISCARD as busy", () => {
  const ring = new FakeRing(256);
  const at = ring.add(payload(8, 1), { busy: true, discard: true });
  assert.deepEqual(ring.drain(at), { consumer: at, records: 0, seen: [] });
});

Deno.test("drainRecords() reads a record whose data wraps past the end, as one contiguous copy", () => {
  const size = 128;
  // Start near the end: the header fits before the end, the data wraps.
  const ring = new FakeRing(size, { start: 3 * size + 104 });
  const wrapped = payload(60, 5);
  const at = ring.add(wrapped);
  const next = ring.add(payload(9, 6));
  assert.equal(at % size, 104);
  assert.equal(next % size, (104 + 8 + 64) % size);
  const { consumer, seen, records } = ring.drain(at);
  assert.equal(records, 2);
  assert.deepEqual(seen, [wrapped, payload(9, 6)]);
  assert.equal(consumer, ring.producer);
});

Deno.test("drainRecords() reads a record whose header is the last 8 bytes of the ring", () => {
  const size = 64;
  const ring = new FakeRing(size, { start: size - 8 });
  const record = payload(24, 9);
  ring.add(record);
  const { seen, consumer } = ring.drain(size - 8);
  assert.deepEqual(seen, [record]);
  assert.equal(consumer, size - 8 + 32);
});

Deno.test("drainRecords() drains a completely full ring that wraps", () => {
  const size = 256;
  const ring = new FakeRing(size, { start: 1000 * size + 200 });
  const start = ring.producer;
  const records: Uint8Array[] = [];
  while (ring.producer - start < size) {
    const r = payload(24, records.length);
    records.push(r);
    ring.add(r);
  }
  assert.equal(ring.producer - start, size);
  const { consumer, seen } = ring.drain(start);
  assert.deepEqual(seen, records);
  assert.equal(consumer, start + size);
});

Deno.test("drainRecords() handles positions beyond 2^32 (the kernel's are 64-bit)", () => {
  const size = 4096;
  const start = 2 ** 40 + 4088; // 8 bytes before the end of the ring, past 32 bits
  const ring = new FakeRing(size, { start });
  const records = [payload(100, 1), payload(144, 2)];
  for (const r of records) ring.add(r);
  const { consumer, seen } = ring.drain(start);
  assert.deepEqual(seen, records);
  assert.equal(consumer, start + 112 + 152);
});

Deno.test("drainRecords() reads relative to the DataView's own offset", () => {
  const ring = new FakeRing(512, { prefix: 4096 });
  const records = [payload(33, 1), payload(1, 2)];
  for (const r of records) ring.add(r);
  assert.deepEqual(ring.drain(0).seen, records);
});

Deno.test("drainRecords() gives views into the ring itself, not copies", () => {
  const ring = new FakeRing(256);
  ring.add(payload(16, 1));
  let view: Uint8Array | undefined;
  drainRecords(ring.data, ring.size, 0, ring.producer, (r) => (view = r));
  assert.ok(view);
  assert.equal(view.buffer, ring.bytes.buffer);
  assert.equal(view.byteOffset, ring.bytes.byteOffset + HEADER);
  assert.equal(view.length, 16);
});

Deno.test("drainRecords() never reads past the producer position", () => {
  const ring = new FakeRing(256);
  ring.add(payload(8, 1));
  const producer = ring.producer;
  ring.add(payload(8, 2)); // written after the producer position we pass in
  const seen: Uint8Array[] = [];
  const result = drainRecords(ring.data, ring.size, 0, producer, (r) => seen.push(r.slice()));
  assert.deepEqual(result, { consumer: producer, records: 1 });
  assert.deepEqual(seen, [payload(8, 1)]);
});

Deno.test("drainRecords() lets a callback error propagate (RingBufferReader catches it)", () => {
  // RingBufferReader catches callback errors itself; the pure walk does not swallow them.
  const ring = new FakeRing(256);
  ring.add(payload(8, 1));
  assert.throws(
    () =>
      drainRecords(ring.data, ring.size, 0, ring.producer, () => {
        throw new Error("decode failed");
      }),
    /decode failed/,
  );
});
