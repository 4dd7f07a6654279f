import assert from "node:assert/strict";
import { findSamples, parsePrometheusText, sumSamples } from "./prom_text.ts";

const TEXT =
  `# HELP http_server_duration_seconds Duration of HTTP service calls from the server side
# TYPE http_server_duration_seconds histogram
http_server_duration_seconds_bucket{le="0.005",service_name="nginx",http_route="/a"} 3
http_server_duration_seconds_bucket{le="+Inf",service_name="nginx",http_route="/a"} 4
http_server_duration_seconds_sum{service_name="nginx",http_route="/a"} 0.0125
http_server_duration_seconds_count{service_name="nginx",http_route="/a"} 4
http_server_duration_seconds_count{service_name="python3.11",http_route="/b"} 1e+3

redprobe_discovered_processes 2 1700000000000
weird{a="x\\"y",b="back\\\\slash",c="two\\nlines",d="comma, and } brace",} -Inf
nan NaN
`;

Deno.test("parsePrometheusText() reads names, labels, values and skips comments", () => {
  const samples = parsePrometheusText(TEXT);
  assert.equal(samples.length, 8);
  assert.deepEqual(samples[0], {
    name: "http_server_duration_seconds_bucket",
    labels: { le: "0.005", service_name: "nginx", http_route: "/a" },
    value: 3,
  });
  assert.equal(samples[2].value, 0.0125);
  assert.equal(samples[4].value, 1000);
  assert.deepEqual(samples[5], { name: "redprobe_discovered_processes", labels: {}, value: 2 });
  assert.deepEqual(samples[6].labels, {
    a: 'x"y',
    b: "back\\slash",
    c: "two\nlines",
    d: "comma, and } brace",
  });
  assert.equal(samples[6].value, -Infinity);
  assert.ok(Number.isNaN(samples[7].value));
});

Deno.test("parsePrometheusText() accepts CRLF, spaces after commas and empty braces", () => {
  const samples = parsePrometheusText('a{x="1", y="2"} 5\r\nb{} 6\r\n  c 7\r\n');
  assert.deepEqual(samples, [
    { name: "a", labels: { x: "1", y: "2" }, value: 5 },
    { name: "b", labels: {}, value: 6 },
    { name: "c", labels: {}, value: 7 },
  ]);
});

Deno.test("parsePrometheusText() throws on a line that is not a sample, naming it", () => {
  for (const bad of ["<html>", "a{x=1} 2", 'a{x="1" 2', "a one", 'a{x="unterminated} 1']) {
    assert.throws(() => parsePrometheusText(`ok 1\n${bad}\n`), /Cannot parse exposition line/, bad);
  }
});

Deno.test("findSamples() and sumSamples() match by name and a subset of labels", () => {
  const samples = parsePrometheusText(TEXT);
  assert.equal(findSamples(samples, "http_server_duration_seconds_count").length, 2);
  assert.equal(
    sumSamples(samples, "http_server_duration_seconds_count", { service_name: "nginx" }),
    4,
  );
  assert.equal(sumSamples(samples, "http_server_duration_seconds_count"), 1004);
  assert.equal(sumSamples(samples, "missing"), 0);
});
