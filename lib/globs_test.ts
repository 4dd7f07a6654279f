import assert from "node:assert/strict";
import { globMatcher, globsToRegExp } from "./globs.ts";

Deno.test("globsToRegExp: * spans anything, the rest is literal, whole paths only", () => {
  const re = globsToRegExp(["/usr/bin/hey", "/opt/*/bin/load*", "/a.b+c"])!;
  assert.ok(re.test("/usr/bin/hey"));
  assert.ok(re.test("/opt/x/y/bin/loadgen"));
  assert.ok(re.test("/a.b+c"));
  assert.ok(!re.test("/usr/bin/hey2"));
  assert.ok(!re.test("/aXb+c"));
  assert.equal(globsToRegExp([]), undefined);
});

Deno.test("globMatcher compiles once per options object", () => {
  const matches = globMatcher((o: { skip: string[] }) => o.skip);
  const options = { skip: ["/tmp/*"] };
  assert.ok(matches(options, "/tmp/x"));
  assert.ok(!matches(options, "/usr/x"));
  assert.ok(!matches({ skip: [] }, "/tmp/x"));
});
