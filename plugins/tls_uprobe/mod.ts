/**
 * `tls-uprobe`: HTTP/1.x over TLS for programs that use OpenSSL: nginx, Node.js, Python, curl,
 * wrk, ... as servers and as clients. The plaintext is read at OpenSSL's SSL_read/SSL_write
 * (see tls_uprobe.bpf.c) and measured by the same HTTP/1 engine as kprobe-http, so an HTTPS
 * request gets exactly the metrics and labels a plain one gets.
 *
 * Which files are probed:
 * - with `clients: every_process`, the system's libssl, attached once at start for every
 *   process that maps it (the BPF code keeps targets' connections and any process's client
 *   connections); and for each target, any other libssl it maps and its executable when that
 *   has OpenSSL linked in (Node.js): one attachment per file, shared by every target using it;
 * - otherwise, the same files per target process only. A uprobe for one process puts its
 *   breakpoints in that process alone, so the others (a load generator, a backup job using
 *   libssl) pay nothing for them; a uprobe for every process traps in all of them, ~1 µs per
 *   SSL call even where the BPF code then ignores the call.
 *
 * The socket programs (tls_sock_recv, tls_sock_send on tp_btf/sock_recv_length and
 * sock_send_length; tls_sock_state on inet_sock_set_state) learn the socket under an SSL call:
 * the peer labels and the close. They run on every socket read, write and TCP state change of
 * the machine, and their dispatch alone costs ~60-70 ns each time (~200 ns per request of a
 * plain-HTTP nginx, ~1.4% of its CPU, although nginx never makes an SSL call), so they are
 * attached on demand (`attachOnDemand`): once tls_enter has seen the first SSL call of a
 * measured process, and from then on until the plugin stops. SSL calls made before they are
 * attached (a few ms after the first one) see no socket: their connection learns its socket
 * (peer labels, close) at its next call after the attach, and a connection whose whole life
 * falls in that gap ends at SSL_free (tls_free), as Node's memory-BIO connections always do.
 *
 * @module
 */
import { z } from "zod";
import { type AttachSpec, definePlugin, type TargetProcess } from "../../core/plugin.ts";
import { parseProcMaps } from "../../lib/proc_maps.ts";
import {
  decodeHttpRequestEvent,
  HTTP_KERNEL_COUNTERS,
  type HttpRequestEvent,
} from "../../lib/http1_records.ts";
import {
  http1Aggregates,
  http1EngineConstants,
  http1EngineOptions,
  http1MaxEntries,
  http1Observation,
} from "../../lib/http1_plugin.ts";
import bpfObject from "./tls_uprobe.bpf.o" with { type: "bytes" };
import { type TlsProbePlan, TlsProbePlanCache } from "./library.ts";

/** The counters after the engine's (enum tls_stat in tls_uprobe.bpf.c). */
export const TLS_KERNEL_COUNTERS = [
  ...HTTP_KERNEL_COUNTERS,
  "tls_connections_without_socket",
  "tls_calls_lost",
  "tls_ssl_pointers_reused",
] as const;

/** The programs that learn the socket under an SSL call and its close (attachOnDemand). */
export const SOCKET_PROGRAMS = ["tls_sock_recv", "tls_sock_send", "tls_sock_state"] as const;

/** Where Debian and most distributions keep the system's libssl. */
const SYSTEM_LIBRARY_DIRS = ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64"];
const LIBSSL = /^libssl\.so(\.\d+)*$/;

export const tlsUprobeOptions = z.strictObject({
  ...http1EngineOptions,
  /**
   * libssl files probed for every process from the start (so a short-lived client such as
   * curl is measured from its first request): `auto` is each libssl.so.N of the system's
   * library folders; or a list of paths. Other libssl files are probed when a target maps them.
   */
  libraries: z.union([z.literal("auto"), z.array(z.string().min(1))]).default("auto"),
});

export type TlsUprobeOptions = z.infer<typeof tlsUprobeOptions>;

const plans = new TlsProbePlanCache();

/** The system's libssl files (real paths, one per file). */
export function systemLibraries(dirs: readonly string[] = SYSTEM_LIBRARY_DIRS): string[] {
  const seen = new Map<string, string>();
  for (const dir of dirs) {
    let names: string[];
    try {
      names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => LIBSSL.test(n));
    } catch {
      continue;
    }
    for (const name of names.sort()) {
      try {
        const path = Deno.realPathSync(`${dir}/${name}`);
        const st = Deno.statSync(path);
        seen.set(`${st.dev}:${st.ino}`, path);
      } catch {
        // a dangling link
      }
    }
  }
  return [...seen.values()];
}

/** The attachments of one plan; `shareKey`s when they are per-target attachments. */
export function planAttachments(path: string, plan: TlsProbePlan, shared: boolean): AttachSpec[] {
  const share = (what: string) => shared ? { shareKey: `${plan.fileId}:${what}` } : {};
  const specs: AttachSpec[] = [{
    kind: "uprobe-multi",
    program: "tls_enter",
    binaryPath: path,
    offsets: plan.entries.map((e) => e.offset),
    cookies: plan.entries.map((e) => e.cookie),
    ...share("enter"),
  }];
  if (plan.exitSites.length > 0) {
    specs.push({
      kind: "uprobe-multi",
      program: "tls_exit",
      binaryPath: path,
      offsets: plan.exitSites,
      ...share("exit"),
    });
  }
  if (plan.frees.length > 0) {
    specs.push({
      kind: "uprobe-multi",
      program: "tls_free",
      binaryPath: path,
      offsets: plan.frees,
      ...share("free"),
    });
  }
  if (plan.returnProbes.length > 0) {
    specs.push({
      kind: "uprobe-multi",
      program: "tls_exit",
      binaryPath: path,
      offsets: plan.returnProbes,
      retprobe: true,
      ...share("return"),
    });
  }
  return specs;
}

/** The files attached once at start (by identity), so targets do not attach them again. */
const globalFiles = new Set<string>();

/** The libssl paths attached for every process under `options`. */
function globalLibraryPaths(options: TlsUprobeOptions): string[] {
  if (options.clients !== "every_process") return [];
  return options.libraries === "auto" ? systemLibraries() : options.libraries;
}

/** The OpenSSL files `target` runs (libssl it maps, its executable if OpenSSL is linked in). */
function targetFiles(target: TargetProcess): { path: string; plan: TlsProbePlan }[] {
  let maps: string;
  try {
    maps = Deno.readTextFileSync(`/proc/${target.pid}/maps`);
  } catch {
    return [];
  }
  const paths = new Set<string>();
  for (const m of parseProcMaps(maps)) {
    if (m.deleted || !m.perms.includes("x")) continue;
    const base = m.path.slice(m.path.lastIndexOf("/") + 1);
    if (LIBSSL.test(base) || m.path === target.exe) paths.add(m.path);
  }
  const out: { path: string; plan: TlsProbePlan }[] = [];
  for (const mapped of paths) {
    // The maps' paths are in the process's mount namespace: through its root they name the
    // same file from the agent's (a container's files, from an agent in another container).
    const path = `/proc/${target.pid}/root${mapped}`;
    const plan = plans.plan(path);
    if (plan) out.push({ path, plan });
  }
  return out;
}

export default definePlugin<HttpRequestEvent, TlsUprobeOptions>({
  id: "tls-uprobe",
  description:
    "HTTP/1.x over TLS (OpenSSL) servers and clients, from uprobes on SSL_read/SSL_write",
  bpfObject,
  optionsSchema: tlsUprobeOptions,
  constants: http1EngineConstants,
  maxEntries: http1MaxEntries,
  uprobeMultiPrograms: ["tls_enter", "tls_exit", "tls_free"],
  // Request timeouts (uprobe programs cannot arm a bpf_timer).
  sweep: { program: "tls_sweep", intervalMs: 1000 },
  attachOnce: ({ options }) => {
    globalFiles.clear();
    const specs: AttachSpec[] = [];
    for (const path of globalLibraryPaths(options)) {
      const plan = plans.plan(path);
      if (!plan) continue;
      globalFiles.add(plan.fileId);
      specs.push(...planAttachments(path, plan, false));
    }
    return specs;
  },
  // The socket programs run on every socket read, write and close of the machine: attached
  // once tls_enter has seen an SSL call (see the top of this file).
  attachOnDemand: {
    map: "sockets_wanted",
    specs: SOCKET_PROGRAMS.map((program) => ({ kind: "auto", program })),
    description: "first SSL call seen",
  },
  appliesTo: (target) =>
    targetFiles(target).length > 0 ||
    { skip: "no_openssl", detail: "maps no libssl and has no OpenSSL linked in", quiet: true },
  attachForTarget: (target, { options }) =>
    targetFiles(target)
      .filter(({ plan }) => !globalFiles.has(plan.fileId))
      .flatMap(({ path, plan }) =>
        planAttachments(path, plan, options.clients === "every_process")
      ),
  kernelCounters: TLS_KERNEL_COUNTERS,
  aggregates: http1Aggregates,
  decode: decodeHttpRequestEvent,
  toObservation: http1Observation,
});
