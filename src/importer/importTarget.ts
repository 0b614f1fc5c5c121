/**
 * What `import` may create, replace and remove. It writes only `<model-dir>`, `<model-dir>.importing`
 * (its staging folder), `<model-dir>.import-lock` and, while replacing with --force,
 * `<model-dir>.replaced-<pid>`; it removes or replaces only folders it can tell are moe-run's:
 * a model directory with a moe-run manifest and nothing else of the user's in it, or a staging
 * folder holding only what an import writes. Never the checkpoint, a folder holding it, or the
 * current directory.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { MoeRunError } from "../errors.js";
import { isSameOrInside } from "../formats/sourceFiles.js";
import { MANIFEST_FILE, type ModelManifest } from "../model/manifest.js";
import { formatBytes } from "../util/bytes.js";

export const REPLACED_INFIX = ".replaced-";

/** What an import writes at the top of its staging folder (and so of a model directory). */
const IMPORT_ENTRIES = new Set([
  "graphs",
  "experts.mdb",
  "experts.mdb-lock",
  "predictor.bin",
  "tokenizer.json",
  "tokenizer_config.json",
  MANIFEST_FILE,
  `${MANIFEST_FILE}.tmp`,
]);
/** What running a model adds to its directory. */
const RUNTIME_ENTRIES = ["routing-stats.mdb", "routing-stats.mdb-lock"];

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw err;
  }
}

/** The manifest of a moe-run model directory, or null if `dir` has none (or not a moe-run one). */
function moeRunManifest(dir: string): ModelManifest | null {
  const p = path.join(dir, MANIFEST_FILE);
  const st = lstatOrNull(p);
  if (!st?.isFile() || st.size > 256 * 1024 * 1024) return null;
  try {
    const m = JSON.parse(fs.readFileSync(p, "utf8")) as ModelManifest;
    return m && m.format === "moe-run-model" ? m : null;
  } catch {
    return null;
  }
}

/** Top-level names a model directory with this manifest may hold. */
function modelEntries(m: ModelManifest): Set<string> {
  const names = new Set([...IMPORT_ENTRIES, ...RUNTIME_ENTRIES]);
  const top = (rel: unknown) => {
    if (typeof rel === "string" && rel) names.add(rel.split(/[\\/]/)[0]!);
  };
  for (const rel of Object.keys(m.files ?? {})) top(rel);
  top(m.graphs?.embed);
  top(m.graphs?.head);
  top(m.graphs?.expert);
  for (const g of m.graphs?.layers ?? []) top(g);
  top(m.predictor?.file);
  top(m.tokenizer?.json);
  top(m.tokenizer?.config);
  if (typeof m.experts?.store === "string") {
    top(m.experts.store);
    names.add(`${m.experts.store}-lock`);
  }
  return names;
}

/** Whether `dir` is an existing moe-run model directory (manifest.json of format moe-run-model). */
export function isMoeRunModelDir(dir: string): boolean {
  const st = lstatOrNull(dir);
  return !!st?.isDirectory() && moeRunManifest(dir) !== null;
}

/**
 * Throws UNSAFE_TARGET unless `target` (existing, absolute) may be replaced by `import --force`: a
 * real directory (not a link) with a moe-run manifest, holding nothing but a model's files, that is
 * neither the checkpoint nor holds it, and neither is nor holds the current directory.
 */
export function checkReplaceable(target: string, shown: string, hfDir: string): void {
  const refuse = (why: string) => new MoeRunError("UNSAFE_TARGET", `refusing to replace ${shown}: ${why}`);
  const st = fs.lstatSync(target);
  if (st.isSymbolicLink()) throw refuse("it is a symbolic link; --force replaces only a moe-run model directory itself (pass the directory it points to)");
  if (!st.isDirectory()) throw refuse("it is not a directory, so not a moe-run model directory; --force replaces only those");
  const real = fs.realpathSync(target);
  let source: string | null = null;
  try {
    source = fs.realpathSync(hfDir);
  } catch {
    source = path.resolve(hfDir);
  }
  if (real === source) throw refuse("it is the checkpoint being imported");
  if (isSameOrInside(source, real)) throw refuse(`it holds the checkpoint being imported (${hfDir})`);
  const cwd = fs.realpathSync(process.cwd());
  if (real === cwd) throw refuse("it is the current directory");
  if (isSameOrInside(cwd, real)) throw refuse("it holds the current directory");
  const manifest = moeRunManifest(real);
  if (!manifest) {
    throw refuse(`it is not a moe-run model directory (no moe-run ${MANIFEST_FILE}); --force replaces only those. Import into another directory, or move it away yourself`);
  }
  const allowed = modelEntries(manifest);
  const foreign = fs.readdirSync(real).filter((name) => !allowed.has(name));
  if (foreign.length > 0) {
    const list = foreign.slice(0, 3).join(", ") + (foreign.length > 3 ? `, and ${foreign.length - 3} more` : "");
    throw refuse(`it holds ${list}, which ${foreign.length === 1 ? "is" : "are"} not part of a moe-run model; move ${foreign.length === 1 ? "it" : "them"} away first`);
  }
}

/** Throws MODEL_DIR_EXISTS (without --force) for an existing target, saying whether --force would help. */
export function existsError(target: string, shown: string): MoeRunError {
  if (isMoeRunModelDir(target)) return new MoeRunError("MODEL_DIR_EXISTS", `${shown} already exists; pass --force to replace it`);
  return new MoeRunError(
    "MODEL_DIR_EXISTS",
    `${shown} already exists and is not a moe-run model directory; import into a new directory (--force replaces only a moe-run model)`
  );
}

/**
 * Makes way for a fresh staging folder: a leftover one of an interrupted import (which holds only
 * what an import writes) is removed; anything else of that name is refused, never removed.
 */
export function clearStaging(staging: string, shown: string, log: (line: string) => void): void {
  const st = lstatOrNull(staging);
  if (!st) return;
  const ours = st.isDirectory() && fs.readdirSync(staging).every((name) => IMPORT_ENTRIES.has(name));
  if (!ours) {
    throw new MoeRunError(
      "UNSAFE_TARGET",
      `${staging} exists and is not an interrupted moe-run import (the import writes there first); move it away and import ${shown} again`
    );
  }
  log(`found an interrupted import in ${staging}; removing it and importing again`);
  fs.rmSync(staging, { recursive: true, force: true });
}

/**
 * `<target>.replaced-<pid>` folders left by an importer killed while it swapped a new model in
 * (--force): the old model is put back if the target is missing, else removed. Called with the
 * lock held, so no live importer owns them.
 */
export function recoverReplaced(target: string, log: (line: string) => void): void {
  const dir = path.dirname(target);
  const prefix = path.basename(target) + REPLACED_INFIX;
  for (const name of fs.readdirSync(dir)) {
    if (!name.startsWith(prefix) || !/^\d+$/.test(name.slice(prefix.length))) continue;
    const pid = Number(name.slice(prefix.length));
    if (pid !== process.pid && processAlive(pid)) continue;
    const p = path.join(dir, name);
    const st = lstatOrNull(p);
    if (!st?.isDirectory()) continue;
    const manifest = moeRunManifest(p);
    if (!lstatOrNull(target) && manifest) {
      fs.renameSync(p, target);
      log(`restored ${target} from an interrupted replace (${name})`);
    } else if (manifest || fs.readdirSync(p).every((n) => IMPORT_ENTRIES.has(n) || RUNTIME_ENTRIES.includes(n))) {
      fs.rmSync(p, { recursive: true, force: true });
    }
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

/** Free bytes on the filesystem holding `dir`, or null. */
export function freeBytes(dir: string): number | null {
  try {
    const s = fs.statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}

/**
 * Whether a failed write means the disk is full: ENOSPC / EDQUOT or LMDB's words for it, or
 * (LMDB reports a failed write or commit as EIO) an I/O error with almost no space left where the
 * import was writing. `free` is measured before the partial import is removed.
 */
export function isDiskFull(err: unknown, free: number | null, slack: number): boolean {
  if (err instanceof MoeRunError || !(err instanceof Error)) return false;
  const code = (err as NodeJS.ErrnoException)?.code;
  const message = String((err as Error)?.message ?? err);
  if (code === "ENOSPC" || code === "EDQUOT" || /MDB_MAP_FULL|No space left|quota exceeded/i.test(message)) return true;
  return free !== null && free < Math.max(4 * 1024 * 1024, slack);
}

/**
 * A write failure as one line: permissions, read-only filesystems and other file system errors
 * name what could not be written. Errors that are not from the file system (bugs) pass through.
 */
export function writeError(err: unknown, shown: string): unknown {
  if (err instanceof MoeRunError) return err;
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.code !== "string" || !/^E[A-Z]+$/.test(e.code)) return err;
  const where = e.path ? ` (${e.path})` : "";
  // The folder that refused the new entry (the one a user must fix), not our temporary's name.
  const on = e.path ? ` on ${path.dirname(e.path)}` : "";
  switch (e.code) {
    case "EACCES":
    case "EPERM":
      return new MoeRunError("NOT_WRITABLE", `cannot write ${shown}: permission denied${on}; import into a directory you can write to`, { cause: err });
    case "EROFS":
      return new MoeRunError("NOT_WRITABLE", `cannot write ${shown}: the file system is read-only${on}; import into a writable directory`, { cause: err });
    case "EEXIST": // mkdir -p met a file where a folder of the path should be
    case "ENOTDIR":
      if (e.code === "EEXIST" && e.syscall !== "mkdir") break;
      return new MoeRunError("NOT_WRITABLE", `cannot write ${shown}: a part of the path is not a directory${where}`, { cause: err });
    case "ENOSPC":
    case "EDQUOT":
      return new MoeRunError("DISK_FULL", `no space left on the device to import into ${shown}${where}; free some space or import into another directory`, { cause: err });
  }
  return new MoeRunError("IO_ERROR", `cannot write ${shown}: ${e.code}${where}: ${e.message.split("\n")[0]}`, { cause: err });
}

export function diskFullError(shown: string, needBytes: number, cause: unknown): MoeRunError {
  return new MoeRunError(
    "DISK_FULL",
    `no space left on the device while importing into ${shown}; the partial import was removed. ` +
      `Free about ${formatBytes(needBytes)} there or import into another directory.`,
    { cause }
  );
}
