/**
 * Process selectors of the configuration (`discovery.select`, `discovery.exclude`): a process
 * matches a selector when it matches everything the selector names (listening ports, the
 * executable's path glob, a command-line regular expression, the pid). Pure.
 *
 * @module
 */
import { globsToRegExp } from "./globs.ts";

export interface SelectorSpec {
  /** service_name of the processes it selects (when their environment names none). */
  name?: string;
  /** Listening ports: numbers, or ranges "8000-8099". Any of them matches. */
  ports?: (number | string)[];
  /** The executable's path, `*` matching any run of characters. */
  exe?: string;
  /** A regular expression searched in the command line (arguments joined by spaces). */
  cmdline?: string;
  pid?: number;
}

/** What a selector looks at in a process. */
export interface ProcessFacts {
  pid: number;
  exe: string;
  /** Read only when a selector needs it. */
  cmdline: () => string;
  ports: readonly number[];
}

/** A compiled selector. */
export class Selector {
  readonly name?: string;
  readonly #ranges?: [number, number][];
  readonly #exe?: RegExp;
  readonly #cmdline?: RegExp;
  readonly #pid?: number;

  /** Throws a RangeError naming what is wrong (a bad range or regular expression). */
  constructor(spec: SelectorSpec) {
    this.name = spec.name;
    this.#ranges = spec.ports?.map(parseRange);
    this.#exe = spec.exe === undefined ? undefined : globsToRegExp([spec.exe]);
    if (spec.cmdline !== undefined) {
      try {
        this.#cmdline = new RegExp(spec.cmdline);
      } catch (e) {
        throw new RangeError(`cmdline: ${(e as Error).message}`);
      }
    }
    this.#pid = spec.pid;
    if (!this.#ranges && !this.#exe && !this.#cmdline && this.#pid === undefined) {
      throw new RangeError("a selector needs ports, exe, cmdline or pid");
    }
  }

  /** Whether it can select a process that listens on no port. */
  get needsPorts(): boolean {
    return this.#ranges !== undefined;
  }

  matches(p: ProcessFacts): boolean {
    if (this.#pid !== undefined && p.pid !== this.#pid) return false;
    if (this.#exe && !this.#exe.test(p.exe)) return false;
    if (
      this.#ranges &&
      !p.ports.some((port) => this.#ranges!.some(([a, b]) => port >= a && port <= b))
    ) {
      return false;
    }
    if (this.#cmdline && !this.#cmdline.test(p.cmdline())) return false;
    return true;
  }
}

function parseRange(port: number | string): [number, number] {
  const m = /^(\d+)(?:-(\d+))?$/.exec(String(port).trim());
  const a = Number(m?.[1]), b = m?.[2] === undefined ? a : Number(m[2]);
  if (!m || a < 1 || b > 65535 || a > b) {
    throw new RangeError(
      `ports: expected a port or a range "8000-8099", got ${JSON.stringify(port)}`,
    );
  }
  return [a, b];
}
