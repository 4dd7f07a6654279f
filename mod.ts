/**
 * redprobe: a zero-code RED metrics agent. Run it on a Linux host and it finds the services
 * there, attaches eBPF probes to them and exports rate, errors and duration of every HTTP request
 * they serve, to Prometheus.
 *
 * This module is the API for plugin authors: a plugin is a BPF object plus a decoder and a
 * mapping to RED observations, declared with {@linkcode definePlugin}; the core attaches,
 * reads and exports.
 *
 * @example Run the agent
 * ```sh
 * scripts/run.sh                      # or: deno task agent
 * curl http://127.0.0.1:9400/metrics
 * ```
 *
 * @example A plugin
 * ```ts
 * import { definePlugin } from "./mod.ts";
 * import bpfObject from "./plugins/kprobe_http/kprobe_http.bpf.o" with { type: "bytes" };
 *
 * export default definePlugin({
 *   id: "my-http",
 *   description: "an example",
 *   bpfObject,
 *   attachOnce: [{ kind: "auto", program: "on_sock_recv" }],
 *   decode: (bytes) => ({ pid: new DataView(bytes.buffer, bytes.byteOffset).getUint32(32, true) }),
 *   toObservation: (e) => ({
 *     kind: "http_server", pid: e.pid, durationSeconds: 0, method: "GET", status: 200, route: "/",
 *   }),
 * });
 * ```
 *
 * @module
 */
export {
  type AnyPlugin,
  type AttachSpec,
  definePlugin,
  type PluginDefinition,
  PluginDefinitionError,
  type RedObservation,
  type TargetProcess,
  validatePlugin,
} from "./core/plugin.ts";
export type { ConstantValue } from "./core/bpf/object.ts";
export { BUILTIN_PLUGINS } from "./plugins/registry.ts";
