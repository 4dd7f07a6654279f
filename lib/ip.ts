/**
 * IP addresses as the kernel stores them (network byte order) to the text a label shows:
 * dotted IPv4, RFC 5952 IPv6 (lower case, the longest run of zero groups as `::`), and an
 * IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, a dual-stack socket's IPv4 peer) as plain IPv4.
 *
 * @module
 */

export const AF_INET = 2;
export const AF_INET6 = 10;

/** `bytes[0..4)` (AF_INET) or `bytes[0..16)` (AF_INET6) as text; undefined for any other family. */
export function formatIp(bytes: Uint8Array, family: number): string | undefined {
  if (family === AF_INET) return Array.from(bytes.subarray(0, 4)).join(".");
  if (family !== AF_INET6 || bytes.length < 16) return undefined;
  const mapped = bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff &&
    bytes[11] === 0xff;
  if (mapped) return Array.from(bytes.subarray(12, 16)).join(".");
  const groups = Array.from({ length: 8 }, (_, i) => bytes[2 * i] << 8 | bytes[2 * i + 1]);
  // The longest run of two or more zero groups becomes "::" (the first, on a tie).
  let best = { at: -1, len: 1 };
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.len) best = { at: i, len: j - i };
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (best.at < 0) return hex.join(":");
  return `${hex.slice(0, best.at).join(":")}::${hex.slice(best.at + best.len).join(":")}`;
}
