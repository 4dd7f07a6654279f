/**
 * Third-party plugin modules (`plugin_modules` in the configuration): each is imported, and its
 * default export (a plugin definition, or an array of them) is checked against the contract
 * like a built-in's. A module that cannot be imported or does not follow the contract is
 * reported, never fatal: the other plugins run.
 *
 * @module
 */
import { type AnyPlugin, validatePlugin } from "./plugin.ts";

/** A module that could not be used, and why. */
export interface PluginModuleFailure {
  /** The specifier as configured (a file URL for a path). */
  module: string;
  message: string;
}

/**
 * Imports `specifiers` in order. `taken`: ids already in use (the built-ins'); a module whose
 * plugin reuses one is refused (it would shadow a built-in's configuration).
 */
export async function importPluginModules(
  specifiers: readonly string[],
  taken: Iterable<string>,
  importer: (specifier: string) => Promise<Record<string, unknown>> = (s) => import(s),
): Promise<{ plugins: AnyPlugin[]; failures: PluginModuleFailure[] }> {
  const ids = new Set(taken);
  const plugins: AnyPlugin[] = [];
  const failures: PluginModuleFailure[] = [];
  for (const module of specifiers) {
    let exports: Record<string, unknown>;
    try {
      exports = await importer(module);
    } catch (e) {
      failures.push({ module, message: `cannot import it: ${firstLine(e)}` });
      continue;
    }
    const value = exports.default;
    if (value === undefined) {
      failures.push({
        module,
        message: "it has no default export (export default definePlugin({...}))",
      });
      continue;
    }
    const found: AnyPlugin[] = [];
    try {
      for (const candidate of Array.isArray(value) ? value : [value]) {
        const plugin = validatePlugin(candidate);
        if (ids.has(plugin.id)) {
          throw new Error(`its plugin id "${plugin.id}" is already taken by another plugin`);
        }
        found.push(plugin);
      }
    } catch (e) {
      failures.push({ module, message: firstLine(e) });
      continue;
    }
    for (const plugin of found) ids.add(plugin.id);
    plugins.push(...found);
  }
  return { plugins, failures };
}

function firstLine(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}
