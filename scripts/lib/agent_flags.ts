/**
 * How the agent is run by every TypeScript launcher (the tests, the benchmarks, the bundle's `#!`
 * line), as `scripts/run.sh`, `deno task agent` and the container image run it: a 1 MB young
 * generation (V8 grows it to 16 MB per semi-space) keeps the agent ~16 MB smaller at no measurable
 * cost (bench/results/README.md).
 *
 * @module
 */
export const AGENT_V8_FLAGS = "--v8-flags=--max-semi-space-size=1";
