/** Process inspection through /proc (Linux only), used to prove servers leave nothing behind. */

interface ProcStat {
  pid: number;
  ppid: number;
  state: string;
}

function readStat(pid: number): ProcStat | null {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return null;
  }
  // comm (field 2) is parenthesised and may itself contain spaces or ')', so split after the
  // LAST ')' rather than on whitespace.
  const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { pid, state: rest[0], ppid: Number(rest[1]) };
}

/** Zombies count as gone: they hold no sockets or memory and only wait for their parent to reap. */
export function isAlive(pid: number): boolean {
  const stat = readStat(pid);
  return stat !== null && stat.state !== "Z";
}

function allStats(): ProcStat[] {
  const stats: ProcStat[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    const stat = readStat(Number(entry.name));
    if (stat) stats.push(stat);
  }
  return stats;
}

/** `root` plus every live descendant (e.g. the nginx master and its workers), sorted. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const stat of allStats()) {
    if (stat.state === "Z") continue;
    const list = children.get(stat.ppid) ?? [];
    list.push(stat.pid);
    children.set(stat.ppid, list);
  }
  const found: number[] = [];
  const queue = isAlive(root) ? [root] : [];
  while (queue.length > 0) {
    const pid = queue.shift()!;
    found.push(pid);
    queue.push(...(children.get(pid) ?? []));
  }
  return found.sort((a, b) => a - b);
}
