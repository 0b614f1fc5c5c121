/**
 * Standard output for the CLI: model text and reports. A reader that goes away early
 * (`moe-run run ... | head -c 10`) ends the command quietly (EPIPE is not an error); any other
 * failure to write (`> /dev/full`) is one line on stderr and a non-zero exit.
 */
import { MoeRunError } from "../errors.js";

/** The reason the output signal carries when the reader closed stdout. */
export class StdoutClosed extends Error {
  constructor() {
    super("standard output was closed");
    this.name = "StdoutClosed";
  }
}

const controller = new AbortController();
/** Aborted when stdout can no longer be written; the reason is a StdoutClosed or a MoeRunError. */
export const outputSignal: AbortSignal = controller.signal;

function describe(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  const messages: Record<string, string> = {
    ENOSPC: "no space left on the device",
    EDQUOT: "disk quota exceeded",
    EIO: "input/output error",
    EBADF: "it is not open",
    EROFS: "read-only file system",
    EFBIG: "file too large",
  };
  return (e?.code && messages[e.code]) ?? (e instanceof Error ? e.message : String(err));
}

function isClosed(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === "EPIPE" || code === "ERR_STREAM_DESTROYED" || code === "ECONNRESET";
}

function failed(err: unknown): void {
  if (controller.signal.aborted) return;
  if (isClosed(err)) controller.abort(new StdoutClosed());
  else controller.abort(new MoeRunError("OUTPUT_FAILED", `cannot write to standard output: ${describe(err)}`, { cause: err }));
}

let installed = false;
/** Handles errors of stdout and stderr (call once, first thing). */
export function installOutputGuards(): void {
  if (installed) return;
  installed = true;
  process.stdout.on("error", failed);
  // Diagnostics have nowhere else to go: a closed stderr is ignored.
  process.stderr.on("error", () => {});
}

/** The failure to report when writing stdout failed (not when its reader closed it). */
export function outputFailure(): MoeRunError | undefined {
  const r: unknown = outputSignal.reason;
  return outputSignal.aborted && r instanceof MoeRunError ? r : undefined;
}

/** True once stdout's reader has gone away. */
export function stdoutClosed(): boolean {
  return outputSignal.aborted && outputSignal.reason instanceof StdoutClosed;
}

/**
 * Writes to stdout. After the reader closed it, does nothing; after a write failed, throws that
 * failure (a MoeRunError) so the command stops.
 */
export function out(text: string): void {
  const failure = outputFailure();
  if (failure) throw failure;
  if (outputSignal.aborted) return;
  try {
    process.stdout.write(text);
  } catch (err) {
    failed(err);
    const f = outputFailure();
    if (f) throw f;
  }
}
