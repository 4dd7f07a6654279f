/**
 * Who may run the privileged (BPF) tests. On a developer machine without root or BPF they are
 * skipped; in CI (env CI set) they must run, so there they are never skipped: a missing
 * privilege then fails the test with the reason.
 *
 * Use: `Deno.test({ name, ignore: skipBpf(), fn })` and call `assertBpfAvailable()` first.
 *
 * @module
 */

/** Why BPF tests cannot run here, or undefined when they can. */
export function bpfUnavailableReason(): string | undefined {
  if (Deno.uid() !== 0) return "not running as root";
  try {
    Deno.statSync("/sys/kernel/btf/vmlinux");
  } catch {
    return "the kernel has no BTF (/sys/kernel/btf/vmlinux)";
  }
  return undefined;
}

export function inCi(): boolean {
  const ci = Deno.env.get("CI");
  return ci !== undefined && ci !== "" && ci !== "0" && ci !== "false";
}

/** True when the test should be skipped: no BPF here and not in CI. */
export function skipBpf(): boolean {
  return bpfUnavailableReason() !== undefined && !inCi();
}

/** Fails the test (in CI) when BPF is unavailable. */
export function assertBpfAvailable(): void {
  const reason = bpfUnavailableReason();
  if (reason) throw new Error(`This BPF test must run in CI but cannot: ${reason}`);
}
