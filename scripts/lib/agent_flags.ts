/**
 * How the agent is run by every TypeScript launcher (the tests, the benchmarks, the bundle's `#!`
 * line), as `scripts/run.sh`, `deno task agent` and the container image run it: a 1 MB young
 * generation (V8 grows it to 16 MB per semi-space) keeps the agent ~16 MB smaller at no measurable
 * cost (bench/results/README.md); `gc()` lets the agent collect its garbage once it has
 * instrumented new processes instead of holding it until V8's memory reducer runs (core/agent.ts).
 *
 * And with one malloc arena (`MALLOC_ARENA_MAX=1`, glibc): by default every thread that
 * allocates gets an arena of its own (up to 8 per CPU), and the agent's ~10 threads (V8's and
 * tokio's) each keep freed memory in theirs; one arena is ~4.5 MB less resident memory, settled,
 * measured by hand (bench/results/README.md). The agent's threads rarely allocate at the same
 * time: the lock they share costs nothing measurable.
 *
 * @module
 */
export const AGENT_V8_FLAGS = "--v8-flags=--max-semi-space-size=1,--expose-gc";

/**
 * The flags of `deno run` for the agent: the V8 flags above, and no V8 code cache. Deno keeps
 * compiled code in a SQLite file under DENO_DIR and maps it: ~4-5 MB of the agent's resident
 * memory (file pages, and the copies it makes), for a start-up that is no faster here (0.99-1.12 s
 * without against 1.11-1.27 s with, to "plugins running", measured by hand).
 */
export const AGENT_RUN_FLAGS: readonly string[] = ["--no-code-cache", AGENT_V8_FLAGS];

/** The environment every launcher gives the agent (see above); a value already set wins. */
export const AGENT_ENV: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: Deno.env.get("MALLOC_ARENA_MAX") ?? "1",
};
