/**
 * The base of the binary readers' typed errors (lib/elf.ts's `ElfError`, lib/go_pclntab.ts's
 * `GoPclntabError`): an `Error` with a `reason` a caller can switch on, named after its class.
 *
 * @module
 */

/** An error that says why, as one of the `Reason` strings; `name` is the subclass's name. */
export class ReasonError<Reason extends string> extends Error {
  readonly reason: Reason;

  constructor(reason: Reason, message: string) {
    super(message);
    this.name = new.target.name;
    this.reason = reason;
  }
}
