// These tests never start the agent: every case ends before `Agent.start` (help, version, usage
// and configuration errors, --print-config).
import assert from "node:assert/strict";
import { BUILTIN_PLUGINS } from "../plugins/registry.ts";
import { main, USAGE, VERSION } from "./cli.ts";
import { runTop, TOP_USAGE } from "./top.ts";

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

// `redprobe top` against a stand-in agent: a local server whose /metrics grows by `step`
// requests (one in ten a 500) at every scrape.
async function withFakeAgent<T>(
  fn: (port: number, scrapes: () => number) => Promise<T>,
  step = 10,
): Promise<T> {
  let scrapes = 0;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    if (new URL(req.url).pathname !== "/metrics") return new Response("no", { status: 404 });
    const n = step * ++scrapes;
    const l = 'service_name="web",service_namespace="",target_instance="vm:1",' +
      'http_request_method="GET",http_route="/users/{id}"';
    const series = (status: string, count: number) =>
      [
        `http_server_duration_seconds_bucket{le="0.01",${l},http_response_status_code="${status}"} ${count}`,
        `http_server_duration_seconds_bucket{le="+Inf",${l},http_response_status_code="${status}"} ${count}`,
        `http_server_duration_seconds_count{${l},http_response_status_code="${status}"} ${count}`,
      ].join("\n");
    return new Response(`${series("200", n * 0.9)}\n${series("500", n * 0.1)}\n`);
  });
  try {
    return await fn(server.addr.port, () => scrapes);
  } finally {
    await server.shutdown();
  }
}

function tableRow(out: string, route: string): string[] {
  const line = out.split("\n").find((l) => l.includes(` ${route} `));
  assert.ok(line, out);
  return line.trim().split(/\s{2,}/);
}

Deno.test("main() top --help prints its usage; the main usage names it", async () => {
  const r = await run(["top", "--help"]);
  assert.equal(r.status, 0);
  assert.equal(r.out, TOP_USAGE);
  assert.match(USAGE, /redprobe top \[flags\]/);
});

Deno.test("main() top exits 2 on a bad flag or value", async () => {
  for (
    const args of [
      ["--bogus"],
      ["--sort", "latency"],
      ["--interval", "soon"],
      ["--limit", "0"],
      ["--url", "ftp://x/metrics"],
      ["extra"],
    ]
  ) {
    const r = await run(["top", ...args]);
    assert.equal(r.status, 2, args.join(" "));
    assert.match(r.err, /^redprobe top: /, args.join(" "));
    assert.equal(r.out, "");
  }
});

Deno.test("main() top: an unreachable endpoint is one line naming the URL, exit 1", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const url = `http://127.0.0.1:${port}/metrics`;
  const r = await run(["top", "--once", "--url", url]);
  assert.equal(r.status, 1);
  assert.equal(r.err.split("\n").length, 1, r.err);
  assert.ok(r.err.includes(`cannot read ${url}: `), r.err);
  assert.match(r.err, /refused/i);
  // The endpoint from --metrics-port (address 0.0.0.0 connects to 127.0.0.1), and from the env.
  const flag = await run(["top", "--once", "--metrics-port", String(port)]);
  assert.ok(flag.err.includes(`cannot read ${url}`), flag.err);
  const env = await run(["top", "--once"], { REDPROBE_METRICS_PORT: String(port) });
  assert.ok(env.err.includes(`cannot read ${url}`), env.err);
});

Deno.test("main() top --once --interval 0: one scrape, cumulative, no rate", async () => {
  await withFakeAgent(async (port, scrapes) => {
    const r = await run(["top", "--once", "--interval", "0", "--metrics-port", String(port)]);
    assert.equal(r.status, 0, r.err);
    assert.equal(scrapes(), 1);
    assert.match(r.out, /since the agent started \(cumulative\); no RATE with --interval 0/);
    assert.match(r.out, /SERVICE +KIND +ROUTE +RATE\/s +ERR% +P50 +P99 +TOTAL/);
    // 9 OK + 1 error, every one in (0, 10 ms]: p50 = 5 ms, p99 = 9.9 ms.
    assert.deepEqual(tableRow(r.out, "/users/{id}"), [
      "web",
      "http server",
      "/users/{id}",
      "-",
      "10.0%",
      "5.00ms",
      "9.90ms",
      "10",
    ]);
  });
});

Deno.test("main() top --once: two scrapes an interval apart give the rate", async () => {
  await withFakeAgent(async (port, scrapes) => {
    const url = `http://127.0.0.1:${port}/`; // the path defaults to /metrics
    const started = performance.now();
    const r = await run(["top", "--once", "--interval", "300ms", "--url", url]);
    const elapsed = (performance.now() - started) / 1000;
    assert.equal(r.status, 0, r.err);
    assert.equal(scrapes(), 2);
    assert.ok(elapsed >= 0.3, `${elapsed}`);
    const [, , , rate, errors, , , total] = tableRow(r.out, "/users/{id}");
    // 10 more requests between scrapes at least 300 ms apart (and, here, well under 1 s).
    assert.ok(Number(rate) > 10 && Number(rate) <= 10 / 0.3, rate);
    assert.equal(errors, "10.0%");
    assert.equal(total, "20");
    assert.match(r.out, /RATE over \d+\.\d s; ERR%, P50, P99 since the agent started/);
  });
});

Deno.test("runTop() live: redraws in place every interval and restores the cursor", async () => {
  await withFakeAgent(async (port) => {
    let screen = "";
    const frames = Promise.withResolvers<void>();
    const stop = new AbortController();
    const terminal = {
      write(text: string) {
        screen += text;
        if (screen.split("\x1b[H").length > 3) frames.resolve();
      },
      size: () => ({ columns: 90, rows: 20 }),
    };
    const done = runTop(["--interval", "100ms", "--url", `http://127.0.0.1:${port}/metrics`], [], {
      out: () => {},
      err: (t) => assert.fail(t),
      env: {},
      terminal,
      signal: stop.signal,
    });
    await frames.promise;
    stop.abort();
    assert.equal(await done, 0);
    assert.ok(screen.startsWith("\x1b[?25l\x1b[2J\x1b[H"), JSON.stringify(screen.slice(0, 20)));
    assert.ok(screen.endsWith("\x1b[?25h\n"));
    const [first, second] = screen.split("\x1b[H").slice(1);
    assert.match(first, /first scrape: ERR%, P50, P99 since the agent started/);
    assert.match(second, /RATE, ERR%, P50, P99 over the last \d+\.\d s; 1 row, by rate/);
    for (const frame of [first, second]) {
      for (const line of frame.split("\n")) {
        const text = line.replaceAll("\x1b[K", "").replaceAll("\x1b[J", "");
        assert.ok([...text].length <= 90, line);
      }
    }
    // Every frame's window holds 10 requests, one an error.
    assert.match(second, /\/users\/\{id\} +\d+\.\d+ +10\.0% +5\.00ms +9\.90ms +20/);
  });
});
