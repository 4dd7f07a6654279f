import assert from "node:assert/strict";
import {
  byMinorVersion,
  checkOffsets,
  compareOffsets,
  FIELDS,
  formatOffsetsFile,
  GENERATED_BY,
  mergeOffsets,
  minorVersion,
  OFFSETS_PATH,
  type OffsetsFile,
  readOffsetsFile,
} from "../../scripts/gen_go_offsets.ts";

Deno.test("offsets.json is what scripts/gen_go_offsets.ts generates with the machine's Go", async () => {
  assert.deepEqual(await checkOffsets(["go"]), []);
});

Deno.test("offsets.json holds the Go 1.19 offsets in the script's layout", () => {
  const text = Deno.readTextFileSync(OFFSETS_PATH);
  const file = readOffsetsFile()!;
  assert.equal(formatOffsetsFile(file), text);
  assert.equal(file.generatedBy, GENERATED_BY);
  assert.deepEqual(file.fields, FIELDS);
  const go119 = file.versions["go1.19"];
  assert.equal(go119["net/http.Request.Method"], 0);
  assert.equal(go119["net/http.Request.URL"], 16);
  assert.equal(go119["net/url.URL.Path"], 56);
  assert.equal(go119["net/http.response.status"], 120);
  assert.deepEqual(Object.keys(go119), FIELDS);
});

const GENERATED = new Map([
  ["go1.19", { versions: ["go1.19.8"], offsets: { "net/http.Request.Method": 0 } }],
]);

function fileWith(versions: OffsetsFile["versions"]): OffsetsFile {
  return { generatedBy: GENERATED_BY, fields: FIELDS, versions };
}

Deno.test("compareOffsets() reports a wrong offset, a missing field and a missing version", () => {
  assert.deepEqual(compareOffsets(fileWith({ "go1.19": {} }), new Map()), []);
  assert.deepEqual(
    compareOffsets(fileWith({ "go1.19": { "net/http.Request.Method": 8 } }), GENERATED),
    ["go1.19 differs from go1.19.8: net/http.Request.Method: 8 vs 0"],
  );
  assert.deepEqual(
    compareOffsets(fileWith({ "go1.19": {} }), GENERATED),
    ["go1.19 differs from go1.19.8: net/http.Request.Method: absent vs 0"],
  );
  assert.deepEqual(compareOffsets(fileWith({}), GENERATED), ["go1.19 (go1.19.8) is missing"]);
  assert.deepEqual(
    compareOffsets(
      { ...fileWith({ "go1.19": { "net/http.Request.Method": 0 } }), fields: [] },
      GENERATED,
    ),
    ["fields differ from the script's list"],
  );
});

Deno.test("byMinorVersion() accepts patch releases that agree and refuses ones that do not", () => {
  const same = byMinorVersion([
    { version: "go1.19.8", offsets: { a: 1 } },
    { version: "go1.19.13", offsets: { a: 1 } },
    { version: "go1.20.1", offsets: { a: 2 } },
  ]);
  assert.deepEqual([...same.keys()], ["go1.19", "go1.20"]);
  assert.deepEqual(same.get("go1.19")!.versions, ["go1.19.8", "go1.19.13"]);
  assert.throws(
    () =>
      byMinorVersion([
        { version: "go1.19.8", offsets: { a: 1 } },
        { version: "go1.19.13", offsets: { a: 2 } },
      ]),
    /go1.19.8 and go1.19.13 lay out go1.19 differently \(a: 1 vs 2\)/,
  );
});

Deno.test("mergeOffsets() keeps versions no toolchain here rebuilds, sorted by version", () => {
  const committed = fileWith({ "go1.9": { x: 1 }, "go1.20": { y: 2 }, "go1.19": { z: 3 } });
  const { file, kept, dropped } = mergeOffsets(committed, GENERATED);
  assert.deepEqual(Object.keys(file.versions), ["go1.9", "go1.19", "go1.20"]);
  assert.deepEqual(file.versions["go1.19"], { "net/http.Request.Method": 0 });
  assert.deepEqual(kept, ["go1.9", "go1.20"]);
  assert.deepEqual(dropped, []);
  // Made for another field list: a kept version would lack the new fields.
  const stale = mergeOffsets({ ...committed, fields: ["old"] }, GENERATED);
  assert.deepEqual(Object.keys(stale.file.versions), ["go1.19"]);
  assert.deepEqual(stale.dropped, ["go1.9", "go1.20"]);
});

Deno.test("minorVersion() keeps go1.N of any release name", () => {
  assert.equal(minorVersion("go1.19.8"), "go1.19");
  assert.equal(minorVersion("go1.21rc2"), "go1.21");
  assert.equal(minorVersion("go1.22"), "go1.22");
  assert.throws(() => minorVersion("devel +abc"), /Cannot read the Go version/);
});
