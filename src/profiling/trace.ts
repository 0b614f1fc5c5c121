/**
 * Routing traces: which experts each token chose at each layer. One record per (prompt, token,
 * layer); the cache is accessed in the order (seq, token, layer), each record's experts in the
 * order listed (highest weight first). File formats: jsonlTrace.ts (ours, readable),
 * compactTrace.ts (ours, binary, for long traces), mixtralTrace.ts (the shared Mixtral trace).
 */
import { MoeRunError } from "../errors.js";
import { expertKey } from "../cache/types.js";

export interface RoutingRecord {
  /** Prompt (sequence) index. */
  seq: number;
  /** Token position within the prompt. */
  token: number;
  layer: number;
  /** Chosen experts, highest weight first. */
  experts: number[];
  /** Router (combine) weights of `experts`, same order. */
  weights: number[];
  /** Optional: router probabilities of all experts of the layer (length numExperts). */
  probs?: number[];
  /** Optional: the gate (router) input, for training/evaluating predictors. */
  gate?: number[];
}

export interface TraceMeta {
  model?: string;
  numLayers: number;
  numExperts: number;
  /** Most experts in any record. */
  topK: number;
  /** Bytes of one expert's weights in the store, when known (for stall estimates). */
  expertBytes?: number;
}

export interface RoutingTrace {
  meta: TraceMeta;
  /** In access order: sorted by (seq, token, layer). */
  records: RoutingRecord[];
}

export class TraceInvalidError extends MoeRunError {
  constructor(message: string) {
    super("TRACE_INVALID", message);
    this.name = "TraceInvalidError";
  }
}

export function compareRecords(a: RoutingRecord, b: RoutingRecord): number {
  return a.seq - b.seq || a.token - b.token || a.layer - b.layer;
}

/**
 * Checks every record against the meta (ids in range, weights matching experts, no duplicate
 * (seq, token, layer)) and sorts records into access order. `where` names the source in errors.
 */
export function finishTrace(records: RoutingRecord[], meta: Partial<TraceMeta>, where: string): RoutingTrace {
  if (records.length === 0) throw new TraceInvalidError(`${where}: the trace has no routing records`);
  let maxLayer = 0;
  let maxExpert = 0;
  let topK = 0;
  for (const r of records) {
    maxLayer = Math.max(maxLayer, r.layer);
    for (const e of r.experts) maxExpert = Math.max(maxExpert, e);
    topK = Math.max(topK, r.experts.length);
  }
  const full: TraceMeta = {
    ...meta,
    numLayers: meta.numLayers ?? maxLayer + 1,
    numExperts: meta.numExperts ?? maxExpert + 1,
    topK: meta.topK ?? topK,
  };
  if (maxLayer >= full.numLayers) throw new TraceInvalidError(`${where}: a record has layer ${maxLayer} but the header says ${full.numLayers} layers`);
  if (maxExpert >= full.numExperts) throw new TraceInvalidError(`${where}: a record has expert ${maxExpert} but the header says ${full.numExperts} experts per layer`);
  if (full.numExperts > 65536 || full.numLayers > 65536) throw new TraceInvalidError(`${where}: at most 65536 layers and 65536 experts per layer are supported`);
  const sorted = records.slice().sort(compareRecords);
  for (let i = 0; i < sorted.length; i++) {
    const r = sorted[i]!;
    const at = `${where}: record (seq ${r.seq}, token ${r.token}, layer ${r.layer})`;
    if (i > 0 && compareRecords(sorted[i - 1]!, r) === 0) throw new TraceInvalidError(`${at} appears twice`);
    if (r.experts.length > full.topK) throw new TraceInvalidError(`${at} has ${r.experts.length} experts but the header says top-${full.topK}`);
    if (new Set(r.experts).size !== r.experts.length) throw new TraceInvalidError(`${at} lists an expert twice: [${r.experts.join(", ")}]`);
    if (r.weights.length !== r.experts.length) throw new TraceInvalidError(`${at} has ${r.experts.length} experts but ${r.weights.length} weights`);
    if (r.probs && r.probs.length !== full.numExperts) throw new TraceInvalidError(`${at} has ${r.probs.length} probs, expected one per expert (${full.numExperts})`);
  }
  return { meta: full, records: sorted };
}

/** Checks that `v` is a non-negative integer; used by the readers. */
export function wholeNumber(v: unknown, what: string, where: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0) throw new TraceInvalidError(`${where}: ${what} must be a whole number >= 0, got ${JSON.stringify(v)}`);
  return v;
}

export function numberArray(v: unknown, what: string, where: string, integers: boolean): number[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === "number" && Number.isFinite(x) && (!integers || (Number.isInteger(x) && x >= 0)))) {
    throw new TraceInvalidError(`${where}: ${what} must be an array of ${integers ? "whole numbers >= 0" : "finite numbers"}`);
  }
  return v as number[];
}

/** One cache key per expert access, in access order: the sequence a replay looks up. */
export function accessSequence(trace: RoutingTrace): Int32Array {
  let n = 0;
  for (const r of trace.records) n += r.experts.length;
  const keys = new Int32Array(n);
  let i = 0;
  for (const r of trace.records) for (const e of r.experts) keys[i++] = expertKey(r.layer, e);
  return keys;
}

export function countAccesses(trace: RoutingTrace): number {
  let n = 0;
  for (const r of trace.records) n += r.experts.length;
  return n;
}

/**
 * The router probabilities of all experts for a record: `probs` when recorded, else the top-k
 * weights with every other expert at 0 (all a score policy can know from a top-k trace).
 */
export function recordProbs(r: RoutingRecord, numExperts: number, out = new Float32Array(numExperts)): Float32Array {
  if (r.probs) {
    out.set(r.probs);
    return out;
  }
  out.fill(0);
  for (let k = 0; k < r.experts.length; k++) out[r.experts[k]!] = r.weights[k]!;
  return out;
}

/** Records per (seq, layer), tokens in order: the per-layer sequences the consistency metrics use. */
export function layerSequences(trace: RoutingTrace): number[][][] {
  const bySeqLayer = new Map<string, number[][]>();
  for (const r of trace.records) {
    const k = `${r.seq}:${r.layer}`;
    let list = bySeqLayer.get(k);
    if (!list) bySeqLayer.set(k, (list = []));
    list.push(r.experts);
  }
  return [...bySeqLayer.values()];
}

/**
 * Builds a trace from the runtime's routing decisions (the evaluator's Routing: `tokens` rows of
 * `topK` experts and weights) for writing with writeJsonlTrace / writeCompactTrace.
 */
export class TraceRecorder {
  private readonly records: RoutingRecord[] = [];
  constructor(private readonly meta: Partial<TraceMeta> = {}) {}

  observe(seq: number, firstToken: number, layer: number, routing: { tokens: number; topK: number; experts: ArrayLike<number>; weights: ArrayLike<number> }): void {
    for (let t = 0; t < routing.tokens; t++) {
      const experts: number[] = [];
      const weights: number[] = [];
      for (let k = 0; k < routing.topK; k++) {
        experts.push(routing.experts[t * routing.topK + k]!);
        weights.push(routing.weights[t * routing.topK + k]!);
      }
      this.records.push({ seq, token: firstToken + t, layer, experts, weights });
    }
  }

  trace(): RoutingTrace {
    return finishTrace(this.records, this.meta, "recorded trace");
  }
}
