/**
 * Configuration: the embedded defaults (config/default.yaml), merged with the user's YAML file,
 * then environment variables, then command-line flags; validated with zod before anything is
 * attached. Every problem becomes a {@linkcode ConfigError} naming the file and the key.
 *
 * @module
 */
import { dirname, isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { z } from "zod";
import YAML from "yaml";
import defaultYaml from "../config/default.yaml" with { type: "text" };
import { parseDurationMs } from "../lib/duration.ts";
import { LOG_FORMATS, LOG_LEVELS } from "./log.ts";
import type { AnyPlugin } from "./plugin.ts";
import { OPTIONAL_HTTP_LABELS } from "./exporter/red_metrics.ts";
import { RoutePattern } from "../lib/route.ts";
import { Selector } from "../lib/selectors.ts";

const toFileUrl = (path: string): URL => pathToFileURL(path);

/** A configuration problem: the agent exits with status 2 before attaching anything. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const ms = parseDurationMs(v);
  if (ms === undefined || ms <= 0) {
    ctx.addIssue({
      code: "custom",
      message: `expected a duration such as "500ms" or "2s", got ${JSON.stringify(v)}`,
    });
    return z.NEVER;
  }
  return ms;
});

const buckets = z.array(z.number().finite().nonnegative()).min(1).refine(
  (b) => b.every((v, i) => i === 0 || v > b[i - 1]),
  "bucket boundaries must be strictly increasing",
);

/** A route pattern (lib/route.ts): checked by compiling it. */
const routePattern = z.string().superRefine((pattern, ctx) => {
  try {
    new RoutePattern(pattern);
  } catch (e) {
    ctx.addIssue({
      code: "custom",
      message: `${(e as Error).message}, got ${JSON.stringify(pattern)}`,
    });
  }
});

/** A process selector (lib/selectors.ts): checked by compiling it. */
function selector(named: boolean) {
  const shape = {
    ports: z.array(z.union([z.number().int(), z.string()])).optional(),
    exe: z.string().min(1).optional(),
    cmdline: z.string().min(1).optional(),
    pid: z.number().int().positive().optional(),
  };
  const base = named
    ? z.strictObject({ ...shape, name: z.string().min(1).optional() })
    : z.strictObject(shape);
  return base.superRefine((spec, ctx) => {
    try {
      new Selector(spec);
    } catch (e) {
      ctx.addIssue({ code: "custom", message: (e as Error).message });
    }
  });
}

/** An OTLP/HTTP endpoint, or "" for none. */
const otlpUrl = z.string().refine((v) => {
  if (v === "") return true;
  try {
    return ["http:", "https:"].includes(new URL(v).protocol);
  } catch {
    return false;
  }
}, 'expected an http:// or https:// URL, or "" for none');

const configSchema = z.strictObject({
  log_level: z.enum(LOG_LEVELS),
  log_format: z.enum(LOG_FORMATS),
  metrics: z.strictObject({
    address: z.string().min(1),
    port: z.number().int().min(0).max(65535),
    naming: z.enum(["beyla", "otel"]),
    duration_buckets: buckets,
    size_buckets: buckets,
    max_series_per_metric: z.number().int().min(1),
    optional_labels: z.array(z.enum(OPTIONAL_HTTP_LABELS)),
  }),
  discovery: z.strictObject({
    poll_interval: duration,
    service_namespace: z.string(),
    instance_host: z.string(),
    series_ttl: duration,
    select: z.array(selector(true)),
    exclude: z.array(selector(false)),
    exclude_telemetry: z.boolean(),
  }),
  routes: z.strictObject({
    patterns: z.array(routePattern),
    ignored: z.array(routePattern),
    max_per_service: z.number().int().min(1),
  }),
  otlp: z.strictObject({
    endpoint: otlpUrl,
    metrics_endpoint: otlpUrl,
    traces_endpoint: otlpUrl,
    metrics: z.boolean(),
    traces: z.boolean(),
    export_interval: duration,
    headers: z.record(z.string(), z.string()),
    max_queued_spans: z.number().int().min(1),
  }),
  plugin_modules: z.array(z.string().min(1)),
  plugins: z.record(z.string(), z.record(z.string(), z.unknown()).nullable()),
});

export type AgentConfig = Omit<z.infer<typeof configSchema>, "plugins"> & {
  /** Enabled plugins, with their validated options. */
  plugins: Map<string, { plugin: AnyPlugin; options: unknown }>;
  /**
   * `plugins.<id>` sections that name no known plugin, left alone because a plugin module
   * failed to load (`allowUnknownPlugins`): probably that module's.
   */
  unknownPlugins: string[];
};

/** The OpenTelemetry SDK environment variables redprobe reads, as configuration keys. */
const OTEL_ENV: Record<string, string> = {
  OTEL_EXPORTER_OTLP_ENDPOINT: "endpoint",
  OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: "metrics_endpoint",
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "traces_endpoint",
  OTEL_METRIC_EXPORT_INTERVAL: "export_interval",
  OTEL_METRICS_EXPORTER: "metrics",
  OTEL_TRACES_EXPORTER: "traces",
};
const OTLP_PROTOCOL_ENV = [
  "OTEL_EXPORTER_OTLP_PROTOCOL",
  "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
  "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
];

/**
 * The standard OpenTelemetry variables as a layer over the `otlp` section, as other OTel tools
 * read them: an endpoint turns export on; `OTEL_METRIC_EXPORT_INTERVAL` is in milliseconds;
 * `OTEL_METRICS_EXPORTER`/`OTEL_TRACES_EXPORTER` are `otlp` or `none`. Only http/protobuf is
 * spoken: another `OTEL_EXPORTER_OTLP_*PROTOCOL` is a ConfigError rather than silence.
 */
function otelEnvOverrides(
  env: Record<string, string | undefined>,
): { layer: Json; sources: Map<string, string> } {
  const otlp: Json = {};
  const sources = new Map<string, string>();
  for (const name of OTLP_PROTOCOL_ENV) {
    const v = env[name];
    if (v !== undefined && v !== "" && v !== "http/protobuf") {
      throw new ConfigError(
        `Invalid ${name}: redprobe exports OTLP over http/protobuf only, got ${JSON.stringify(v)}`,
      );
    }
  }
  for (const [name, key] of Object.entries(OTEL_ENV)) {
    const v = env[name];
    if (v === undefined || v === "") continue;
    if (key === "export_interval") {
      if (!/^\d+$/.test(v.trim()) || Number(v) <= 0) {
        throw new ConfigError(
          `Invalid ${name}: expected a number of milliseconds, got ${JSON.stringify(v)}`,
        );
      }
      otlp[key] = `${Number(v)}ms`; // a bare number in the file means seconds
    } else if (key === "metrics" || key === "traces") {
      if (v !== "otlp" && v !== "none") {
        throw new ConfigError(
          `Invalid ${name}: redprobe knows "otlp" and "none", got ${JSON.stringify(v)}`,
        );
      }
      otlp[key] = v === "otlp";
    } else {
      otlp[key] = v;
    }
    sources.set(`otlp.${key}`, name);
  }
  return { layer: Object.keys(otlp).length ? { otlp } : {}, sources };
}

/** Command-line settings that override the file and the environment. */
export interface ConfigOverrides {
  metricsAddress?: string;
  metricsPort?: string;
  logLevel?: string;
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * Objects merge key by key; anything else in `over` replaces `base`. A null (a YAML key with
 * nothing under it, e.g. `metrics:` with every line commented out) over an object keeps it.
 */
export function mergeConfig(base: unknown, over: unknown): unknown {
  if (isObject(base) && over === null) return base;
  if (!isObject(base) || !isObject(over)) return over === undefined ? base : over;
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = mergeConfig(base[k], v);
  return out;
}

function parseYaml(text: string, source: string): unknown {
  const doc = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length) {
    const e = doc.errors[0];
    const where = e.linePos?.[0] ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : "";
    throw new ConfigError(
      `Cannot parse ${source}: YAML syntax error${where}: ${e.message.split("\n")[0]}`,
    );
  }
  const value = doc.toJS() ?? {};
  if (!isObject(value)) {
    throw new ConfigError(
      `Invalid configuration in ${source}: the top level must be a mapping of keys`,
    );
  }
  return value;
}

function issuesText(
  error: z.ZodError,
  prefix = "",
  fromEnv: ReadonlyMap<string, string> = new Map(),
): string {
  return error.issues
    .map((i) => {
      const key = [prefix, ...i.path.map(String)].filter(Boolean).join(".");
      const env = [...fromEnv].find(([path]) => key === path || key.startsWith(`${path}.`))?.[1];
      return `${key || "(top level)"}: ${i.message}${env ? ` (set by ${env})` : ""}`;
    })
    .join("; ");
}

/** Variables with their own handling (and error messages), or that are not a key. */
const SPECIAL_ENV = new Set([
  "REDPROBE_CONFIG",
  "REDPROBE_METRICS_ADDRESS",
  "REDPROBE_METRICS_PORT",
  "REDPROBE_LOG_LEVEL",
]);

/** A key as its environment variable spells it: `max-per_service` -> `MAX_PER_SERVICE`. */
function envToken(key: string): string {
  return key.toUpperCase().replace(/[^A-Z0-9]/g, "_");
}

/**
 * The key path `REDPROBE_<SECTION>_<KEY>` names in `tree` (the merged configuration): each
 * level's key is matched by its upper-cased spelling (`-` and `.` as `_`), longest first, so
 * `REDPROBE_PLUGINS_KPROBE_HTTP_REQUEST_TIMEOUT` is `plugins.kprobe-http.request_timeout`.
 */
export function envKeyPath(name: string, tree: unknown): string[] | undefined {
  const walk = (node: unknown, rest: string): string[] | undefined => {
    if (!isObject(node)) return undefined;
    const keys = Object.keys(node).sort((a, b) => b.length - a.length);
    for (const key of keys) {
      const token = envToken(key);
      if (rest === token) return [key];
      if (rest.startsWith(`${token}_`)) {
        const below = walk(node[key], rest.slice(token.length + 1));
        if (below) return [key, ...below];
      }
    }
    return undefined;
  };
  return walk(tree, name.slice("REDPROBE_".length));
}

/**
 * Every `REDPROBE_<SECTION>_<KEY>` variable of `env` as a layer over `tree`, and which variable
 * set each key path. Values are YAML scalars or flow lists (`9500`, `true`, `[/a, /b]`), except
 * where the key holds a string. An unknown variable is a ConfigError: a typo never goes unseen.
 */
function envOverrides(
  tree: unknown,
  env: Record<string, string | undefined>,
): { layer: Json; sources: Map<string, string> } {
  const layer: Json = {};
  const sources = new Map<string, string>();
  for (const [name, value] of Object.entries(env)) {
    if (!name.startsWith("REDPROBE_") || SPECIAL_ENV.has(name) || value === undefined) continue;
    const path = envKeyPath(name, tree);
    if (!path) {
      throw new ConfigError(
        `Unknown environment variable ${name}: it names no configuration key ` +
          `(REDPROBE_<SECTION>_<KEY>, e.g. REDPROBE_ROUTES_MAX_PER_SERVICE for routes.max_per_service)`,
      );
    }
    let current: unknown = tree;
    for (const key of path) current = isObject(current) ? current[key] : undefined;
    let parsed: unknown = value;
    if (typeof current !== "string") {
      try {
        parsed = YAML.parse(value);
      } catch (e) {
        throw new ConfigError(`Invalid ${name}: ${(e as Error).message.split("\n")[0]}`);
      }
    }
    let node = layer;
    for (const key of path.slice(0, -1)) {
      if (!isObject(node[key])) node[key] = {};
      node = node[key] as Json;
    }
    node[path[path.length - 1]] = parsed;
    sources.set(path.join("."), name);
  }
  return { layer, sources };
}

/** A port number from an environment variable or flag, named in the error. */
function portFrom(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || n > 65535) {
    throw new ConfigError(
      `Invalid ${what}: expected a TCP port (0-65535), got ${JSON.stringify(text)}`,
    );
  }
  return n;
}

/** A flag's value if given, else the environment variable's, with where it came from. */
function fromFlagOrEnv(
  flag: string | undefined,
  flagName: string,
  env: Record<string, string | undefined>,
  envName: string,
): { value: string; source: string } | undefined {
  if (flag !== undefined) return { value: flag, source: flagName };
  const value = env[envName];
  return value === undefined ? undefined : { value, source: envName };
}

/**
 * Builds the effective configuration. `file` is read here (a missing or unreadable file is a
 * ConfigError); `env` is usually `Deno.env.toObject()`.
 */
export function loadConfig(options: {
  file?: string;
  env?: Record<string, string | undefined>;
  overrides?: ConfigOverrides;
  plugins: readonly AnyPlugin[];
  /**
   * A `plugins.<id>` section naming no plugin is skipped (listed in `unknownPlugins`) rather
   * than an error: set when a plugin module failed to load, so its section is expected.
   */
  allowUnknownPlugins?: boolean;
}): AgentConfig {
  const env = options.env ?? {};
  let merged = parseYaml(defaultYaml, "the embedded default configuration");
  const source = options.file ?? "the configuration";
  if (options.file) {
    let text: string;
    try {
      text = Deno.readTextFileSync(options.file);
    } catch (e) {
      const why = e instanceof Deno.errors.NotFound ? "no such file" : (e as Error).message;
      throw new ConfigError(`Cannot read configuration file ${options.file}: ${why}`);
    }
    merged = mergeConfig(merged, parseYaml(text, options.file));
  }
  const fromOtelEnv = otelEnvOverrides(env);
  merged = mergeConfig(merged, fromOtelEnv.layer);
  const fromEnv = envOverrides(merged, env);
  merged = mergeConfig(merged, fromEnv.layer);
  for (const [k, v] of fromOtelEnv.sources) if (!fromEnv.sources.has(k)) fromEnv.sources.set(k, v);
  // Values from flags and the environment are checked here, so an error names where they came
  // from rather than the file.
  const layer: Json = { metrics: {} };
  const metrics = layer.metrics as Json;
  const address = fromFlagOrEnv(
    options.overrides?.metricsAddress,
    "--metrics-address",
    env,
    "REDPROBE_METRICS_ADDRESS",
  );
  if (address) {
    if (!address.value.trim()) {
      throw new ConfigError(
        `Invalid ${address.source}: expected a host name or IP address, got ${
          JSON.stringify(address.value)
        }`,
      );
    }
    metrics.address = address.value;
  }
  const port = fromFlagOrEnv(
    options.overrides?.metricsPort,
    "--metrics-port",
    env,
    "REDPROBE_METRICS_PORT",
  );
  if (port) metrics.port = portFrom(port.value, port.source);
  const level = fromFlagOrEnv(
    options.overrides?.logLevel,
    "--log-level",
    env,
    "REDPROBE_LOG_LEVEL",
  );
  if (level) {
    if (!(LOG_LEVELS as readonly string[]).includes(level.value)) {
      throw new ConfigError(
        `Invalid ${level.source}: expected one of ${LOG_LEVELS.join(", ")}, got ${
          JSON.stringify(level.value)
        }`,
      );
    }
    layer.log_level = level.value;
  }
  merged = mergeConfig(merged, layer);

  const parsed = configSchema.safeParse(merged);
  if (!parsed.success) {
    throw new ConfigError(
      `Invalid configuration in ${source}: ${issuesText(parsed.error, "", fromEnv.sources)}`,
    );
  }

  const byId = new Map(options.plugins.map((p) => [p.id, p]));
  const plugins = new Map<string, { plugin: AnyPlugin; options: unknown }>();
  const unknownPlugins: string[] = [];
  for (const [id, raw] of Object.entries(parsed.data.plugins)) {
    const plugin = byId.get(id);
    if (!plugin && options.allowUnknownPlugins) {
      unknownPlugins.push(id);
      continue;
    }
    if (!plugin) {
      throw new ConfigError(
        `Invalid configuration in ${source}: plugins.${id}: unknown plugin (known: ${
          [...byId.keys()].join(", ")
        })`,
      );
    }
    const { enabled = true, ...rest } = raw ?? {};
    if (typeof enabled !== "boolean") {
      throw new ConfigError(
        `Invalid configuration in ${source}: plugins.${id}.enabled: expected true or false`,
      );
    }
    if (!enabled) continue;
    let pluginOptions: unknown = rest;
    if (plugin.optionsSchema) {
      const result = plugin.optionsSchema.safeParse(rest);
      if (!result.success) {
        throw new ConfigError(
          `Invalid configuration in ${source}: ${
            issuesText(result.error, `plugins.${id}`, fromEnv.sources)
          }`,
        );
      }
      pluginOptions = result.data;
    }
    plugins.set(id, { plugin, options: pluginOptions });
  }
  const base = options.file ? toFileUrl(resolve(dirname(options.file)) + "/") : undefined;
  const pluginModules = parsed.data.plugin_modules.map((m) => moduleUrl(m, base));
  return { ...parsed.data, plugin_modules: pluginModules, plugins, unknownPlugins };
}

/**
 * A `plugin_modules` entry as an import specifier: a URL as is, a path as a file URL (a
 * relative one from the configuration file's folder, or the working directory without one).
 */
export function moduleUrl(entry: string, base?: URL): string {
  if (/^[a-z][a-z0-9+.-]*:/i.test(entry)) return entry;
  if (isAbsolute(entry)) return toFileUrl(entry).href;
  return new URL(entry, base ?? toFileUrl(Deno.cwd() + "/")).href;
}
