/**
 * Checks of loadModel()'s options that need nothing but the options (and, for pins, the model's
 * size): wrong types and out-of-range values are refused with the option's name, before anything
 * is loaded. The CLI's parsers refuse the same values earlier, with the flag's name.
 */
import * as os from "node:os";
import { InvalidOptionError } from "../errors.js";
import { parseByteSizeAs, type ByteSize } from "./bytes.js";

/** The options checked here (a structural subset of LoadModelOptions). */
export interface CheckedLoadOptions {
  threads?: number;
  cpuThreads?: number;
  contextSize?: number;
  deviceMem?: ByteSize;
  hostMem?: ByteSize;
  prefetchDepth?: number;
  prefetchThreshold?: number;
  pin?: readonly { layer: number; expert: number }[];
  kvCache?: string;
  log?: (line: string) => void;
}

function show(v: unknown): string {
  if (typeof v === "string") return JSON.stringify(v);
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * Thread counts: whole numbers >= 1. More than the machine's cores does not help (the threads
 * share the cores), so a larger count is capped there with a note.
 */
export function checkThreads(name: string, value: unknown, log: (line: string) => void, cores = os.availableParallelism()): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) throw new InvalidOptionError(`${name} must be a whole number >= 1, got ${show(value)}`);
  if (value > cores) {
    log(`moe-run: ${name} ${value} is more than this machine's ${cores} cores, which is all that helps; using ${cores}`);
    return cores;
  }
  return value;
}

/** A budget: bytes (a whole number >= 0), { percent } (>= 0), or a string such as "2GiB" or "50%". */
export function checkByteSize(name: string, value: unknown): ByteSize | undefined {
  if (value === undefined) return undefined;
  if (typeof value === "string") return parseByteSizeAs(value, name);
  if (typeof value === "number") {
    if (Number.isSafeInteger(value) && value >= 0) return value;
  } else if (value !== null && typeof value === "object" && Object.keys(value).length === 1 && "percent" in value) {
    const p = (value as { percent: unknown }).percent;
    if (typeof p === "number" && Number.isFinite(p) && p >= 0) return { percent: p };
  }
  throw new InvalidOptionError(`${name} must be a number of bytes, { percent: n }, or a size like "2GiB" or "50%", got ${show(value)}`);
}

/** The options with checked values (threads capped at the cores). Throws InvalidOptionError. */
export function checkLoadOptions<T extends CheckedLoadOptions>(options: T): T {
  if (options === null || typeof options !== "object") throw new InvalidOptionError(`loadModel's options must be an object, got ${show(options)}`);
  const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const checked: CheckedLoadOptions = { ...options };
  if (options.threads !== undefined) checked.threads = checkThreads("threads", options.threads, log);
  if (options.cpuThreads !== undefined) checked.cpuThreads = checkThreads("cpuThreads", options.cpuThreads, log);
  if (options.deviceMem !== undefined) checked.deviceMem = checkByteSize("deviceMem", options.deviceMem);
  if (options.hostMem !== undefined) checked.hostMem = checkByteSize("hostMem", options.hostMem);
  const c = options.contextSize;
  if (c !== undefined && (typeof c !== "number" || !Number.isInteger(c) || c < 2)) throw new InvalidOptionError(`contextSize must be a whole number >= 2, got ${show(c)}`);
  const depth = options.prefetchDepth;
  if (depth !== undefined && (typeof depth !== "number" || !Number.isInteger(depth) || depth < 1)) throw new InvalidOptionError(`prefetchDepth must be a whole number >= 1, got ${show(depth)}`);
  const t = options.prefetchThreshold;
  if (t !== undefined && (typeof t !== "number" || !(t >= 0 && t <= 1))) throw new InvalidOptionError(`prefetchThreshold must be a number in [0, 1], got ${show(t)}`);
  if (options.kvCache !== undefined && options.kvCache !== "f32" && options.kvCache !== "f16") throw new InvalidOptionError(`kvCache must be "f32" or "f16", got ${show(options.kvCache)}`);
  if (options.pin !== undefined && !Array.isArray(options.pin)) throw new InvalidOptionError(`pin must be a list of { layer, expert }, got ${show(options.pin)}`);
  return checked as T;
}

/** Pinned experts must exist in the model. */
export function checkPins(pins: readonly { layer: number; expert: number }[] | undefined, numLayers: number, numExperts: number, denseLayers: readonly number[] = []): void {
  for (const p of pins ?? []) {
    const ok = p !== null && typeof p === "object" && Number.isInteger(p.layer) && Number.isInteger(p.expert) && p.layer >= 0 && p.expert >= 0;
    if (!ok) throw new InvalidOptionError(`pin: each pinned expert is { layer, expert } with whole numbers, got ${show(p)}`);
    if (p.layer >= numLayers || p.expert >= numExperts) {
      throw new InvalidOptionError(
        `pin ${p.layer}:${p.expert} is not an expert of this model: it has layers 0-${numLayers - 1} and experts 0-${numExperts - 1} in each`
      );
    }
    if (denseLayers.includes(p.layer)) throw new InvalidOptionError(`pin ${p.layer}:${p.expert}: layer ${p.layer} has a dense MLP, no experts`);
  }
}
