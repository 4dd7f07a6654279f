/**
 * `redprobe doctor`: what works on this machine and why not. Checks the privileges, the kernel
 * features the plugins use (BTF, uprobes, uprobe_multi, BPF program types) and, per enabled
 * plugin, whether its BPF object passes the verifier here, which attaches nothing. kprobes are
 * reported for information: redprobe needs none.
 *
 * @module
 */
import type { AgentConfig } from "./config.ts";
import { libbpf } from "./ffi/libbpf.ts";
import { loadPluginObject, loadsOnFirstTarget } from "./plugin_host.ts";

export interface DoctorCheck {
  name: string;
  /** "ok", "missing" (required and absent), "absent" (not required) or "failed". */
  state: "ok" | "missing" | "absent" | "failed";
  detail: string;
}

const CAP_DAC_READ_SEARCH = 2n, CAP_SYS_PTRACE = 19n, CAP_PERFMON = 38n, CAP_BPF = 39n;

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Root, or what the agent needs in the effective set: CAP_BPF and CAP_PERFMON (load programs,
 * attach tracepoints and uprobes), CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (read other users'
 * processes' /proc/<pid>/exe, maps, environ and root). Not CAP_SYS_ADMIN: measured on Linux 6.18
 * with only these four (deploy/kubernetes runs so).
 */
export function privileges(status = Deno.readTextFileSync("/proc/self/status")): DoctorCheck {
  const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(status)?.[1];
  const caps = hex ? BigInt(`0x${hex}`) : 0n;
  const has = (cap: bigint) => (caps >> cap & 1n) === 1n;
  const missing = [
    ["CAP_BPF", CAP_BPF],
    ["CAP_PERFMON", CAP_PERFMON],
    ["CAP_SYS_PTRACE", CAP_SYS_PTRACE],
    ["CAP_DAC_READ_SEARCH", CAP_DAC_READ_SEARCH],
  ].filter(([, cap]) => !has(cap as bigint)).map(([name]) => name);
  if (missing.length === 0) {
    return { name: "privileges", state: "ok", detail: Deno.uid() === 0 ? "root" : "capabilities" };
  }
  return {
    name: "privileges",
    state: "missing",
    detail: `run as root, or grant ${missing.join(", ")} (effective set: 0x${hex ?? "?"})`,
  };
}

/** Every check, in order; nothing is attached. */
export function runDoctor(config: AgentConfig): DoctorCheck[] {
  const checks: DoctorCheck[] = [
    { name: "kernel", state: "ok", detail: `Linux ${Deno.osRelease()}` },
    privileges(),
  ];
  const feature = (name: string, path: string, required: boolean, why: string) =>
    checks.push({
      name,
      state: exists(path) ? "ok" : required ? "missing" : "absent",
      detail: exists(path)
        ? why
        : `${path} not found: ${required ? "needed" : "not needed"} (${why})`,
    });
  feature("BTF", "/sys/kernel/btf/vmlinux", true, "tp_btf hooks and CO-RE field reads");
  feature("uprobes", "/sys/bus/event_source/devices/uprobe", true, "go-http, go-grpc, tls-uprobe");
  feature("kprobes", "/sys/bus/event_source/devices/kprobe", false, "redprobe uses none");
  feature("tracefs", "/sys/kernel/tracing/events", false, "only for tracepoint ids by name");
  try {
    libbpf();
    checks.push({ name: "libbpf", state: "ok", detail: "libbpf.so.1 loaded" });
  } catch (e) {
    checks.push({ name: "libbpf", state: "missing", detail: (e as Error).message });
    return checks;
  }
  const buckets = {
    durationSeconds: config.metrics.duration_buckets,
    sizeBytes: config.metrics.size_buckets,
  };
  for (const [id, { plugin, options }] of config.plugins) {
    try {
      let took = 0;
      const ctx = { options, buckets, optionalLabels: config.metrics.optional_labels };
      // Loaded here whether or not the agent loads it at start: a plugin that waits for its
      // first target (loadOnFirstTarget) would otherwise only fail then, hours later.
      const object = loadPluginObject(plugin, ctx, (ms) => took = ms);
      object.close();
      const when = loadsOnFirstTarget(plugin, ctx)
        ? "; the agent loads them at its first target"
        : "";
      checks.push({
        name: `plugin ${id}`,
        state: "ok",
        detail: `its BPF programs pass the verifier (${took} ms${when})`,
      });
    } catch (e) {
      checks.push({ name: `plugin ${id}`, state: "failed", detail: (e as Error).message });
    }
  }
  return checks;
}

/** The checks as a table; true when everything required works. */
export function formatDoctor(checks: readonly DoctorCheck[]): { text: string; ok: boolean } {
  const width = Math.max(...checks.map((c) => c.name.length));
  const lines = checks.map((c) => `  ${c.state.padEnd(8)} ${c.name.padEnd(width)}  ${c.detail}`);
  const ok = checks.every((c) => c.state === "ok" || c.state === "absent");
  return {
    text: [
      "redprobe doctor: what this machine can do",
      ...lines,
      ok ? "Everything redprobe needs works here." : "Some of what redprobe needs is missing.",
    ].join("\n"),
    ok,
  };
}
