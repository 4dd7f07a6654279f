import assert from "node:assert/strict";
import { Discovery, type DiscoveryChange, type ProcFs } from "./discovery.ts";
import type { TargetProcess } from "./plugin.ts";
import { Selector } from "../lib/selectors.ts";

const HOST_NS = "net:[4026531840]";
const HOST = "host1";
const SELF = 999;

interface Socket {
  port: number;
  inode: number;
  /** TCP state: 0x0A LISTEN (default), 0x01 ESTABLISHED. */
  state?: number;
  v6?: boolean;
}

interface FakeProcess {
  pid: number;
  ppid: number;
  comm: string;
  startTime: number;
  /** `/proc/<pid>/exe` target; undefined: unreadable (a kernel thread). */
  exe?: string;
  env?: Record<string, string>;
  /** fd -> link target (`socket:[N]`, `pipe:[N]`, a path). */
  fds?: Record<number, string>;
  netns?: string;
  /** `/proc/<pid>/cmdline` arguments. */
  cmdline?: string[];
}

/** An in-memory /proc: processes, their fds and environment, one socket table per netns. */
class FakeProcFs implements ProcFs {
  readonly processes = new Map<number, FakeProcess>();
  readonly namespaces = new Map<string, Socket[]>([[HOST_NS, []]]);
  /** Every path read, in order. */
  readonly reads: string[] = [];

  add(p: FakeProcess): this {
    this.processes.set(p.pid, { netns: HOST_NS, fds: {}, env: {}, ...p });
    if (!this.namespaces.has(this.processes.get(p.pid)!.netns!)) {
      this.namespaces.set(p.netns!, []);
    }
    return this;
  }

  exit(pid: number): this {
    this.processes.delete(pid);
    return this;
  }

  /** Adds a socket to a namespace's table. */
  listen(socket: Socket, netns = HOST_NS): this {
    const table = this.namespaces.get(netns) ?? [];
    table.push(socket);
    this.namespaces.set(netns, table);
    return this;
  }

  closeSocket(inode: number): this {
    for (const table of this.namespaces.values()) {
      const i = table.findIndex((s) => s.inode === inode);
      if (i >= 0) table.splice(i, 1);
    }
    return this;
  }

  #process(path: string): [FakeProcess | undefined, string[]] {
    const parts = path.split("/").slice(2); // "", "proc", pid, ...
    return [this.processes.get(Number(parts[0])), parts.slice(1)];
  }

  readText(path: string): string | undefined {
    this.reads.push(path);
    const [p, rest] = this.#process(path);
    if (!p) return undefined;
    switch (rest.join("/")) {
      case "stat":
        return statLine(p);
      case "environ":
        return Object.entries(p.env ?? {}).map(([k, v]) => `${k}=${v}\0`).join("");
      case "cmdline":
        return (p.cmdline ?? [p.comm]).map((a) => `${a}\0`).join("");
      case "net/tcp":
        return tcpTable(this.namespaces.get(p.netns!)!.filter((s) => !s.v6), false);
      case "net/tcp6":
        return tcpTable(this.namespaces.get(p.netns!)!.filter((s) => s.v6), true);
    }
    return undefined;
  }

  readDir(path: string): string[] {
    this.reads.push(path);
    if (path === "/proc") {
      return ["self", "net", "sys", ...[...this.processes.keys()].map(String), "cpuinfo"];
    }
    const [p, rest] = this.#process(path);
    if (p && rest.join("/") === "fd") return Object.keys(p.fds ?? {});
    return [];
  }

  readLink(path: string): string | undefined {
    this.reads.push(path);
    const [p, rest] = this.#process(path);
    if (!p) return undefined;
    if (rest[0] === "exe") return p.exe;
    if (rest.join("/") === "ns/net") return p.netns;
    if (rest[0] === "fd" && rest.length === 2) return p.fds?.[Number(rest[1])];
    return undefined;
  }
}

function statLine(p: FakeProcess): string {
  // Fields 3.. after the comm: state, ppid, 17 fields, then field 22 (starttime), then more.
  const fields = ["S", p.ppid, ...Array(17).fill(0), p.startTime, 3133440, 412];
  return `${p.pid} (${p.comm}) ${fields.join(" ")}\n`;
}

function tcpTable(sockets: Socket[], v6: boolean): string {
  const header = v6
    ? "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    : "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
  const any = v6 ? "0".repeat(32) : "00000000";
  return header + sockets.map((s, i) => {
    const port = s.port.toString(16).toUpperCase().padStart(4, "0");
    const state = (s.state ?? 0x0a).toString(16).toUpperCase().padStart(2, "0");
    return `${
      String(i).padStart(4)
    }: ${any}:${port} ${any}:0000 ${state} 00000000:00000000 00:00000000 00000000     0        0 ${s.inode} 1 0000000000000000 100 0 0 10 0\n`;
  }).join("");
}

function discovery(
  fs: FakeProcFs,
  options: { defaultNamespace?: string; select?: Selector[]; exclude?: Selector[] } = {},
): Discovery {
  return new Discovery({ selfPid: SELF, hostname: HOST, ...options }, fs);
}

const pids = (targets: TargetProcess[]) => targets.map((t) => t.pid).sort((a, b) => a - b);

/** A host with init, a shell and the agent itself, none listening. */
function baseHost(): FakeProcFs {
  return new FakeProcFs()
    .add({ pid: 1, ppid: 0, comm: "systemd", startTime: 1, exe: "/usr/lib/systemd/systemd" })
    .add({
      pid: 100,
      ppid: 1,
      comm: "bash",
      startTime: 500,
      exe: "/usr/bin/bash",
      fds: { 0: "/dev/pts/0", 1: "/dev/pts/0", 2: "pipe:[7]" },
    })
    .add({
      pid: SELF,
      ppid: 100,
      comm: "deno",
      startTime: 900,
      exe: "/usr/bin/deno",
      fds: { 3: "socket:[9400]" },
    })
    .listen({ port: 9400, inode: 9400 });
}

Deno.test("Discovery finds a process listening on a TCP port and describes it", () => {
  const fs = baseHost()
    .add({
      pid: 200,
      ppid: 1,
      comm: "python3",
      startTime: 1000,
      exe: "/usr/bin/python3.11",
      fds: { 0: "/dev/null", 3: "socket:[5000]", 4: "anon_inode:[eventfd]" },
    })
    .listen({ port: 8000, inode: 5000 });
  const d = discovery(fs, { defaultNamespace: "default-ns" });
  const change = d.poll();
  assert.deepEqual(change, {
    added: [{
      pid: 200,
      startTime: 1000,
      exe: "/usr/bin/python3.11",
      serviceName: "python3.11",
      serviceNamespace: "default-ns",
      instance: "host1:200",
      listenPorts: [8000],
    }],
    removed: [],
  });
  assert.deepEqual([...d.targets.keys()], [200]);
  assert.equal(d.targets.get(200), change.added[0]);
});

Deno.test("Discovery never selects the agent's own pid, even when it listens", () => {
  const fs = baseHost();
  const change = discovery(fs).poll();
  assert.deepEqual(change, { added: [], removed: [] });
  assert.ok(
    !fs.reads.includes(`/proc/${SELF}/fd`),
    "the agent's own fds are not even scanned",
  );
});

Deno.test("Discovery leaves processes without a listening socket alone", () => {
  const fs = baseHost()
    // A client: an established connection, not a listener.
    .add({
      pid: 300,
      ppid: 100,
      comm: "curl",
      startTime: 1200,
      exe: "/usr/bin/curl",
      fds: { 3: "socket:[6001]" },
    })
    .listen({ port: 41000, inode: 6001, state: 0x01 })
    // A UDP or unix socket: a socket inode that is in no TCP table.
    .add({
      pid: 301,
      ppid: 1,
      comm: "dbus",
      startTime: 1201,
      exe: "/usr/bin/dbus-daemon",
      fds: { 3: "socket:[6002]" },
    })
    // A kernel thread: no exe, no fds.
    .add({ pid: 2, ppid: 0, comm: "kthreadd", startTime: 1 });
  const d = discovery(fs);
  assert.deepEqual(d.poll(), { added: [], removed: [] });
  assert.equal(d.targets.size, 0);
});

function nginx(fs: FakeProcFs, workers: number[]): FakeProcFs {
  const fds = { 6: "socket:[7080]", 7: "socket:[7443]", 8: "socket:[7081]" };
  fs.add({
    pid: 400,
    ppid: 1,
    comm: "nginx",
    startTime: 2000,
    exe: "/usr/sbin/nginx",
    fds: { 0: "/dev/null", ...fds },
  })
    .listen({ port: 80, inode: 7080 })
    .listen({ port: 443, inode: 7443 })
    .listen({ port: 80, inode: 7081, v6: true });
  for (const pid of workers) {
    fs.add({
      pid,
      ppid: 400,
      comm: "nginx",
      startTime: 2000 + pid,
      exe: "/usr/sbin/nginx",
      fds: { ...fds, 12: `socket:[${8000 + pid}]` }, // plus an accepted connection
    }).listen({ port: 80, inode: 8000 + pid, state: 0x01 });
  }
  return fs;
}

Deno.test("Discovery selects an nginx master and its workers with the master as instance", () => {
  const fs = nginx(baseHost(), [401, 402]);
  const d = discovery(fs);
  const { added, removed } = d.poll();
  assert.deepEqual(removed, []);
  assert.deepEqual(pids(added), [400, 401, 402]);
  for (const t of added) {
    assert.equal(t.instance, "host1:400", `pid ${t.pid}`);
    assert.equal(t.serviceName, "nginx");
    assert.deepEqual(t.listenPorts, [80, 443], "v4 and v6 port 80 once, sorted");
  }
});

Deno.test("Discovery picks up a new worker sharing the listening sockets on the next poll", () => {
  const fs = nginx(baseHost(), [401, 402]);
  const d = discovery(fs);
  d.poll();
  assert.deepEqual(d.poll(), { added: [], removed: [] }, "nothing changed");
  // The master forks a replacement worker: same listening sockets, so no new listener.
  fs.add({
    pid: 403,
    ppid: 400,
    comm: "nginx",
    startTime: 2403,
    exe: "/usr/sbin/nginx",
    fds: { 6: "socket:[7080]", 7: "socket:[7443]", 8: "socket:[7081]" },
  });
  const change = d.poll();
  assert.deepEqual(change.removed, []);
  assert.deepEqual(pids(change.added), [403]);
  assert.equal(change.added[0].instance, "host1:400");
  assert.deepEqual(pids([...d.targets.values()]), [400, 401, 402, 403]);
});

Deno.test("Discovery reports a target that exited as removed, once", () => {
  const fs = nginx(baseHost(), [401, 402]);
  const d = discovery(fs);
  d.poll();
  const worker = d.targets.get(402);
  fs.exit(402);
  assert.deepEqual(d.poll(), { added: [], removed: [worker] });
  assert.deepEqual(pids([...d.targets.values()]), [400, 401]);
  assert.deepEqual(d.poll(), { added: [], removed: [] });
});

Deno.test("Discovery does not report a process that was never a target when it exits", () => {
  const fs = baseHost();
  const d = discovery(fs);
  d.poll();
  fs.exit(100);
  assert.deepEqual(d.poll(), { added: [], removed: [] });
});

Deno.test("Discovery removes then re-adds a pid reused by a new process", () => {
  const fs = baseHost()
    .add({
      pid: 500,
      ppid: 1,
      comm: "node",
      startTime: 3000,
      exe: "/usr/bin/node",
      fds: { 20: "socket:[9100]" },
    })
    .listen({ port: 3000, inode: 9100 });
  const d = discovery(fs);
  const [old] = d.poll().added;
  assert.equal(old.startTime, 3000);
  // The process exits; a different program gets the same pid, listening on the same port.
  fs.exit(500).closeSocket(9100)
    .add({
      pid: 500,
      ppid: 1,
      comm: "gunicorn",
      startTime: 7000,
      exe: "/usr/bin/python3",
      env: { OTEL_SERVICE_NAME: "api" },
      fds: { 5: "socket:[9200]" },
    })
    .listen({ port: 3000, inode: 9200 });
  const change = d.poll();
  assert.deepEqual(change.removed, [old]);
  assert.equal(change.added.length, 1);
  assert.deepEqual(change.added[0], {
    pid: 500,
    startTime: 7000,
    exe: "/usr/bin/python3",
    serviceName: "api",
    serviceNamespace: "",
    instance: "host1:500",
    listenPorts: [3000],
  });
  assert.equal(d.targets.get(500), change.added[0]);
});

Deno.test("Discovery removes a reused pid whose new process does not listen", () => {
  const fs = baseHost()
    .add({
      pid: 500,
      ppid: 1,
      comm: "node",
      startTime: 3000,
      exe: "/usr/bin/node",
      fds: { 20: "socket:[9100]" },
    })
    .listen({ port: 3000, inode: 9100 });
  const d = discovery(fs);
  const [old] = d.poll().added;
  fs.exit(500).closeSocket(9100)
    .add({ pid: 500, ppid: 100, comm: "sleep", startTime: 7000, exe: "/usr/bin/sleep" });
  assert.deepEqual(d.poll(), { added: [], removed: [old] });
  assert.equal(d.targets.size, 0);
});

Deno.test("Discovery finds a process listening in another network namespace", () => {
  const CONTAINER_NS = "net:[4026532999]";
  const fs = baseHost()
    .add({
      pid: 600,
      ppid: 1,
      comm: "containerd-shim",
      startTime: 4000,
      exe: "/usr/bin/containerd-shim-runc-v2",
    })
    .add({
      pid: 601,
      ppid: 600,
      comm: "java",
      startTime: 4001,
      exe: "/opt/java/bin/java",
      netns: CONTAINER_NS,
      fds: { 30: "socket:[11000]" },
    })
    // The same port in the host namespace, held by a host process.
    .add({
      pid: 700,
      ppid: 1,
      comm: "caddy",
      startTime: 4100,
      exe: "/usr/bin/caddy",
      fds: { 7: "socket:[12000]" },
    })
    .listen({ port: 8080, inode: 11000, v6: true }, CONTAINER_NS)
    .listen({ port: 8080, inode: 12000 });
  const d = discovery(fs);
  const { added } = d.poll();
  assert.deepEqual(pids(added), [601, 700]);
  assert.deepEqual(added.find((t) => t.pid === 601)?.listenPorts, [8080]);
  assert.equal(added.find((t) => t.pid === 601)?.instance, "host1:601");
  assert.ok(fs.reads.includes("/proc/601/net/tcp6"), "the container's own table is read");
});

Deno.test("Discovery reads each network namespace's socket tables once per poll", () => {
  const fs = nginx(baseHost(), [401, 402]);
  discovery(fs).poll();
  const tableReads = fs.reads.filter((p) => p.endsWith("/net/tcp"));
  assert.equal(tableReads.length, 1, tableReads.join(", "));
});

Deno.test("Discovery lists every port a target listens on, IPv4 and IPv6, sorted", () => {
  const fs = baseHost()
    .add({
      pid: 800,
      ppid: 1,
      comm: "envoy",
      startTime: 5000,
      exe: "/usr/local/bin/envoy",
      fds: { 3: "socket:[13001]", 4: "socket:[13002]", 5: "socket:[13003]", 6: "pipe:[1]" },
    })
    .listen({ port: 9901, inode: 13001 })
    .listen({ port: 443, inode: 13002, v6: true })
    .listen({ port: 10000, inode: 13003 });
  const [target] = discovery(fs).poll().added;
  assert.deepEqual(target.listenPorts, [443, 9901, 10000]);
});

Deno.test("Discovery names services from OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES", () => {
  const fs = baseHost()
    .add({
      pid: 900,
      ppid: 1,
      comm: "python3",
      startTime: 6000,
      exe: "/usr/bin/python3",
      env: {
        OTEL_SERVICE_NAME: "checkout",
        OTEL_RESOURCE_ATTRIBUTES: "service.name=ignored,service.namespace=shop",
      },
      fds: { 3: "socket:[14000]" },
    })
    .add({
      pid: 901,
      ppid: 1,
      comm: "node",
      startTime: 6001,
      exe: "/usr/bin/node",
      env: { OTEL_RESOURCE_ATTRIBUTES: "service.name=cart%20svc" },
      fds: { 3: "socket:[14001]" },
    })
    .listen({ port: 8001, inode: 14000 })
    .listen({ port: 8002, inode: 14001 });
  const { added } = discovery(fs, { defaultNamespace: "prod" }).poll();
  const byPid = new Map(added.map((t) => [t.pid, t]));
  assert.equal(byPid.get(900)?.serviceName, "checkout");
  assert.equal(byPid.get(900)?.serviceNamespace, "shop");
  assert.equal(byPid.get(901)?.serviceName, "cart svc");
  assert.equal(byPid.get(901)?.serviceNamespace, "prod");
});

Deno.test("Discovery strips ' (deleted)' from the exe of a replaced binary", () => {
  const fs = baseHost()
    .add({
      pid: 950,
      ppid: 1,
      comm: "myapp",
      startTime: 6500,
      exe: "/srv/bin/myapp (deleted)",
      fds: { 3: "socket:[15000]" },
    })
    .listen({ port: 8080, inode: 15000 });
  const [target] = discovery(fs).poll().added;
  assert.equal(target.exe, "/srv/bin/myapp");
  assert.equal(target.serviceName, "myapp");
});

Deno.test("Discovery picks up a known process once it starts listening", () => {
  const fs = baseHost()
    .add({ pid: 960, ppid: 100, comm: "python3", startTime: 6600, exe: "/usr/bin/python3" });
  const d = discovery(fs);
  assert.deepEqual(d.poll(), { added: [], removed: [] });
  fs.processes.get(960)!.fds = { 3: "socket:[16000]" };
  fs.listen({ port: 8000, inode: 16000 });
  const change: DiscoveryChange = d.poll();
  assert.deepEqual(pids(change.added), [960]);
  assert.deepEqual(change.added[0].listenPorts, [8000]);
});

Deno.test("Discovery does not rescan the fds of known processes when no listener changed", () => {
  const fs = nginx(baseHost(), [401, 402]);
  const d = discovery(fs);
  d.poll();
  fs.reads.length = 0;
  d.poll();
  assert.deepEqual(fs.reads.filter((p) => p.endsWith("/fd")), []);
});

Deno.test("Discovery skips a process the accept filter rejects", () => {
  const fs = nginx(baseHost(), [401]);
  const d = new Discovery({
    selfPid: SELF,
    hostname: HOST,
    accept: (t) => t.pid !== 401,
  }, fs);
  assert.deepEqual(pids(d.poll().added), [400]);
  assert.ok(!d.targets.has(401));
});

Deno.test("Discovery ignores a process that vanished while /proc was being read", () => {
  const fs = baseHost()
    .add({
      pid: 970,
      ppid: 1,
      comm: "gone",
      startTime: 6700,
      exe: undefined, // exe already unreadable: the process is exiting
      fds: { 3: "socket:[17000]" },
    })
    .listen({ port: 8000, inode: 17000 });
  const d = discovery(fs);
  assert.deepEqual(d.poll(), { added: [], removed: [] });
});

Deno.test("Discovery reads the socket tables only while processes are new, then every 5 s", () => {
  const fs = nginx(baseHost(), [401, 402]);
  let now = 0;
  const d = new Discovery({ selfPid: 1, hostname: "host" }, fs, () => now);
  const tableReads = () => fs.reads.filter((p) => p.endsWith("/net/tcp")).length;
  d.poll();
  assert.equal(tableReads(), 1);
  now = 1_000; // the processes are still new: a server may be about to listen
  d.poll();
  assert.equal(tableReads(), 2);
  now = 4_000; // nothing new for 3 s: the tables are not read
  d.poll();
  now = 5_500;
  d.poll();
  assert.equal(tableReads(), 2);
  now = 6_000; // 5 s after the last read: read again, for late listeners
  d.poll();
  assert.equal(tableReads(), 3);
});

Deno.test("Discovery selects a client by its executable, asking once per new process", () => {
  const fs = baseHost()
    .add({ pid: 300, ppid: 100, comm: "hey", startTime: 2000, exe: "/usr/bin/hey" })
    .add({ pid: 301, ppid: 100, comm: "ls", startTime: 2001, exe: "/usr/bin/ls" });
  const asked: string[] = [];
  const d = new Discovery({
    selfPid: SELF,
    hostname: HOST,
    selectExecutable: (exe, pid) => {
      asked.push(`${pid} ${exe}`);
      return exe === "/usr/bin/hey";
    },
  }, fs);
  const change = d.poll();
  assert.deepEqual(pids(change.added), [300]);
  assert.deepEqual(change.added[0].listenPorts, []);
  assert.equal(change.added[0].serviceName, "hey");
  assert.equal(change.added[0].instance, `${HOST}:300`);
  assert.ok(!asked.some((a) => a.startsWith(`${SELF} `)), "never the agent itself");
  const before = asked.length;
  assert.deepEqual(d.poll(), { added: [], removed: [] });
  assert.equal(asked.length, before, "known processes are not asked again");
  fs.exit(300);
  assert.deepEqual(pids(d.poll().removed), [300]);
});

/** nginx (80, 443), a Python shop on 8000, curl (listens nowhere), a Python job with OTEL_SERVICE_NAME. */
function selectorsHost(): FakeProcFs {
  return nginx(baseHost(), [])
    .add({
      pid: 500,
      ppid: 1,
      comm: "python3",
      startTime: 3000,
      exe: "/usr/bin/python3.11",
      cmdline: ["python3", "-m", "http.server", "8000"],
      fds: { 3: "socket:[9000]" },
    })
    .listen({ port: 8000, inode: 9000 })
    .add({
      pid: 600,
      ppid: 100,
      comm: "curl",
      startTime: 3100,
      exe: "/usr/bin/curl",
      cmdline: ["curl", "http://127.0.0.1:8000/"],
    })
    .add({
      pid: 700,
      ppid: 1,
      comm: "python3",
      startTime: 3200,
      exe: "/usr/bin/python3.11",
      env: { OTEL_SERVICE_NAME: "billing" },
      fds: { 3: "socket:[9100]" },
    })
    .listen({ port: 8050, inode: 9100 });
}

Deno.test("discovery.select: only what a selector matches, named by it unless the process says", () => {
  const d = discovery(selectorsHost(), {
    select: [new Selector({ ports: ["8000-8099"], name: "shop" })],
  });
  const added = d.poll().added;
  assert.deepEqual(pids(added), [500, 700]);
  assert.equal(added.find((t) => t.pid === 500)?.serviceName, "shop");
  assert.equal(added.find((t) => t.pid === 700)?.serviceName, "billing", "OTEL_SERVICE_NAME wins");
});

Deno.test("discovery.select without ports selects processes that listen nowhere", () => {
  const d = discovery(selectorsHost(), {
    select: [new Selector({ cmdline: "^curl ", name: "fetcher" }), new Selector({ pid: 400 })],
  });
  const added = d.poll().added;
  assert.deepEqual(pids(added), [400, 600]);
  assert.equal(added.find((t) => t.pid === 600)?.serviceName, "fetcher");
  assert.equal(added.find((t) => t.pid === 400)?.serviceName, "nginx");
});

Deno.test("discovery.exclude: never a target, whatever selects it", () => {
  const d = discovery(selectorsHost(), {
    exclude: [new Selector({ exe: "/usr/sbin/*" }), new Selector({ cmdline: "http\\.server" })],
  });
  assert.deepEqual(pids(d.poll().added), [700]);
});

Deno.test("discovery.exclude: an excluded process is reported once, and again when it is gone", () => {
  const fs = selectorsHost();
  const d = discovery(fs, { exclude: [new Selector({ cmdline: "http\\.server" })] });
  const first = d.poll();
  assert.equal(first.excluded?.length, 1);
  const [pid] = first.excluded!;
  assert.ok(!pids(first.added).includes(pid));
  assert.equal(d.poll().excluded, undefined, "reported once");
  fs.exit(pid);
  const gone = d.poll();
  assert.deepEqual(gone.unexcluded, [pid]);
  assert.deepEqual(gone.removed, [], "it never was a target");
});
