import assert from "node:assert/strict";
import YAML from "yaml";
import { parseDurationMs } from "../lib/duration.ts";
import { BUILTIN_PLUGINS } from "../plugins/registry.ts";
import { type AgentConfig, ConfigError, loadConfig, mergeConfig } from "./config.ts";
import { DEFAULT_DURATION_BUCKETS, DEFAULT_SIZE_BUCKETS } from "./exporter/red_metrics.ts";
import { type AnyPlugin, definePlugin } from "./plugin.ts";
import { z } from "zod";

/** A second plugin, without an options schema, to check what applies to every plugin. */
const schemaless: AnyPlugin = definePlugin({
  id: "test-proto",
  description: "test plugin without options schema",
  bpfObject: new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]),
  decode: (b: Uint8Array) => b.length,
  toObservation: () => undefined,
});
/** A plugin with a schema whose defaults are visible in the result. */
const withSchema: AnyPlugin = definePlugin({
  id: "opt-proto",
  description: "test plugin with options",
  bpfObject: new Uint8Array([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]),
  optionsSchema: z.strictObject({ depth: z.number().int().default(3) }),
  decode: (b: Uint8Array) => b.length,
  toObservation: () => undefined,
});
const PLUGINS = [...BUILTIN_PLUGINS, schemaless, withSchema];

const DEFAULT_YAML_URL = new URL("../config/default.yaml", import.meta.url);

/** Writes `yaml` to a temp file, runs `fn` with its path, and removes it. */
function withFile<T>(yaml: string, fn: (path: string) => T): T {
  const path = Deno.makeTempFileSync({ prefix: "redprobe-config-", suffix: ".yaml" });
  try {
    Deno.writeTextFileSync(path, yaml);
    return fn(path);
  } finally {
    Deno.removeSync(path);
  }
}

function load(
  yaml: string | undefined,
  options: { env?: Record<string, string>; overrides?: Record<string, string> } = {},
): AgentConfig {
  if (yaml === undefined) return loadConfig({ plugins: PLUGINS, ...options });
  return withFile(yaml, (file) => loadConfig({ file, plugins: PLUGINS, ...options }));
}

/** Asserts that `fn` throws a ConfigError whose message contains every fragment. */
function assertConfigError(fn: () => unknown, ...fragments: string[]): ConfigError {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${error}`);
  for (const f of fragments) {
    assert.ok(error.message.includes(f), `"${error.message}" should mention ${f}`);
  }
  return error;
}

/** Like assertConfigError for a file: the message must name the file too. */
function assertFileError(yaml: string, ...fragments: string[]): ConfigError {
  return withFile(
    yaml,
    (file) => assertConfigError(() => loadConfig({ file, plugins: PLUGINS }), file, ...fragments),
  );
}

// --- Defaults --------------------------------------------------------------------------------

Deno.test("loadConfig() with no file gives the values config/default.yaml states", async () => {
  const file = YAML.parse(await Deno.readTextFile(DEFAULT_YAML_URL));
  const config = loadConfig({ plugins: BUILTIN_PLUGINS });
  assert.equal(config.log_level, file.log_level);
  assert.deepEqual(config.metrics, file.metrics);
  assert.deepEqual(config.discovery, {
    poll_interval: parseDurationMs(file.discovery.poll_interval),
    service_namespace: file.discovery.service_namespace,
    instance_host: "",
    series_ttl: parseDurationMs(file.discovery.series_ttl),
    select: [],
    exclude: [],
    exclude_telemetry: false,
  });
  assert.deepEqual([...config.plugins.keys()], Object.keys(file.plugins));
  const http = file.plugins["kprobe-http"];
  assert.deepEqual(config.plugins.get("kprobe-http")?.options, {
    request_timeout: parseDurationMs(http.request_timeout),
    max_connections: http.max_connections,
    aggregate_in_kernel: http.aggregate_in_kernel,
    clients: http.clients,
  });
  assert.equal(config.plugins.get("kprobe-http")?.plugin, BUILTIN_PLUGINS[0]);
  const go = file.plugins["go-http"];
  const { enabled: _, ...goOptions } = go;
  assert.deepEqual(config.plugins.get("go-http")?.options, goOptions);
});

Deno.test("loadConfig() defaults are the ones the agent documents", () => {
  const config = loadConfig({ plugins: BUILTIN_PLUGINS });
  assert.equal(config.log_level, "info");
  assert.equal(config.metrics.address, "0.0.0.0");
  assert.equal(config.metrics.port, 9400);
  assert.equal(config.metrics.naming, "beyla");
  assert.equal(config.metrics.max_series_per_metric, 10_000);
  assert.equal(config.discovery.poll_interval, 500);
  assert.equal(config.discovery.service_namespace, "");
});

Deno.test("the default configuration's buckets are the exporter's built-in buckets", () => {
  const config = loadConfig({ plugins: BUILTIN_PLUGINS });
  assert.deepEqual(config.metrics.duration_buckets, DEFAULT_DURATION_BUCKETS);
  assert.deepEqual(config.metrics.size_buckets, DEFAULT_SIZE_BUCKETS);
});

Deno.test("loadConfig() with an empty file or a file of comments gives the defaults", () => {
  const defaults = loadConfig({ plugins: PLUGINS });
  assert.deepEqual(load(""), defaults);
  assert.deepEqual(load("# nothing set\n---\n"), defaults);
});

Deno.test("loadConfig() keeps the defaults of a section whose keys are all commented out", () => {
  const defaults = loadConfig({ plugins: PLUGINS });
  assert.deepEqual(load("metrics:\n  # port: 1234\ndiscovery:\nplugins:\n"), defaults);
});

// --- Merging ---------------------------------------------------------------------------------

Deno.test("a user file overrides one key and keeps every other default", () => {
  const defaults = loadConfig({ plugins: PLUGINS });
  const config = load("metrics:\n  port: 9500\n");
  assert.equal(config.metrics.port, 9500);
  assert.deepEqual({ ...config.metrics, port: defaults.metrics.port }, defaults.metrics);
  assert.equal(config.log_level, defaults.log_level);
  assert.deepEqual(config.discovery, defaults.discovery);
  assert.deepEqual(config.plugins, defaults.plugins);
});

Deno.test("a user file replaces lists instead of merging them", () => {
  const config = load("metrics:\n  duration_buckets: [0.1, 1]\n");
  assert.deepEqual(config.metrics.duration_buckets, [0.1, 1]);
});

Deno.test("a user file overrides one plugin option and keeps the other", () => {
  const config = load("plugins:\n  kprobe-http:\n    request_timeout: 5s\n");
  assert.deepEqual(config.plugins.get("kprobe-http")?.options, {
    request_timeout: 5000,
    max_connections: 16384,
    aggregate_in_kernel: true,
    clients: "every_process",
  });
});

Deno.test("settings apply in the order flags > environment > file > defaults", () => {
  const yaml = "log_level: warn\nmetrics:\n  address: 10.0.0.1\n  port: 9500\n";
  const fileOnly = load(yaml);
  assert.deepEqual(
    [fileOnly.log_level, fileOnly.metrics.address, fileOnly.metrics.port],
    ["warn", "10.0.0.1", 9500],
  );
  const env = {
    REDPROBE_LOG_LEVEL: "debug",
    REDPROBE_METRICS_ADDRESS: "127.0.0.1",
    REDPROBE_METRICS_PORT: "9600",
  };
  const withEnv = load(yaml, { env });
  assert.deepEqual(
    [withEnv.log_level, withEnv.metrics.address, withEnv.metrics.port],
    ["debug", "127.0.0.1", 9600],
  );
  const withFlags = load(yaml, {
    env,
    overrides: { logLevel: "error", metricsAddress: "::1", metricsPort: "9700" },
  });
  assert.deepEqual(
    [withFlags.log_level, withFlags.metrics.address, withFlags.metrics.port],
    ["error", "::1", 9700],
  );
  // Each flag only overrides its own setting.
  const oneFlag = load(yaml, { env, overrides: { metricsPort: "9800" } });
  assert.deepEqual(
    [oneFlag.log_level, oneFlag.metrics.address, oneFlag.metrics.port],
    ["debug", "127.0.0.1", 9800],
  );
});

Deno.test("environment variables override the defaults without a file", () => {
  const config = load(undefined, { env: { REDPROBE_METRICS_PORT: "0", UNRELATED: "x" } });
  assert.equal(config.metrics.port, 0);
});

Deno.test("mergeConfig() merges objects key by key and lets scalars and lists replace", () => {
  assert.deepEqual(
    mergeConfig({ a: { b: 1, c: [1, 2] }, d: "x" }, { a: { c: [3] }, e: true }),
    { a: { b: 1, c: [3] }, d: "x", e: true },
  );
  assert.deepEqual(mergeConfig({ a: 1 }, undefined), { a: 1 });
  assert.equal(mergeConfig({ a: 1 }, "s"), "s");
  assert.deepEqual(mergeConfig({ a: { b: 1 } }, { a: null }), { a: { b: 1 } });
  assert.deepEqual(mergeConfig({ a: 1 }, { a: null }), { a: null });
});

// --- Plugins ---------------------------------------------------------------------------------

Deno.test("`enabled: false` removes a plugin", () => {
  const config = load("plugins:\n  kprobe-http:\n    enabled: false\n");
  assert.equal(config.plugins.has("kprobe-http"), false);
});

Deno.test("a plugin given as null is enabled with its default options", () => {
  const config = load("plugins:\n  kprobe-http: null\n  opt-proto:\n");
  assert.deepEqual(config.plugins.get("kprobe-http")?.options, {
    request_timeout: 30_000,
    max_connections: 16384,
    aggregate_in_kernel: true,
    clients: "every_process",
  });
  assert.deepEqual(config.plugins.get("opt-proto")?.options, { depth: 3 });
});

Deno.test("a plugin not listed in the defaults is enabled by listing it", () => {
  const config = load("plugins:\n  test-proto: {anything: 1}\n  opt-proto: {depth: 7}\n");
  assert.deepEqual(config.plugins.get("test-proto")?.options, { anything: 1 });
  assert.deepEqual(config.plugins.get("opt-proto")?.options, { depth: 7 });
  assert.ok(config.plugins.has("kprobe-http"), "the default plugin stays");
  assert.equal(config.plugins.get("test-proto")?.plugin, schemaless);
});

Deno.test("`enabled` is not passed on to the plugin's options", () => {
  const config = load("plugins:\n  test-proto:\n    enabled: true\n    x: 1\n");
  assert.deepEqual(config.plugins.get("test-proto")?.options, { x: 1 });
});

// --- Errors ----------------------------------------------------------------------------------

Deno.test("a missing configuration file is a ConfigError naming the file", () => {
  const file = `/nonexistent-${crypto.randomUUID()}/redprobe.yaml`;
  assertConfigError(() => loadConfig({ file, plugins: PLUGINS }), file, "no such file");
});

Deno.test("an unreadable configuration file (a directory) is a ConfigError naming it", () => {
  const dir = Deno.makeTempDirSync();
  try {
    assertConfigError(() => loadConfig({ file: dir, plugins: PLUGINS }), dir);
  } finally {
    Deno.removeSync(dir);
  }
});

Deno.test("a YAML syntax error is a ConfigError with the file and the line", () => {
  assertFileError("log_level: info\nmetrics:\n  port: 9400\n address: x\n", "YAML", "line 4");
  assertFileError("log_level: info\nmetrics:\n  port: 9400\n\tnaming: otel\n", "line 4", "Tabs");
  assertFileError("log_level: info\nlog_level: debug\n", "line 2", "unique");
});

Deno.test("a file that is not a mapping is a ConfigError", () => {
  assertFileError("- a\n- b\n", "top level");
  assertFileError("just a string\n", "top level");
});

Deno.test("an unknown top-level key is a ConfigError naming it", () => {
  assertFileError("log_lvl: debug\n", "log_lvl");
});

Deno.test("an unknown nested key is a ConfigError naming the section and the key", () => {
  assertFileError("metrics:\n  prot: 9400\n", "metrics", "prot");
  assertFileError("discovery:\n  interval: 1s\n", "discovery", "interval");
});

Deno.test("a value of the wrong type is a ConfigError naming the key", () => {
  assertFileError('metrics:\n  port: "9400"\n', "metrics.port");
  assertFileError("metrics:\n  max_series_per_metric: 1.5\n", "metrics.max_series_per_metric");
  assertFileError("metrics:\n  naming: prometheus\n", "metrics.naming");
  assertFileError("log_level: verbose\n", "log_level");
  assertFileError("metrics: 5\n", "metrics");
});

Deno.test("a port out of range in the file is a ConfigError naming the key", () => {
  assertFileError("metrics:\n  port: 70000\n", "metrics.port");
  assertFileError("metrics:\n  port: -1\n", "metrics.port");
});

Deno.test("a bad duration is a ConfigError naming the key and the value", () => {
  assertFileError("discovery:\n  poll_interval: soon\n", "discovery.poll_interval", '"soon"');
  assertFileError("discovery:\n  poll_interval: 0s\n", "discovery.poll_interval");
  assertFileError("discovery:\n  poll_interval: -5\n", "discovery.poll_interval");
});

Deno.test("bucket boundaries must be non-empty, non-negative and strictly increasing", () => {
  assertFileError("metrics:\n  duration_buckets: [0.1, 0.1]\n", "metrics.duration_buckets");
  assertFileError("metrics:\n  size_buckets: [64, 32]\n", "metrics.size_buckets", "increasing");
  assertFileError("metrics:\n  size_buckets: []\n", "metrics.size_buckets");
  assertFileError("metrics:\n  duration_buckets: [-1, 1]\n", "metrics.duration_buckets");
  assertFileError("metrics:\n  duration_buckets: [1, .inf]\n", "metrics.duration_buckets");
});

Deno.test("a port out of range in REDPROBE_METRICS_PORT is a ConfigError naming the variable", () => {
  for (const bad of ["65536", "-1", "80a", "", "1e3"]) {
    assertConfigError(
      () => load(undefined, { env: { REDPROBE_METRICS_PORT: bad } }),
      "REDPROBE_METRICS_PORT",
      JSON.stringify(bad),
    );
  }
});

Deno.test("a port out of range in --metrics-port is a ConfigError naming the flag", () => {
  for (const bad of ["65536", "99999", "http", "-80"]) {
    assertConfigError(
      () => load(undefined, { overrides: { metricsPort: bad } }),
      "--metrics-port",
      JSON.stringify(bad),
    );
  }
  // The flag is checked even when the environment variable is valid.
  assertConfigError(
    () =>
      load(undefined, { env: { REDPROBE_METRICS_PORT: "80" }, overrides: { metricsPort: "x" } }),
    "--metrics-port",
  );
});

Deno.test("a bad log level from the environment or a flag names its source, not the file", () => {
  const e = withFile("log_level: debug\n", (file) => {
    const error = assertConfigError(
      () => loadConfig({ file, plugins: PLUGINS, env: { REDPROBE_LOG_LEVEL: "verbose" } }),
      "REDPROBE_LOG_LEVEL",
      '"verbose"',
    );
    assert.ok(!error.message.includes(file), error.message);
    return error;
  });
  assert.match(e.message, /error, warn, info, debug/);
  assertConfigError(() => load(undefined, { overrides: { logLevel: "loud" } }), "--log-level");
});

Deno.test("an empty metrics address from the environment or a flag names its source", () => {
  assertConfigError(
    () => load(undefined, { env: { REDPROBE_METRICS_ADDRESS: "" } }),
    "REDPROBE_METRICS_ADDRESS",
  );
  assertConfigError(
    () => load(undefined, { overrides: { metricsAddress: " " } }),
    "--metrics-address",
  );
});

Deno.test("an unknown plugin id is a ConfigError naming it and the known ones", () => {
  assertFileError("plugins:\n  grpc-probe: {}\n", "plugins.grpc-probe", "kprobe-http");
});

Deno.test("a bad plugin option is a ConfigError naming the plugin and the option", () => {
  assertFileError(
    'plugins:\n  kprobe-http:\n    request_timeout: "soon"\n',
    "plugins.kprobe-http.request_timeout",
    '"soon"',
  );
  assertFileError(
    "plugins:\n  kprobe-http:\n    max_connections: 10\n",
    "plugins.kprobe-http.max_connections",
  );
  assertFileError("plugins:\n  kprobe-http:\n    retries: 3\n", "plugins.kprobe-http", "retries");
});

Deno.test("a non-boolean `enabled` is a ConfigError naming the plugin", () => {
  assertFileError(
    "plugins:\n  kprobe-http:\n    enabled: no-thanks\n",
    "plugins.kprobe-http.enabled",
  );
});

Deno.test("a plugin given as a scalar or list is a ConfigError naming it", () => {
  assertFileError("plugins:\n  kprobe-http: yes\n", "plugins.kprobe-http");
  assertFileError("plugins:\n  kprobe-http: [1]\n", "plugins.kprobe-http");
});

Deno.test("without a file, errors say they come from the configuration", () => {
  assertConfigError(
    () => loadConfig({ plugins: [] }),
    "the configuration",
    "plugins.kprobe-http",
    "unknown plugin",
  );
});

Deno.test("metrics.optional_labels takes the labels redprobe can add, and names a wrong one", () => {
  const config = load("metrics:\n  optional_labels: [server_port, server_address]\n");
  assert.deepEqual(config.metrics.optional_labels, ["server_port", "server_address"]);
  assertFileError(
    "metrics:\n  optional_labels: [http_target]\n",
    "metrics.optional_labels.0",
    "client_address",
  );
});

Deno.test("routes: patterns and ignored paths are checked, with the key of the bad one", () => {
  const config = load(
    'routes:\n  patterns: ["/users/{id}", "/files/*"]\n  ignored: ["/healthz"]\n',
  );
  assert.deepEqual(config.routes.patterns, ["/users/{id}", "/files/*"]);
  assert.deepEqual(config.routes.ignored, ["/healthz"]);
  assert.equal(config.routes.max_per_service, 1000);
  assertFileError(
    'routes:\n  patterns: ["/ok", "users/{id}"]\n',
    "routes.patterns.1",
    "starts with",
  );
  assertFileError('routes:\n  ignored: ["/a/*/b"]\n', "routes.ignored.0", '"*"');
  assertFileError("routes:\n  max_per_service: 0\n", "routes.max_per_service");
});

Deno.test("every key can be set by REDPROBE_<SECTION>_<KEY>, typed as the key", () => {
  const config = load("metrics:\n  naming: beyla\n", {
    env: {
      REDPROBE_METRICS_NAMING: "otel",
      REDPROBE_METRICS_OPTIONAL_LABELS: "[server_address, server_port]",
      REDPROBE_ROUTES_MAX_PER_SERVICE: "50",
      REDPROBE_ROUTES_IGNORED: "[/healthz]",
      REDPROBE_DISCOVERY_SERVICE_NAMESPACE: "123", // a string key keeps the string
      REDPROBE_PLUGINS_KPROBE_HTTP_REQUEST_TIMEOUT: "5s",
      REDPROBE_PLUGINS_GO_HTTP_ENABLED: "false",
    },
  });
  assert.equal(config.metrics.naming, "otel", "env over file");
  assert.deepEqual(config.metrics.optional_labels, ["server_address", "server_port"]);
  assert.equal(config.routes.max_per_service, 50);
  assert.deepEqual(config.routes.ignored, ["/healthz"]);
  assert.equal(config.discovery.service_namespace, "123");
  assert.equal(
    (config.plugins.get("kprobe-http")?.options as { request_timeout: number }).request_timeout,
    5000,
  );
  assert.ok(!config.plugins.has("go-http"));
});

Deno.test("a bad or unknown REDPROBE_ variable is a ConfigError naming it", () => {
  assertConfigError(
    () => load(undefined, { env: { REDPROBE_ROUTES_MAX_PER_SERVICE: "none" } }),
    "routes.max_per_service",
    "REDPROBE_ROUTES_MAX_PER_SERVICE",
  );
  assertConfigError(
    () => load(undefined, { env: { REDPROBE_PLUGINS_KPROBE_HTTP_CLIENTS: "some" } }),
    "plugins.kprobe-http.clients",
    "REDPROBE_PLUGINS_KPROBE_HTTP_CLIENTS",
  );
  assertConfigError(
    () => load(undefined, { env: { REDPROBE_METRICS_PROT: "1" } }),
    "REDPROBE_METRICS_PROT",
    "names no configuration key",
  );
});

Deno.test("discovery.select and exclude: checked, with the key of the bad entry", () => {
  const config = load(
    'discovery:\n  select: [{ ports: [8080, "9000-9010"], name: shop }, { cmdline: "gunicorn" }]\n' +
      '  exclude: [{ exe: "/usr/bin/prometheus" }]\n',
  );
  assert.equal(config.discovery.select.length, 2);
  assertFileError('discovery:\n  select: [{ ports: ["9-1"] }]\n', "discovery.select.0", "ports");
  assertFileError("discovery:\n  select: [{ name: x }]\n", "discovery.select.0", "needs ports");
  assertFileError("discovery:\n  exclude: [{ name: x, pid: 1 }]\n", "discovery.exclude.0");
});
