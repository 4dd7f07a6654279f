/** settledSamples and countsReached: they wait for counts, and never judge them. */

import assert from "node:assert/strict";
import type { Sample } from "./prom_text.ts";
import { countsReached, settledSamples } from "./wait.ts";

/** An agent whose scrapes return `counts` in turn (the last one from then on). */
function scriptedAgent(counts: number[]): { samples(): Promise<Sample[]>; scrapes: number } {
  const agent = {
    scrapes: 0,
    samples() {
      const value = counts[Math.min(agent.scrapes++, counts.length - 1)];
      return Promise.resolve([{ name: "requests_total", labels: {}, value }]);
    },
  };
  return agent;
}

const total = (samples: Sample[]) => samples[0].value;

Deno.test("settledSamples: counts already there are returned from the first scrape", async () => {
  const agent = scriptedAgent([5, 6]);
  assert.equal(total(await settledSamples(agent, (s) => total(s) >= 5)), 5);
  assert.equal(agent.scrapes, 1);
});

Deno.test("settledSamples: scrapes again until the counts are there", async () => {
  const agent = scriptedAgent([3, 4, 5]);
  assert.equal(total(await settledSamples(agent, (s) => total(s) >= 5)), 5);
  assert.equal(agent.scrapes, 3);
});

Deno.test("settledSamples: too many counts are returned as they are, at once", async () => {
  const agent = scriptedAgent([7]);
  assert.equal(total(await settledSamples(agent, (s) => total(s) >= 5)), 7);
  assert.equal(agent.scrapes, 1);
});

Deno.test("settledSamples: counts that never come: the last scrape, no throw", async () => {
  const agent = scriptedAgent([4]);
  const started = performance.now();
  assert.equal(total(await settledSamples(agent, (s) => total(s) >= 5, 300)), 4);
  assert.ok(performance.now() - started >= 300);
  assert.ok(agent.scrapes >= 2, `${agent.scrapes} scrapes`);
});

Deno.test("countsReached: every expected key at least its count; other keys are not looked at", () => {
  const want = { "GET 200 /a": 2, "GET 404 /b": 1 };
  assert.ok(countsReached({ "GET 200 /a": 2, "GET 404 /b": 1 }, want));
  assert.ok(countsReached({ "GET 200 /a": 3, "GET 404 /b": 1, "GET 500 /c": 9 }, want));
  assert.ok(!countsReached({ "GET 200 /a": 1, "GET 404 /b": 1 }, want));
  assert.ok(!countsReached({ "GET 200 /a": 2 }, want));
  assert.ok(countsReached({}, {}));
});
