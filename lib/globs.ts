/**
 * Path globs of the configuration (`skip_executables: [/opt/*\/bin/loadgen]`): `*` matches any
 * run of characters, `/` included; everything else is literal. Pure.
 *
 * @module
 */

/** `*`-globs to one regular expression over whole paths; undefined for none. */
export function globsToRegExp(globs: readonly string[]): RegExp | undefined {
  if (globs.length === 0) return undefined;
  const alternatives = globs.map((g) =>
    g.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&")).join(".*")
  );
  return new RegExp(`^(?:${alternatives.join("|")})$`);
}

/** A matcher of paths against `globs`, compiled once per options object it is asked about. */
export function globMatcher<O extends object>(
  globsOf: (options: O) => readonly string[],
): (options: O, path: string) => boolean {
  const compiled = new WeakMap<O, RegExp | undefined>();
  return (options, path) => {
    if (!compiled.has(options)) compiled.set(options, globsToRegExp(globsOf(options)));
    return compiled.get(options)?.test(path) ?? false;
  };
}
