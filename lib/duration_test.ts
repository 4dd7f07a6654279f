import assert from "node:assert/strict";
import { parseDurationMs } from "./duration.ts";

Deno.test("parseDurationMs() reads every unit", () => {
  assert.equal(parseDurationMs("250ms"), 250);
  assert.equal(parseDurationMs("30s"), 30_000);
  assert.equal(parseDurationMs("1.5s"), 1_500);
  assert.equal(parseDurationMs("2m"), 120_000);
  assert.equal(parseDurationMs("1h"), 3_600_000);
  assert.equal(parseDurationMs("500us"), 0.5);
  assert.equal(parseDurationMs("10"), 10_000);
  assert.equal(parseDurationMs(2), 2_000);
});

Deno.test("parseDurationMs() rejects what is not a duration", () => {
  for (const bad of ["", "s", "-1s", "1 day", "10x", "1e3s"]) {
    assert.equal(parseDurationMs(bad), undefined, bad);
  }
  assert.equal(parseDurationMs(-1), undefined);
  assert.equal(parseDurationMs(Number.NaN), undefined);
});
