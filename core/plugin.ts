/**
 * The plugin contract: what a probe plugin declares, and nothing it does itself.
 *
 * A plugin owns one protocol. It contributes a compiled BPF object, says what to attach (once,
 * and per target process), which load-time constants to set, how to decode the fixed-layout
 * records its BPF code writes to the `events` ring buffer, and how a decoded event becomes a RED
 * observation. The core does every attach, owns every link and fd, reads the ring and records
 * the observations: a plugin never touches FFI.
 *
 * Built-in plugins and third-party modules use the same contract; {@linkcode definePlugin} exists
 * so authors get type inference and early validation.
 *
 * @example A minimal plugin
 * ```ts
 * import { definePlugin } from "@redprobe/agent";
 * import obj from "./my_proto.bpf.o" with { type: "bytes" };
 *
 * export default definePlugin({
 *   id: "my-proto",
 *   description: "My protocol over TCP",
 *   bpfObject: obj,
 *   attachOnce: [{ kind: "auto", program: "on_sock_recv" }],
 *   decode: (bytes) => ({ tgid: new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true) }),
 *   toObservation: (e) => ({ kind: "http_server", pid: e.tgid, durationSeconds: 0, method: "GET", status: 200, route: "/" }),
 * });
 * ```
 *
 * @module
 */
import { z } from "zod";
import type { ConstantValue } from "./bpf/object.ts";

/** A process the agent instruments, as discovery found it. */
export interface TargetProcess {
  pid: number;
  /** Start time in clock ticks since boot (/proc/pid/stat field 22): pid + this is unique. */
  startTime: number;
  /** Executable path (`/proc/pid/exe`). */
  exe: string;
  /** `service_name` label. */
  serviceName: string;
  /** `service_namespace` label. */
  serviceNamespace: string;
  /** `target_instance` label: `host:pid` of the service's top process (nginx's master). */
  instance: string;
  /** TCP ports it listens on. */
  listenPorts: number[];
}

/** Something to attach. `program` is the C function name of a program in the plugin's object. */
export type AttachSpec =
  /** As the program's section says (`tp_btf/...`, `raw_tp/...`, `tp/cat/name`). */
  | { kind: "auto"; program: string }
  | { kind: "tracepoint"; program: string; category: string; name: string }
  | {
    kind: "uprobe";
    program: string;
    binaryPath: string;
    symbol?: string;
    offset?: number;
    /** Only this pid (per-target attachments default to the target's pid). */
    pid?: number;
    /** A missing optional probe is logged, not an attach failure of the plugin. */
    optional?: boolean;
    /** `bpf_get_attach_cookie()` in the program: per-attachment data (e.g. struct offsets). */
    cookie?: bigint;
  }
  /**
   * One program at many offsets of one binary, as one `uprobe_multi` link (Linux 6.6+): far
   * cheaper to attach and detach than one uprobe per offset. The program must be listed in
   * `uprobeMultiPrograms`.
   */
  | {
    kind: "uprobe-multi";
    program: string;
    binaryPath: string;
    /** File offsets of the instructions. */
    offsets: number[];
    /** `bpf_get_attach_cookie()` for each offset (default 0). */
    cookies?: bigint[];
    /** Only this pid (per-target attachments default to the target's pid). */
    pid?: number;
    /** Return probes: each offset must be a function's entry. Never on Go functions. */
    retprobe?: boolean;
    /**
     * Per-target attachments only: targets whose attachments have the same `shareKey` share
     * one, attached for every process (no pid filter: the BPF code filters by tgid) when the
     * first of them is added and detached when the last is removed. Say which file it is in
     * the key (device and inode), so a library replaced on disk gets its own attachment.
     */
    shareKey?: string;
  };

/** One RED measurement for the exporter. */
export type RedObservation =
  | {
    kind: "http_server" | "http_client";
    /** The process that served or made the request (its tgid). */
    pid: number;
    durationSeconds: number;
    /**
     * When the request started, in the kernel's CLOCK_MONOTONIC nanoseconds
     * (`bpf_ktime_get_ns()`): the start of its span when traces are exported (without it the
     * span ends when the record was read).
     */
    startNs?: bigint;
    /** Upper-case method, or `_OTHER`. */
    method: string;
    /** 0 when there was no response. */
    status: number;
    /** The route, when the plugin computes it; overridden by the core's mapping of `path`. */
    route: string;
    /**
     * The request path as sent (query included: the core drops it). With it, the core maps
     * the route itself: `routes.patterns`, `routes.ignored`, the ID heuristic.
     */
    path?: string;
    /** `path` is the start of a longer path the probe could not keep whole. */
    pathTruncated?: boolean;
    /** Request body size. */
    requestSizeBytes?: number;
    /**
     * The executable, when the plugin knows it (probes attached to a binary for every process
     * running it): labels for a short-lived process that exited before discovery saw it.
     */
    exe?: string;
    /** Client side: where the request went (labels `server_address`, `server_port` if on). */
    serverAddress?: string;
    serverPort?: number;
    /** Server side: who sent the request (label `client_address` if on). */
    clientAddress?: string;
  }
  | {
    kind: "rpc_server" | "rpc_client";
    pid: number;
    durationSeconds: number;
    /** As in the HTTP variant. */
    startNs?: bigint;
    rpcMethod: string;
    rpcSystem: string;
    grpcStatusCode: number;
    /** As in the HTTP variant: labels for a process discovery never saw. */
    exe?: string;
  }
  | {
    /**
     * A database call (`db_client_duration_seconds`): a command sent to a database server and
     * its reply, e.g. a Redis command.
     */
    kind: "db_client";
    pid: number;
    durationSeconds: number;
    /** As in the HTTP variant. */
    startNs?: bigint;
    /** OpenTelemetry's `db.system.name`: `redis`, `postgresql`, ... */
    dbSystem: string;
    /**
     * The operation (`db.operation.name`): a bounded set, such as the upper-case Redis command
     * (`GET`); the plugin maps anything else to `_OTHER`.
     */
    dbOperation: string;
    /** Empty or absent when the call succeeded; else a short error class (`ERR`, `timeout`). */
    errorType?: string;
    /** As in the HTTP variant: labels for a process discovery never saw. */
    exe?: string;
  };

/**
 * A batch of observations sharing one label set, from histograms a plugin aggregates in the
 * kernel: bucket counts per configured bucket (the last one is +Inf) and sums.
 */
export type RedAggregate =
  | {
    kind: "http_server" | "http_client";
    pid: number;
    method: string;
    status: number;
    route: string;
    /** As in RedObservation. */
    path?: string;
    pathTruncated?: boolean;
    durationBuckets: ArrayLike<number>;
    durationSumSeconds: number;
    sizeBuckets: ArrayLike<number>;
    sizeSumBytes: number;
    /** As in RedObservation: labels for a process discovery never saw. */
    exe?: string;
    /** As in RedObservation: the client side's peer. */
    serverAddress?: string;
    serverPort?: number;
    clientAddress?: string;
  }
  | {
    kind: "rpc_server" | "rpc_client";
    pid: number;
    rpcMethod: string;
    rpcSystem: string;
    grpcStatusCode: number;
    durationBuckets: ArrayLike<number>;
    durationSumSeconds: number;
    exe?: string;
  };

/** Read access to one of the plugin's own maps (the core does the reading). */
export type MapLookup = (map: string, key: Uint8Array<ArrayBuffer>) => Uint8Array | undefined;

/** The histogram buckets the exporter uses, for plugins that aggregate in the kernel. */
export interface MetricBuckets {
  durationSeconds: readonly number[];
  sizeBytes: readonly number[];
}

/** What a plugin is given when the agent starts it. */
export interface PluginContext<Options> {
  /** The plugin's validated options (from `plugins.<id>` in the configuration). */
  options: Options;
  /** The exporter's buckets. */
  buckets: MetricBuckets;
  /**
   * The optional labels the exporter adds (`metrics.optional_labels`), so a plugin collects
   * what they need only when they are on (e.g. `server_address`).
   */
  optionalLabels?: readonly string[];
  /**
   * The core needs one ring-buffer record per request (traces are exported: each becomes a
   * span), so histograms must not be kept in the kernel instead.
   */
  perRequestEvents?: boolean;
}

/** Whether the exporter's optional labels include the client side's peer (server_address/port). */
export function peerLabelsOn(optionalLabels: readonly string[] = []): boolean {
  return optionalLabels.some((l) => l === "server_address" || l === "server_port");
}

/**
 * Which peers a connection-level plugin must record for the optional labels that are on: 1 the
 * client side's server (`server_address`, `server_port`), 2 the server side's client
 * (`client_address`). Off labels cost nothing.
 */
export function peerLabelBits(optionalLabels: readonly string[] = []): number {
  return (peerLabelsOn(optionalLabels) ? 1 : 0) |
    (optionalLabels.includes("client_address") ? 2 : 0);
}

/** The contract. `E` is the plugin's decoded event type, `O` its options type. */
export interface PluginDefinition<E = unknown, O = Record<string, unknown>> {
  /** Stable id: lower-case words joined by `-` (`kprobe-http`). Used in config and labels. */
  id: string;
  description: string;
  /** The compiled BPF object (ELF bytes), following the conventions of `bpf/redprobe.bpf.h`. */
  bpfObject: Uint8Array;
  /** Validates and defaults `plugins.<id>` options. Unknown keys must be rejected. */
  optionsSchema?: z.ZodType<O>;
  /** `const volatile` values to set before load. */
  constants?: (ctx: PluginContext<O>) => Record<string, ConstantValue>;
  /** Programs loaded for `uprobe-multi` attachments (they cannot be attached any other way). */
  uprobeMultiPrograms?: readonly string[];
  /** Map sizes to set before load (`{ conns: 65536 }`). */
  maxEntries?: (ctx: PluginContext<O>) => Record<string, number>;
  /**
   * Attached once when the plugin starts (at its first target with `loadOnFirstTarget`); such
   * programs must filter by the `targets` map (or, for uprobes on a binary for every process,
   * by what the plugin configured).
   */
  attachOnce?: AttachSpec[] | ((ctx: PluginContext<O>) => AttachSpec[]);
  /**
   * Load the BPF object when the plugin first has something to instrument, not when the agent
   * starts: for plugins that only instrument some processes (go-http, go-grpc: Go programs),
   * which many hosts never run. Until then the plugin costs the agent nothing but its
   * declaration: no verifier run at start, no ring buffer mapped (a 2 MiB ring is 2 MiB of the
   * agent's RSS: the kernel populates the mapping) or polled, no libbpf state. The object is
   * opened, loaded and its `attachOnce` attached when `appliesTo` first accepts a target (just
   * before that target's `attachForTarget`); the plugin's `redprobe_kernel_events_total`
   * series are exported from the start, at 0. A function decides from the context (go-http
   * loads at start when `executables` asks for probes on files for every process: those serve
   * processes discovery may never see, so there is no first target to wait for).
   *
   * A load that fails then (the verifier refuses the object on this kernel, missing
   * privileges, no memory for its maps) counts as an attach failure of that target
   * (`redprobe_attach_failures_total{plugin,reason}`) and is logged; the plugin then stays
   * unloaded and leaves every later process to the other plugins, as if it had failed at the
   * agent's start. It is not retried at the next target: such a failure is the kernel's or
   * the machine's, and the next attempt would fail the same way after another verifier run
   * (tens to hundreds of ms of the agent's CPU) and another warning, at every new process.
   * `redprobe doctor` says why; a restart of the agent tries again.
   *
   * When no plugin could load at start, the agent loads these at once instead: it must know
   * whether it can measure anything (without privileges it cannot, and it stops).
   */
  loadOnFirstTarget?: boolean | ((ctx: PluginContext<O>) => boolean);
  /**
   * Attachments made later, once the plugin's BPF code asks for them: for programs that cost
   * every process something (a socket tracepoint runs on every read and write of the machine)
   * but are only needed once the plugin has something to measure. The core attaches `specs`
   * once the u32 at key 0 of the plugin's array map `map` becomes non-zero. The BPF code sets
   * it, with a compare-and-swap, when it first needs them, and should submit a ring-buffer
   * record with `BPF_RB_FORCE_WAKEUP` at the same time so the core looks at once (a discarded
   * one wakes it as well, without reaching `decode`); otherwise the core looks at every ring
   * poll, at most 200 ms apart. Attached at most once (a failure is logged and counted, and
   * not retried), detached when the plugin stops, like `attachOnce`. `description` says in the
   * log why they were attached ("first SSL call seen").
   */
  attachOnDemand?: {
    map: string;
    specs: AttachSpec[] | ((ctx: PluginContext<O>) => AttachSpec[]);
    description?: string;
  };
  /**
   * Whether this plugin instruments `target` (default: every target). `{ skip: reason }` means
   * no, for a reason worth counting (`redprobe_processes_skipped_total{plugin,reason}`) and
   * logging once: a binary this plugin cannot handle (`quiet`: the log line is debug level, for
   * the common case such as "not a Go program").
   */
  appliesTo?: (
    target: TargetProcess,
    ctx: PluginContext<O>,
  ) => boolean | { skip: string; detail?: string; quiet?: boolean };
  /**
   * Plugins this one stands in for on the targets it instruments: when it attaches to a
   * process, `"<id>"` leaves that process alone entirely (go-http measures a Go server's HTTP
   * itself, so kprobe-http must not count it again) and `"<id>/clients"` leaves it only that
   * process's client connections (the core sets the plugin's `excluded` bit). A function
   * decides per process (called after a successful attach).
   */
  replaces?:
    | readonly string[]
    | ((target: TargetProcess, ctx: PluginContext<O>) => readonly string[]);
  /**
   * Like `replaces`, for every process of these executables, including those discovery has
   * not seen yet (the core fills the replaced plugin's `excluded_exes` map at start):
   * `{ "kprobe-http/clients": ["/usr/bin/hey"] }`.
   */
  replacesOnExecutables?: (ctx: PluginContext<O>) => Record<string, readonly string[]>;
  /**
   * Processes running an executable for which this returns true are targets even when they do
   * not listen on a TCP port (HTTP clients). Called once per new process; keep it cheap (cache).
   */
  selectsExecutable?: (exePath: string, pid: number, ctx: PluginContext<O>) => boolean;
  /**
   * A `SEC("syscall")` program the core runs every `intervalMs` (default 1000) while the
   * plugin runs: housekeeping for programs that cannot arm a bpf_timer themselves (uprobe
   * programs may not use timers), such as completing requests that timed out.
   */
  sweep?: { program: string; intervalMs?: number };
  /** Attachments for one target, detached when it exits. */
  attachForTarget?: (target: TargetProcess, ctx: PluginContext<O>) => AttachSpec[];
  /** Names of the `stats` map counters at indices 1.. (index 0 is ring-buffer loss). */
  kernelCounters?: readonly string[];
  /** Bytes of one ring-buffer record -> event. Pure; must copy what it keeps. */
  decode: (bytes: Uint8Array) => E;
  /** Event -> observation, or undefined to ignore the event. */
  toObservation: (event: E, ctx: PluginContext<O>) => RedObservation | undefined;
  /**
   * Histograms kept in the kernel (cheaper than a record per request). The core reads the
   * per-CPU hash map `map` of cumulative u64 counters at each drain, sums the CPUs, and hands
   * each key with what it gained since the last read to `decode`.
   */
  aggregates?: {
    map: string;
    decode: (
      key: Uint8Array,
      delta: Float64Array,
      lookup: MapLookup,
      ctx: PluginContext<O>,
    ) => RedAggregate | undefined;
    /** The pid a key belongs to: keys of processes that exited are read once more, then deleted. */
    pidOf: (key: Uint8Array) => number;
  };
}

/** Any plugin, whatever its event type: what the registry and the core handle. */
// deno-lint-ignore no-explicit-any
export type AnyPlugin = PluginDefinition<any, any>;

const attachSpecSchema = z.discriminatedUnion("kind", [
  z.object({ kind: z.literal("auto"), program: z.string().min(1) }),
  z.object({
    kind: z.literal("tracepoint"),
    program: z.string().min(1),
    category: z.string().min(1),
    name: z.string().min(1),
  }),
  z.object({
    kind: z.literal("uprobe"),
    program: z.string().min(1),
    binaryPath: z.string().min(1),
    symbol: z.string().optional(),
    offset: z.number().int().nonnegative().optional(),
    pid: z.number().int().positive().optional(),
    optional: z.boolean().optional(),
    cookie: z.bigint().nonnegative().optional(),
  }),
  z.object({
    kind: z.literal("uprobe-multi"),
    program: z.string().min(1),
    binaryPath: z.string().min(1),
    offsets: z.array(z.number().int().nonnegative()).min(1),
    cookies: z.array(z.bigint().nonnegative()).optional(),
    pid: z.number().int().positive().optional(),
    retprobe: z.boolean().optional(),
    shareKey: z.string().min(1).optional(),
  }),
]);

/** An array of specs (each checked, with its index in the message) or a function of the context. */
const attachSpecsSchema = z.unknown().superRefine((value, ctx) => {
  if (typeof value === "function") return;
  const result = z.array(attachSpecSchema).safeParse(value);
  for (const issue of result.error?.issues ?? []) {
    ctx.addIssue({ code: "custom", path: issue.path, message: issue.message });
  }
});

const pluginSchema = z.object({
  id: z.string().regex(/^[a-z][a-z0-9]*(-[a-z0-9]+)*$/, "lower-case words joined by '-'"),
  description: z.string().min(1),
  bpfObject: z.instanceof(Uint8Array).refine(
    (b) => b.length > 4 && b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46,
    "must be the bytes of an ELF object (.bpf.o)",
  ),
  // Duck-typed: a third-party module may bring its own copy of zod.
  optionsSchema: z.custom<z.ZodType>(
    (v) => typeof (v as { safeParse?: unknown })?.safeParse === "function",
    "must be a zod schema",
  ).optional(),
  constants: z.function().optional(),
  maxEntries: z.function().optional(),
  uprobeMultiPrograms: z.array(z.string().min(1)).optional(),
  attachOnce: attachSpecsSchema.optional(),
  loadOnFirstTarget: z.union([z.boolean(), z.function()]).optional(),
  attachOnDemand: z.strictObject({
    map: z.string().min(1),
    specs: attachSpecsSchema,
    description: z.string().min(1).optional(),
  }).optional(),
  appliesTo: z.function().optional(),
  replaces: z.union([z.array(z.string()), z.function()]).optional(),
  replacesOnExecutables: z.function().optional(),
  selectsExecutable: z.function().optional(),
  attachForTarget: z.function().optional(),
  sweep: z.object({
    program: z.string().min(1),
    intervalMs: z.number().int().min(10).optional(),
  }).optional(),
  kernelCounters: z.array(z.string().regex(/^[a-z][a-z0-9_]*$/)).optional(),
  decode: z.function(),
  toObservation: z.function(),
  aggregates: z.object({
    map: z.string().min(1),
    decode: z.function(),
    pidOf: z.function(),
  }).optional(),
});

/** A plugin definition that does not follow the contract. */
export class PluginDefinitionError extends Error {
  constructor(id: string, problems: string) {
    super(`Invalid plugin "${id}": ${problems}`);
    this.name = "PluginDefinitionError";
  }
}

/** Checks `plugin` against the contract; throws a {@linkcode PluginDefinitionError} naming the field. */
export function validatePlugin(plugin: unknown): AnyPlugin {
  const result = pluginSchema.safeParse(plugin);
  if (!result.success) {
    const id = (plugin as { id?: unknown })?.id;
    const problems = result.error.issues
      .map((i) => `${i.path.join(".") || "(plugin)"}: ${i.message}`)
      .join("; ");
    throw new PluginDefinitionError(typeof id === "string" ? id : "?", problems);
  }
  return plugin as AnyPlugin;
}

/**
 * Identity helper for plugin authors: gives type inference between `decode` and
 * `toObservation`, and validates the definition when the module loads.
 */
export function definePlugin<E, O = Record<string, unknown>>(
  plugin: PluginDefinition<E, O>,
): PluginDefinition<E, O> {
  validatePlugin(plugin);
  return plugin;
}
