// These tests never start the agent: every case ends before `Agent.start` (help, version, usage
// and configuration errors, --print-config).
import assert from "node:assert/strict";
import { BUILTIN_PLUGINS } from "../plugins/registry.ts";
import { main, USAGE, VERSION } from "./cli.ts";

interface Run {
  status: number;
  out: string;
  err: string;
}

async function run(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const out: string[] = [];
  const err: string[] = [];
  const status = await main(args, BUILTIN_PLUGINS, {
    out: (t) => out.push(t),
    err: (t) => err.push(t),
    env,
  });
  return { status, out: out.join("\n"), err: err.join("\n") };
}

async function withFile<T>(yaml: string, fn: (path: string) => Promise<T>): Promise<T> {
  const path = await Deno.makeTempFile({ prefix: "redprobe-cli-", suffix: ".yaml" });
  try {
    await Deno.writeTextFile(path, yaml);
    return await fn(path);
  } finally {
    await Deno.remove(path);
  }
}

Deno.test("main() --help and -h print the usage and exit 0", async () => {
  for (const flag of ["--help", "-h"]) {
    const r = await run([flag]);
    assert.equal(r.status, 0, flag);
    assert.equal(r.out, USAGE);
    assert.match(r.out, /Usage: redprobe \[run\] \[flags\]/);
    assert.match(r.out, /--print-config/);
    assert.equal(r.err, "");
  }
});

Deno.test("main() --help wins over other flags, even invalid values", async () => {
  const r = await run(["--metrics-port", "not-a-port", "--help"]);
  assert.equal(r.status, 0);
  assert.equal(r.out, USAGE);
});

Deno.test("main() --version and -V print the version and exit 0", async () => {
  for (const flag of ["--version", "-V"]) {
    const r = await run([flag]);
    assert.equal(r.status, 0, flag);
    assert.equal(r.out, `redprobe ${VERSION}`);
    assert.match(VERSION, /^\d+\.\d+\.\d+/);
    assert.equal(r.err, "");
  }
});

Deno.test("main() exits 2 with a message on an unknown flag", async () => {
  const r = await run(["--bogus"]);
  assert.equal(r.status, 2);
  assert.match(r.err, /--bogus/);
  assert.match(r.err, /redprobe --help/);
  assert.equal(r.out, "");
});

Deno.test("main() exits 2 on a positional argument or a flag missing its value", async () => {
  for (const args of [["extra"], ["--metrics-port"], ["-c"], ["--print-config=yes"]]) {
    const r = await run(args);
    assert.equal(r.status, 2, args.join(" "));
    assert.match(r.err, /^redprobe: /, args.join(" "));
  }
});

Deno.test("main() exits 2 on a bad configuration file and prints the file and the key", async () => {
  await withFile("metrics:\n  port: 123456\n", async (file) => {
    for (const args of [["--config", file], ["-c", file], [`--config=${file}`]]) {
      const r = await run(args);
      assert.equal(r.status, 2, args.join(" "));
      assert.ok(r.err.includes(file), r.err);
      assert.ok(r.err.includes("metrics.port"), r.err);
      assert.equal(r.out, "");
    }
  });
});

Deno.test("main() reads the file named by REDPROBE_CONFIG when there is no --config", async () => {
  await withFile("log_lvl: debug\n", async (file) => {
    const r = await run([], { REDPROBE_CONFIG: file });
    assert.equal(r.status, 2);
    assert.ok(r.err.includes(file) && r.err.includes("log_lvl"), r.err);
  });
});

Deno.test("main() exits 2 when the configuration file does not exist", async () => {
  const file = `/nonexistent-${crypto.randomUUID()}.yaml`;
  const r = await run(["--config", file]);
  assert.equal(r.status, 2);
  assert.ok(r.err.includes(file), r.err);
});

Deno.test("main() exits 2 on a bad --metrics-port, naming the flag", async () => {
  const r = await run(["--metrics-port", "70000", "--print-config"]);
  assert.equal(r.status, 2);
  assert.match(r.err, /--metrics-port/);
  assert.match(r.err, /70000/);
});

Deno.test("main() --print-config prints the effective configuration as JSON", async () => {
  const r = await run(["--print-config", "--metrics-port", "1234"]);
  assert.equal(r.status, 0, r.err);
  const config = JSON.parse(r.out);
  assert.equal(config.metrics.port, 1234);
  assert.equal(config.metrics.address, "0.0.0.0");
  assert.equal(config.log_level, "info");
  assert.equal(config.discovery.poll_interval, 500);
  assert.deepEqual(config.plugins, {
    "kprobe-http": {
      request_timeout: 30_000,
      max_connections: 16384,
      aggregate_in_kernel: true,
      clients: "every_process",
    },
    "tls-uprobe": {
      request_timeout: 30_000,
      max_connections: 16384,
      aggregate_in_kernel: true,
      clients: "every_process",
      libraries: "auto",
    },
    "go-http": {
      executables: [],
      servers: "auto",
      skip_executables: [],
      aggregate_in_kernel: true,
      max_in_flight: 16384,
    },
    "go-grpc": {
      aggregate_in_kernel: true,
      max_in_flight: 16384,
      skip_executables: [],
    },
  });
});

Deno.test("main() --print-config shows file, environment and flags merged", async () => {
  await withFile(
    "log_level: warn\nmetrics:\n  naming: otel\n  port: 9500\nplugins:\n  kprobe-http:\n    request_timeout: 2s\n",
    async (file) => {
      const r = await run(
        ["-c", file, "--print-config", "--log-level", "debug"],
        {
          REDPROBE_METRICS_PORT: "9600",
          REDPROBE_LOG_LEVEL: "error",
          REDPROBE_METRICS_ADDRESS: "::",
        },
      );
      assert.equal(r.status, 0, r.err);
      const config = JSON.parse(r.out);
      assert.equal(config.log_level, "debug", "flag over env over file");
      assert.equal(config.metrics.port, 9600, "env over file");
      assert.equal(config.metrics.address, "::");
      assert.equal(config.metrics.naming, "otel", "file over defaults");
      assert.equal(config.plugins["kprobe-http"].request_timeout, 2000);
    },
  );
});

Deno.test("main() --print-config leaves out a disabled plugin", async () => {
  await withFile("plugins:\n  kprobe-http:\n    enabled: false\n", async (file) => {
    const r = await run(["-c", file, "--print-config"]);
    assert.equal(r.status, 0, r.err);
    assert.deepEqual(Object.keys(JSON.parse(r.out).plugins), ["tls-uprobe", "go-http", "go-grpc"]);
  });
});

Deno.test("main() takes any key from REDPROBE_<SECTION>_<KEY>; an unknown one exits 2", async () => {
  const r = await run(["--print-config"], {
    REDPROBE_ROUTES_MAX_PER_SERVICE: "7",
    REDPROBE_PLUGINS_TLS_UPROBE_CLIENTS: "targets",
  });
  assert.equal(r.status, 0, r.err);
  const config = JSON.parse(r.out);
  assert.equal(config.routes.max_per_service, 7);
  assert.equal(config.plugins["tls-uprobe"].clients, "targets");
  const bad = await run(["--print-config"], { REDPROBE_ROUTES_MAX_PER_SERVIC: "7" });
  assert.equal(bad.status, 2);
  assert.match(bad.err, /REDPROBE_ROUTES_MAX_PER_SERVIC/);
});

Deno.test("main(): version and config print as commands; an unknown command exits 2", async () => {
  assert.match((await run(["version"])).out, /^redprobe \d+\.\d+\.\d+$/);
  const printed = await run(["config", "print", "--metrics-port", "1234"]);
  assert.equal(printed.status, 0, printed.err);
  assert.equal(JSON.parse(printed.out).metrics.port, 1234);
  const bad = await run(["frobnicate"]);
  assert.equal(bad.status, 2);
  assert.match(bad.err, /unknown command "frobnicate"/);
});
