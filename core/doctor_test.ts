import assert from "node:assert/strict";
import { formatDoctor, privileges } from "./doctor.ts";
import { main } from "./cli.ts";
import { BUILTIN_PLUGINS } from "../plugins/registry.ts";
import { skipBpf } from "../tests/support/privileges.ts";

Deno.test("privileges() reads the effective capabilities and names what is missing", () => {
  const all = "Name:\tx\nCapEff:\t000001ffffffffff\n";
  assert.equal(privileges(all).state, "ok");
  const none = privileges("CapEff:\t0000000000000000\n");
  assert.equal(none.state, "missing");
  assert.match(none.detail, /CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH/);
  // CAP_SYS_ADMIN (21) only: not enough.
  assert.match(
    privileges("CapEff:\t0000000000200000\n").detail,
    /grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH \(/,
  );
  // The four the Kubernetes DaemonSet grants (2, 19, 38, 39), without CAP_SYS_ADMIN: enough.
  const four = (1n << 2n) | (1n << 19n) | (1n << 38n) | (1n << 39n);
  assert.equal(privileges(`CapEff:\t${four.toString(16).padStart(16, "0")}\n`).state, "ok");
});

Deno.test("formatDoctor: ok unless something needed is missing or failed", () => {
  assert.ok(formatDoctor([{ name: "kprobes", state: "absent", detail: "" }]).ok);
  assert.ok(!formatDoctor([{ name: "BTF", state: "missing", detail: "" }]).ok);
  assert.ok(!formatDoctor([{ name: "plugin x", state: "failed", detail: "EPERM" }]).ok);
});

Deno.test({
  name: "redprobe doctor on this machine: every built-in plugin's programs pass the verifier",
  ignore: skipBpf(),
  async fn() {
    const out: string[] = [];
    const status = await main(["doctor"], BUILTIN_PLUGINS, {
      out: (t) => out.push(t),
      err: (t) => out.push(t),
      env: {},
    });
    const text = out.join("\n");
    assert.equal(status, 0, text);
    for (const p of BUILTIN_PLUGINS) {
      assert.match(text, new RegExp(`ok +plugin ${p.id} +its BPF programs pass the verifier`));
    }
    assert.match(text, /absent +kprobes/);
  },
});
