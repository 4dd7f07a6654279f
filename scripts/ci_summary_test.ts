import assert from "node:assert/strict";
import { formatSummary, summarize } from "./ci_summary.ts";

// Real `deno test` 2.9 output (NO_COLOR=1), trimmed.
const FAILING_RUN = `running 5 tests from ./a_test.ts
p1 ... ok (487µs)
steps ...
  s1 ... ok (0ms)
  s2 ... ok (0ms)
steps ... ok (1ms)
ign ... ignored (0ms)
fails ... FAILED (1ms)
stepfail ...
  bad ... FAILED (1ms)
stepfail ... FAILED (due to 1 failed step) (1ms)

 ERRORS 

fails => ./a_test.ts:4:6
error: Error: boom

 FAILURES 

fails => ./a_test.ts:4:6
stepfail ... bad => ./a_test.ts:5:46

FAILED | 2 passed (2 steps) | 2 failed (1 step) | 1 ignored (9ms)

error: Test failed
`;

// The same kind of line as Deno prints it on a terminal without NO_COLOR.
const COLOURED_OK =
  "\x1b[0m\x1b[32mok\x1b[0m | 1 passed | 0 failed | 4 filtered out \x1b[0m\x1b[38;5;245m(5ms)\x1b[0m\n";

const TYPE_ERROR = `TS2322 [ERROR]: Type 'string' is not assignable to type 'number'.
    at file:///work/main/lib/x_test.ts:1:30

error: Type checking failed.
`;

Deno.test("summarize() reads the passed and failed tests of one run, not the steps", () => {
  assert.deepEqual(summarize(FAILING_RUN, 1), { passed: 2, failed: 2 });
  assert.deepEqual(summarize("ok | 41 passed (3 steps) | 0 failed (2s)\n"), {
    passed: 41,
    failed: 0,
  });
  assert.deepEqual(summarize("FAILED | 40 passed | 1 failed (2s)\n", 1), {
    passed: 40,
    failed: 1,
  });
});

Deno.test("summarize() ignores ANSI colours and CRLF line ends", () => {
  assert.deepEqual(summarize(COLOURED_OK), { passed: 1, failed: 0 });
  assert.deepEqual(summarize("x\r\nok | 3 passed | 0 failed (1s)\r\n"), { passed: 3, failed: 0 });
});

Deno.test("summarize() sums several runs", () => {
  const log = "ok | 30 passed | 0 failed (1s)\nsome output\n" + FAILING_RUN + COLOURED_OK;
  assert.deepEqual(summarize(log, 1), { passed: 33, failed: 2 });
});

Deno.test("summarize() counts a crash before any summary as one failure", () => {
  assert.deepEqual(summarize(TYPE_ERROR, 1), { passed: 0, failed: 1 });
  assert.deepEqual(summarize("", 1), { passed: 0, failed: 1 });
  // Even if the status claims success, a log without a summary ran no tests.
  assert.deepEqual(summarize("", 0), { passed: 0, failed: 1 });
});

Deno.test("summarize() never reports 0 failed for a failing status", () => {
  // First run passed, second died (type error) before its summary.
  const log = "ok | 12 passed | 0 failed (1s)\n" + TYPE_ERROR;
  assert.deepEqual(summarize(log, 1), { passed: 12, failed: 1 });
});

Deno.test("summarize() skips summary-like text that does not start a line", () => {
  const log = [
    '    "ok | 99 passed | 0 failed (1s)"',
    "-   FAILED | 5 passed | 5 failed (1s)",
    "log: ok | 7 passed | 0 failed",
    "ok | 2 passed | 0 failed (1s)",
  ].join("\n");
  assert.deepEqual(summarize(log), { passed: 2, failed: 0 });
});

Deno.test("formatSummary() prints the CI line", () => {
  assert.equal(formatSummary({ passed: 41, failed: 0 }), "41 passed, 0 failed");
});

async function runScript(input: string, args: string[]): Promise<[number, string]> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", new URL("./ci_summary.ts", import.meta.url).pathname, ...args],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(input));
  await writer.close();
  const { code, stdout } = await child.output();
  return [code, new TextDecoder().decode(stdout)];
}

Deno.test("ci_summary.ts reads stdin, prints one line and fails when a test failed", async () => {
  assert.deepEqual(await runScript(COLOURED_OK, []), [0, "1 passed, 0 failed\n"]);
  assert.deepEqual(await runScript(FAILING_RUN, ["1"]), [1, "2 passed, 2 failed\n"]);
  assert.deepEqual(await runScript(TYPE_ERROR, ["1"]), [1, "0 passed, 1 failed\n"]);
});
