/**
 * Reading a BPF ring buffer without crossing into JS once per event.
 *
 * libbpf's `ring_buffer__poll` calls back per record (120-650 ns per event through FFI, and a
 * blocking poll would freeze the event loop). Instead the core maps the ring itself, waits for
 * data with `poll(2)` on a worker thread (a `nonblocking` FFI call, so the event loop keeps
 * running), then walks the records in JS through one DataView: ~50-100 ns per event.
 *
 * Memory layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write it), page 1
 * the producer position; the data area follows. The kernel offers the data area twice in a row,
 * so that a record wrapping around the end is contiguous (libbpf maps both copies). The agent
 * maps it once: the kernel pre-populates every page of the mapping, so the second copy would
 * cost the agent's RSS the ring's size again (8 MiB for four 2 MiB rings) to spare a copy of
 * the rare record that wraps; such a record is copied into a scratch buffer instead. Each record
 * is an 8-byte header `{u32 len | BUSY<<31 | DISCARD<<30; u32 pg_off}` then `len` bytes, padded
 * to 8; headers are 8-aligned and the size a power of two, so a header never wraps.
 *
 * @module
 */
import { BpfError, check, lastErrno, libc } from "../ffi/libbpf.ts";
import type { BpfMap } from "./map.ts";
import { MapType } from "./map.ts";

const RINGBUF_BUSY_BIT = 0x8000_0000;
const RINGBUF_DISCARD_BIT = 0x4000_0000;
const RINGBUF_HDR_SZ = 8;

const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const SC_PAGESIZE = 30;
const POLLIN = 1;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

/** What one drain pass did. */
export interface DrainResult {
  /** The new consumer position to publish. */
  consumer: number;
  /** Records handed to the callback. */
  records: number;
}

/**
 * Walks the records between `consumer` and `producer` in `data` (the data area, `size` bytes,
 * mapped once) and hands each committed, non-discarded record to `onRecord`. Stops at a record
 * the producer has not committed yet. Pure: unit-tested on plain memory.
 *
 * `onRecord` gets a view into the ring (or, for a record that wraps past the end, into a scratch
 * copy), valid only during the call: decoders must copy what they keep.
 */
export function drainRecords(
  data: DataView,
  size: number,
  consumer: number,
  producer: number,
  onRecord: (record: Uint8Array) => void,
): DrainResult {
  const mask = size - 1;
  const bytes = new Uint8Array(data.buffer, data.byteOffset, size);
  let records = 0;
  while (consumer < producer) {
    const at = consumer & mask;
    const header = data.getUint32(at, true);
    if (header & RINGBUF_BUSY_BIT) break;
    const len = header & 0x3fff_ffff;
    if (!(header & RINGBUF_DISCARD_BIT)) {
      records++;
      const start = at + RINGBUF_HDR_SZ; // <= size: the header never wraps
      if (start + len <= size) {
        onRecord(bytes.subarray(start, start + len));
      } else {
        const record = new Uint8Array(len);
        const head = size - start;
        record.set(bytes.subarray(start, size));
        record.set(bytes.subarray(0, len - head), head);
        onRecord(record);
      }
    }
    consumer += (len + RINGBUF_HDR_SZ + 7) & ~7;
  }
  return { consumer, records };
}

/** Counters a reader keeps; the exporter turns them into the agent's own metrics. */
export interface RingBufferStats {
  records: number;
  /** Records the callback threw on (the agent's own drops). */
  callbackErrors: number;
  drains: number;
}

/**
 * Reads one ring-buffer map. `start()` begins waiting for data in the background; `drain()` can
 * also be called at any time (the exporter drains before each scrape so counts are current).
 */
export class RingBufferReader implements AsyncDisposable {
  readonly name: string;
  readonly size: number;
  readonly stats: RingBufferStats = { records: 0, callbackErrors: 0, drains: 0 };
  readonly #fd: number;
  readonly #pageSize: number;
  readonly #consumerPtr: Deno.PointerObject;
  readonly #producerPtr: Deno.PointerObject;
  readonly #consumer: DataView;
  readonly #producer: DataView;
  readonly #data: DataView;
  readonly #onRecord: (record: Uint8Array) => void;
  readonly #onError: (error: unknown) => void;
  readonly #onWake: (() => void) | undefined;
  readonly #pollTimeoutMs: number;
  readonly #wakeFd: number;
  readonly #pollFds = new Uint8Array(16); // two struct pollfd {int fd; short events, revents;}
  #loop: Promise<void> | undefined;
  #closed = false;

  constructor(
    map: BpfMap,
    onRecord: (record: Uint8Array) => void,
    options: {
      /** Longest wait for data before a drain anyway (default 200 ms). */
      pollTimeoutMs?: number;
      /** Errors of `onRecord` and `onWake`, and of the poll itself. */
      onError?: (error: unknown) => void;
      /**
       * Called by the background loop each time its poll returns (data, or the timeout), after
       * the drain: at least every `pollTimeoutMs`, and at once after a record submitted with
       * BPF_RB_FORCE_WAKEUP (a discarded one too). Keep it cheap.
       */
      onWake?: () => void;
    } = {},
  ) {
    if (map.type !== MapType.ringbuf) throw new Error(`Map "${map.name}" is not a ring buffer`);
    this.name = map.name;
    this.#fd = map.fd;
    this.size = map.maxEntries;
    this.#onRecord = onRecord;
    this.#onError = options.onError ?? (() => {});
    this.#onWake = options.onWake;
    this.#pollTimeoutMs = options.pollTimeoutMs ?? 200;
    this.#pageSize = Number(libc().sysconf(SC_PAGESIZE));
    const c = libc();
    this.#consumerPtr = mapOrThrow(
      c.mmap(null, BigInt(this.#pageSize), PROT_READ | PROT_WRITE, MAP_SHARED, this.#fd, 0n),
      `map consumer page of ring buffer "${this.name}"`,
    );
    const producerLen = this.#pageSize + this.size;
    try {
      this.#producerPtr = mapOrThrow(
        c.mmap(null, BigInt(producerLen), PROT_READ, MAP_SHARED, this.#fd, BigInt(this.#pageSize)),
        `map data pages of ring buffer "${this.name}"`,
      );
    } catch (e) {
      c.munmap(this.#consumerPtr, BigInt(this.#pageSize));
      throw e;
    }
    this.#consumer = new DataView(Deno.UnsafePointerView.getArrayBuffer(this.#consumerPtr, 8));
    const producerBuf = Deno.UnsafePointerView.getArrayBuffer(this.#producerPtr, producerLen);
    this.#producer = new DataView(producerBuf, 0, 8);
    this.#data = new DataView(producerBuf, this.#pageSize, this.size);
    this.#wakeFd = check(c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), "create eventfd");
    const pfd = new DataView(this.#pollFds.buffer);
    pfd.setInt32(0, this.#fd, true);
    pfd.setInt16(4, POLLIN, true);
    pfd.setInt32(8, this.#wakeFd, true);
    pfd.setInt16(12, POLLIN, true);
  }

  /** Bytes written by the kernel and not consumed yet. */
  get pendingBytes(): number {
    if (this.#closed) return 0;
    return Number(this.#producer.getBigUint64(0, true) - this.#consumer.getBigUint64(0, true));
  }

  /** Consumes every committed record now. Returns how many were handed to the callback. */
  drain(): number {
    if (this.#closed) return 0;
    const consumer = Number(this.#consumer.getBigUint64(0, true));
    const producer = Number(this.#producer.getBigUint64(0, true));
    if (consumer === producer) return 0;
    const result = drainRecords(this.#data, this.size, consumer, producer, (record) => {
      try {
        this.#onRecord(record);
      } catch (e) {
        this.stats.callbackErrors++;
        this.#onError(e);
      }
    });
    // x86-64 stores are release-ordered: the kernel sees every read above before this.
    this.#consumer.setBigUint64(0, BigInt(result.consumer), true);
    this.stats.records += result.records;
    this.stats.drains++;
    return result.records;
  }

  /** Starts the background wait-and-drain loop. */
  start(): void {
    this.#loop ??= this.#run();
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      // Resolves on data (the BPF side forces a wakeup when the ring fills up), on close, or
      // after the timeout: records submitted without a wakeup are drained at least that often.
      const rc = await libc().poll(this.#pollFds, 2n, this.#pollTimeoutMs);
      if (this.#closed) break;
      if (rc < 0) {
        const errno = lastErrno();
        if (errno !== 4) this.#onError(new BpfError(`poll ring buffer "${this.name}"`, errno));
        continue;
      }
      this.drain();
      if (this.#onWake) {
        try {
          this.#onWake();
        } catch (e) {
          this.#onError(e);
        }
      }
    }
  }

  /** Stops the loop (waking it at once), drains what is left, and unmaps the ring. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.drain();
    this.#closed = true;
    const one = new BigUint64Array([1n]);
    libc().write(this.#wakeFd, new Uint8Array(one.buffer), 8n);
    await this.#loop;
    const c = libc();
    c.munmap(this.#producerPtr, BigInt(this.#pageSize + this.size));
    c.munmap(this.#consumerPtr, BigInt(this.#pageSize));
    c.close(this.#wakeFd);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function mapOrThrow(ptr: Deno.PointerValue, op: string): Deno.PointerObject {
  if (ptr === null || BigInt(Deno.UnsafePointer.value(ptr)) === MAP_FAILED) {
    throw new BpfError(op, lastErrno() || 12);
  }
  return ptr;
}
