/**
 * The only file that calls `Deno.dlopen`.
 *
 * It binds libbpf 1.x (`libbpf.so.1`) and the few libc functions the core needs (mmap for the
 * ring buffer, poll/eventfd to wait for it, vsnprintf for libbpf's log lines, mount for tracefs).
 * Every symbol is declared as data with the C prototype of each parameter, and every native
 * failure goes through {@linkcode check} / {@linkcode checkPtr}, which turn a return code or errno
 * into a {@linkcode BpfError} that says what failed:
 * `Cannot attach tracepoint syscalls/sys_exit_read: ENOENT (No such file or directory)`.
 *
 * @module
 */

/** libbpf 1.1 symbols (Debian bookworm's libbpf1). Comments give the C prototypes. */
const LIBBPF_SYMBOLS = {
  // libbpf_print_fn_t libbpf_set_print(libbpf_print_fn_t fn)
  libbpf_set_print: { parameters: ["function"], result: "pointer" },
  // struct bpf_object *bpf_object__open_mem(const void *obj_buf, size_t obj_buf_sz,
  //                                          const struct bpf_object_open_opts *opts)
  bpf_object__open_mem: { parameters: ["buffer", "usize", "buffer"], result: "pointer" },
  // int bpf_object__load(struct bpf_object *obj)
  bpf_object__load: { parameters: ["pointer"], result: "i32" },
  // void bpf_object__close(struct bpf_object *obj)
  bpf_object__close: { parameters: ["pointer"], result: "void" },
  // struct bpf_program *bpf_object__next_program(const struct bpf_object *obj,
  //                                               struct bpf_program *prog)
  bpf_object__next_program: { parameters: ["pointer", "pointer"], result: "pointer" },
  // struct bpf_map *bpf_object__next_map(const struct bpf_object *obj, const struct bpf_map *map)
  bpf_object__next_map: { parameters: ["pointer", "pointer"], result: "pointer" },
  // const char *bpf_program__name(const struct bpf_program *prog)
  bpf_program__name: { parameters: ["pointer"], result: "pointer" },
  // const char *bpf_program__section_name(const struct bpf_program *prog)
  bpf_program__section_name: { parameters: ["pointer"], result: "pointer" },
  // int bpf_program__set_autoload(struct bpf_program *prog, bool autoload)
  bpf_program__set_autoload: { parameters: ["pointer", "bool"], result: "i32" },
  // int bpf_program__fd(const struct bpf_program *prog)
  bpf_program__fd: { parameters: ["pointer"], result: "i32" },
  // int bpf_program__set_expected_attach_type(struct bpf_program *prog,
  //     enum bpf_attach_type type)
  bpf_program__set_expected_attach_type: { parameters: ["pointer", "u32"], result: "i32" },
  // struct bpf_link *bpf_program__attach(const struct bpf_program *prog)
  bpf_program__attach: { parameters: ["pointer"], result: "pointer" },
  // struct bpf_link *bpf_program__attach_tracepoint(const struct bpf_program *prog,
  //                                                  const char *tp_category, const char *tp_name)
  bpf_program__attach_tracepoint: {
    parameters: ["pointer", "buffer", "buffer"],
    result: "pointer",
  },
  // struct bpf_link *bpf_program__attach_uprobe_opts(const struct bpf_program *prog, pid_t pid,
  //     const char *binary_path, size_t func_offset, const struct bpf_uprobe_opts *opts)
  bpf_program__attach_uprobe_opts: {
    parameters: ["pointer", "i32", "buffer", "usize", "buffer"],
    result: "pointer",
  },
  // int bpf_link__destroy(struct bpf_link *link)
  bpf_link__destroy: { parameters: ["pointer"], result: "i32" },
  // The same, on a worker thread: detaching a uprobe waits for an RCU grace period (~100 ms
  // each here), which must not freeze the event loop while ring buffers fill.
  bpf_link__destroy_nonblocking: {
    name: "bpf_link__destroy",
    parameters: ["pointer"],
    result: "i32",
    nonblocking: true,
  },
  // const char *bpf_map__name(const struct bpf_map *map)
  bpf_map__name: { parameters: ["pointer"], result: "pointer" },
  // int bpf_map__fd(const struct bpf_map *map)
  bpf_map__fd: { parameters: ["pointer"], result: "i32" },
  // enum bpf_map_type bpf_map__type(const struct bpf_map *map)
  bpf_map__type: { parameters: ["pointer"], result: "i32" },
  // __u32 bpf_map__key_size(const struct bpf_map *map)
  bpf_map__key_size: { parameters: ["pointer"], result: "u32" },
  // __u32 bpf_map__value_size(const struct bpf_map *map)
  bpf_map__value_size: { parameters: ["pointer"], result: "u32" },
  // __u32 bpf_map__max_entries(const struct bpf_map *map)
  bpf_map__max_entries: { parameters: ["pointer"], result: "u32" },
  // int bpf_map__set_max_entries(struct bpf_map *map, __u32 max_entries)
  bpf_map__set_max_entries: { parameters: ["pointer", "u32"], result: "i32" },
  // const void *bpf_map__initial_value(struct bpf_map *map, size_t *psize)
  bpf_map__initial_value: { parameters: ["pointer", "buffer"], result: "pointer" },
  // struct btf *bpf_object__btf(const struct bpf_object *obj)
  bpf_object__btf: { parameters: ["pointer"], result: "pointer" },
  // __s32 btf__find_by_name_kind(const struct btf *btf, const char *type_name, __u32 kind)
  btf__find_by_name_kind: { parameters: ["pointer", "buffer", "u32"], result: "i32" },
  // const struct btf_type *btf__type_by_id(const struct btf *btf, __u32 id)
  btf__type_by_id: { parameters: ["pointer", "u32"], result: "pointer" },
  // const char *btf__name_by_offset(const struct btf *btf, __u32 offset)
  btf__name_by_offset: { parameters: ["pointer", "u32"], result: "pointer" },
  // int bpf_map_lookup_elem(int fd, const void *key, void *value)
  bpf_map_lookup_elem: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int bpf_map_update_elem(int fd, const void *key, const void *value, __u64 flags)
  bpf_map_update_elem: { parameters: ["i32", "buffer", "buffer", "u64"], result: "i32" },
  // int bpf_map_delete_elem(int fd, const void *key)
  bpf_map_delete_elem: { parameters: ["i32", "buffer"], result: "i32" },
  // int bpf_map_get_next_key(int fd, const void *key, void *next_key)
  bpf_map_get_next_key: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int bpf_prog_test_run_opts(int prog_fd, struct bpf_test_run_opts *opts)
  bpf_prog_test_run_opts: { parameters: ["i32", "buffer"], result: "i32" },
  // int bpf_obj_get_info_by_fd(int bpf_fd, void *info, __u32 *info_len)
  bpf_obj_get_info_by_fd: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  // int libbpf_num_possible_cpus(void)
  libbpf_num_possible_cpus: { parameters: [], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** libc symbols the core needs around libbpf. */
const LIBC_SYMBOLS = {
  // int *__errno_location(void)
  __errno_location: { parameters: [], result: "pointer" },
  // int vsnprintf(char *str, size_t size, const char *format, va_list ap)
  vsnprintf: { parameters: ["buffer", "usize", "pointer", "pointer"], result: "i32" },
  // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
  mmap: { parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  // int munmap(void *addr, size_t length)
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  // long sysconf(int name)
  sysconf: { parameters: ["i32"], result: "i64" },
  // int poll(struct pollfd *fds, nfds_t nfds, int timeout): runs on a worker thread so a wait
  // for ring-buffer data never blocks the event loop.
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  // int eventfd(unsigned int initval, int flags)
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  // ssize_t write(int fd, const void *buf, size_t count)
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // int close(int fd)
  close: { parameters: ["i32"], result: "i32" },
  // The same on a worker thread: closing a uprobe link waits for an RCU grace period.
  close_nonblocking: { name: "close", parameters: ["i32"], result: "i32", nonblocking: true },
  // long syscall(long number, ...): for bpf(2) commands libbpf 1.1 has no wrapper for
  // (BPF_LINK_CREATE of uprobe_multi links). Integer arguments only, so the variadic call is safe.
  syscall: { parameters: ["i64", "i64", "buffer", "u64"], result: "i64" },
  // int mount(const char *source, const char *target, const char *fstype,
  //           unsigned long mountflags, const void *data)
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "pointer"], result: "i32" },
  // int clock_gettime(clockid_t clockid, struct timespec *tp): CLOCK_MONOTONIC is the clock of
  // bpf_ktime_get_ns(), which Deno does not expose.
  clock_gettime: { parameters: ["i32", "buffer"], result: "i32" },
  // int malloc_trim(size_t pad): gives the C heap's free memory back to the system. libbpf
  // parses the kernel's BTF (megabytes) for each object it loads and frees it; glibc keeps it.
  malloc_trim: { parameters: ["usize"], result: "i32" },
  // int madvise(void *addr, size_t length, int advice)
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

export type Libbpf = Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS>["symbols"];
export type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

/** Where libbpf is looked for; the Debian package `libbpf1` installs the first. */
const LIBBPF_PATHS = ["libbpf.so.1", "/usr/lib/x86_64-linux-gnu/libbpf.so.1", "libbpf.so"];

let libbpfLib: Deno.DynamicLibrary<typeof LIBBPF_SYMBOLS> | undefined;
let libcLib: Deno.DynamicLibrary<typeof LIBC_SYMBOLS> | undefined;

/** The libbpf symbols, opened on first use. Throws a {@linkcode BpfError} if libbpf is missing. */
export function libbpf(): Libbpf {
  if (!libbpfLib) {
    const errors: string[] = [];
    for (const path of LIBBPF_PATHS) {
      try {
        libbpfLib = Deno.dlopen(path, LIBBPF_SYMBOLS);
        break;
      } catch (e) {
        errors.push(`${path}: ${(e as Error).message}`);
      }
    }
    if (!libbpfLib) {
      throw new BpfError(
        "load libbpf",
        0,
        `Cannot load libbpf (install the Debian package libbpf1): ${errors.join("; ")}`,
      );
    }
  }
  return libbpfLib.symbols;
}

/** The libc symbols, opened on first use. */
export function libc(): Libc {
  libcLib ??= Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
  return libcLib.symbols;
}

// ---------------------------------------------------------------------------------------------
// Errors

/** errno values the agent meets, with the names the kernel headers give them. */
const ERRNO_NAMES: Record<number, [string, string]> = {
  1: ["EPERM", "Operation not permitted"],
  2: ["ENOENT", "No such file or directory"],
  3: ["ESRCH", "No such process"],
  4: ["EINTR", "Interrupted system call"],
  5: ["EIO", "Input/output error"],
  7: ["E2BIG", "Argument list too long"],
  9: ["EBADF", "Bad file descriptor"],
  11: ["EAGAIN", "Resource temporarily unavailable"],
  12: ["ENOMEM", "Cannot allocate memory"],
  13: ["EACCES", "Permission denied"],
  14: ["EFAULT", "Bad address"],
  16: ["EBUSY", "Device or resource busy"],
  17: ["EEXIST", "File exists"],
  19: ["ENODEV", "No such device"],
  22: ["EINVAL", "Invalid argument"],
  24: ["EMFILE", "Too many open files"],
  28: ["ENOSPC", "No space left on device"],
  34: ["ERANGE", "Numerical result out of range"],
  38: ["ENOSYS", "Function not implemented"],
  95: ["EOPNOTSUPP", "Operation not supported"],
  524: ["ENOTSUPP", "Operation is not supported"],
  4001: ["LIBBPF_ERRNO__LIBELF", "Something wrong in libelf"],
  4002: ["LIBBPF_ERRNO__FORMAT", "BPF object format invalid"],
  4003: ["LIBBPF_ERRNO__KVERSION", "Incorrect or no 'version' section"],
  4004: ["LIBBPF_ERRNO__ENDIAN", "Endian mismatch"],
  4005: ["LIBBPF_ERRNO__INTERNAL", "Internal error in libbpf"],
  4006: ["LIBBPF_ERRNO__RELOC", "Relocation failed"],
  4007: ["LIBBPF_ERRNO__LOAD", "Load program failed for unknown reason"],
  4008: ["LIBBPF_ERRNO__VERIFY", "Kernel verifier blocks program loading"],
  4009: ["LIBBPF_ERRNO__PROG2BIG", "Program too big"],
  4010: ["LIBBPF_ERRNO__KVER", "Incorrect kernel version"],
  4011: ["LIBBPF_ERRNO__PROGTYPE", "Kernel doesn't support this program type"],
  4012: ["LIBBPF_ERRNO__WRNGPID", "Wrong pid in netlink message"],
  4013: ["LIBBPF_ERRNO__INVSEQ", "Invalid netlink sequence"],
  4014: ["LIBBPF_ERRNO__NLPARSE", "Netlink parse error"],
};

/** `ENOENT (No such file or directory)` for 2; `errno 1234` for what the table does not know. */
const CLOCK_REALTIME = 0;
const CLOCK_MONOTONIC = 1;
const timespec = new BigInt64Array(2);
const timespecBytes = new Uint8Array(timespec.buffer);

function clockNs(clock: number): bigint {
  check(libc().clock_gettime(clock, timespecBytes), "clock_gettime");
  return timespec[0] * 1_000_000_000n + timespec[1];
}

/**
 * Wall-clock time minus CLOCK_MONOTONIC, in nanoseconds: add it to a `bpf_ktime_get_ns()`
 * timestamp to get Unix time. Read back to back, the smaller of three tries (the least
 * preempted); NTP slews the wall clock, so callers refresh it now and then.
 */
export function monotonicToWallOffsetNs(): bigint {
  let best: bigint | undefined;
  let offset = 0n;
  for (let i = 0; i < 3; i++) {
    const a = clockNs(CLOCK_MONOTONIC);
    const wall = clockNs(CLOCK_REALTIME);
    const b = clockNs(CLOCK_MONOTONIC);
    if (best === undefined || b - a < best) {
      best = b - a;
      offset = wall - (a + (b - a) / 2n);
    }
  }
  return offset;
}

/** Returns the C heap's free memory to the system (after loading BPF objects). */
export function trimNativeHeap(): void {
  libc().malloc_trim(0n);
}

/** madvise(2): reclaim these pages now (Linux 5.4+). */
const MADV_PAGEOUT = 21;

/**
 * Asks the kernel to reclaim the pages of these ranges of the agent's own address space now
 * (`madvise(MADV_PAGEOUT)`): meant for clean, file-backed, read-only mappings, whose pages the
 * kernel drops (they are the file's) and reads back from the file at their next use. Pages
 * another process also maps are left alone by the kernel. Returns the bytes advised; a range the
 * kernel refuses (EINVAL before Linux 5.4) is skipped: this is only ever a saving.
 */
export function pageOut(ranges: readonly { start: number; end: number }[]): number {
  let advised = 0;
  for (const { start, end } of ranges) {
    const at = Deno.UnsafePointer.create(BigInt(start));
    if (libc().madvise(at, BigInt(end - start), MADV_PAGEOUT) === 0) advised += end - start;
  }
  return advised;
}

/** CLOCK_MONOTONIC now, in nanoseconds (the clock of `bpf_ktime_get_ns()`). */
export function monotonicNs(): bigint {
  return clockNs(CLOCK_MONOTONIC);
}

export function describeErrno(errno: number): string {
  const known = ERRNO_NAMES[errno];
  return known ? `${known[0]} (${known[1]})` : `errno ${errno}`;
}

/** The symbolic name of an errno value (`ENOENT`), or `E<number>`. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno]?.[0] ?? `E${errno}`;
}

/** A failed native call: what the agent tried (`op`), and the errno the kernel or libbpf gave. */
export class BpfError extends Error {
  /** The positive errno value (0 when there is none). */
  readonly errno: number;
  /** The errno's symbolic name, e.g. `ENOENT`; usable as a metric label. */
  readonly code: string;
  /** What was attempted, e.g. `attach tracepoint syscalls/sys_exit_read`. */
  readonly op: string;

  constructor(op: string, errno: number, message?: string) {
    super(message ?? `Cannot ${op}: ${describeErrno(errno)}`);
    this.name = "BpfError";
    this.op = op;
    this.errno = errno;
    this.code = errno ? errnoName(errno) : "EUNKNOWN";
  }

  /** True when the kernel refused because the feature is missing or locked down here. */
  get notSupported(): boolean {
    return [19, 38, 95, 524, 4011].includes(this.errno);
  }
}

/** The calling thread's errno, read right after a native call that failed. */
export function lastErrno(): number {
  const where = libc().__errno_location();
  return where ? new Deno.UnsafePointerView(where).getInt32() : 0;
}

/**
 * Turns a libbpf/libc integer return code into an exception. libbpf 1.x returns `-errno`;
 * libc returns -1 and sets errno: both are handled.
 */
export function check(rc: number | bigint, op: string): number {
  const n = Number(rc);
  if (n >= 0) return n;
  const errno = n === -1 ? lastErrno() || 1 : -n;
  throw new BpfError(op, errno);
}

/** Turns a NULL pointer from libbpf (which sets errno) into an exception. */
export function checkPtr(ptr: Deno.PointerValue, op: string): Deno.PointerObject {
  if (ptr !== null) return ptr;
  throw new BpfError(op, lastErrno() || 22);
}

// ---------------------------------------------------------------------------------------------
// Strings

const encoder = new TextEncoder();

/** A NUL-terminated copy of `s`, for `const char *` parameters. */
export function cString(s: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Reads a C string; `""` for NULL. */
export function readCString(ptr: Deno.PointerValue): string {
  return ptr ? Deno.UnsafePointerView.getCString(ptr) : "";
}

// ---------------------------------------------------------------------------------------------
// libbpf's log

/** libbpf's log levels (enum libbpf_print_level). */
export type LibbpfLogLevel = "warn" | "info" | "debug";
export type LibbpfLogSink = (level: LibbpfLogLevel, line: string) => void;

let printCallback:
  | Deno.UnsafeCallback<{ parameters: ["i32", "pointer", "pointer"]; result: "i32" }>
  | undefined;
let printSink: LibbpfLogSink | undefined;
const printBuffer = new Uint8Array(16 * 1024);
const decoder = new TextDecoder();

/**
 * Routes libbpf's log lines (including verifier logs on load failure) to `sink`. libbpf hands its
 * callback a `va_list`, which is formatted with libc's `vsnprintf`. Pass `undefined` to restore
 * libbpf's default (stderr) and free the callback.
 */
export function setLibbpfLogSink(sink: LibbpfLogSink | undefined): void {
  printSink = sink;
  if (sink && !printCallback) {
    printCallback = new Deno.UnsafeCallback(
      { parameters: ["i32", "pointer", "pointer"], result: "i32" } as const,
      (level, format, args) => {
        const n = libc().vsnprintf(printBuffer, BigInt(printBuffer.length), format, args);
        const len = Math.max(0, Math.min(n, printBuffer.length - 1));
        const text = decoder.decode(printBuffer.subarray(0, len)).replace(/\n+$/, "");
        const name: LibbpfLogLevel = level === 0 ? "warn" : level === 1 ? "info" : "debug";
        for (const line of text.split("\n")) printSink?.(name, line);
        return n;
      },
    );
    libbpf().libbpf_set_print(printCallback.pointer);
  } else if (!sink && printCallback) {
    // libbpf must stop calling the callback before it is freed.
    libbpf().libbpf_set_print(null);
    printCallback.close();
    printCallback = undefined;
  }
}
