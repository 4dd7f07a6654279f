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
  exePath,
  listeningSockets,
  parseEnviron,
  parseProcStat,
  serviceIdentity,
  socketInode,
} from "../lib/proc.ts";
import type { TargetProcess } from "./plugin.ts";
import type { ProcessFacts, Selector } from "../lib/selectors.ts";

/** The parts of /proc discovery reads; an interface so tests can give it a fake tree. */
export interface ProcFs {
  readText(path: string): string | undefined;
  readDir(path: string): string[];
  readLink(path: string): string | undefined;
  /**
   * The start of a file, read until `enough(textSoFar)` says so (or the end). Optional: the
   * whole file is read when a ProcFs does not provide it.
   */
  readHead?(path: string, enough: (text: string) => boolean): string | undefined;
}

/**
 * /proc/net/tcp lists listening sockets first (the kernel walks its listening hash before the
 * established one), and the established part can hold tens of thousands of TIME_WAIT sockets
 * that cost milliseconds to format. Reading stops at the first socket that is not listening.
 */
function pastListeners(text: string): boolean {
  const lines = text.split("\n");
  // The last line may be incomplete; the header (line 0) has no state.
  return lines.slice(1, -1).some((line) => line.trim().split(/\s+/)[3] !== "0A");
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
  readHead(path, enough) {
    let file: Deno.FsFile | undefined;
    try {
      file = Deno.openSync(path);
      const decoder = new TextDecoder();
      const chunk = new Uint8Array(16384);
      let text = "";
      for (;;) {
        const n = file.readSync(chunk);
        if (n === null) return text;
        text += decoder.decode(chunk.subarray(0, n), { stream: true });
        if (enough(text)) return text;
      }
    } catch {
      return undefined;
    } finally {
      file?.close();
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
  /**
   * `discovery.select`: when not empty, only processes one of these matches are targets (a
   * selector without ports also selects processes that listen on nothing), named by the
   * first match's `name` when their environment names no service.
   */
  select?: readonly Selector[];
  /** `discovery.exclude`: processes never instrumented. */
  exclude?: readonly Selector[];
  /**
   * Selects a process that listens on nothing (an HTTP client) by its executable. Asked once
   * per new process, with the executable path as /proc shows it.
   */
  selectExecutable?: (exePath: string, pid: number) => boolean;
}

export interface DiscoveryChange {
  added: TargetProcess[];
  removed: TargetProcess[];
  /**
   * Processes that would be targets but `exclude` names: the agent makes the plugins leave
   * their client traffic alone too. Reported once; `unexcluded` when they are gone. Present
   * only when not empty.
   */
  excluded?: number[];
  unexcluded?: number[];
}

interface Seen {
  startTime: number;
  ppid: number;
  /** Its network namespace (`net:[4026531840]`), whose socket tables say what listens. */
  netns: string;
  /** Listening socket inodes the process holds (empty: not a target unless selected). */
  inodes: Set<number>;
  /** Selected by its executable (a client): a target whatever it listens on. */
  selected?: boolean;
}

/**
 * Every this many polls, every known process's start time is checked again, to notice a pid
 * reused by a new process that is not a target (targets are checked at every poll).
 */
const FULL_CHECK_EVERY = 20;

/**
 * Reading a /proc/net/tcp table costs ~1.5 ms here however few sockets there are (the kernel
 * walks every bucket of its hash tables). So the tables are read while processes are new (a
 * server listens within moments of starting; a process counts as new for this long) ...
 */
const NEW_PROCESS_MS = 3_000;
/** ... and otherwise this often, for an old process that starts listening late. */
const TABLES_EVERY_MS = 5_000;

export class Discovery {
  readonly #fs: ProcFs;
  readonly #options: DiscoveryOptions;
  readonly #targets = new Map<number, TargetProcess>();
  readonly #seen = new Map<number, Seen>();
  /** Pids an exclude selector matched (reported in `excluded`). */
  readonly #excluded = new Set<number>();
  #listenKey = "";
  #polls = 0;
  #listening = new Map<number, number>();
  #tablesReadAt = -Infinity;
  /** When a poll last found new processes. */
  #newProcessesAt = -Infinity;
  readonly #now: () => number;

  constructor(options: DiscoveryOptions, fs: ProcFs = realProcFs, now: () => number = Date.now) {
    this.#options = options;
    this.#fs = fs;
    this.#now = now;
  }

  /** The current targets by pid. */
  get targets(): ReadonlyMap<number, TargetProcess> {
    return this.#targets;
  }

  /**
   * One poll: what appeared and what went away since the last one. A poll costs a listing of
   * /proc, the socket tables of each network namespace, and the /proc files of processes that
   * are new (or targets): known processes are not read again, which keeps an idle agent's
   * polls cheap.
   */
  poll(): DiscoveryChange {
    const fs = this.#fs;
    const now = this.#now();
    const fullCheck = this.#polls++ % FULL_CHECK_EVERY === 0;
    const listed = new Set(fs.readDir("/proc").filter((n) => /^\d+$/.test(n)).map(Number));

    const removed: TargetProcess[] = [];
    const excluded: number[] = [];
    const unexcluded: number[] = [];
    const forget = (pid: number) => {
      this.#seen.delete(pid);
      if (this.#excluded.delete(pid)) unexcluded.push(pid);
      const target = this.#targets.get(pid);
      if (target) {
        this.#targets.delete(pid);
        removed.push(target);
      }
    };
    for (const [pid, seen] of this.#seen) {
      if (!listed.has(pid)) {
        forget(pid);
      } else if (fullCheck || this.#targets.has(pid)) {
        const stat = parseProcStat(fs.readText(`/proc/${pid}/stat`) ?? "");
        if (stat?.startTime !== seen.startTime) forget(pid);
      }
    }

    const fresh = new Map<number, Seen>();
    for (const pid of listed) {
      if (this.#seen.has(pid)) continue;
      const stat = parseProcStat(fs.readText(`/proc/${pid}/stat`) ?? "");
      const netns = fs.readLink(`/proc/${pid}/ns/net`);
      if (stat && netns) {
        fresh.set(pid, {
          startTime: stat.startTime,
          ppid: stat.ppid,
          netns,
          inodes: new Set(),
        });
      }
    }

    if (fresh.size > 0) this.#newProcessesAt = now;
    if (
      now - this.#newProcessesAt < NEW_PROCESS_MS || now - this.#tablesReadAt >= TABLES_EVERY_MS
    ) {
      this.#listening = this.#listeningSockets(fresh);
      this.#tablesReadAt = now;
    }
    const listening = this.#listening;
    const listenKey = [...listening.keys()].sort((a, b) => a - b).join(",");
    const rescanAll = listenKey !== this.#listenKey;
    this.#listenKey = listenKey;

    const candidates: number[] = [];
    const scan = (pid: number, seen: Seen) => {
      if (pid === this.#options.selfPid) return;
      seen.inodes = new Set();
      for (const fd of fs.readDir(`/proc/${pid}/fd`)) {
        const inode = socketInode(fs.readLink(`/proc/${pid}/fd/${fd}`) ?? "");
        if (inode !== undefined && listening.has(inode)) seen.inodes.add(inode);
      }
      if (
        seen.inodes.size > 0 && !seen.selected && !this.#targets.has(pid) &&
        !this.#excluded.has(pid)
      ) candidates.push(pid);
    };
    for (const [pid, seen] of fresh) this.#seen.set(pid, seen);
    for (const [pid, seen] of this.#seen) {
      if (rescanAll || fresh.has(pid)) scan(pid, seen);
    }
    // Clients: new processes that listen on nothing but run a selected executable, or that
    // a configured selector without ports names.
    const select = this.#options.selectExecutable;
    const portless = (this.#options.select ?? []).filter((s) => !s.needsPorts);
    if (select || portless.length > 0) {
      for (const [pid, seen] of fresh) {
        if (seen.inodes.size > 0 || pid === this.#options.selfPid) continue;
        const link = fs.readLink(`/proc/${pid}/exe`);
        if (!link) continue;
        const exe = exePath(link);
        if (
          select?.(exe, pid) || portless.some((s) => s.matches(this.#facts(pid, exe, [])))
        ) {
          seen.selected = true;
          candidates.push(pid);
        }
      }
    }

    const added: TargetProcess[] = [];
    for (const pid of candidates) {
      const chosen = this.#chosen(pid, listening);
      if (chosen === "excluded") {
        this.#excluded.add(pid);
        excluded.push(pid);
        continue;
      }
      if (!chosen) continue;
      const target = this.#describe(pid, listening, chosen.name);
      if (!target) continue;
      if (this.#options.accept && !this.#options.accept(target)) continue;
      this.#targets.set(pid, target);
      added.push(target);
    }
    return {
      added,
      removed,
      ...(excluded.length ? { excluded } : {}),
      ...(unexcluded.length ? { unexcluded } : {}),
    };
  }

  /** inode -> port of the listening TCP sockets of every network namespace in use. */
  #listeningSockets(fresh: Map<number, Seen>): Map<number, number> {
    const out = new Map<number, number>();
    const namespaces = new Set<string>();
    for (const [pid, seen] of [...this.#seen, ...fresh]) {
      if (namespaces.has(seen.netns)) continue;
      const tables = ["tcp", "tcp6"].map((file) => {
        const path = `/proc/${pid}/net/${file}`;
        return this.#fs.readHead ? this.#fs.readHead(path, pastListeners) : this.#fs.readText(path);
      });
      if (tables.every((t) => t === undefined)) continue; // exited meanwhile: try another pid
      namespaces.add(seen.netns);
      for (const table of tables) {
        for (const [inode, port] of listeningSockets(table ?? "")) out.set(inode, port);
      }
    }
    return out;
  }

  /** What the selectors see of a process. */
  #facts(pid: number, exe: string, ports: readonly number[]): ProcessFacts {
    return {
      pid,
      exe,
      ports,
      cmdline: () => (this.#fs.readText(`/proc/${pid}/cmdline`) ?? "").replaceAll("\0", " ").trim(),
    };
  }

  /**
   * Whether the configured selectors let `pid` be a target, and under which selector's name:
   * "excluded" when an exclude matches it, undefined when there are selectors and none matches.
   */
  #chosen(
    pid: number,
    listening: Map<number, number>,
  ): { name?: string } | "excluded" | undefined {
    const { select = [], exclude = [] } = this.#options;
    if (select.length === 0 && exclude.length === 0) return {};
    const link = this.#fs.readLink(`/proc/${pid}/exe`);
    const seen = this.#seen.get(pid);
    if (!link || !seen) return undefined;
    const ports = [...seen.inodes].map((i) => listening.get(i)!);
    const facts = this.#facts(pid, exePath(link), ports);
    if (exclude.some((s) => s.matches(facts))) return "excluded";
    if (select.length === 0) return {};
    const match = select.find((s) => s.matches(facts));
    return match ? { name: match.name } : undefined;
  }

  #describe(
    pid: number,
    listening: Map<number, number>,
    fallbackName?: string,
  ): TargetProcess | undefined {
    const exe = this.#fs.readLink(`/proc/${pid}/exe`);
    const seen = this.#seen.get(pid);
    if (!exe || !seen) return undefined;
    const env = parseEnviron(this.#fs.readText(`/proc/${pid}/environ`) ?? "");
    const { name, namespace } = serviceIdentity(
      env,
      exe,
      this.#options.defaultNamespace,
      fallbackName,
    );
    // The instance is the top process sharing these listening sockets (nginx's master for
    // its workers), so worker restarts do not create new series.
    let top = pid;
    for (let depth = 0; depth < 32; depth++) {
      const parent = this.#seen.get(top)?.ppid;
      const parentSeen = parent ? this.#seen.get(parent) : undefined;
      if (!parent || !parentSeen || ![...parentSeen.inodes].some((i) => seen.inodes.has(i))) break;
      top = parent;
    }
    const ports = [...new Set([...seen.inodes].map((i) => listening.get(i)!))].sort((a, b) =>
      a - b
    );
    return {
      pid,
      startTime: seen.startTime,
      exe: exePath(exe),
      serviceName: name,
      serviceNamespace: namespace,
      instance: `${this.#options.hostname}:${top}`,
      listenPorts: ports,
    };
  }
}
