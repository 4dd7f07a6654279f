/**
 * The command line: `redprobe [run] [flags]` runs the agent until SIGINT/SIGTERM; `redprobe
 * doctor` says what works on this machine; `redprobe version`; `redprobe config print`.
 *
 * Exit status: 0 after a clean stop, 2 for a configuration or usage problem (nothing was
 * attached), 1 when the agent could not start or failed.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Agent, AgentStartError } from "./agent.ts";
import { ConfigError, loadConfig } from "./config.ts";
import { createLogger, LOG_LEVELS, type LogLevel } from "./log.ts";
import type { AnyPlugin } from "./plugin.ts";
import { formatDoctor, runDoctor } from "./doctor.ts";
import { runTop } from "./top.ts";
import { importPluginModules, type PluginModuleFailure } from "./plugin_modules.ts";

export const VERSION = "0.1.0";

export const USAGE =
  `redprobe ${VERSION}: RED metrics (rate, errors, duration) for the HTTP services on this
host, from eBPF probes, with no change to the services.

Usage: redprobe [run] [flags]       run the agent (until SIGINT or SIGTERM)
       redprobe doctor [flags]      what works on this machine and why not (attaches nothing)
       redprobe config print [flags]  the effective configuration, as JSON
       redprobe top [flags]         a live table of RED per service and route, from a running
                                    agent's metrics endpoint ("redprobe top --help")
       redprobe version

With no configuration it instruments every process listening on a TCP port (except itself)
and serves Prometheus metrics on http://0.0.0.0:9400/metrics. Needs root (or CAP_BPF,
CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).

Flags:
  -c, --config FILE          YAML configuration merged over the embedded defaults
                             (env REDPROBE_CONFIG; see config/default.yaml for every key)
      --metrics-address ADDR address of the metrics endpoint (env REDPROBE_METRICS_ADDRESS,
                             default 0.0.0.0)
      --metrics-port PORT    port of the metrics endpoint (env REDPROBE_METRICS_PORT,
                             default 9400)
      --log-level LEVEL      error, warn, info or debug (env REDPROBE_LOG_LEVEL, default info)
      --print-config         print the effective configuration as JSON and exit
  -h, --help                 show this help and exit
  -V, --version              print the version and exit

Exit status: 0 stopped cleanly, 1 could not start or failed (doctor: something needed is
missing), 2 bad configuration, flags or command.
`;

export interface CliIo {
  out: (text: string) => void;
  err: (text: string) => void;
  env: Record<string, string | undefined>;
}

const defaultIo: CliIo = {
  out: (t) => console.log(t),
  err: (t) => console.error(t),
  env: Deno.env.toObject(),
};

/** Runs the CLI; resolves to the process exit status. */
export async function main(
  args: string[],
  plugins: readonly AnyPlugin[],
  io: CliIo = defaultIo,
): Promise<number> {
  // `top` is a client of a running agent, with flags of its own (core/top.ts).
  if (args[0] === "top") return await runTop(args.slice(1), plugins, io);
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        config: { type: "string", short: "c" },
        "metrics-address": { type: "string" },
        "metrics-port": { type: "string" },
        "log-level": { type: "string" },
        "print-config": { type: "boolean" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
    });
  } catch (e) {
    io.err(`redprobe: ${(e as Error).message}\nRun "redprobe --help" for the flags.`);
    return 2;
  }
  const flags = parsed.values;
  const command = parsed.positionals.join(" ") || "run";
  if (!["run", "doctor", "version", "config print"].includes(command)) {
    io.err(`redprobe: unknown command "${command}"\nRun "redprobe --help" for the commands.`);
    return 2;
  }
  if (flags.help) {
    io.out(USAGE);
    return 0;
  }
  if (flags.version || command === "version") {
    io.out(`redprobe ${VERSION}`);
    return 0;
  }

  let config;
  let moduleFailures: PluginModuleFailure[] = [];
  try {
    const configure = (all: readonly AnyPlugin[], allowUnknownPlugins: boolean) =>
      loadConfig({
        file: flags.config ?? io.env.REDPROBE_CONFIG,
        env: io.env,
        overrides: {
          metricsAddress: flags["metrics-address"],
          metricsPort: flags["metrics-port"],
          logLevel: flags["log-level"],
        },
        plugins: all,
        allowUnknownPlugins,
      });
    // Two passes: the first finds plugin_modules (their plugins' sections are not known yet),
    // the second checks every plugin's options, third-party ones included.
    config = configure(plugins, true);
    if (config.plugin_modules.length) {
      const loaded = await importPluginModules(config.plugin_modules, plugins.map((p) => p.id));
      moduleFailures = loaded.failures;
      config = configure([...plugins, ...loaded.plugins], moduleFailures.length > 0);
    } else {
      config = configure(plugins, false);
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      io.err(`redprobe: ${e.message}`);
      return 2;
    }
    throw e;
  }
  for (const f of moduleFailures) {
    io.err(`redprobe: plugin module ${f.module} not loaded: ${f.message}`);
  }
  for (const id of config.unknownPlugins) {
    io.err(`redprobe: plugins.${id} ignored: no plugin "${id}" (a plugin module failed to load)`);
  }
  if (command === "doctor") {
    const { text, ok } = formatDoctor(runDoctor(config));
    io.out(text);
    return ok ? 0 : 1;
  }
  if (flags["print-config"] || command === "config print") {
    const plugins = Object.fromEntries([...config.plugins].map(([id, p]) => [id, p.options]));
    // What the keys are; not the loader's own notes (unknownPlugins).
    const { unknownPlugins: _unknown, ...keys } = config;
    io.out(JSON.stringify({ ...keys, plugins }, null, 2));
    return 0;
  }

  const log = createLogger(config.log_level as LogLevel, io.err, config.log_format);
  // Listen for signals before starting: a SIGTERM during start-up must still stop cleanly.
  const stopped = Promise.withResolvers<number>();
  const onSignal = (signal: Deno.Signal) => () => {
    log.info(`${signal}: stopping`);
    stopped.resolve(0);
  };
  const handlers = (["SIGINT", "SIGTERM"] as const).map((s) => [s, onSignal(s)] as const);
  for (const [signal, handler] of handlers) Deno.addSignalListener(signal, handler);
  try {
    let agent: Agent;
    try {
      agent = await Agent.start({ config, log, moduleFailures });
    } catch (e) {
      log.error(
        e instanceof AgentStartError ? e.message : `cannot start: ${(e as Error).stack ?? e}`,
      );
      return 1;
    }
    const status = await stopped.promise;
    await agent.stop();
    log.info("stopped; every probe is detached");
    return status;
  } finally {
    for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  }
}

export { LOG_LEVELS };
