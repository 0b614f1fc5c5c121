/**
 * One writer per blob: two pulls of the same model (or of two models sharing a file) must not
 * append to the same `.incomplete` file. The lock is a file created exclusively, holding the
 * holder's pid, host and process start time; a lock whose process is gone is stale and taken
 * over (moved aside first, so two processes taking it over at once cannot both win).
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { MoeRunError } from "../errors.js";
import { lockHolderAlive, processStart } from "../util/processLiveness.js";

interface Holder {
  moeRunDownload: 1;
  pid: number;
  host: string;
  start: string | null;
  token: string;
}

function read(file: string): string | null {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

function parse(text: string): Holder | null {
  try {
    const h = JSON.parse(text) as Holder;
    return h && h.moeRunDownload === 1 && Number.isSafeInteger(h.pid) && typeof h.host === "string" ? h : null;
  } catch {
    return null;
  }
}

export class BlobLock {
  private released = false;

  private constructor(
    readonly file: string,
    private readonly content: string
  ) {}

  /** Takes the lock, or throws DOWNLOAD_IN_PROGRESS naming the process that holds it. */
  static acquire(file: string, shown: string): BlobLock {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const me: Holder = { moeRunDownload: 1, pid: process.pid, host: os.hostname(), start: processStart(process.pid), token: randomBytes(8).toString("hex") };
    const content = JSON.stringify(me);
    for (let attempt = 0; attempt < 10; attempt++) {
      try {
        fs.writeFileSync(file, content, { flag: "wx" });
        return new BlobLock(file, content);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      const seen = read(file);
      if (seen === null) continue;
      const holder = parse(seen);
      // An empty or foreign file is a lock being written right now, or junk; only a dead holder is stale.
      if (!holder || lockHolderAlive(holder)) {
        if (!holder && attempt < 3) continue;
        throw new MoeRunError(
          "DOWNLOAD_IN_PROGRESS",
          `another process${holder ? ` (pid ${holder.pid}${holder.host === os.hostname() ? "" : ` on ${holder.host}`})` : ""} is downloading ${shown} into the cache ` +
            `(lock ${file}); wait for it to finish, or remove the lock if no download is running`
        );
      }
      const aside = `${file}.stale-${process.pid}-${me.token}`;
      try {
        fs.renameSync(file, aside);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "ENOENT") continue;
        throw err;
      }
      if (read(aside) !== seen) {
        try {
          fs.linkSync(aside, file); // moved someone's fresh lock: put it back
        } catch {
          // taken meanwhile; its holder keeps it
        }
      }
      fs.rmSync(aside, { force: true });
    }
    throw new MoeRunError("DOWNLOAD_IN_PROGRESS", `could not take the download lock ${file}: other downloads of ${shown} keep starting`);
  }

  release(): void {
    if (this.released) return;
    this.released = true;
    try {
      if (read(this.file) === this.content) fs.rmSync(this.file, { force: true });
    } catch {
      // the cache went away meanwhile; nothing to release
    }
  }
}
