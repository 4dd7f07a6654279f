/**
 * The file-backed mappings of a process, from /proc/<pid>/maps: which files (an executable,
 * libssl.so.3, libc.so.6) it has mapped, where, and from which offset. Pure: text in, values out.
 *
 * Line format (proc(5)): `start-end perms offset dev inode path`, the path padded to a column
 * and running to the end of the line, so it may contain spaces. The kernel appends
 * " (deleted)" to the path of a file unlinked since it was mapped (a library upgraded under a
 * running server) and writes a newline in a path as `\012`; a path that really ends with
 * " (deleted)" cannot be told apart, as with every reader of this file.
 *
 * @example
 * ```ts
 * const maps = parseProcMaps(Deno.readTextFileSync(`/proc/${pid}/maps`));
 * const libssl = findLibrary(maps, /^libssl\.so\.3$/);
 * ```
 *
 * @module
 */

/** One mapping of a file into a process's address space. */
export interface MappedFile {
  /** First address of the mapping. */
  start: number;
  /** First address after it. */
  end: number;
  /** `rwxp` or `rwxs` with `-` for an absent permission; `p` private, `s` shared. */
  perms: string;
  /** Offset in the file of the byte mapped at `start`. */
  offset: number;
  /** Device as `major:minor` in hex, e.g. "08:01". */
  dev: string;
  inode: number;
  /** Absolute path as the kernel prints it, without the " (deleted)" suffix. */
  path: string;
  /** The file was unlinked after it was mapped. */
  deleted: boolean;
}

const LINE =
  /^([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][ps]) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) *(.*)$/;
const DELETED = " (deleted)";

/**
 * The file-backed mappings of a /proc/<pid>/maps text, in file order. Anonymous mappings
 * (no path) and pseudo-paths (`[heap]`, `[stack]`, `[vdso]`, `[anon:name]`) are skipped, and
 * so are malformed lines.
 */
export function parseProcMaps(text: string): MappedFile[] {
  const out: MappedFile[] = [];
  for (const line of text.split("\n")) {
    const m = LINE.exec(line);
    // Only absolute paths are files; everything else the kernel prints there is a label.
    if (m === null || !m[7].startsWith("/")) continue;
    const deleted = m[7].endsWith(DELETED);
    out.push({
      start: parseInt(m[1], 16),
      end: parseInt(m[2], 16),
      perms: m[3],
      offset: parseInt(m[4], 16),
      dev: m[5],
      inode: Number(m[6]),
      path: deleted ? m[7].slice(0, -DELETED.length) : m[7],
      deleted,
    });
  }
  return out;
}

/**
 * The mapping of the file whose basename matches `name` (e.g. `/^libssl\.so\.3$/`): its first
 * executable mapping, else its first mapping; undefined when no such file is mapped.
 */
export function findLibrary(maps: readonly MappedFile[], name: RegExp): MappedFile | undefined {
  // search(), not test(): it ignores a `g` or `y` flag's lastIndex, so the answer never depends
  // on the previous call.
  const matching = maps.filter((m) => m.path.slice(m.path.lastIndexOf("/") + 1).search(name) >= 0);
  return matching.find((m) => m.perms.includes("x")) ?? matching[0];
}

/**
 * The read-only mappings (code, constants; no `w`) of the file at `path`, e.g. a process's own
 * executable: the clean pages the kernel can drop and read back from the file.
 */
export function readOnlyMappingsOf(maps: readonly MappedFile[], path: string): MappedFile[] {
  return maps.filter((m) => m.path === path && !m.deleted && !m.perms.includes("w"));
}
