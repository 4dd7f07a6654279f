/**
 * Fuzzing the decoders and parsers that read what the kernel, /proc and binaries hand the
 * agent: random and mutated inputs, seeded (the same inputs every run). Each one must either
 * return or throw its own documented error (a RangeError for a record of the wrong size, an
 * ElfError for bytes that are not a usable ELF file, ...), never anything else: an unexpected
 * exception would drop the agent's records or its analysis of a process.
 *
 *   deno test -A tests/fuzz_test.ts                          1,000,000 inputs in all (CI)
 *   FUZZ_INPUTS=20000000 deno test -A tests/fuzz_test.ts     a longer run
 *   FUZZ_SEED=7 ...                                          other inputs
 */
import assert from "node:assert/strict";
import { seededRandom } from "./support/clients.ts";
import {
  decodeHttpAggKey,
  decodeHttpPath,
  decodeHttpRequestEvent,
  encodeHttpRequestEvent,
  HTTP_AGG_KEY_SIZE,
  HTTP_EVENT_SIZE,
} from "../lib/http1_records.ts";
import { decodeGoAggKey, decodeGoHttpEvent, decodeGoPath } from "../plugins/go_http/decode.ts";
import {
  decodeGoGrpcAggKey,
  decodeGoGrpcEvent,
  decodeGoGrpcMethod,
} from "../plugins/go_grpc/decode.ts";
import { RouteMapper, routeOf } from "../lib/route.ts";
import { parseProcMaps } from "../lib/proc_maps.ts";
import {
  parseEnviron,
  parseProcNetTcp,
  parseProcStat,
  parseResourceAttributes,
} from "../lib/proc.ts";
import { ElfError, ElfFile } from "../lib/elf.ts";
import { findOpenSslFunctions } from "../lib/openssl.ts";
import { GoPclntabError, readGoFunctions } from "../lib/go_pclntab.ts";
import { readGoBuildInfo } from "../lib/go_buildinfo.ts";
import { BtfError, parseBtf } from "../lib/btf.ts";

const TOTAL = Number(Deno.env.get("FUZZ_INPUTS") ?? 1_000_000);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20261130);

interface Target {
  name: string;
  /** Share of the inputs (weights are normalised). */
  weight: number;
  /** A valid input to mutate, if any. */
  seed?: Uint8Array;
  /** Random inputs of about this many bytes. */
  size: number;
  run: (input: Uint8Array) => unknown;
  /** The errors it may throw. */
  allowed: (e: unknown) => boolean;
}

const text = (b: Uint8Array) => new TextDecoder("latin1").decode(b);
const rangeError = (e: unknown) => e instanceof RangeError;
const never = () => false;
const routes = new RouteMapper({ patterns: ["/users/{id}", "/files/*"], maxPerService: 50 });
const selfElf = Deno.readFileSync("/bin/true");

const TARGETS: Target[] = [
  {
    name: "http_request_event",
    weight: 3,
    seed: encodeHttpRequestEvent({ path: "/users/42", method: "GET", status: 200 }),
    size: HTTP_EVENT_SIZE,
    run: decodeHttpRequestEvent,
    allowed: rangeError,
  },
  {
    name: "http_agg_key",
    weight: 1,
    size: HTTP_AGG_KEY_SIZE,
    run: decodeHttpAggKey,
    allowed: rangeError,
  },
  { name: "http_path", weight: 1, size: 104, run: decodeHttpPath, allowed: never },
  { name: "go_http_event", weight: 2, size: 232, run: decodeGoHttpEvent, allowed: rangeError },
  { name: "go_agg_key", weight: 1, size: 80, run: decodeGoAggKey, allowed: rangeError },
  { name: "go_path", weight: 1, size: 136, run: decodeGoPath, allowed: never },
  { name: "go_grpc_event", weight: 2, size: 160, run: decodeGoGrpcEvent, allowed: rangeError },
  { name: "go_grpc_agg_key", weight: 1, size: 16, run: decodeGoGrpcAggKey, allowed: rangeError },
  { name: "go_grpc_method", weight: 1, size: 136, run: decodeGoGrpcMethod, allowed: never },
  {
    name: "routes",
    weight: 3,
    seed: new TextEncoder().encode("/users/42/orders/7f3a9c21e4b0?x=1#top"),
    size: 64,
    run: (b) => {
      routeOf(text(b));
      return routes.route("svc", text(b), (b[0] & 1) === 1);
    },
    allowed: never,
  },
  {
    name: "/proc/pid/maps",
    weight: 1,
    seed: new TextEncoder().encode(
      "7f00-7f10 r-xp 00001000 08:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3\n",
    ),
    size: 120,
    run: (b) => parseProcMaps(text(b)),
    allowed: never,
  },
  {
    name: "/proc text files",
    weight: 1,
    seed: new TextEncoder().encode(
      "  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  0 0 1234",
    ),
    size: 120,
    run: (b) => {
      const t = text(b);
      parseProcNetTcp(t);
      parseProcStat(t);
      parseEnviron(t);
      return parseResourceAttributes(t);
    },
    allowed: never,
  },
  {
    name: "ELF, pclntab, build info",
    weight: 0.02,
    seed: selfElf.subarray(0, 64 * 1024),
    size: 4096,
    run: (b) => {
      const elf = ElfFile.parse(b);
      findOpenSslFunctions(elf); // both symbol tables, by name (ElfFile.findSymbols)
      readGoBuildInfo(elf);
      return readGoFunctions(elf);
    },
    allowed: (e) => e instanceof ElfError || e instanceof GoPclntabError,
  },
  {
    name: "BTF",
    weight: 0.2,
    size: 256,
    run: parseBtf,
    allowed: (e) => e instanceof BtfError,
  },
];

/** A random input, or a mutation of the target's seed (bytes flipped, cut, grown). */
function input(t: Target, random: () => number): Uint8Array {
  if (t.seed && random() < 0.7) {
    const out = new Uint8Array(t.seed);
    const flips = 1 + Math.floor(random() * 8);
    for (let i = 0; i < flips; i++) out[Math.floor(random() * out.length)] = random() * 256;
    const r = random();
    if (r < 0.1) return out.subarray(0, Math.floor(random() * out.length));
    if (r < 0.15) {
      const grown = new Uint8Array(out.length + 1 + Math.floor(random() * 16));
      grown.set(out);
      return grown;
    }
    return out;
  }
  // Mostly the exact size (the decoders' fixed layouts), sometimes off by a little.
  const size = random() < 0.9 ? t.size : Math.floor(random() * (t.size * 2 + 1));
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = random() * 256;
  return out;
}

Deno.test(`${TOTAL.toLocaleString("en")} random and mutated inputs: no unexpected exception`, () => {
  const random = seededRandom(SEED);
  const weight = TARGETS.reduce((s, t) => s + t.weight, 0);
  const counts = new Map<string, number>();
  for (const t of TARGETS) {
    const n = Math.max(100, Math.round(TOTAL * t.weight / weight));
    counts.set(t.name, n);
    for (let i = 0; i < n; i++) {
      const bytes = input(t, random);
      try {
        t.run(bytes);
      } catch (e) {
        if (t.allowed(e)) continue;
        const hex = Array.from(bytes.subarray(0, 64), (b) => b.toString(16).padStart(2, "0"))
          .join("");
        assert.fail(`${t.name}, input #${i} (${bytes.length} bytes: ${hex}...): ${e}`);
      }
    }
  }
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  assert.ok(total >= TOTAL * 0.99, `${total} inputs`);
});
