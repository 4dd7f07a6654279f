/**
 * Discovery: turns /proc into the set of processes to instrument, and keeps it current.
 *
 * Selection (with no configuration): every process that holds a listening TCP socket, in any
 * network namespace, except the agent itself. Each poll reads the listening sockets of every
 * network namespace (cheap), and scans the file descriptors of a process only when it is new
 * or when a new listening socket appeared; a process that exits (or whose pid was reused, told
 * by its start time) is reported removed.
 *
 * @module
 */
import {
  listeningSockets,
  parseEnviron,
  parseProcStat,
  type ProcStat,
  serviceIdentity,
  socketInode,
} from "../lib/proc.ts";
import type { TargetProcess } from "./plugin.ts";

/** The parts of /proc discovery reads; an interface so tests can give it a fake tree. */
export interface ProcFs {
  readText(path: string): string | undefined;
  readDir(path: string): string[];
  readLink(path: string): string | undefined;
}

/** The real /proc. Errors (a process that vanished meanwhile) read as "absent". */
export const realProcFs: ProcFs = {
  readText(path) {
    try {
      return Deno.readTextFileSync(path);
    } catch {
      return undefined;
    }
  },
  readDir(path) {
    try {
      return [...Deno.readDirSync(path)].map((e) => e.name);
    } catch {
      return [];
    }
  },
  readLink(path) {
    try {
      return Deno.readLinkSync(path);
    } catch {
      return undefined;
    }
  },
};

export interface DiscoveryOptions {
  /** Never instrument this pid (the agent's own). */
  selfPid: number;
  /** Host name for `target_instance`. */
  hostname: string;
  /** `service_namespace` when a process does not set `service.namespace`. */
  defaultNamespace?: string;
  /** Extra filter: return false to leave a process alone. */
  accept?: (target: TargetProcess) => boolean;
}

export interface DiscoveryChange {
  added: TargetProcess[];
  removed: TargetProcess[];
}

interface Seen {
  startTime: number;
  /** Listening socket inodes the process holds (empty: not a target). */
  inodes: Set<number>;
}

export class Discovery {
  readonly #fs: ProcFs;
  readonly #options: DiscoveryOptions;
  readonly #targets = new Map<number, TargetProcess>();
  readonly #seen = new Map<number, Seen>();
  #listenKey = "";

  constructor(options: DiscoveryOptions, fs: ProcFs = realProcFs) {
    this.#options = options;
    this.#fs = fs;
  }

  /** The current targets by pid. */
  get targets(): ReadonlyMap<number, TargetProcess> {
    return this.#targets;
  }

  /** One poll: what appeared and what went away since the last one. */
  poll(): DiscoveryChange {
    const fs = this.#fs;
    const pids = fs.readDir("/proc").filter((n) => /^\d+$/.test(n)).map(Number);
    const alive = new Map<number, ProcStat>();
    for (const pid of pids) {
      const stat = parseProcStat(fs.readText(`/proc/${pid}/stat`) ?? "");
      if (stat) alive.set(pid, stat);
    }

    const removed: TargetProcess[] = [];
    for (const [pid, seen] of this.#seen) {
      if (alive.get(pid)?.startTime !== seen.startTime) {
        this.#seen.delete(pid);
        const target = this.#targets.get(pid);
        if (target) {
          this.#targets.delete(pid);
          removed.push(target);
        }
      }
    }

    const listening = this.#listeningSockets(alive);
    const listenKey = [...listening.keys()].sort((a, b) => a - b).join(",");
    const rescanAll = listenKey !== this.#listenKey;
    this.#listenKey = listenKey;

    const added: TargetProcess[] = [];
    const candidates: number[] = [];
    for (const [pid, stat] of alive) {
      if (pid === this.#options.selfPid) continue;
      const seen = this.#seen.get(pid);
      if (seen && !rescanAll) continue;
      const inodes = new Set<number>();
      for (const fd of fs.readDir(`/proc/${pid}/fd`)) {
        const inode = socketInode(fs.readLink(`/proc/${pid}/fd/${fd}`) ?? "");
        if (inode !== undefined && listening.has(inode)) inodes.add(inode);
      }
      this.#seen.set(pid, { startTime: stat.startTime, inodes });
      if (inodes.size > 0 && !this.#targets.has(pid)) candidates.push(pid);
    }
    for (const pid of candidates) {
      const target = this.#describe(pid, alive, listening);
      if (!target) continue;
      if (this.#options.accept && !this.#options.accept(target)) continue;
      this.#targets.set(pid, target);
      added.push(target);
    }
    return { added, removed };
  }

  /** inode -> port of the listening TCP sockets of every network namespace in use. */
  #listeningSockets(alive: Map<number, ProcStat>): Map<number, number> {
    const out = new Map<number, number>();
    const namespaces = new Set<string>();
    for (const pid of alive.keys()) {
      const ns = this.#fs.readLink(`/proc/${pid}/ns/net`);
      if (!ns || namespaces.has(ns)) continue;
      namespaces.add(ns);
      for (const file of ["tcp", "tcp6"]) {
        for (
          const [inode, port] of listeningSockets(
            this.#fs.readText(`/proc/${pid}/net/${file}`) ?? "",
          )
        ) {
          out.set(inode, port);
        }
      }
    }
    return out;
  }

  #describe(
    pid: number,
    alive: Map<number, ProcStat>,
    listening: Map<number, number>,
  ): TargetProcess | undefined {
    const stat = alive.get(pid);
    const exe = this.#fs.readLink(`/proc/${pid}/exe`);
    const seen = this.#seen.get(pid);
    if (!stat || !exe || !seen) return undefined;
    const env = parseEnviron(this.#fs.readText(`/proc/${pid}/environ`) ?? "");
    const { name, namespace } = serviceIdentity(env, exe, this.#options.defaultNamespace);
    // The instance is the top process sharing these listening sockets (nginx's master for
    // its workers), so worker restarts do not create new series.
    let top = pid;
    for (let depth = 0; depth < 32; depth++) {
      const parent = alive.get(top)?.ppid;
      const parentSeen = parent ? this.#seen.get(parent) : undefined;
      if (!parent || !parentSeen || ![...parentSeen.inodes].some((i) => seen.inodes.has(i))) break;
      top = parent;
    }
    const ports = [...new Set([...seen.inodes].map((i) => listening.get(i)!))].sort((a, b) =>
      a - b
    );
    return {
      pid,
      startTime: stat.startTime,
      exe: exe.replace(/ \(deleted\)$/, ""),
      serviceName: name,
      serviceNamespace: namespace,
      instance: `${this.#options.hostname}:${top}`,
      listenPorts: ports,
    };
  }
}
