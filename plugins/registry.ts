/**
 * The built-in plugins, in the order they are started. A plugin is enabled by default when the
 * embedded configuration (config/default.yaml) lists it under `plugins:`.
 *
 * @module
 */
import type { AnyPlugin } from "../core/plugin.ts";
import goGrpc from "./go_grpc/mod.ts";
import goHttp from "./go_http/mod.ts";
import kprobeHttp from "./kprobe_http/mod.ts";
import tlsUprobe from "./tls_uprobe/mod.ts";

export const BUILTIN_PLUGINS: readonly AnyPlugin[] = [kprobeHttp, tlsUprobe, goHttp, goGrpc];
