/**
 * The single-file artefact (`deno task bundle`, scripts/bundle.ts): built into a temp dir, copied
 * ALONE into an empty directory, and run there with a fresh, empty DENO_DIR, so neither the
 * repository (no deno.json, no sources, no .bpf.o files) nor Deno's npm cache can help it.
 * Unprivileged: `version` and `config print`. Privileged: `doctor`, and the bundled agent measures
 * real nginx: its `http_server_duration_seconds_count` must equal the number of requests sent.
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { startOtlpReceiver } from "../support/otlp_receiver.ts";
import { settledSamples, waitFor } from "../support/wait.ts";
import { dirname, fromFileUrl, join } from "../support/paths.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { findSamples, sumSamples } from "../support/prom_text.ts";
import { sendRequests, startNginx } from "../support/mod.ts";

const ROOT = join(dirname(fromFileUrl(import.meta.url)), "..", "..");

/** Builds the bundle with `scripts/bundle.ts --out` into `dir` (about a second); returns its path. */
async function buildBundle(dir: string): Promise<string> {
  const out = join(dir, "redprobe.js");
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join(ROOT, "scripts", "bundle.ts"), "--out", out],
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  const logs = dec.decode(r.stdout) + dec.decode(r.stderr);
  assert.ok(r.success, `scripts/bundle.ts failed:\n${logs}`);
  assert.match(logs, /embedded .*iced_x86_bg\.wasm/, "iced-x86's WebAssembly must be embedded");
  return out;
}

interface Isolated extends AsyncDisposable {
  /** The empty directory holding nothing but `redprobe.js`. */
  dir: string;
  bundle: string;
  /** Environment for running it: a fresh, empty DENO_DIR. */
  env: Record<string, string>;
  /** Files Deno put into the npm cache (must stay none). */
  npmCacheEntries(): string[];
}

/** A bundle, built and copied alone into an empty temp dir, with an empty DENO_DIR of its own. */
async function isolatedCopy(): Promise<Isolated> {
  const buildDir = await Deno.makeTempDir({ prefix: "redprobe-bundle-build-" });
  const dir = await Deno.makeTempDir({ prefix: "redprobe-bundle-run-" });
  const denoDir = await Deno.makeTempDir({ prefix: "redprobe-bundle-denodir-" });
  const bundle = join(dir, "redprobe.js");
  try {
    await Deno.copyFile(await buildBundle(buildDir), bundle);
  } finally {
    await Deno.remove(buildDir, { recursive: true });
  }
  return {
    dir,
    bundle,
    env: { DENO_DIR: denoDir, NO_COLOR: "1" },
    npmCacheEntries() {
      const found: string[] = [];
      const walk = (d: string) => {
        let entries: Deno.DirEntry[];
        try {
          entries = [...Deno.readDirSync(d)];
        } catch {
          return;
        }
        for (const e of entries) {
          found.push(join(d, e.name));
          if (e.isDirectory) walk(join(d, e.name));
        }
      };
      walk(join(denoDir, "npm"));
      return found;
    },
    async [Symbol.asyncDispose]() {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(denoDir, { recursive: true }).catch(() => {});
    },
  };
}

async function run(
  script: string,
  args: string[],
  opts: { cwd: string; env?: Record<string, string> },
): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--quiet", script, ...args],
    cwd: opts.cwd,
    env: opts.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: r.code, out: dec.decode(r.stdout), err: dec.decode(r.stderr) };
}

Deno.test("the bundle runs `version` and `config print` alone, without the repository or npm cache", async () => {
  await using iso = await isolatedCopy();

  const version = await run(iso.bundle, ["version"], { cwd: iso.dir, env: iso.env });
  assert.equal(version.code, 0, version.err);
  const fromSource = await run(join(ROOT, "main.ts"), ["version"], { cwd: ROOT });
  assert.equal(fromSource.code, 0, fromSource.err);
  assert.match(version.out.trim(), /^redprobe \d+\.\d+\.\d+/);
  assert.equal(version.out, fromSource.out);

  // The embedded default configuration (a `type: "text"` import) is the repository's.
  const printed = await run(iso.bundle, ["config", "print"], { cwd: iso.dir, env: iso.env });
  assert.equal(printed.code, 0, printed.err);
  const expected = await run(join(ROOT, "main.ts"), ["config", "print"], { cwd: ROOT });
  assert.equal(expected.code, 0, expected.err);
  assert.deepEqual(JSON.parse(printed.out), JSON.parse(expected.out));

  // A configuration error still names the key and exits 2 (zod, yaml bundled).
  const bad = await run(iso.bundle, ["config", "print"], {
    cwd: iso.dir,
    env: { ...iso.env, REDPROBE_METRICS_PORT: "not-a-port" },
  });
  assert.equal(bad.code, 2, bad.out + bad.err);
  assert.match(bad.err, /metrics\.port|REDPROBE_METRICS_PORT/);

  assert.deepEqual([...Deno.readDirSync(iso.dir)].map((e) => e.name), ["redprobe.js"]);
  assert.deepEqual(iso.npmCacheEntries(), [], "the bundle must not fetch npm packages");
});

Deno.test({
  name:
    "the bundled agent, alone in an empty dir, counts every request to real nginx exactly, and pushes OTLP",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using iso = await isolatedCopy();
    const doctor = await run(iso.bundle, ["doctor"], { cwd: iso.dir, env: iso.env });
    assert.equal(doctor.code, 0, doctor.out + doctor.err);
    assert.match(doctor.out, /libbpf\.so\.1 loaded/);
    assert.match(doctor.out, /plugin kprobe-http +its BPF programs pass the verifier/);

    // OTLP too: its exporters are loaded only when configured (a dynamic import), which the
    // bundle must still hold.
    await using receiver = startOtlpReceiver();
    await using agent = await startAgent({
      entry: iso.bundle,
      cwd: iso.dir,
      env: { ...iso.env, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url },
    });
    await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
    for (const pid of await nginx.pids()) await agent.waitForPid(pid);

    const COUNT = 25;
    const result = await sendRequests({
      port: nginx.port,
      spec: { method: "GET", path: "/hello" },
      count: COUNT,
      keepAlive: true,
      concurrency: 2,
    });
    assert.deepEqual([...result.statuses], [[200, COUNT]]);

    const ofNginx = { service_name: "nginx", target_instance: `${Deno.hostname()}:${nginx.pid}` };
    const samples = findSamples(
      await settledSamples(
        agent,
        (s) => sumSamples(s, "http_server_duration_seconds_count", ofNginx) >= COUNT,
      ),
      "http_server_duration_seconds_count",
      ofNginx,
    );
    assert.deepEqual(
      samples.map((
        s,
      ) => [s.labels.http_request_method, s.labels.http_response_status_code, s.value]),
      [["GET", "200", COUNT]],
      agent.logs(),
    );
    assert.equal(samples[0].labels.http_route, "/hello");
    await waitFor(
      () => receiver.spans.filter((x) => x.resource["service.name"] === "nginx").length === COUNT,
      { timeoutMs: 10_000, what: "one OTLP span per nginx request from the bundled agent" },
    );

    const { code } = await agent.stop();
    assert.equal(code, 0);
    assert.deepEqual(iso.npmCacheEntries(), [], "the bundle must not fetch npm packages");
  },
});
