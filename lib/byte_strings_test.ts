import assert from "node:assert/strict";
import { ByteStringCache } from "./byte_strings.ts";

const bytes = (s: string) => Uint8Array.from([...s].map((c) => c.charCodeAt(0)));

Deno.test("ByteStringCache.get() returns the latin1 string of the bytes, cached or not", () => {
  const cache = new ByteStringCache();
  const b = bytes("xx/users/42yy");
  assert.equal(cache.get(b, 2, 11), "/users/42");
  assert.equal(cache.get(b, 2, 11), "/users/42");
  assert.equal(cache.get(b, 0, 0), "");
  assert.equal(cache.get(Uint8Array.of(0xff, 0x00, 0x80), 0, 3), "\xff\x00\x80");
});

Deno.test("ByteStringCache never returns another string's value, even on a hash collision", () => {
  const cache = new ByteStringCache();
  // Many distinct strings through a tiny cache: every answer must still be exact.
  const small = new ByteStringCache(2);
  for (let i = 0; i < 2000; i++) {
    const s = `/p/${i}`;
    assert.equal(cache.get(bytes(s), 0, s.length), s);
    assert.equal(small.get(bytes(s), 0, s.length), s);
  }
  for (let i = 0; i < 2000; i++) {
    const s = `/p/${i}`;
    assert.equal(cache.get(bytes(s), 0, s.length), s);
  }
});
