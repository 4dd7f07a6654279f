/**
 * go-grpc's binary analysis on the real fixtures (grpc-go 1.33 from Debian, module builds, with
 * and without DWARF) and the binaries it must refuse with a reason. No privileges needed.
 */
import assert from "node:assert/strict";
import { GoBinarySkip } from "../../lib/go_binary.ts";
import {
  analyzeGrpcBinary,
  type GoGrpcBinary,
  probeCookies,
  tableOffsets,
  userAgentVersion,
} from "./binary.ts";
import { buildGrpcFixture, GRPC_MODULES, haveGrpcGo } from "../../tests/support/go_grpc.ts";
import { buildGoFixture } from "../../tests/support/go_build.ts";
import { inCi } from "../../tests/support/privileges.ts";

const ignore = !haveGrpcGo() && !inCi();

function analyze(path: string): GoGrpcBinary {
  return analyzeGrpcBinary(Deno.readFileSync(path));
}

function skipOf(bytes: Uint8Array): GoBinarySkip {
  try {
    analyzeGrpcBinary(bytes);
  } catch (e) {
    if (e instanceof GoBinarySkip) return e;
    throw e;
  }
  throw new Error("analyzed, but a skip was expected");
}

Deno.test(
  { name: "the fixture server and client: DWARF and the table agree", ignore },
  async () => {
    for (const which of ["server", "client"] as const) {
      const full = analyze(await buildGrpcFixture(which));
      const stripped = analyze(await buildGrpcFixture(which, { stripped: true }));
      assert.equal(full.offsetsFrom, "dwarf");
      assert.equal(stripped.offsetsFrom, "table");
      assert.equal(stripped.grpcVersion, "1.33.3", "from the build info");
      assert.deepEqual(stripped.offsets, full.offsets);
      assert.deepEqual(full.offsets, tableOffsets("1.33.3"));
      // Every probe on the emulated jbe of the stack check: no single-stepped hit.
      for (const side of [full.server, full.client]) {
        if (!side) continue;
        assert.ok(side.start.emulated && side.end.emulated, which);
      }
      assert.ok(full.client, `${which}: grpc-go's client code is linked`);
      if (which === "server") assert.ok(full.server);
      assert.deepEqual(stripped.client?.start, full.client?.start);
    }
  },
);

Deno.test(
  { name: "probe cookies carry the offsets and the status.Error itab check", ignore },
  async () => {
    const b = analyze(await buildGrpcFixture("client", { stripped: true }));
    const c = probeCookies(b);
    const o = b.offsets;
    assert.equal(c.serverStart & 0xffn, BigInt(o.streamMethod / 8));
    assert.equal(
      c.clientStart,
      BigInt(o.csAttemptCs / 8 | (o.clientStreamCallHdr / 8) << 8 | (o.callHdrMethod / 8) << 16),
    );
    assert.equal(c.clientEnd & 0xffn, BigInt(o.csAttemptS / 8));
    assert.equal((c.clientEnd >> 8n) & 0xffn, BigInt(o.streamStatus / 8));
    assert.equal((c.clientEnd >> 16n) & 0xffn, BigInt(o.statusCode));
    const delta = Number(BigInt.asIntN(32, c.clientEnd >> 32n));
    assert.equal(b.client!.end.address + delta, b.client!.statusErrorError);
  },
);

Deno.test(
  { name: "refused with a reason: not grpc-go, unknown version, not Go", ignore },
  async () => {
    const http = await buildGoFixture("go_http/server", { stripped: true });
    assert.equal(skipOf(Deno.readFileSync(http)).reason, "no_grpc");
    const future = await buildGoFixture("go_grpc/server", {
      stripped: true,
      gopath: "/usr/share/gocode",
      modules: { ...GRPC_MODULES, "google.golang.org/grpc": "v1.99.0" },
    });
    const skip = skipOf(Deno.readFileSync(future));
    assert.equal(skip.reason, "unknown_grpc_version");
    assert.match(skip.message, /1\.99\.0/);
    assert.equal(skipOf(Deno.readFileSync("/bin/ls")).reason, "not_go");
  },
);

Deno.test("userAgentVersion finds grpc-go's user-agent string", () => {
  const text = new TextEncoder().encode("xx\0grpc-go/1.33.3grpc-trace-bin\0grpc-go/");
  assert.equal(userAgentVersion(text), "1.33.3");
  assert.equal(userAgentVersion(new TextEncoder().encode("grpc-go/ nothing")), undefined);
});

Deno.test("tableOffsets knows grpc-go 1.33 by minor version, and nothing else", () => {
  assert.ok(tableOffsets("1.33.3"));
  assert.deepEqual(tableOffsets("v1.33.0"), tableOffsets("1.33.3"));
  assert.equal(tableOffsets("1.60.1"), undefined);
  assert.equal(tableOffsets("garbage"), undefined);
});

Deno.test(
  { name: "offsets.json is what scripts/gen_grpc_offsets.ts generates here", ignore },
  async () => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("../../scripts/gen_grpc_offsets.ts", import.meta.url).pathname,
        "--check",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assert.ok(out.success, text);
  },
);
