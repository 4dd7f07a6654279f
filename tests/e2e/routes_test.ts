/**
 * Routes and cardinality end to end: `routes.patterns`, `routes.ignored` and the per-service cap
 * on distinct routes, with real nginx and 100,000 requests to distinct random URLs. Every
 * request is still counted (under its route, or `{overflow}`), except the ignored ones, which
 * are counted apart; the number of series stays under the cap.
 */
import assert from "node:assert/strict";
import { startAgent } from "../support/agent.ts";
import { assertBpfAvailable, skipBpf } from "../support/privileges.ts";
import { findSamples, sumSamples } from "../support/prom_text.ts";
import { HttpConnection, startNginx } from "../support/mod.ts";
import { seededRandom } from "../support/clients.ts";
import { settledSamples } from "../support/wait.ts";

const CAP = 50;
const RANDOM_URLS = Number(Deno.env.get("ROUTES_N") ?? 100_000);

Deno.test({
  name: "100,000 distinct URLs: every request counted, routes capped per service, patterns used",
  ignore: skipBpf(),
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    assertBpfAvailable();
    await using agent = await startAgent({
      config: {
        routes: {
          patterns: ["/users/{id}", "/files/*"],
          ignored: ["/healthz"],
          max_per_service: CAP,
        },
      },
    });
    await using nginx = await startNginx({ workers: 1, keepalive: true, sendfile: true });
    for (const pid of await nginx.pids()) await agent.waitForPid(pid);

    const random = seededRandom(7);
    const word = (n: number) =>
      Array.from({ length: n }, () => String.fromCharCode(97 + Math.floor(random() * 26))).join("");
    const paths: string[] = [
      ...Array(10).fill("/healthz?probe=1"),
      ...Array.from({ length: 20 }, () => `/users/${word(6)}`),
      ...Array.from({ length: 10 }, () => `/files/${word(4)}/${word(4)}.txt`),
    ];
    const seen = new Set<string>();
    while (seen.size < RANDOM_URLS) seen.add(`/${word(4)}/${word(6)}?q=${word(5)}`);
    paths.push(...seen);

    // 8 keep-alive connections, each taking the next path until none is left.
    let next = 0;
    await Promise.all(Array.from({ length: 8 }, async () => {
      await using conn = await HttpConnection.open(nginx.port);
      while (next < paths.length) {
        const path = paths[next++];
        const { response } = await conn.request({ method: "GET", path });
        assert.ok(
          response.status === 200 || response.status === 404,
          `${path}: ${response.status}`,
        );
      }
    }));

    const ofNginx = { target_instance: `${Deno.hostname()}:${nginx.pid}` };
    const samples = await settledSamples(
      agent,
      (s) => sumSamples(s, "http_server_duration_seconds_count", ofNginx) >= RANDOM_URLS + 30,
    );
    const series = findSamples(samples, "http_server_duration_seconds_count", ofNginx);
    const byRoute = new Map<string, number>();
    for (const s of series) {
      byRoute.set(s.labels.http_route, (byRoute.get(s.labels.http_route) ?? 0) + s.value);
    }
    const total = [...byRoute.values()].reduce((a, b) => a + b, 0);
    const diagnostics = () =>
      samples.filter((s) =>
        s.name.startsWith("redprobe_") && s.labels.plugin === "kprobe-http" && s.value > 0 &&
        !s.name.startsWith("redprobe_bpf_")
      ).map((s) => `${s.name}${JSON.stringify(s.labels)} ${s.value}`).join("\n");
    assert.equal(
      total,
      RANDOM_URLS + 30,
      `every request not ignored is counted once\n${diagnostics()}`,
    );
    // CAP from the heuristic, {overflow}, and the two patterns' (not capped: the user's choice).
    assert.ok(byRoute.size <= CAP + 1 + 2, `${byRoute.size} routes`);
    assert.equal(byRoute.get("/users/{id}"), 20);
    assert.equal(byRoute.get("/files/*"), 10);
    assert.ok(!byRoute.has("/healthz"));
    for (const route of byRoute.keys()) assert.ok(!/[?#]/.test(route), route);
    const ignored = findSamples(samples, "redprobe_http_requests_ignored_total", {
      service_name: "nginx",
    });
    assert.equal(ignored[0]?.value, 10);
    const overflow = findSamples(samples, "redprobe_http_route_overflow_total", {
      service_name: "nginx",
    });
    assert.equal(overflow[0]?.value, byRoute.get("{overflow}"));
    // Each random URL is its own route (letters only: nothing for the heuristic to collapse):
    // the first CAP of them made it, every other one is in {overflow}.
    assert.equal(byRoute.get("{overflow}"), RANDOM_URLS - CAP);
  },
});
