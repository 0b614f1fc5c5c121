/**
 * One import at a time into a model directory. The lock is a file beside the target,
 * `<model-dir>.import-lock`, holding the importer's pid, host, process start time and a random
 * token. It is created atomically and exclusively (written under a temporary name, then
 * hard-linked to the lock name, which fails if the name exists), so its content is always
 * complete. A second importer finds it and stops with "another import into X is running (pid N)";
 * a lock whose process is gone (killed, crashed) is stale and is taken over.
 *
 * Taking over is itself safe against two importers doing it at once: the stale file is renamed
 * aside (only one rename can succeed), and if what was moved turns out not to be the stale lock
 * that was seen, it is put back. The holder checks that the lock is still its own before it
 * publishes the model.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MoeRunError } from "../errors.js";
import { lockHolderAlive, processStart } from "../util/processLiveness.js";

export const LOCK_SUFFIX = ".import-lock";

interface LockInfo {
  moeRunImport: 1;
  pid: number;
  host: string;
  /** The process's start time (clock ticks since boot, /proc/<pid>/stat field 22), against pid reuse. */
  start: string | null;
  token: string;
}

function parseLock(text: string): LockInfo | null {
  try {
    const v = JSON.parse(text) as LockInfo;
    if (v && v.moeRunImport === 1 && Number.isSafeInteger(v.pid) && typeof v.host === "string" && typeof v.token === "string") return v;
  } catch {
    // not ours
  }
  return null;
}

function readText(p: string): string | null {
  try {
    const st = fs.lstatSync(p);
    if (!st.isFile() || st.size > 4096) return "";
    return fs.readFileSync(p, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

export class ImportLock {
  /** The stale lock this one replaced, if any (its importer was killed or crashed). */
  readonly tookOverFrom: number | null;
  private released = false;

  private constructor(
    readonly file: string,
    private readonly content: string,
    tookOverFrom: number | null
  ) {
    this.tookOverFrom = tookOverFrom;
  }

  /**
   * Takes the lock of `target` (an absolute path whose parent exists), or throws
   * IMPORT_IN_PROGRESS naming the importer that holds it. `shown` is the target as the user wrote it.
   */
  static acquire(target: string, shown: string): ImportLock {
    const file = target + LOCK_SUFFIX;
    const info: LockInfo = { moeRunImport: 1, pid: process.pid, host: os.hostname(), start: processStart(process.pid), token: randomBytes(8).toString("hex") };
    const content = JSON.stringify(info);
    const tmp = `${file}.${process.pid}.${info.token}.tmp`;
    removeDeadTemporaries(file);
    let tookOverFrom: number | null = null;
    try {
      fs.writeFileSync(tmp, content, { flag: "wx" });
      for (let attempt = 0; attempt < 20; attempt++) {
        try {
          fs.linkSync(tmp, file);
          return new ImportLock(file, content, tookOverFrom);
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP" || code === "ENOSYS") {
            // A filesystem without hard links: an exclusive create (O_EXCL) instead.
            if (createExclusive(file, content)) return new ImportLock(file, content, tookOverFrom);
          } else if (code !== "EEXIST") {
            throw err;
          }
        }
        const seen = readText(file);
        if (seen === null) continue; // released meanwhile: try again
        const holder = parseLock(seen);
        if (!holder) {
          throw new MoeRunError(
            "IMPORT_IN_PROGRESS",
            `${file} exists but is not a moe-run import lock; if no import into ${shown} is running, remove it and import again`
          );
        }
        if (lockHolderAlive(holder)) {
          const where = holder.host === os.hostname() ? "" : ` on ${holder.host}`;
          throw new MoeRunError(
            "IMPORT_IN_PROGRESS",
            `another import into ${shown} is running (pid ${holder.pid}${where}); wait for it to finish or import into another directory`
          );
        }
        // Stale: move exactly that file aside, and put back whatever else was moved by mistake.
        const aside = `${file}.stale-${process.pid}-${info.token}`;
        try {
          fs.renameSync(file, aside);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOENT") continue;
          throw err;
        }
        const moved = readText(aside);
        if (moved !== seen) {
          try {
            fs.linkSync(aside, file);
          } catch {
            // someone took the lock meanwhile; the importer whose lock was moved notices before publishing
          }
        } else {
          tookOverFrom = holder.pid;
        }
        fs.rmSync(aside, { force: true });
      }
      throw new MoeRunError("IMPORT_IN_PROGRESS", `could not take the import lock ${file}: other imports into ${shown} keep starting`);
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  }

  /** Whether the lock file still is this importer's (nobody removed or took it). */
  stillHeld(): boolean {
    try {
      return !this.released && readText(this.file) === this.content;
    } catch {
      return false;
    }
  }

  release(): void {
    if (this.released) return;
    if (this.stillHeld()) fs.rmSync(this.file, { force: true });
    this.released = true;
  }
}

function createExclusive(file: string, content: string): boolean {
  let fd: number;
  try {
    fd = fs.openSync(file, "wx");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
  try {
    fs.writeSync(fd, content);
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

/** Temporary lock files (`<lock>.<pid>.<token>.tmp`) left by importers that were killed. */
function removeDeadTemporaries(file: string): void {
  const dir = path.dirname(file);
  const prefix = path.basename(file) + ".";
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const m = /^(\d+)\.[0-9a-f]{16}\.tmp$/.exec(name.slice(prefix.length)) ?? /^stale-(\d+)-[0-9a-f]{16}$/.exec(name.slice(prefix.length));
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid) continue;
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch (err) {
      alive = (err as NodeJS.ErrnoException).code !== "ESRCH";
    }
    if (!alive) fs.rmSync(path.join(dir, name), { force: true });
  }
}
