/**
 * How the agent is run by every TypeScript launcher (the tests, the benchmarks, the bundle's `#!`
 * line), as `scripts/run.sh`, `deno task agent` and the container image run it: a 1 MB young
 * generation (V8 grows it to 16 MB per semi-space) keeps the agent ~16 MB smaller at no measurable
 * cost (bench/results/README.md); `gc()` lets the agent collect its garbage once it has
 * instrumented new processes instead of holding it until V8's memory reducer runs (core/agent.ts).
 *
 * @module
 */
export const AGENT_V8_FLAGS = "--v8-flags=--max-semi-space-size=1,--expose-gc";
