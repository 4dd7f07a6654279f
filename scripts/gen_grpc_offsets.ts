/**
 * Writes `plugins/go_grpc/offsets.json`: the byte offsets of the grpc-go struct fields that the
 * go-grpc probes read, per grpc-go minor version, for binaries without DWARF (most). Binaries
 * with DWARF are read directly (plugins/go_grpc/binary.ts); this table is the fallback.
 *
 *   deno run -A scripts/gen_grpc_offsets.ts            regenerate
 *   deno run -A scripts/gen_grpc_offsets.ts --check    compare (CI)
 *
 * It builds the gRPC server of tests/fixtures/go_grpc/server (it links grpc-go's server and
 * client) against Debian's grpc-go sources (golang-google-grpc-dev) and reads the offsets from
 * its DWARF. The offsets depend on grpc-go's version and on those of the modules it embeds
 * (genproto's rpc/status.Status): the entry records the versions it was built with. Versions
 * already in the file that cannot be rebuilt here are kept.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ElfFile } from "../lib/elf.ts";
import { dwarfFields, GRPC_FIELDS } from "../plugins/go_grpc/binary.ts";
import { buildGrpcFixture } from "../tests/support/go_grpc.ts";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const OFFSETS_PATH = join(ROOT, "plugins", "go_grpc", "offsets.json");

/** Every "type.field" the table holds. */
const FIELDS = Object.entries(GRPC_FIELDS).flatMap(([t, fs]) => fs.map((f) => `${t}.${f}`));

function debianVersion(pkg: string): string {
  const out = new Deno.Command("dpkg-query", { args: ["-W", "-f", "${Version}", pkg] })
    .outputSync();
  return new TextDecoder().decode(out.stdout).trim() || "unknown";
}

const check = Deno.args.includes("--check");
const grpcVersion = /const Version = "([^"]+)"/.exec(
  Deno.readTextFileSync("/usr/share/gocode/src/google.golang.org/grpc/version.go"),
)?.[1];
if (!grpcVersion) throw new Error("cannot read grpc-go's version from /usr/share/gocode");
const minor = grpcVersion.split(".").slice(0, 2).join(".");
const binary = await buildGrpcFixture("server", { stripped: false });
const fields = dwarfFields(ElfFile.parse(Deno.readFileSync(binary)));
const missing = FIELDS.filter((f) => !fields.has(f));
if (missing.length) throw new Error(`not in the DWARF of ${binary}: ${missing.join(", ")}`);

const table = JSON.parse(Deno.readTextFileSync(OFFSETS_PATH));
const entry = {
  built: {
    "google.golang.org/grpc": grpcVersion,
    "golang-google-grpc-dev": debianVersion("golang-google-grpc-dev"),
    "golang-google-genproto-dev": debianVersion("golang-google-genproto-dev"),
  },
  ...Object.fromEntries(FIELDS.map((f) => [f, fields.get(f)])),
};
const next = {
  generatedBy: "deno run -A scripts/gen_grpc_offsets.ts",
  basis: "DWARF of tests/fixtures/go_grpc/server built with Debian's Go and grpc-go sources; " +
    "keyed by grpc-go minor version. genproto's rpc/status.Status.Code moved when genproto " +
    "adopted protobuf APIv2 (protoimpl fields first): the entry records what it was built with.",
  versions: { ...table.versions, [minor]: entry },
};
const text = JSON.stringify(next, null, 2) + "\n";
if (check) {
  const same = JSON.stringify(table.versions[minor]) === JSON.stringify(entry);
  console.log(same ? `offsets.json matches grpc-go ${grpcVersion}` : "offsets.json is stale");
  if (!same) Deno.exit(1);
} else {
  Deno.writeTextFileSync(OFFSETS_PATH, text);
  console.log(`wrote ${OFFSETS_PATH} (grpc-go ${minor})`);
}
