/**
 * `redis`: an example third-party plugin. The duration and outcome of every Redis command any
 * process on the host sends to a Redis server on one of `ports`, from the kernel's socket
 * tracepoints, exported as `db_client_duration_seconds{db_system="redis",db_operation,
 * error_type}`. Load it with `plugin_modules` (see README.md); it uses only the public plugin
 * API (`../../mod.ts`) and zod.
 *
 * @module
 */
import { z } from "zod";
import { definePlugin } from "../../mod.ts";
import bpfObject from "./redis.bpf.o" with { type: "bytes" };
import {
  dbOperation,
  decodeRedisEvent,
  errorType,
  parseTimeoutMs,
  REDIS_KERNEL_COUNTERS,
  type RedisEvent,
} from "./decode.ts";

/** Peer ports the BPF program can watch (`ports` in redis.bpf.c). */
export const MAX_PORTS = 8;

export const redisOptions = z.strictObject({
  /** Ports of the Redis servers whose clients are measured (the peer port of a connection). */
  ports: z.array(z.number().int().min(1).max(65535)).min(1).max(MAX_PORTS).default([6379]),
  /** A command with no reply after this long is counted with `error_type="timeout"`. */
  request_timeout: z.union([z.string(), z.number()]).default("30s").transform((v, ctx) => {
    const ms = parseTimeoutMs(v);
    if (ms === undefined) {
      ctx.addIssue({
        code: "custom",
        message: `expected a duration such as "30s" or "500ms", got ${JSON.stringify(v)}`,
      });
      return z.NEVER;
    }
    return ms;
  }),
  /**
   * Connections tracked at once (least recently used are forgotten beyond this). The kernel
   * allocates ~1.3 KiB per slot up front: 2048 is ~2.7 MiB.
   */
  max_connections: z.number().int().min(64).max(1 << 20).default(2048),
});

export type RedisOptions = z.infer<typeof redisOptions>;

export default definePlugin<RedisEvent, RedisOptions>({
  id: "redis",
  description: "Redis commands of any client process, from socket tracepoints (example plugin)",
  bpfObject,
  optionsSchema: redisOptions,
  constants: ({ options }) => ({
    ports: Array.from({ length: MAX_PORTS }, (_, i) => options.ports[i] ?? 0),
    agent_tgid: Deno.pid,
    request_timeout_ns: BigInt(Math.round(options.request_timeout * 1e6)),
  }),
  maxEntries: ({ options }) => ({ conns: options.max_connections }),
  // Nothing per process: the programs below serve every process, whether discovery saw it or not
  // (redis-cli lives for milliseconds).
  appliesTo: () => false,
  // Every process's sockets: the programs filter by peer port and leave the agent alone.
  attachOnce: [
    { kind: "auto", program: "redis_send" },
    { kind: "auto", program: "redis_recv" },
    { kind: "auto", program: "redis_state" },
  ],
  // Timeouts: a SEC("syscall") program the core runs every second.
  sweep: { program: "redis_sweep", intervalMs: 1000 },
  kernelCounters: REDIS_KERNEL_COUNTERS,
  decode: decodeRedisEvent,
  toObservation: (e) => ({
    kind: "db_client",
    pid: e.tgid,
    durationSeconds: e.durationSeconds,
    startNs: e.startNs,
    dbSystem: "redis",
    dbOperation: dbOperation(e.name, e.nameTotal),
    errorType: errorType(e),
    exe: e.exe || undefined,
  }),
});
