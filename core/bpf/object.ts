/**
 * A BPF object through its lifecycle: open (from bytes) -> set load-time constants and map sizes
 * -> load (verifier) -> find programs and maps -> close. Attaching lives in `link.ts`, map access
 * in `map.ts`; this class owns the `struct bpf_object *` and frees it exactly once.
 *
 * @module
 */
import { check, checkPtr, cString, libbpf, readCString } from "../ffi/libbpf.ts";
import { BpfMap } from "./map.ts";

const BTF_KIND_DATASEC = 15;
const BTF_TYPE_SIZE = 12; // struct btf_type
const BTF_VAR_SECINFO_SIZE = 12; // struct btf_var_secinfo
/** struct bpf_prog_info: up to and including run_cnt, and where run_time_ns and run_cnt are. */
const PROG_INFO_SIZE = 208;
const PROG_INFO_RUN_TIME_NS = 192;
const PROG_INFO_RUN_CNT = 200;
/** sizeof(struct bpf_test_run_opts) up to `cpu` (libbpf 1.1); retval is at 56. */
const TEST_RUN_OPTS_SIZE = 76;
const OPEN_OPTS_SIZE = 80; // sizeof(struct bpf_object_open_opts) in libbpf 1.1

/**
 * A load-time constant (`const volatile` variable in the object's `.rodata`): an integer, or
 * for an array variable every element (as many as the C array has).
 */
export type ConstantValue = number | bigint | boolean | readonly (number | bigint)[];

/** A program inside a {@linkcode BpfObject}. Valid until the object is closed. */
/** enum bpf_attach_type (linux/bpf.h; bpf/vmlinux.h). */
export const BPF_TRACE_UPROBE_MULTI = 48;

export class BpfProgram {
  readonly name: string;
  readonly sectionName: string;
  readonly #ptr: Deno.PointerObject;
  readonly #object: BpfObject;

  constructor(object: BpfObject, ptr: Deno.PointerObject) {
    this.#object = object;
    this.#ptr = ptr;
    this.name = readCString(libbpf().bpf_program__name(ptr));
    this.sectionName = readCString(libbpf().bpf_program__section_name(ptr));
  }

  /** The raw `struct bpf_program *`, for the attach functions in `link.ts`. */
  get pointer(): Deno.PointerObject {
    this.#object.assertOpen();
    return this.#ptr;
  }

  /** The object this program belongs to (for error messages). */
  get objectName(): string {
    return this.#object.name;
  }

  /** The program's fd; only valid after load. */
  get fd(): number {
    return check(libbpf().bpf_program__fd(this.pointer), `get fd of program "${this.name}"`);
  }

  /**
   * Loads the program for `uprobe_multi` links (BPF_TRACE_UPROBE_MULTI): one link then attaches
   * it at many offsets of a binary. Before load only; such a program cannot be a plain uprobe.
   */
  prepareForUprobeMulti(): void {
    check(
      libbpf().bpf_program__set_expected_attach_type(this.pointer, BPF_TRACE_UPROBE_MULTI),
      `prepare program "${this.name}" for uprobe_multi`,
    );
  }

  /**
   * The kernel's run count and total run time of the program (`struct bpf_prog_info`
   * run_cnt, run_time_ns): 0 unless `kernel.bpf_stats_enabled` is 1. Undefined when the
   * program is not loaded.
   */
  runStats(): { runCount: bigint; runTimeNs: bigint } | undefined {
    const fd = libbpf().bpf_program__fd(this.pointer);
    if (fd < 0) return undefined;
    const info = new Uint8Array(PROG_INFO_SIZE);
    const len = new Uint32Array([PROG_INFO_SIZE]);
    if (libbpf().bpf_obj_get_info_by_fd(fd, info, new Uint8Array(len.buffer)) !== 0) {
      return undefined;
    }
    const view = new DataView(info.buffer);
    return {
      runTimeNs: view.getBigUint64(PROG_INFO_RUN_TIME_NS, true),
      runCount: view.getBigUint64(PROG_INFO_RUN_CNT, true),
    };
  }

  /**
   * Runs the program once, now, in the agent's thread (BPF_PROG_TEST_RUN, no input): for
   * SEC("syscall") programs that do housekeeping the program types that need it cannot (a
   * uprobe program may not use bpf_timer). Returns the program's return value.
   */
  run(): number {
    const opts = new Uint8Array(TEST_RUN_OPTS_SIZE);
    new DataView(opts.buffer).setBigUint64(0, BigInt(TEST_RUN_OPTS_SIZE), true);
    check(libbpf().bpf_prog_test_run_opts(this.fd, opts), `run program "${this.name}"`);
    return new DataView(opts.buffer).getUint32(56, true); // retval
  }

  /** Whether the program is loaded at all (a program not needed on this kernel can be skipped). */
  setAutoload(autoload: boolean): void {
    check(
      libbpf().bpf_program__set_autoload(this.pointer, autoload),
      `set autoload of program "${this.name}"`,
    );
  }
}

/**
 * An opened BPF object. Open with {@linkcode BpfObject.open}, configure, {@linkcode load}, then
 * use. `using obj = BpfObject.open(...)` closes it (and with it every map fd and loaded program
 * not pinned by a link) when the scope ends.
 */
export class BpfObject implements Disposable {
  readonly name: string;
  #ptr: Deno.PointerObject | null;
  // libelf reads the object in place until load finishes: the bytes must outlive the object.
  readonly #bytes: Uint8Array;
  #loaded = false;
  readonly #maps = new Map<string, BpfMap>();

  private constructor(name: string, ptr: Deno.PointerObject, bytes: Uint8Array) {
    this.name = name;
    this.#ptr = ptr;
    this.#bytes = bytes;
  }

  /** Opens an object from the bytes of a compiled `.bpf.o` (e.g. an `import ... with { type: "bytes" }`). */
  static open(bytes: Uint8Array, name: string): BpfObject {
    const copy = new Uint8Array(bytes); // own the memory libelf will point into
    const opts = new Uint8Array(OPEN_OPTS_SIZE);
    const view = new DataView(opts.buffer);
    const nameBytes = cString(name);
    view.setBigUint64(0, BigInt(OPEN_OPTS_SIZE), true);
    view.setBigUint64(8, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(nameBytes))), true);
    const ptr = checkPtr(
      libbpf().bpf_object__open_mem(copy, BigInt(copy.length), opts),
      `open BPF object "${name}"`,
    );
    // libbpf copies the name during open; nameBytes may be collected afterwards.
    return new BpfObject(name, ptr, copy);
  }

  /** Throws if the object was closed: use after close is a bug, not a crash. */
  assertOpen(): Deno.PointerObject {
    if (!this.#ptr) throw new Error(`BPF object "${this.name}" is closed`);
    return this.#ptr;
  }

  get loaded(): boolean {
    return this.#loaded;
  }

  /** Every program in the object, in section order. */
  programs(): BpfProgram[] {
    const out: BpfProgram[] = [];
    const obj = this.assertOpen();
    for (
      let p = libbpf().bpf_object__next_program(obj, null);
      p;
      p = libbpf().bpf_object__next_program(obj, p)
    ) {
      out.push(new BpfProgram(this, p));
    }
    return out;
  }

  /** The program named `name` (its C function name). */
  program(name: string): BpfProgram {
    const found = this.programs().find((p) => p.name === name);
    if (!found) {
      throw new Error(
        `BPF object "${this.name}" has no program "${name}" (it has: ${
          this.programs().map((p) => p.name).join(", ")
        })`,
      );
    }
    return found;
  }

  /** Every map in the object, including the internal `.rodata`/`.bss` ones. */
  maps(): BpfMap[] {
    const obj = this.assertOpen();
    for (
      let m = libbpf().bpf_object__next_map(obj, null);
      m;
      m = libbpf().bpf_object__next_map(obj, m)
    ) {
      const name = readCString(libbpf().bpf_map__name(m));
      if (!this.#maps.has(name)) this.#maps.set(name, new BpfMap(this, m, name));
    }
    return [...this.#maps.values()];
  }

  /** The map named `name`. */
  /** Whether the object has a map called `name`. */
  hasMap(name: string): boolean {
    return this.#maps.has(name) || this.maps().some((m) => m.name === name);
  }

  map(name: string): BpfMap {
    // Maps are looked up on every scrape: walk libbpf's list only for a name not seen yet.
    const found = this.#maps.get(name) ?? this.maps().find((m) => m.name === name);
    if (!found) throw new Error(`BPF object "${this.name}" has no map "${name}"`);
    return found;
  }

  /**
   * Sets `const volatile` globals before load; the verifier then sees them as constants and
   * prunes dead branches. Unknown names are an error, so a renamed variable cannot be silently
   * left at its default.
   */
  setConstants(values: Readonly<Record<string, ConstantValue>>): void {
    if (this.#loaded) throw new Error(`Cannot set constants of "${this.name}": already loaded`);
    const entries = Object.entries(values);
    if (entries.length === 0) return;
    const layout = this.#rodataLayout();
    const rodata = this.maps().find((m) => m.name.endsWith(".rodata"));
    if (!rodata) throw new Error(`BPF object "${this.name}" has no .rodata section`);
    const sizeOut = new BigUint64Array(1);
    const base = checkPtr(
      libbpf().bpf_map__initial_value(rodata.pointer, new Uint8Array(sizeOut.buffer)),
      `get .rodata of "${this.name}"`,
    );
    const data = new DataView(Deno.UnsafePointerView.getArrayBuffer(base, Number(sizeOut[0])));
    for (const [name, value] of entries) {
      const slot = layout.get(name);
      if (!slot) {
        throw new Error(
          `BPF object "${this.name}" has no constant "${name}" (it has: ${
            [...layout.keys()].join(", ")
          })`,
        );
      }
      if (isArrayConstant(value)) {
        const size = slot.size / value.length;
        if (!Number.isInteger(size) || ![1, 2, 4, 8].includes(size)) {
          throw new RangeError(
            `Constant ${this.name}.${name} is ${slot.size} bytes: ${value.length} elements do not fill it`,
          );
        }
        value.forEach((v, i) =>
          writeInteger(data, slot.offset + i * size, size, v, `${this.name}.${name}[${i}]`)
        );
      } else {
        writeInteger(data, slot.offset, slot.size, value, `${this.name}.${name}`);
      }
    }
  }

  /** Resizes a map before load (e.g. the ring buffer or the connection table). */
  setMaxEntries(mapName: string, entries: number): void {
    check(
      libbpf().bpf_map__set_max_entries(this.map(mapName).pointer, entries),
      `set max_entries of map "${mapName}" in "${this.name}" to ${entries}`,
    );
  }

  /** Loads every program (the kernel verifier runs here) and creates every map. */
  load(): void {
    check(libbpf().bpf_object__load(this.assertOpen()), `load BPF object "${this.name}"`);
    this.#loaded = true;
  }

  /** Closes the object: unloads programs (unless a live link holds them) and closes map fds. */
  close(): void {
    if (!this.#ptr) return;
    libbpf().bpf_object__close(this.#ptr);
    this.#ptr = null;
    this.#maps.clear();
    void this.#bytes;
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** name -> {offset, size} of every variable in `.rodata`, read from the object's BTF. */
  #rodataLayout(): Map<string, { offset: number; size: number }> {
    const btf = checkPtr(libbpf().bpf_object__btf(this.assertOpen()), `get BTF of "${this.name}"`);
    const id = libbpf().btf__find_by_name_kind(btf, cString(".rodata"), BTF_KIND_DATASEC);
    const out = new Map<string, { offset: number; size: number }>();
    if (id < 0) return out;
    const sec = new Deno.UnsafePointerView(checkPtr(libbpf().btf__type_by_id(btf, id), "read BTF"));
    const vlen = sec.getUint32(4) & 0xffff;
    for (let i = 0; i < vlen; i++) {
      const at = BTF_TYPE_SIZE + i * BTF_VAR_SECINFO_SIZE;
      const varType = checkPtr(libbpf().btf__type_by_id(btf, sec.getUint32(at)), "read BTF");
      const name = readCString(
        libbpf().btf__name_by_offset(btf, new Deno.UnsafePointerView(varType).getUint32(0)),
      );
      out.set(name, { offset: sec.getUint32(at + 4), size: sec.getUint32(at + 8) });
    }
    return out;
  }
}

function isArrayConstant(v: ConstantValue): v is readonly (number | bigint)[] {
  return Array.isArray(v);
}

/** Writes `value` as a little-endian integer of `size` bytes, refusing values that do not fit. */
export function writeInteger(
  view: DataView,
  offset: number,
  size: number,
  value: number | bigint | boolean,
  what: string,
): void {
  if (typeof value === "number" && !Number.isInteger(value)) {
    throw new RangeError(`Constant ${what} must be an integer, got ${value}`);
  }
  const big = typeof value === "bigint"
    ? value
    : BigInt(typeof value === "boolean" ? Number(value) : value);
  const bits = BigInt(size * 8);
  const min = -(1n << (bits - 1n));
  const max = (1n << bits) - 1n;
  if (size > 8 || big < min || big > max) {
    throw new RangeError(`Constant ${what} (${size} bytes) cannot hold ${value}`);
  }
  const unsigned = BigInt.asUintN(size * 8, big);
  for (let i = 0; i < size; i++) {
    view.setUint8(offset + i, Number((unsigned >> BigInt(i * 8)) & 0xffn));
  }
}
