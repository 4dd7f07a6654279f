/**
 * Access to one BPF map of a loaded {@linkcode BpfObject}: lookups, updates, deletes and
 * iteration over raw key/value bytes. Typed views are the caller's business (a plugin's decoder
 * knows its structs; the core does not).
 *
 * @module
 */
import { check, libbpf } from "../ffi/libbpf.ts";
import type { BpfObject } from "./object.ts";

const ENOENT = 2;

/** BPF map types the core treats specially (enum bpf_map_type). */
export const MapType = {
  hash: 1,
  array: 2,
  percpuHash: 5,
  percpuArray: 6,
  lruHash: 9,
  lruPercpuHash: 10,
  ringbuf: 27,
} as const;

/** Update flags (BPF_ANY, BPF_NOEXIST, BPF_EXIST). */
export const UpdateFlag = { any: 0n, noExist: 1n, exist: 2n } as const;

let possibleCpus: number | undefined;

/** Number of possible CPUs: the number of slots in a per-CPU map value. */
export function numPossibleCpus(): number {
  possibleCpus ??= check(libbpf().libbpf_num_possible_cpus(), "count possible CPUs");
  return possibleCpus;
}

/** One map of a BPF object. Valid while the object is open; its fd is owned by the object. */
export class BpfMap {
  readonly name: string;
  readonly #object: BpfObject;
  readonly #ptr: Deno.PointerObject;

  constructor(object: BpfObject, ptr: Deno.PointerObject, name: string) {
    this.#object = object;
    this.#ptr = ptr;
    this.name = name;
  }

  get pointer(): Deno.PointerObject {
    this.#object.assertOpen();
    return this.#ptr;
  }

  get fd(): number {
    return check(libbpf().bpf_map__fd(this.pointer), `get fd of map "${this.name}"`);
  }

  get type(): number {
    return libbpf().bpf_map__type(this.pointer);
  }

  get keySize(): number {
    return libbpf().bpf_map__key_size(this.pointer);
  }

  /** Size of one value as the BPF side sees it. */
  get valueSize(): number {
    return libbpf().bpf_map__value_size(this.pointer);
  }

  get maxEntries(): number {
    return libbpf().bpf_map__max_entries(this.pointer);
  }

  get perCpu(): boolean {
    const t = this.type;
    return t === MapType.percpuArray || t === MapType.percpuHash || t === MapType.lruPercpuHash;
  }

  /** Bytes user space exchanges per value: per-CPU maps hold one 8-byte-aligned slot per CPU. */
  get userValueSize(): number {
    return this.perCpu ? Math.ceil(this.valueSize / 8) * 8 * numPossibleCpus() : this.valueSize;
  }

  /** The value under `key`, or `undefined` when there is none. */
  lookup(key: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> | undefined {
    const value = new Uint8Array(this.userValueSize);
    const rc = libbpf().bpf_map_lookup_elem(this.fd, this.#key(key), value);
    if (rc === -ENOENT) return undefined;
    check(rc, `look up key in map "${this.name}"`);
    return value;
  }

  update(
    key: Uint8Array<ArrayBuffer>,
    value: Uint8Array<ArrayBuffer>,
    flags: bigint = UpdateFlag.any,
  ): void {
    if (value.length !== this.userValueSize) {
      throw new RangeError(
        `Map "${this.name}" values are ${this.userValueSize} bytes, got ${value.length}`,
      );
    }
    check(
      libbpf().bpf_map_update_elem(this.fd, this.#key(key), value, flags),
      `update map "${this.name}"`,
    );
  }

  /** Deletes `key`; returns false when it was not there. */
  delete(key: Uint8Array<ArrayBuffer>): boolean {
    const rc = libbpf().bpf_map_delete_elem(this.fd, this.#key(key));
    if (rc === -ENOENT) return false;
    check(rc, `delete from map "${this.name}"`);
    return true;
  }

  /** Every key (a snapshot walk; entries changed meanwhile may be missed or repeated). */
  *keys(): Generator<Uint8Array<ArrayBuffer>> {
    let prev: Uint8Array<ArrayBuffer> | null = null;
    for (;;) {
      const next = new Uint8Array(this.keySize);
      const rc = libbpf().bpf_map_get_next_key(this.fd, prev, next);
      if (rc === -ENOENT) return;
      check(rc, `iterate map "${this.name}"`);
      yield next;
      prev = next;
    }
  }

  /**
   * The value under `key` of a per-CPU map read as u64 counters, each summed over the CPUs
   * (exact below 2^53), or undefined when there is none.
   */
  lookupSummedU64(key: Uint8Array<ArrayBuffer>): Float64Array | undefined {
    const value = this.lookup(key);
    if (!value) return undefined;
    const words = new BigUint64Array(value.buffer);
    const slots = Math.ceil(this.valueSize / 8); // each CPU's slot is padded to 8 bytes
    const total = new Float64Array(slots);
    for (let at = 0; at < words.length; at += slots) {
      for (let i = 0; i < slots; i++) total[i] += Number(words[at + i]);
    }
    return total;
  }

  /** The u64 counter at `index` of a per-CPU array, summed over CPUs. */
  sumPerCpuU64(index: number): bigint {
    const key = new Uint8Array(4);
    new DataView(key.buffer).setUint32(0, index, true);
    return BigInt(this.lookupSummedU64(key)?.[0] ?? 0);
  }

  #key(key: Uint8Array<ArrayBuffer>): Uint8Array<ArrayBuffer> {
    if (key.length !== this.keySize) {
      throw new RangeError(`Map "${this.name}" keys are ${this.keySize} bytes, got ${key.length}`);
    }
    return key;
  }
}
