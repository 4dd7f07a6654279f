/**
 * Parsers for the /proc files discovery reads. Pure: text in, values out.
 *
 * @module
 */

/** TCP socket states as /proc/net/tcp writes them (hex). */
export const TCP_LISTEN = 0x0a;

export interface ProcNetTcpEntry {
  localAddress: string;
  localPort: number;
  state: number;
  inode: number;
}

const HEX = /^[0-9A-Fa-f]+$/;

/** Parses /proc/net/tcp or /proc/net/tcp6. Malformed lines are skipped. */
export function parseProcNetTcp(text: string): ProcNetTcpEntry[] {
  const out: ProcNetTcpEntry[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [address, port] = f[1].split(":");
    // Strictly hex and decimal: parseInt would read "ZZZZ" as NaN and "1F9x" as 0x1F9.
    if (!HEX.test(address ?? "") || !HEX.test(port ?? "") || !HEX.test(f[3])) continue;
    if (!/^\d+$/.test(f[9])) continue;
    out.push({
      localAddress: address,
      localPort: parseInt(port, 16),
      state: parseInt(f[3], 16),
      inode: Number(f[9]),
    });
  }
  return out;
}

/** inode -> port of every listening socket in a /proc/net/tcp{,6} text. */
export function listeningSockets(text: string): Map<number, number> {
  const out = new Map<number, number>();
  for (const e of parseProcNetTcp(text)) {
    if (e.state === TCP_LISTEN && e.inode !== 0) out.set(e.inode, e.localPort);
  }
  return out;
}

export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  /** Field 22: start time in clock ticks after boot. */
  startTime: number;
}

/**
 * Parses /proc/<pid>/stat. The command name may contain spaces and parentheses, so fields are
 * counted from the last ')'.
 */
export function parseProcStat(text: string): ProcStat | undefined {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) return undefined;
  const rest = text.slice(close + 2).split(" ");
  // rest[0] is field 3 (state); field n is rest[n - 3].
  const pid = Number(text.slice(0, open).trim());
  const ppid = Number(rest[1]);
  const startTime = Number(rest[19]);
  if (!Number.isInteger(pid) || !Number.isInteger(ppid) || !Number.isInteger(startTime)) {
    return undefined;
  }
  return { pid, comm: text.slice(open + 1, close), state: rest[0], ppid, startTime };
}

/** `socket:[12345]` -> 12345; undefined for any other link. */
export function socketInode(link: string): number | undefined {
  const m = /^socket:\[(\d+)\]$/.exec(link);
  return m ? Number(m[1]) : undefined;
}

/** Parses /proc/<pid>/environ (NUL-separated `KEY=value`). */
export function parseEnviron(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const entry of text.split("\0")) {
    const eq = entry.indexOf("=");
    if (eq > 0) out.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  return out;
}

/** Parses OTEL_RESOURCE_ATTRIBUTES (`k=v,k2=v2`, values percent-encoded). */
export function parseResourceAttributes(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const pair of text.split(",")) {
    const eq = pair.indexOf("=");
    if (eq <= 0) continue;
    const key = pair.slice(0, eq).trim();
    let value = pair.slice(eq + 1).trim();
    try {
      value = decodeURIComponent(value);
    } catch {
      // keep the raw value
    }
    if (key) out.set(key, value);
  }
  return out;
}

/** The path of a /proc/<pid>/exe link, without the ` (deleted)` of a replaced binary. */
export function exePath(link: string): string {
  return link.replace(/ \(deleted\)$/, "");
}

/** The executable's file name from a /proc/<pid>/exe link (`/usr/sbin/nginx (deleted)` -> `nginx`). */
export function exeName(exe: string): string {
  const path = exePath(exe);
  return path.slice(path.lastIndexOf("/") + 1);
}

/**
 * `service_name` and `service_namespace` as OpenTelemetry SDKs would report them:
 * OTEL_SERVICE_NAME, else `service.name` in OTEL_RESOURCE_ATTRIBUTES, else `fallbackName`, else
 * the executable's file name; the namespace from `service.namespace`, else `defaultNamespace`.
 */
export function serviceIdentity(
  env: Map<string, string>,
  exe: string,
  defaultNamespace = "",
  /** Instead of the executable's name (a configured selector's `name`). */
  fallbackName?: string,
): { name: string; namespace: string } {
  const attributes = parseResourceAttributes(env.get("OTEL_RESOURCE_ATTRIBUTES") ?? "");
  const name = env.get("OTEL_SERVICE_NAME")?.trim() || attributes.get("service.name") ||
    fallbackName || exeName(exe);
  const namespace = attributes.get("service.namespace") ?? defaultNamespace;
  return { name, namespace };
}
