/**
 * Keeps large command lines out of the process that loads onnxruntime.
 *
 * onnxruntime-node's InferenceSession.create crashes the process (SIGSEGV) when the process's
 * argv is large (a prompt of ~30 KB given with `-p`; an upstream bug, reproduced with a bare
 * InferenceSession.create). So when the arguments are large, the command line is not run here:
 * this process starts the CLI again with a short argv and hands it the real arguments through a
 * pipe on file descriptor 3 (not argv, not the environment), then waits for it, forwards signals
 * and exits with its status.
 *
 * This module must only import Node's own modules: it runs before anything loads onnxruntime.
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import type { Writable } from "node:stream";

/** Arguments larger than this (bytes, all of them together) are passed through the pipe. */
export const ARGV_LIMIT_BYTES = 8 * 1024;
/** The only argument of a relaunched CLI: read the real arguments from fd 3 (a JSON array). */
export const ARGS_FROM_FD = "--moe-run-args-from-fd=3";
const FD = 3;
/** The arguments are a command line, not a file: more than this is refused. */
const MAX_ARGS_BYTES = 256 * 1024 * 1024;

function argvBytes(args: readonly string[]): number {
  let n = 0;
  for (const a of args) n += Buffer.byteLength(a) + 1;
  return n;
}

function fail(message: string): number {
  process.stderr.write(`moe-run: error: ${message}\n`);
  return 1;
}

/**
 * In a relaunched CLI, replaces process.argv with the arguments read from fd 3 and returns
 * undefined (go on). In a CLI whose arguments are large, runs the CLI again as a child process
 * with the arguments on a pipe and resolves to the exit status to end with. Otherwise undefined.
 */
export async function relaunchIfArgvLarge(): Promise<number | undefined> {
  const args = process.argv.slice(2);
  if (args.length === 1 && args[0] === ARGS_FROM_FD) {
    let text: string;
    try {
      text = fs.readFileSync(FD, "utf8");
      fs.closeSync(FD);
    } catch (err) {
      return fail(`${ARGS_FROM_FD} is internal to moe-run (cannot read the arguments from fd ${FD}: ${(err as Error).message})`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === "string")) return fail(`${ARGS_FROM_FD} is internal to moe-run (fd ${FD} did not hold the arguments)`);
    process.argv = [process.argv[0]!, process.argv[1]!, ...(parsed as string[])];
    return undefined;
  }
  const size = argvBytes(args);
  if (size <= ARGV_LIMIT_BYTES) return undefined;
  if (size > MAX_ARGS_BYTES) return fail(`the command line is ${size} bytes; pass a long prompt with --prompt-file <file> (or --prompt-file - for stdin)`);
  return relaunch(args);
}

const FORWARDED: NodeJS.Signals[] = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"];

function relaunch(args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [...process.execArgv, process.argv[1]!, ARGS_FROM_FD], {
      stdio: ["inherit", "inherit", "inherit", "pipe"],
    });
    // A terminal's Ctrl-C reaches both processes (one process group); a signal sent to this
    // process alone is passed on. The child treats a repeated SIGINT as one.
    const forward = (signal: NodeJS.Signals) => {
      try {
        child.kill(signal);
      } catch {
        // already gone
      }
    };
    for (const s of FORWARDED) process.on(s, forward);
    const pipe = child.stdio[FD] as Writable | null | undefined;
    pipe?.on("error", () => {}); // the child ended before reading: its exit says why
    pipe?.end(JSON.stringify(args));
    child.on("error", (err) => {
      for (const s of FORWARDED) process.off(s, forward);
      resolve(fail(`cannot start moe-run again to keep the large command line out of onnxruntime: ${err.message}`));
    });
    child.on("exit", (code, signal) => {
      for (const s of FORWARDED) process.off(s, forward);
      if (code !== null) return resolve(code);
      const n = (signal && os.constants.signals[signal]) || 0;
      if (signal === "SIGINT") {
        process.stderr.write("moe-run: interrupted\n");
        return resolve(130);
      }
      if (signal === "SIGTERM" || signal === "SIGHUP") {
        process.stderr.write(`moe-run: stopped by ${signal}\n`);
        return resolve(128 + n);
      }
      fail(`moe-run ended by signal ${signal}${signal === "SIGKILL" ? " (out of memory, or killed)" : ""}`);
      resolve(128 + n);
    });
  });
}
