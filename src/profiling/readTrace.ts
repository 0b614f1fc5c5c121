/** Reads a routing trace in any supported format, detecting it from the content when asked. */
import * as fs from "node:fs";
import { InvalidOptionError } from "../errors.js";
import { decodeCompactTrace, isCompactTrace } from "./compactTrace.js";
import { parseJsonlTrace } from "./jsonlTrace.js";
import { parseMixtralTrace } from "./mixtralTrace.js";
import { TraceInvalidError, type RoutingTrace } from "./trace.js";

export const TRACE_FORMATS = ["auto", "moe-run", "mixtral"] as const;
export type TraceFormat = (typeof TRACE_FORMATS)[number];

export function parseTraceFormat(name: string): TraceFormat {
  if (!(TRACE_FORMATS as readonly string[]).includes(name)) throw new InvalidOptionError(`--format must be one of ${TRACE_FORMATS.join(", ")}, got "${name}"`);
  return name as TraceFormat;
}

/** "moe-run" covers both of our formats (JSONL and compact binary, told apart by the magic). */
export function detectTraceFormat(bytes: Uint8Array, source = "trace"): Exclude<TraceFormat, "auto"> {
  if (isCompactTrace(bytes)) return "moe-run";
  const text = Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, 1 << 16)).toString("utf8");
  const first = text.split("\n").find((l) => l.trim() !== "");
  if (first === undefined) throw new TraceInvalidError(`${source}: the trace file is empty`);
  let o: unknown;
  try {
    o = JSON.parse(first);
  } catch {
    throw new TraceInvalidError(`${source}: neither a compact moe-run trace nor JSONL (the first line is not JSON)`);
  }
  if (typeof o === "object" && o !== null) {
    if ("problem_id" in o && "token_idx" in o) return "mixtral";
    if ("format" in o || "seq" in o) return "moe-run";
  }
  throw new TraceInvalidError(`${source}: unknown trace format (expected a moe-run header or record, or Mixtral records with "problem_id" and "token_idx"); pass --format`);
}

export function readTrace(file: string, format: TraceFormat = "auto"): RoutingTrace {
  let bytes: Buffer;
  try {
    bytes = fs.readFileSync(file);
  } catch (err) {
    throw new InvalidOptionError(`cannot read trace ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const f = format === "auto" ? detectTraceFormat(bytes, file) : format;
  if (f === "mixtral") return parseMixtralTrace(bytes.toString("utf8"), file);
  return isCompactTrace(bytes) ? decodeCompactTrace(bytes, file) : parseJsonlTrace(bytes.toString("utf8"), file);
}
