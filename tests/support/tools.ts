/**
 * External tools tests use: whether one is installed, and `promtool check metrics`.
 *
 * @module
 */

/** Whether `name --version` runs (the tool is installed). */
export function hasTool(name: string): boolean {
  try {
    return new Deno.Command(name, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** Runs `promtool check metrics` on an exposition; its verdict and everything it printed. */
export async function promtoolCheck(text: string): Promise<{ success: boolean; output: string }> {
  const child = new Deno.Command("promtool", {
    args: ["check", "metrics"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const out = await child.output();
  const decoder = new TextDecoder();
  return { success: out.success, output: decoder.decode(out.stdout) + decoder.decode(out.stderr) };
}
