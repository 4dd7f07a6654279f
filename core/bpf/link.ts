/**
 * Attaching programs. Each function attaches one program one way and returns a
 * {@linkcode BpfLink}, the sole owner of that attachment: disposing it detaches.
 * Plugins never call these; the core does, from what a plugin declares.
 *
 * @module
 */
import { check, checkPtr, cString, libbpf } from "../ffi/libbpf.ts";
import type { BpfProgram } from "./object.ts";
import { ensureTracefs } from "./tracefs.ts";

const UPROBE_OPTS_SIZE = 40; // sizeof(struct bpf_uprobe_opts), libbpf 1.1

/** One attachment of one program. Dispose (or {@linkcode destroy}) to detach. */
export class BpfLink implements Disposable {
  /** What this link is, for logs: `tp_btf sock_recv_length -> on_sock_recv`. */
  readonly description: string;
  #ptr: Deno.PointerObject | null;

  constructor(ptr: Deno.PointerObject, description: string) {
    this.#ptr = ptr;
    this.description = description;
  }

  get attached(): boolean {
    return this.#ptr !== null;
  }

  /** Detaches. Safe to call twice. */
  destroy(): void {
    if (!this.#ptr) return;
    const ptr = this.#ptr;
    this.#ptr = null;
    check(libbpf().bpf_link__destroy(ptr), `detach ${this.description}`);
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
