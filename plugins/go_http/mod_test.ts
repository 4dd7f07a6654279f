import assert from "node:assert/strict";
import { validatePlugin } from "../../core/plugin.ts";
import { loadConfig } from "../../core/config.ts";
import { BUILTIN_PLUGINS } from "../registry.ts";
import plugin, { goHttpOptions, measuresServer, probesFor } from "./mod.ts";
import { type GoHttpEvent, GoHttpFlag, GoHttpKind } from "./decode.ts";
import type { GoHttpBinary } from "./binary.ts";

const BUCKETS = { durationSeconds: [0.1, 1], sizeBytes: [100] };

function event(over: Partial<GoHttpEvent> = {}): GoHttpEvent {
  return {
    kind: GoHttpKind.server,
    tgid: 42,
    status: 200,
    flags: 0,
    startNs: 1_000_000n,
    durationNs: 2_500_000,
    contentLength: -1,
    method: "GET",
    path: "/users/123",
    exeIndex: 0,
    ...over,
  };
}

function observe(e: GoHttpEvent, executables: string[] = []) {
  return plugin.toObservation(e, {
    options: {
      executables,
      servers: "auto" as const,
      skip_executables: [],
      aggregate_in_kernel: true,
      max_in_flight: 16384,
    },
    buckets: BUCKETS,
  });
}

Deno.test("go-http follows the plugin contract and stands in for kprobe-http", () => {
  validatePlugin(plugin);
  assert.equal(typeof plugin.replaces, "function");
});

Deno.test("go-http turns a server event into an http_server observation with a route", () => {
  assert.deepEqual(observe(event()), {
    kind: "http_server",
    pid: 42,
    durationSeconds: 0.0025,
    startNs: 1_000_000n,
    method: "GET",
    status: 200,
    route: "/users/{id}",
    path: "/users/123",
    pathTruncated: false,
    requestSizeBytes: 0,
    exe: undefined,
  });
});

Deno.test("go-http client events: status 0 without a response, the executable for labels", () => {
  const o = observe(
    event({
      kind: GoHttpKind.client,
      status: 0,
      flags: GoHttpFlag.noResponse,
      contentLength: 100,
      exeIndex: 2,
    }),
    ["/usr/bin/a", "/usr/bin/hey"],
  );
  assert.equal(o?.kind, "http_client");
  assert.ok(o && "status" in o && o.status === 0);
  assert.ok(o && "exe" in o && o.exe === "/usr/bin/hey");
  assert.ok(o && "requestSizeBytes" in o && o.requestSizeBytes === 100);
});

Deno.test("go-http ignores events of an unknown kind", () => {
  assert.equal(observe(event({ kind: 9 })), undefined);
});

Deno.test("go-http truncated paths end their route with /*", () => {
  const o = observe(event({ path: "/files/" + "a".repeat(100), flags: GoHttpFlag.pathTruncated }));
  assert.ok(o && "route" in o && o.route.endsWith("/*"), o && "route" in o ? o.route : "none");
});

Deno.test("go-http options: a configured executable that is not Go is a config error naming it", () => {
  const result = goHttpOptions.safeParse({ executables: ["/usr/bin/ls"] });
  assert.equal(result.success, false);
  const issue = result.error!.issues[0];
  assert.deepEqual(issue.path, ["executables", 0]);
  assert.match(issue.message, /\/usr\/bin\/ls cannot be instrumented: not_go/);

  const file = Deno.makeTempFileSync({ suffix: ".yaml" });
  try {
    Deno.writeTextFileSync(file, "plugins:\n  go-http:\n    executables: [/usr/bin/ls]\n");
    assert.throws(
      () => loadConfig({ file, plugins: BUILTIN_PLUGINS }),
      (e: Error) =>
        e.name === "ConfigError" && e.message.includes(file) &&
        e.message.includes("plugins.go-http.executables.0") && e.message.includes("not_go"),
    );
  } finally {
    Deno.removeSync(file);
  }
});

Deno.test("go-http attaches the server, HTTP/2 and client probes, each with the cookie", () => {
  const site = (fileOffset: number) => ({ address: fileOffset, fileOffset, emulated: true });
  const binary: GoHttpBinary = {
    goVersion: "go1.19.8",
    servesTls: true,
    offsetsFrom: "table",
    offsets: {
      requestMethod: 0,
      requestUrl: 16,
      urlPath: 56,
      requestContentLength: 88,
      responseStatusCode: 16,
    },
    server: {
      start: site(1),
      status: site(2),
      end: site(3),
      http2: { status: site(4), end: site(5) },
    },
    client: { start: site(6), returns: [site(7), site(8)] },
  };
  const specs = probesFor(binary, "/proc/7/exe", 99n, { server: true, pid: 7 });
  assert.deepEqual(
    specs.map((s) => s.kind === "uprobe-multi" ? `${s.program}@${s.offsets}` : s.kind),
    [
      "go_server_start@1",
      "go_server_status@2,4",
      "go_server_end@3,5",
      "go_client_start@6",
      "go_client_end@7,8",
    ],
  );
  for (const s of specs) {
    assert.ok(s.kind === "uprobe-multi" && s.pid === 7);
    assert.deepEqual(s.cookies, s.offsets.map(() => 99n));
  }
  const clientOnly = probesFor(binary, "/x", 1n, { server: false });
  assert.deepEqual(
    clientOnly.map((s) => s.kind === "uprobe-multi" ? s.program : s.kind),
    ["go_client_start", "go_client_end"],
  );
});

Deno.test("go-http servers: auto measures TLS-capable servers only; always and never", () => {
  const server = { start: site(), status: site(), end: site() };
  const base = { goVersion: "go1.19.8", offsetsFrom: "table" as const, offsets: OFFSETS, server };
  const tls: GoHttpBinary = { ...base, servesTls: true };
  const plain: GoHttpBinary = { ...base, servesTls: false };
  const opts = (servers: string) => goHttpOptions.parse({ servers });
  assert.equal(measuresServer(tls, opts("auto")), true);
  assert.equal(measuresServer(plain, opts("auto")), false);
  assert.equal(measuresServer(plain, opts("always")), true);
  assert.equal(measuresServer(tls, opts("never")), false);
  assert.equal(measuresServer({ ...plain, server: undefined }, opts("always")), false);
});

function site() {
  return { address: 1, fileOffset: 1, emulated: true };
}

const OFFSETS = {
  requestMethod: 0,
  requestUrl: 16,
  urlPath: 56,
  requestContentLength: 88,
  responseStatusCode: 16,
};

Deno.test("go-http skip_executables leaves matching Go processes to kprobe-http", () => {
  const ctx = {
    options: goHttpOptions.parse({ skip_executables: ["/opt/*/bin/server", "/usr/bin/hey"] }),
    buckets: BUCKETS,
  };
  const target = (exe: string) => ({
    pid: 1,
    startTime: 1,
    exe,
    serviceName: "x",
    serviceNamespace: "",
    instance: "h:1",
    listenPorts: [80],
  });
  assert.deepEqual(plugin.appliesTo!(target("/opt/shop/bin/server"), ctx), {
    skip: "configured",
    detail: "plugins.go-http.skip_executables",
  });
  assert.equal(typeof plugin.appliesTo!(target("/usr/bin/hey"), ctx), "object");
  assert.equal(plugin.selectsExecutable!("/usr/bin/hey", 1, ctx), false);
});

Deno.test("go-http reads response.status at the end where it is known: no HTTP/1 WriteHeader probe", () => {
  const server = {
    start: site(),
    status: { ...site(), fileOffset: 2 },
    end: { ...site(), fileOffset: 3 },
    http2: { status: { ...site(), fileOffset: 4 }, end: { ...site(), fileOffset: 5 } },
  };
  const binary: GoHttpBinary = {
    goVersion: "go1.19.8",
    servesTls: true,
    offsetsFrom: "table",
    offsets: { ...OFFSETS, responseStatus: 120 },
    server,
  };
  const specs = probesFor(binary, "/x", 7n, { server: true });
  const by = Object.fromEntries(
    specs.map((s) => s.kind === "uprobe-multi" ? [s.program, s] : [s.kind, s]),
  );
  const status = by.go_server_status;
  const end = by.go_server_end;
  assert.ok(status.kind === "uprobe-multi" && end.kind === "uprobe-multi");
  assert.deepEqual(status.offsets, [4], "HTTP/2's WriteHeader only");
  assert.deepEqual(end.offsets, [3, 5]);
  assert.deepEqual(end.cookies, [7n | (15n << 48n), 7n], "the HTTP/1 end reads status at 120");
});
