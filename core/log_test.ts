import assert from "node:assert/strict";
import { createLogger } from "./log.ts";

Deno.test("text logs: <time> <LEVEL> <message>, at the level and above", () => {
  const lines: string[] = [];
  const log = createLogger("info", (l) => lines.push(l));
  log.debug("hidden");
  log.info("shown");
  log.error("bad");
  assert.equal(lines.length, 2);
  assert.match(lines[0], /^\d{4}-\d\d-\d\dT[\d:.]+Z INFO {2}shown$/);
  assert.match(lines[1], /ERROR bad$/);
});

Deno.test("json logs: one object a line, with time, level and message", () => {
  const lines: string[] = [];
  const log = createLogger("debug", (l) => lines.push(l), "json");
  log.warn('quote " and newline\n');
  const entry = JSON.parse(lines[0]);
  assert.deepEqual(Object.keys(entry), ["time", "level", "message"]);
  assert.equal(entry.level, "warn");
  assert.equal(entry.message, 'quote " and newline\n');
  assert.ok(!Number.isNaN(Date.parse(entry.time)));
});
