/**
 * The agent's entry point: `deno run -A main.ts [flags]` (what `scripts/run.sh` runs).
 *
 * @module
 */
import { main } from "./core/cli.ts";
import { BUILTIN_PLUGINS } from "./plugins/registry.ts";

if (import.meta.main) {
  Deno.exit(await main(Deno.args, BUILTIN_PLUGINS));
}
