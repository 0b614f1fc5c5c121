/** Reading a prompt for the CLI: from a file, or from stdin (`--prompt-file -`), bounded in size. */
import * as fs from "node:fs";
import { InvalidOptionError } from "../errors.js";
import { formatBytes } from "../util/bytes.js";
import { describeSystemError, isSystemError } from "./errorText.js";

/** Longer than any context holds (a million-token context is ~4 MB of text). */
export const MAX_PROMPT_BYTES = 64 * 1024 * 1024;

function tooLarge(what: string): InvalidOptionError {
  return new InvalidOptionError(`${what} is larger than ${formatBytes(MAX_PROMPT_BYTES)}: more than any context holds; give a shorter prompt`);
}

/** The text of `file` ("-" = stdin), at most MAX_PROMPT_BYTES. */
export async function readPromptFile(file: string, option = "--prompt-file"): Promise<string> {
  return file === "-" ? readStdin(option) : readFileBounded(file, option);
}

async function readStdin(option: string): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for await (const chunk of process.stdin as AsyncIterable<Buffer | string>) {
      const b = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      size += b.length;
      if (size > MAX_PROMPT_BYTES) {
        process.stdin.destroy();
        throw tooLarge(`the prompt on stdin (${option} -)`);
      }
      chunks.push(b);
    }
  } catch (err) {
    if (err instanceof InvalidOptionError) throw err;
    throw new InvalidOptionError(`${option} -: cannot read the prompt from stdin: ${isSystemError(err) ? describeSystemError(err) : (err as Error).message}`);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function readFileBounded(file: string, option: string): string {
  let fd: number;
  try {
    const st = fs.statSync(file);
    if (st.isDirectory()) throw new InvalidOptionError(`${option} ${file} is a directory, not a text file`);
    if (st.isFile() && st.size > MAX_PROMPT_BYTES) throw tooLarge(`${option} ${file} (${formatBytes(st.size)})`);
    fd = fs.openSync(file, "r");
  } catch (err) {
    if (err instanceof InvalidOptionError) throw err;
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new InvalidOptionError(`${option} ${file}: no such file`);
    throw new InvalidOptionError(`${option}: ${isSystemError(err) ? describeSystemError(err) : (err as Error).message}`);
  }
  // Read with a bound even for regular files: a device or pipe (/dev/zero) has no size.
  const chunks: Buffer[] = [];
  let size = 0;
  try {
    for (;;) {
      const buf = Buffer.allocUnsafe(1 << 20);
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      size += n;
      if (size > MAX_PROMPT_BYTES) throw tooLarge(`${option} ${file}`);
      chunks.push(buf.subarray(0, n));
    }
  } catch (err) {
    if (err instanceof InvalidOptionError) throw err;
    throw new InvalidOptionError(`${option}: ${isSystemError(err) ? describeSystemError(err) : (err as Error).message}`);
  } finally {
    fs.closeSync(fd);
  }
  return Buffer.concat(chunks).toString("utf8");
}
