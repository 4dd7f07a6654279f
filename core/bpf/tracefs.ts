/**
 * Classic tracepoints are resolved through tracefs, which a fresh machine often has not mounted
 * (libbpf then fails with ENOENT). The agent mounts it itself, once, or says why it cannot.
 *
 * @module
 */
import { BpfError, cString, describeErrno, lastErrno, libc } from "../ffi/libbpf.ts";

/** Where tracefs lives on current kernels. */
export const TRACEFS = "/sys/kernel/tracing";

let mounted = false;

function hasEvents(): boolean {
  try {
    return Deno.statSync(`${TRACEFS}/events`).isDirectory;
  } catch {
    return false;
  }
}

/** Makes sure `/sys/kernel/tracing/events` exists, mounting tracefs if needed. */
export function ensureTracefs(): void {
  if (mounted || hasEvents()) {
    mounted = true;
    return;
  }
  const rc = libc().mount(cString("tracefs"), cString(TRACEFS), cString("tracefs"), 0n, null);
  if (rc !== 0 || !hasEvents()) {
    const errno = rc !== 0 ? lastErrno() : 2;
    throw new BpfError(
      `mount tracefs at ${TRACEFS}`,
      errno,
      `Cannot mount tracefs at ${TRACEFS}: ${describeErrno(errno)}; ` +
        `tracepoints cannot be attached without it (run as root, or mount it: ` +
        `mount -t tracefs tracefs ${TRACEFS})`,
    );
  }
  mounted = true;
}
