import assert from "node:assert/strict";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { importPluginModules } from "./plugin_modules.ts";
import { moduleUrl } from "./config.ts";

const ROOT = new URL("..", import.meta.url);

/** Writes a module into `dir` and returns its file URL. */
async function writeModule(dir: string, name: string, body: string): Promise<string> {
  const path = join(dir, name);
  await Deno.writeTextFile(path, body);
  return pathToFileURL(path).href;
}

const header = `import { definePlugin } from "${new URL("mod.ts", ROOT).href}";
const bpfObject = await Deno.readFile(new URL("plugins/kprobe_http/kprobe_http.bpf.o", "${ROOT.href}"));
`;
const plugin = (id: string) =>
  `definePlugin({ id: "${id}", description: "test", bpfObject, decode: (b) => b, toObservation: () => undefined })`;

Deno.test("importPluginModules: a module outside the repository loads; broken ones are reported, not fatal", async () => {
  const dir = await Deno.makeTempDir({ prefix: "redprobe-modules-" });
  try {
    const good = await writeModule(dir, "good.ts", `${header}export default ${plugin("ext-one")};`);
    const two = await writeModule(
      dir,
      "two.ts",
      `${header}export default [${plugin("ext-two")}, ${plugin("ext-three")}];`,
    );
    const throws = await writeModule(dir, "throws.ts", `throw new Error("boom at load");`);
    const invalid = await writeModule(
      dir,
      "invalid.ts",
      `export default { id: "Bad Id", description: "" };`,
    );
    const noDefault = await writeModule(dir, "nodefault.ts", `export const x = 1;`);
    const clash = await writeModule(
      dir,
      "clash.ts",
      `${header}export default ${plugin("kprobe-http")};`,
    );
    const missing = pathToFileURL(join(dir, "missing.ts")).href;
    const { plugins, failures } = await importPluginModules(
      [good, throws, invalid, noDefault, clash, missing, two],
      ["kprobe-http"],
    );
    assert.deepEqual(plugins.map((p) => p.id), ["ext-one", "ext-two", "ext-three"]);
    const why = new Map(failures.map((f) => [f.module, f.message]));
    assert.equal(failures.length, 5);
    assert.match(why.get(throws)!, /cannot import it: .*boom at load/);
    assert.match(why.get(invalid)!, /Invalid plugin "Bad Id": id: lower-case words/);
    assert.match(why.get(noDefault)!, /no default export/);
    assert.match(why.get(clash)!, /"kprobe-http" is already taken/);
    assert.match(why.get(missing)!, /cannot import it/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("moduleUrl: URLs as they are, paths as file URLs, relative ones from the config's folder", () => {
  assert.equal(moduleUrl("https://example.org/p.ts"), "https://example.org/p.ts");
  assert.equal(moduleUrl("/opt/p/mod.ts"), "file:///opt/p/mod.ts");
  assert.equal(
    moduleUrl("p/mod.ts", new URL("file:///etc/redprobe/")),
    "file:///etc/redprobe/p/mod.ts",
  );
  assert.equal(moduleUrl("../mod.ts", new URL("file:///etc/redprobe/")), "file:///etc/mod.ts");
});
