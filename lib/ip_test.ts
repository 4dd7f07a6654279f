import assert from "node:assert/strict";
import { AF_INET, AF_INET6, formatIp } from "./ip.ts";

const v6 = (...groups: number[]) => new Uint8Array(groups.flatMap((g) => [g >> 8, g & 0xff]));

Deno.test("formatIp() writes IPv4 dotted, IPv6 per RFC 5952, mapped IPv4 as IPv4", () => {
  assert.equal(formatIp(new Uint8Array([127, 0, 0, 1, 9, 9]), AF_INET), "127.0.0.1");
  assert.equal(formatIp(v6(0, 0, 0, 0, 0, 0, 0, 1), AF_INET6), "::1");
  assert.equal(formatIp(v6(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1), AF_INET6), "2001:db8::1:0:0:1");
  assert.equal(formatIp(v6(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1), AF_INET6), "2001:db8:0:1:1:1:1:1");
  assert.equal(formatIp(v6(0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001), AF_INET6), "10.0.0.1");
  assert.equal(formatIp(v6(0, 0, 0, 0, 0, 0, 0, 0), AF_INET6), "::");
  assert.equal(formatIp(new Uint8Array(16), 0), undefined);
});
