/**
 * Reading the files of a checkpoint the user hands us, without trusting them: a name may be a
 * symbolic link to /dev/zero, a FIFO, a directory or a huge file. Every file is checked to be a
 * regular file of a plausible size before a byte of it is read, and is opened non-blocking (so a
 * FIFO swapped in after the check cannot hang the import) and checked again on the open handle.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointCorruptError, CheckpointMissingError, MoeRunError } from "../errors.js";
import { formatBytes } from "../util/bytes.js";

/** config.json, tokenizer_config.json, model.safetensors.index.json. */
export const MAX_SMALL_JSON_BYTES = 64 * 1024 * 1024;
/** tokenizer.json (large vocabularies reach tens of MB). */
export const MAX_TOKENIZER_BYTES = 512 * 1024 * 1024;

/** What a stat says a path is, in words, for messages. */
export function describeFileType(st: fs.Stats): string {
  if (st.isFile()) return "a regular file";
  if (st.isDirectory()) return "a directory";
  if (st.isCharacterDevice()) return "a character device";
  if (st.isBlockDevice()) return "a block device";
  if (st.isFIFO()) return "a named pipe";
  if (st.isSocket()) return "a socket";
  return "not a regular file";
}

/** A MoeRunError for a failed read of a checkpoint file (no stack trace, no raw errno text). */
export function sourceReadError(p: string, what: string, err: unknown): MoeRunError {
  if (err instanceof MoeRunError) return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === "ENOENT") return new CheckpointMissingError(`${what} is missing: expected ${p}`);
  if (code === "EACCES" || code === "EPERM") return new CheckpointMissingError(`cannot read ${what} (${p}): permission denied`);
  if (code === "ELOOP") return new CheckpointCorruptError(`${what} (${p}) is a loop of symbolic links`);
  return new CheckpointCorruptError(`cannot read ${what} (${p}): ${code ?? String((err as Error)?.message ?? err)}`);
}

function checkRegular(p: string, what: string, st: fs.Stats, maxBytes: number): void {
  if (!st.isFile()) {
    throw new CheckpointCorruptError(`${what} (${p}) is ${describeFileType(st)}, not a regular file; refusing to read it`);
  }
  if (st.size > maxBytes) {
    throw new CheckpointCorruptError(`${what} (${p}) has ${formatBytes(st.size)}, more than the ${formatBytes(maxBytes)} such a file may have; refusing to read it`);
  }
}

/**
 * Opens a checkpoint file for reading after checking that it (a symbolic link is followed) is a
 * regular file of at most `maxBytes`. Returns the descriptor and the size seen on it.
 */
export function openSourceFile(p: string, what: string, maxBytes = Number.MAX_SAFE_INTEGER): { fd: number; size: number } {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (err) {
    throw sourceReadError(p, what, err);
  }
  checkRegular(p, what, st, maxBytes);
  let fd: number;
  try {
    fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (err) {
    throw sourceReadError(p, what, err);
  }
  try {
    const fst = fs.fstatSync(fd);
    checkRegular(p, what, fst, maxBytes);
    return { fd, size: fst.size };
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

/** Reads a whole checkpoint file of at most `maxBytes` (checked before reading). */
export function readSourceFile(p: string, what: string, maxBytes: number): Buffer {
  const { fd, size } = openSourceFile(p, what, maxBytes);
  try {
    // One byte more than the size seen: a file that grows while we read is refused, not read forever.
    const buf = Buffer.allocUnsafe(size + 1);
    let done = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, done, buf.length - done, done);
      if (n === 0) break;
      done += n;
      if (done > size) throw new CheckpointCorruptError(`${what} (${p}) grew while it was read; refusing it`);
    }
    return buf.subarray(0, done);
  } catch (err) {
    throw sourceReadError(p, what, err);
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads and parses a JSON file of the checkpoint. */
export function readSourceJson(p: string, what: string, maxBytes = MAX_SMALL_JSON_BYTES): { value: unknown; bytes: Buffer } {
  const bytes = readSourceFile(p, what, maxBytes);
  try {
    return { value: JSON.parse(bytes.toString("utf8")), bytes };
  } catch (cause) {
    throw new CheckpointCorruptError(`${p} is not valid JSON`, { cause });
  }
}

/** Whether `child` is `parent` or lies below it (both absolute, already resolved). */
export function isSameOrInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === "" || (!path.isAbsolute(rel) && rel !== ".." && !rel.startsWith(`..${path.sep}`));
}
