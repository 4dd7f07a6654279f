/**
 * Reduces `deno test` output to the one line CI reads: `N passed, N failed`.
 *
 *   scripts/test.sh 2>&1 | tee log; deno run scripts/ci_summary.ts STATUS < log
 *
 * STATUS is the exit status of the test run (default 0). Every Deno summary line
 * (`ok | 41 passed (3 steps) | 0 failed (2s)`, `FAILED | 40 passed | 1 failed (2s)`, possibly
 * coloured) is added up, so several `deno test` runs in one log are summed. Exits 1 when the
 * summary counts a failure.
 *
 * @module
 */

export interface Summary {
  passed: number;
  failed: number;
}

// deno-lint-ignore no-control-regex
const ANSI = /\x1b\[[0-9;]*[A-Za-z]/g;
// Anchored at the line start so that indented or quoted copies (assertion diffs, logs of a
// test that checks this very format) are not counted. Step counts are not tests: skipped.
const SUMMARY = /^(?:ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed\b/;

/** Adds up the summary lines of `deno test` output from a run that exited with `status`. */
export function summarize(output: string, status = 0): Summary {
  let passed = 0;
  let failed = 0;
  let found = false;
  for (const line of output.split("\n")) {
    const m = SUMMARY.exec(line.replace(ANSI, "").trimEnd());
    if (!m) continue;
    found = true;
    passed += Number(m[1]);
    failed += Number(m[2]);
  }
  // No summary at all: deno (or the installs before it) died before reporting, e.g. a type
  // error, a missing module, a failed apt-get. That is one failure, whatever the status.
  if (!found) return { passed: 0, failed: 1 };
  // A failing status with no failed test means something broke outside the tests (a later
  // run that crashed before its summary): never report "0 failed" for a failing run.
  if (status !== 0 && failed === 0) failed = 1;
  return { passed, failed };
}

/** The CI line: `41 passed, 0 failed`. */
export function formatSummary({ passed, failed }: Summary): string {
  return `${passed} passed, ${failed} failed`;
}

if (import.meta.main) {
  const status = Deno.args.length > 0 ? Number(Deno.args[0]) : 0;
  const summary = summarize(await new Response(Deno.stdin.readable).text(), status);
  console.log(formatSummary(summary));
  Deno.exit(summary.failed > 0 ? 1 : 0);
}
