/**
 * The BTF of a struct from a plugin's shared header, compiled the way scripts/build_bpf.ts
 * compiles the plugins, with one variable of the struct so its layout lands in the object's
 * BTF (a struct reached only through the pointer bpf_ringbuf_reserve() returns is not).
 * Decoder tests compare their offsets with it.
 *
 * @module
 */
import { type Btf, btfOfElf } from "../../lib/btf.ts";
import { fromFileUrl, join } from "./paths.ts";

const ROOT = fromFileUrl(new URL("../../", import.meta.url).href);

/** Compiles `#include "<header>"` + `struct <name> layout_anchor;` and returns its BTF. */
export async function headerStructBtf(headerPath: string, struct: string): Promise<Btf> {
  const dir = await Deno.makeTempDir({ prefix: "redprobe-layout-" });
  try {
    const header = headerPath.split("/").pop()!;
    const headerDir = headerPath.slice(0, headerPath.length - header.length);
    await Deno.writeTextFile(
      `${dir}/layout.bpf.c`,
      `#include "vmlinux.h"\n#include "${header}"\nstruct ${struct} layout_anchor;\n`,
    );
    const out = await new Deno.Command("clang", {
      args: [
        "-O2",
        "-g",
        "-target",
        "bpf",
        "-mcpu=v3",
        "-D__TARGET_ARCH_x86",
        "-I",
        join(ROOT, "bpf"),
        "-I",
        headerDir || ".",
        "-c",
        `${dir}/layout.bpf.c`,
        "-o",
        `${dir}/layout.bpf.o`,
      ],
      stderr: "piped",
    }).output();
    if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
    return btfOfElf(await Deno.readFile(`${dir}/layout.bpf.o`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
