/**
 * Attaching programs. Each function attaches one program one way and returns a
 * {@linkcode BpfLink}, the sole owner of that attachment: disposing it detaches.
 * Plugins never call these; the core does, from what a plugin declares.
 *
 * @module
 */
import { check, checkPtr, cString, libbpf, libc } from "../ffi/libbpf.ts";
import { BPF_TRACE_UPROBE_MULTI, type BpfProgram } from "./object.ts";
import { ensureTracefs } from "./tracefs.ts";

const UPROBE_OPTS_SIZE = 40; // sizeof(struct bpf_uprobe_opts), libbpf 1.1

/** How a link is released: a libbpf `struct bpf_link *`, or a bare link fd. */
type LinkHandle = { ptr: Deno.PointerObject } | { fd: number };

/** One attachment of one program. Dispose (or {@linkcode destroy}) to detach. */
export class BpfLink implements Disposable {
  /** What this link is, for logs: `tp_btf sock_recv_length -> on_sock_recv`. */
  readonly description: string;
  #handle: LinkHandle | null;

  constructor(handle: Deno.PointerObject | LinkHandle, description: string) {
    this.#handle = "ptr" in handle || "fd" in handle ? handle as LinkHandle : { ptr: handle };
    this.description = description;
  }

  get attached(): boolean {
    return this.#handle !== null;
  }

  /** Detaches. Safe to call twice. */
  destroy(): void {
    const handle = this.#take();
    if (!handle) return;
    const rc = "ptr" in handle ? libbpf().bpf_link__destroy(handle.ptr) : libc().close(handle.fd);
    check(rc, `detach ${this.description}`);
  }

  /**
   * Detaches on a worker thread and resolves when done; the link counts as detached at once.
   * Uprobe links take ~100 ms each to detach (an RCU grace period): the event loop keeps
   * running meanwhile.
   */
  async destroyInBackground(): Promise<void> {
    const handle = this.#take();
    if (!handle) return;
    const rc = "ptr" in handle
      ? await libbpf().bpf_link__destroy_nonblocking(handle.ptr)
      : await libc().close_nonblocking(handle.fd);
    check(rc, `detach ${this.description}`);
  }

  #take(): LinkHandle | null {
    const handle = this.#handle;
    this.#handle = null;
    return handle;
  }

  [Symbol.dispose](): void {
    this.destroy();
  }
}

/**
 * Attaches a program the way its section name says (`tp_btf/...`, `raw_tp/...`, `tp/...`).
 * These need no per-process arguments.
 */
export function attachBySection(program: BpfProgram): BpfLink {
  const what = `${program.sectionName} (program "${program.name}")`;
  if (/^(tp|tracepoint)\//.test(program.sectionName)) ensureTracefs();
  const ptr = checkPtr(libbpf().bpf_program__attach(program.pointer), `attach ${what}`);
  return new BpfLink(ptr, what);
}

/** Attaches a program to the classic tracepoint `category:name` (mounting tracefs if needed). */
export function attachTracepoint(program: BpfProgram, category: string, name: string): BpfLink {
  const what = `tracepoint ${category}/${name}`;
  ensureTracefs();
  const ptr = checkPtr(
    libbpf().bpf_program__attach_tracepoint(program.pointer, cString(category), cString(name)),
    `attach ${what}`,
  );
  return new BpfLink(ptr, `${what} (program "${program.name}")`);
}

/** Where a uprobe goes: a symbol of the binary, or a file offset into it (or both: symbol+offset). */
export interface UprobeTarget {
  /** Path of the executable or library, as the target process maps it. */
  binaryPath: string;
  /** Only this process (default: every process that maps the binary). */
  pid?: number;
  /** ELF symbol to resolve (from .symtab/.dynsym); `offset` is then relative to it. */
  symbol?: string;
  /** File offset of the instruction (absolute when no symbol is given). */
  offset?: number;
  /** A uretprobe. Never on Go functions: it crashes the Go runtime's stack walks. */
  retprobe?: boolean;
  /** The value `bpf_get_attach_cookie()` returns in the program for this attachment. */
  cookie?: bigint;
}

/** Attaches a uprobe (or uretprobe) described by `target`. */
export function attachUprobe(program: BpfProgram, target: UprobeTarget): BpfLink {
  const where = target.symbol
    ? `"${target.symbol}"${target.offset ? `+0x${target.offset.toString(16)}` : ""}`
    : `offset 0x${(target.offset ?? 0).toString(16)}`;
  const kind = target.retprobe ? "uretprobe" : "uprobe";
  const what = `${kind} ${where} to "${target.binaryPath}"${
    target.pid ? ` (pid ${target.pid})` : ""
  }`;
  const opts = new Uint8Array(UPROBE_OPTS_SIZE);
  const view = new DataView(opts.buffer);
  view.setBigUint64(0, BigInt(UPROBE_OPTS_SIZE), true);
  view.setBigUint64(16, target.cookie ?? 0n, true);
  view.setUint8(24, target.retprobe ? 1 : 0);
  const symbol = target.symbol ? cString(target.symbol) : null;
  if (symbol) {
    view.setBigUint64(32, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(symbol))), true);
  }
  const ptr = libbpf().bpf_program__attach_uprobe_opts(
    program.pointer,
    target.pid ?? -1,
    cString(target.binaryPath),
    BigInt(target.offset ?? 0),
    opts,
  );
  // `symbol` must stay alive until here: libbpf reads it during the call.
  void symbol;
  return new BpfLink(checkPtr(ptr, `attach ${what}`), `${what} (program "${program.name}")`);
}

/** Many offsets of one binary for one program: one `uprobe_multi` link. */
export interface UprobeMultiTarget {
  binaryPath: string;
  /** File offsets of the instructions. */
  offsets: readonly number[];
  /** `bpf_get_attach_cookie()` per offset (default 0). */
  cookies?: readonly bigint[];
  /** Only this process (default: every process that maps the binary). */
  pid?: number;
  /** Return probes (each offset must be a function's entry). Never on Go functions. */
  retprobe?: boolean;
}

const SYS_BPF = 321; // x86-64
const BPF_LINK_CREATE = 28;
const BPF_ATTR_SIZE = 128;
const BPF_F_UPROBE_MULTI_RETURN = 1;

/**
 * Attaches `program` (prepared with `prepareForUprobeMulti()` before load) at every offset of
 * `target` with one `uprobe_multi` link (Linux 6.6+). Compared with one perf-event uprobe per
 * offset, it costs one fd and, when detached, one RCU grace period instead of one per offset.
 * libbpf 1.1 predates these links, so this issues BPF_LINK_CREATE itself.
 */
export function attachUprobeMulti(program: BpfProgram, target: UprobeMultiTarget): BpfLink {
  const n = target.offsets.length;
  const what = `${target.retprobe ? "uretprobe" : "uprobe"}_multi of ${n} offset${
    n === 1 ? "" : "s"
  } in "${target.binaryPath}"${target.pid ? ` (pid ${target.pid})` : ""}`;
  if (n === 0) throw new RangeError(`${what}: no offsets`);
  const path = cString(target.binaryPath);
  const offsets = new BigUint64Array(target.offsets.map(BigInt));
  const cookies = new BigUint64Array(n);
  target.cookies?.forEach((c, i) => cookies[i] = c);
  const attr = new Uint8Array(BPF_ATTR_SIZE);
  const view = new DataView(attr.buffer);
  const address = (buf: ArrayBufferView) =>
    BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf as Uint8Array)));
  // union bpf_attr, link_create: prog_fd@0 target_fd@4 attach_type@8 flags@12, then
  // uprobe_multi { path@16 offsets@24 ref_ctr_offsets@32 cookies@40 cnt@48 flags@52 pid@56 }
  view.setUint32(0, program.fd, true);
  view.setUint32(8, BPF_TRACE_UPROBE_MULTI, true);
  view.setBigUint64(16, address(path), true);
  view.setBigUint64(24, address(offsets), true);
  view.setBigUint64(40, address(cookies), true);
  view.setUint32(48, n, true);
  view.setUint32(52, target.retprobe ? BPF_F_UPROBE_MULTI_RETURN : 0, true);
  view.setUint32(56, target.pid ?? 0, true);
  const fd = check(
    libc().syscall(BigInt(SYS_BPF), BigInt(BPF_LINK_CREATE), attr, BigInt(BPF_ATTR_SIZE)),
    `attach ${what}`,
  );
  // The buffers must stay alive until here: the kernel copies them during the call.
  void [path, offsets, cookies];
  return new BpfLink({ fd }, `${what} (program "${program.name}")`);
}
