/**
 * Turning the same few byte strings (request paths) into JS strings again and again, cheaply.
 *
 * Building a string from bytes costs ~150 ns; hashing the bytes and finding the string built
 * last time costs ~30 ns plus a check that it really is the same bytes (a hash collision
 * then costs one rebuild, never a wrong string). Bytes map to chars one to one (latin1), so
 * any byte sequence round-trips.
 *
 * @module
 */
export class ByteStringCache {
  readonly #max: number;
  readonly #strings = new Map<number, string>();

  constructor(max = 4096) {
    this.#max = max;
  }

  /** The latin1 string of `bytes[start, end)`. */
  get(bytes: Uint8Array, start: number, end: number): string {
    let h = 0x811c9dc5 ^ (end - start);
    for (let i = start; i < end; i++) h = Math.imul(h ^ bytes[i], 0x01000193);
    const cached = this.#strings.get(h);
    if (cached !== undefined && sameBytes(cached, bytes, start, end)) return cached;
    const s = String.fromCharCode.apply(null, bytes.subarray(start, end) as unknown as number[]);
    if (this.#strings.size >= this.#max) this.#strings.clear();
    this.#strings.set(h, s);
    return s;
  }
}

function sameBytes(s: string, bytes: Uint8Array, start: number, end: number): boolean {
  if (s.length !== end - start) return false;
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) !== bytes[start + i]) return false;
  return true;
}
