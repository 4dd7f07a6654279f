import assert from "node:assert/strict";
import { findLibrary, type MappedFile, parseProcMaps, readOnlyMappingsOf } from "./proc_maps.ts";

// A node process's maps, cut down: the executable, anonymous and labelled mappings, libssl from
// a path with a space, and an upgraded (deleted) libcrypto.
const MAPS = `\
55a0c3a00000-55a0c3c00000 r--p 00000000 08:01 1310742                    /usr/bin/node
55a0c3c00000-55a0c5600000 r-xp 00200000 08:01 1310742                    /usr/bin/node
55a0c7f3e000-55a0c8313000 rw-p 00000000 00:00 0                          [heap]
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0 
7f1e30000000-7f1e3001f000 r--p 00000000 08:01 2097231                    /opt/my app/lib/libssl.so.3
7f1e3001f000-7f1e3007c000 r-xp 0001f000 08:01 2097231                    /opt/my app/lib/libssl.so.3
7f1e3007c000-7f1e3009b000 r--p 0007c000 08:01 2097231                    /opt/my app/lib/libssl.so.3
7f1e30100000-7f1e30180000 r--p 00000000 08:01 2097300                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3 (deleted)
7f1e30180000-7f1e30400000 r-xp 00080000 08:01 2097300                    /usr/lib/x86_64-linux-gnu/libcrypto.so.3 (deleted)
7f1e30500000-7f1e30501000 rw-s 00000000 00:01 4096                       /memfd:jit (deleted)
7f1e30600000-7f1e30601000 rw-p 00000000 00:00 0                          [anon:v8 heap]
7ffd1f3b0000-7ffd1f3d1000 rw-p 00000000 00:00 0                          [stack]
7ffd1f3f7000-7ffd1f3f9000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
`;

Deno.test("parseProcMaps() keeps file-backed mappings only, in order", () => {
  const maps = parseProcMaps(MAPS);
  assert.deepEqual(maps.map((m) => m.path), [
    "/usr/bin/node",
    "/usr/bin/node",
    "/opt/my app/lib/libssl.so.3",
    "/opt/my app/lib/libssl.so.3",
    "/opt/my app/lib/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
    "/usr/lib/x86_64-linux-gnu/libcrypto.so.3",
    "/memfd:jit",
  ]);
});

Deno.test("parseProcMaps() reads every field of a line", () => {
  const expected: MappedFile = {
    start: 0x55a0c3c00000,
    end: 0x55a0c5600000,
    perms: "r-xp",
    offset: 0x200000,
    dev: "08:01",
    inode: 1310742,
    path: "/usr/bin/node",
    deleted: false,
  };
  assert.deepEqual(parseProcMaps(MAPS)[1], expected);
});

Deno.test("parseProcMaps() strips the (deleted) suffix and says so", () => {
  const crypto = parseProcMaps(MAPS).filter((m) => m.path.endsWith("libcrypto.so.3"));
  assert.equal(crypto.length, 2);
  assert.ok(crypto.every((m) => m.deleted));
  assert.equal(parseProcMaps(MAPS)[0].deleted, false);
});

Deno.test("parseProcMaps() skips malformed lines", () => {
  assert.deepEqual(parseProcMaps(""), []);
  assert.deepEqual(
    parseProcMaps("garbage\n7f00-7f10 r-xp zz 08:01 1 /lib/a.so\n7f00-7f10 r-xp 0 08:01 1"),
    [],
  );
});

Deno.test("findLibrary() prefers the executable mapping of the matching file", () => {
  const maps = parseProcMaps(MAPS);
  const libssl = findLibrary(maps, /^libssl\.so\.3$/);
  assert.equal(libssl?.path, "/opt/my app/lib/libssl.so.3");
  assert.equal(libssl?.perms, "r-xp");
  assert.equal(libssl?.offset, 0x1f000);
  assert.equal(findLibrary(maps, /^libcrypto\.so\.3$/)?.deleted, true);
});

Deno.test("findLibrary() falls back to the first mapping when none is executable", () => {
  const maps = parseProcMaps(MAPS).filter((m) => !m.perms.includes("x"));
  const libssl = findLibrary(maps, /^libssl\.so\.3$/);
  assert.equal(libssl?.start, 0x7f1e30000000);
});

Deno.test("findLibrary() matches the basename only, and is not fooled by a g flag", () => {
  const maps = parseProcMaps(MAPS);
  assert.equal(findLibrary(maps, /^usr$/), undefined);
  assert.equal(findLibrary(maps, /^libssl\.so\.1\.1$/), undefined);
  assert.equal(findLibrary([], /^libssl\.so\.3$/), undefined);
  const global = /libssl/g;
  assert.ok(findLibrary(maps, global));
  assert.ok(findLibrary(maps, global), "the same regexp again");
});

Deno.test("findLibrary() finds libc.so.6 in this process's own maps", () => {
  const maps = parseProcMaps(Deno.readTextFileSync("/proc/self/maps"));
  const libc = findLibrary(maps, /^libc\.so\.6$/);
  assert.ok(libc, "Deno links libc.so.6 dynamically");
  assert.match(libc.perms, /^r-xp$/);
  assert.ok(libc.start < libc.end);
  // Not compared with stat's inode: under overlayfs the two differ.
  assert.ok(Deno.statSync(libc.path).isFile);
});

Deno.test("readOnlyMappingsOf() gives a file's mappings without w, and none of a deleted file", () => {
  const maps = parseProcMaps(
    MAPS + `\
55a0c5600000-55a0c5700000 rw-p 01c00000 08:01 1310742                    /usr/bin/node
`,
  );
  assert.deepEqual(
    readOnlyMappingsOf(maps, "/usr/bin/node").map((m) => [m.start.toString(16), m.perms]),
    [["55a0c3a00000", "r--p"], ["55a0c3c00000", "r-xp"]],
  );
  // A file replaced since it was mapped: its path names another file now.
  assert.deepEqual(readOnlyMappingsOf(maps, "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"), []);
  assert.deepEqual(readOnlyMappingsOf(maps, "/usr/bin/nod"), []);
});

Deno.test("readOnlyMappingsOf() finds this process's own executable (Deno.execPath())", () => {
  const own = readOnlyMappingsOf(
    parseProcMaps(Deno.readTextFileSync("/proc/self/maps")),
    Deno.execPath(),
  );
  assert.ok(own.some((m) => m.perms === "r-xp"), "its code");
});
