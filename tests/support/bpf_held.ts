/**
 * What BPF objects a process holds, as the kernel sees them: its fds' `prog_id`/`map_id`
 * (fdinfo) and `bpftool`'s names and types for those ids.
 *
 * @module
 */
import assert from "node:assert/strict";

/** id -> name and type of the BPF programs or maps loaded in the kernel now (`bpftool`). */
async function listed(kind: "prog" | "map"): Promise<Map<number, { name: string; type: string }>> {
  const out = await new Deno.Command("bpftool", {
    args: [kind, "list", "--json"],
    stdout: "piped",
  }).output();
  assert.ok(out.success, `bpftool ${kind} list`);
  const list = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    id: number;
    name?: string;
    type?: string;
  }[];
  return new Map(list.map((p) => [p.id, { name: p.name ?? "", type: p.type ?? "" }]));
}

/** id -> name of the BPF programs loaded in the kernel now. */
export async function loadedPrograms(): Promise<Map<number, string>> {
  return new Map([...await listed("prog")].map(([id, p]) => [id, p.name]));
}

/** The text of each /proc/`pid`/fdinfo entry (fds closed meanwhile are skipped). */
function* fdinfos(pid: number): Generator<string> {
  for (const fd of Deno.readDirSync(`/proc/${pid}/fdinfo`)) {
    try {
      yield Deno.readTextFileSync(`/proc/${pid}/fdinfo/${fd.name}`);
    } catch { /* fd closed meanwhile */ }
  }
}

/**
 * Ids of the BPF programs (`prog_id`) or maps (`map_id`) process `pid` holds an fd of. With
 * `linksOnly`, only the programs of its BPF link fds (fdinfo with a `link_id`): those attached,
 * not those only loaded.
 */
export function idsHeldBy(
  pid: number,
  field: "prog_id" | "map_id" = "prog_id",
  { linksOnly = false } = {},
): Set<number> {
  const ids = new Set<number>();
  const re = new RegExp(`^${field}:\\s*(\\d+)$`, "m");
  for (const info of fdinfos(pid)) {
    const m = re.exec(info);
    if (m && (!linksOnly || /^link_id:/m.test(info))) ids.add(Number(m[1]));
  }
  return ids;
}

/** Names of the BPF programs process `pid` holds (with `linksOnly`: has attached), sorted. */
export async function programsHeldBy(pid: number, { linksOnly = false } = {}): Promise<string[]> {
  const held = idsHeldBy(pid, "prog_id", { linksOnly });
  const loaded = await loadedPrograms();
  return [...held].map((id) => loaded.get(id) ?? `?${id}`).sort();
}

/** The BPF maps process `pid` holds: name and type (`ringbuf`, `hash`, ...), sorted by name. */
export async function mapsHeldBy(pid: number): Promise<{ name: string; type: string }[]> {
  const held = idsHeldBy(pid, "map_id");
  const maps = await listed("map");
  return [...held].flatMap((id) => maps.has(id) ? [maps.get(id)!] : [])
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** The ids of the BPF maps process `pid` holds, by map name. */
export async function mapIdsByNameHeldBy(pid: number): Promise<Map<string, number[]>> {
  const held = idsHeldBy(pid, "map_id");
  const byName = new Map<string, number[]>();
  for (const [id, { name }] of await listed("map")) {
    if (held.has(id)) byName.set(name, [...(byName.get(name) ?? []), id]);
  }
  return byName;
}
