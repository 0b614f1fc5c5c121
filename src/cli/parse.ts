/** Option parsers for the CLI that turn bad values into actionable errors. */
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { InvalidOptionError } from "../errors.js";

export function parseIntOption(name: string, min = 0): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new InvalidOptionError(`--${name} must be a whole number >= ${min}, got "${value}"`);
    return n;
  };
}

export function parseFloatOption(name: string, min = -Infinity, max = Infinity): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidOptionError(`--${name} must be a number in [${min}, ${max}], got "${value}"`);
    return n;
  };
}

/**
 * Thread counts: whole numbers >= 1; more than this machine's cores do not help (they share
 * the cores and slow each other down), so they are capped there, with a note.
 */
export function parseThreadsOption(name: string, cores = os.availableParallelism()): (value: string) => number {
  const parse = parseIntOption(name, 1);
  return (value) => {
    const n = parse(value);
    if (n <= cores) return n;
    process.stderr.write(`moe-run: --${name} ${n} is more than this machine's ${cores} cores, which is all that helps; using ${cores}\n`);
    return cores;
  };
}

/**
 * A file the command will write: refused up front (before a model is loaded) when its folder does
 * not exist or is not a folder, or when the path is a folder.
 */
export function parseOutputFile(name: string): (value: string) => string {
  return (value) => {
    if (value.trim() === "") throw new InvalidOptionError(`--${name} needs a file name`);
    const dir = path.dirname(path.resolve(value));
    let st: fs.Stats | undefined;
    try {
      st = fs.statSync(dir);
    } catch {
      st = undefined;
    }
    if (!st) throw new InvalidOptionError(`--${name} ${value}: the folder ${dir} does not exist; create it first`);
    if (!st.isDirectory()) throw new InvalidOptionError(`--${name} ${value}: ${dir} is not a folder`);
    try {
      if (fs.statSync(value).isDirectory()) throw new InvalidOptionError(`--${name} ${value} is a folder; give a file name`);
    } catch (err) {
      if (err instanceof InvalidOptionError) throw err;
    }
    try {
      fs.accessSync(dir, fs.constants.W_OK);
    } catch {
      throw new InvalidOptionError(`--${name} ${value}: the folder ${dir} is not writable`);
    }
    return value;
  };
}
