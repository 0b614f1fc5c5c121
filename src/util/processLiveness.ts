/**
 * Whether the process that wrote a lock file may still run: used by the import lock and the
 * download lock, whose files record the holder's pid, host and start time.
 */
import * as fs from "node:fs";
import * as os from "node:os";

/** Start time of a process (clock ticks since boot, /proc/<pid>/stat field 22), or null where /proc is not readable. */
export function processStart(pid: number): string | null {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields[19] ?? null; // field 22 overall; fields[0] is field 3
  } catch {
    return null;
  }
}

/**
 * False only when the holder is known to be gone: no such pid on this host, or the pid now
 * belongs to a process that started at another time. Another host (a shared file system) cannot
 * be checked, so its holder counts as alive.
 */
export function lockHolderAlive(holder: { pid: number; host: string; start: string | null }): boolean {
  if (holder.host !== os.hostname()) return true;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
  }
  if (holder.start !== null) {
    const now = processStart(holder.pid);
    if (now !== null && now !== holder.start) return false;
  }
  return true;
}
