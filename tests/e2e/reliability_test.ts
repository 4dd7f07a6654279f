/**
 * Reliability as a production host needs it (issue 7): a target that restarts is instrumented
 * again within 2 s and its counts continue exactly; an agent killed with SIGKILL leaves no BPF
 * program behind and the targets keep serving; without the privileges it needs, `doctor` and
 * `run` say what is missing and nothing is left half-attached.
 */
import assert from "node:assert/strict";
import { dirname, fromFileUrl, join } from "../support/paths.ts";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { type Sample, sumSamples } from "../support/prom_text.ts";
import { freePort, sendRequests, startPython } from "../support/mod.ts";
import { ManagedProcess } from "../support/managed_process.ts";
import { pollUntil, portAccepts, settledSamples } from "../support/wait.ts";
import { idsHeldBy, loadedPrograms } from "../support/bpf_held.ts";

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..", "..");
const base = { ignore: skipBpf(), sanitizeOps: false, sanitizeResources: false };

/** `main.ts args` run by setpriv with `setprivArgs` (capabilities taken away), to completion. */
function mainUnderSetpriv(setprivArgs: string[], args: string[]): Promise<Deno.CommandOutput> {
  return new Deno.Command("setpriv", {
    args: [...setprivArgs, Deno.execPath(), "run", "-A", "--quiet", join(ROOT, "main.ts"), ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
}

/** Ids of the BPF programs loaded in the kernel now. */
async function loadedProgramIds(): Promise<Set<number>> {
  return new Set((await loadedPrograms()).keys());
}

/** The Python test server on `port`, with its own service name. */
async function python(port: number, service: string): Promise<ManagedProcess> {
  const log = await Deno.makeTempFile();
  const proc = new ManagedProcess(
    "python3",
    [join(ROOT, "tests", "support", "python_server.py"), String(port), log],
    { env: { OTEL_SERVICE_NAME: service } },
  );
  assert.ok(await pollUntil(() => portAccepts(port), { timeoutMs: 10_000 }), "python started");
  return proc;
}

Deno.test({
  ...base,
  name: "a target that restarts is instrumented again within 2 s and its counts continue",
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({ config: { discovery: { poll_interval: "250ms" } } });
    const port = freePort();
    const service = `restart-${Deno.pid}`;
    const send = (count: number) =>
      sendRequests({ port, spec: { method: "GET", path: "/hello" }, count, keepAlive: true });
    const countIn = (samples: Sample[]) =>
      sumSamples(samples, "http_server_duration_seconds_count", { service_name: service });
    /** The count once it reached `atLeast` (or after a few seconds): the assertions want it exact. */
    const counted = async (atLeast: number) =>
      countIn(await settledSamples(agent, (s) => countIn(s) >= atLeast));
    const first = await python(port, service);
    await agent.waitForPid(first.pid);
    await send(5);
    assert.equal(await counted(5), 5);
    await first.stop();
    await agent.waitForRelease(first.pid);

    const started = performance.now();
    const second = await python(port, service);
    try {
      await agent.waitForPid(second.pid, 2_000);
      const ms = performance.now() - started;
      assert.ok(ms < 2_000, `instrumented again after ${Math.round(ms)} ms`);
      await send(7);
      assert.equal(await counted(12), 12, "5 before the restart, 7 after, none lost or doubled");
    } finally {
      await second.stop();
    }
  },
});

Deno.test({
  ...base,
  name: "SIGKILL: no BPF program of the agent is left, and the target kept serving",
  async fn() {
    assertBpfAvailable();
    const agent = await startAgent();
    await using server = await startPython({ tls: true });
    let held: Set<number>;
    try {
      await agent.waitForPid(server.pid);
      held = idsHeldBy(agent.pid);
      assert.ok(held.size >= 10, `${held.size} programs held`);
    } finally {
      Deno.kill(agent.pid, "SIGKILL");
    }
    const { code } = await agent.stop();
    assert.notEqual(code, 0);
    // The kernel frees the programs and links (uprobes on libssl, tracepoints) with the fds,
    // after an RCU grace period.
    let left: number[] = [];
    await pollUntil(async () => {
      const loaded = await loadedProgramIds();
      left = [...held].filter((id) => loaded.has(id));
      return left.length === 0;
    }, { timeoutMs: 5_000, intervalMs: 100 });
    assert.deepEqual(left, [], "programs still loaded 5 s after SIGKILL");
    const caCert = Deno.readTextFileSync((await import("../support/tls.ts")).testCertificate().ca);
    const result = await sendRequests({
      port: server.port,
      spec: { method: "GET", path: "/hello" },
      count: 3,
      keepAlive: true,
      caCert,
    });
    assert.equal(result.statuses.get(200), 3, "the server still serves");
  },
});

Deno.test({
  ...base,
  name: "without CAP_BPF and CAP_PERFMON: doctor and run say so, nothing is left",
  async fn() {
    assertBpfAvailable();
    const before = await loadedProgramIds();
    // Root, but with the capabilities out of the bounding set: the exec'd agent lacks them.
    const drop = ["--bounding-set=-bpf,-perfmon,-sys_admin", "--inh-caps=-all"];
    const agent = (...args: string[]) => mainUnderSetpriv(drop, args);
    const doctor = await agent("doctor");
    const text = new TextDecoder().decode(doctor.stdout);
    assert.equal(doctor.code, 1, text);
    assert.match(
      text,
      /missing +privileges +run as root, or grant CAP_BPF, CAP_PERFMON \(/,
    );
    assert.match(text, /failed +plugin kprobe-http +.*EPERM/);

    const run = await agent("--metrics-address", "127.0.0.1", "--metrics-port", String(freePort()));
    const logs = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 1, logs);
    assert.match(logs, /No plugin could start/);
    assert.match(logs, /WARN +privileges: run as root, or grant CAP_BPF, CAP_PERFMON \(/);
    assert.match(
      logs,
      /needs root, or CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH/,
    );
    const after = await loadedProgramIds();
    assert.deepEqual([...after].filter((id) => !before.has(id)), [], "nothing left loaded");
  },
});

Deno.test({
  ...base,
  name: "with kernel.bpf_stats_enabled=1 the agent exports each program's runs and run time",
  async fn() {
    assertBpfAvailable();
    const sysctl = (...args: string[]) =>
      new Deno.Command("sysctl", { args, stdout: "piped" }).output();
    const previous = new TextDecoder().decode(
      (await sysctl("-n", "kernel.bpf_stats_enabled")).stdout,
    ).trim();
    await sysctl("-q", "-w", "kernel.bpf_stats_enabled=1");
    try {
      await using agent = await startAgent();
      await using server = await startPython();
      await agent.waitForPid(server.pid);
      await sendRequests({
        port: server.port,
        spec: { method: "GET", path: "/hello" },
        count: 20,
        keepAlive: true,
      });
      const samples = await agent.samples();
      const runs = sumSamples(samples, "redprobe_bpf_program_runs_total", {
        plugin: "kprobe-http",
        program: "on_sock_recv",
      });
      const seconds = sumSamples(samples, "redprobe_bpf_program_run_seconds_total", {
        plugin: "kprobe-http",
        program: "on_sock_recv",
      });
      assert.ok(runs >= 20, `${runs} runs`);
      assert.ok(seconds > 0 && seconds < runs * 1e-4, `${seconds} s for ${runs} runs`);
      // The same numbers bpftool reads (struct bpf_prog_info), give or take the runs since.
      const ids = idsHeldBy(agent.pid);
      const listed = JSON.parse(
        new TextDecoder().decode(
          (await new Deno.Command("bpftool", { args: ["prog", "list", "-j"], stdout: "piped" })
            .output()).stdout,
        ),
      ) as { id: number; name?: string; run_cnt?: number }[];
      const bpftool = listed.filter((p) => ids.has(p.id) && p.name === "on_sock_recv")
        .reduce((n, p) => n + (p.run_cnt ?? 0), 0);
      assert.ok(bpftool >= runs && bpftool - runs < 1000, `bpftool ${bpftool}, agent ${runs}`);
    } finally {
      await sysctl("-q", "-w", `kernel.bpf_stats_enabled=${previous || "0"}`);
    }
  },
});

Deno.test({
  ...base,
  name: "the series of a process that exited stay for discovery.series_ttl, then go",
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: { discovery: { poll_interval: "200ms", series_ttl: "2s" } },
    });
    const server = await startPython();
    const instance = { target_instance: `${Deno.hostname()}:${server.pid}` };
    const countIn = (samples: Sample[]) =>
      sumSamples(samples, "http_server_duration_seconds_count", instance);
    const count = async () => countIn(await agent.samples());
    try {
      await agent.waitForPid(server.pid);
      await sendRequests({
        port: server.port,
        spec: { method: "GET", path: "/hello" },
        count: 3,
        keepAlive: true,
      });
      assert.equal(countIn(await settledSamples(agent, (s) => countIn(s) >= 3)), 3);
    } finally {
      await server.stop();
    }
    await agent.waitForRelease(server.pid);
    const released = performance.now();
    assert.equal(await count(), 3, "still exported right after the exit");
    assert.ok(await pollUntil(async () => await count() === 0, { timeoutMs: 6_000 }));
    const ms = performance.now() - released;
    assert.ok(ms >= 1_500, `gone after ${Math.round(ms)} ms, before the 2 s TTL`);
  },
});

Deno.test({
  ...base,
  name:
    "with only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (no CAP_SYS_ADMIN), " +
    "doctor is content and run counts exactly",
  async fn() {
    assertBpfAvailable();
    await using server = await startPython();
    // The capabilities deploy/kubernetes grants, and nothing else.
    const only = [
      "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search",
      "--inh-caps=-all",
    ];
    const doctor = await mainUnderSetpriv(only, ["doctor"]);
    const text = new TextDecoder().decode(doctor.stdout);
    assert.equal(doctor.code, 0, text);
    assert.match(text, /ok +privileges/);
    await using agent = await startAgent({ wrapper: ["setpriv", ...only] });
    await agent.waitForPid(server.pid);
    await sendRequests({
      port: server.port,
      spec: { method: "GET", path: "/hello" },
      count: 7,
      keepAlive: true,
    });
    const served = (samples: Sample[]) =>
      sumSamples(samples, "http_server_duration_seconds_count", {
        target_instance: `${Deno.hostname()}:${server.pid}`,
      });
    assert.equal(served(await settledSamples(agent, (s) => served(s) >= 7)), 7);
  },
});
