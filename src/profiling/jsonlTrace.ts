/**
 * moe-run's JSONL routing trace. Optional first line, a header:
 *
 *   {"format":"moe-run-trace","version":1,"numLayers":32,"numExperts":8,"topK":2,
 *    "model":"Mixtral-8x7B","expertBytes":176160768}
 *
 * then one record per (prompt, token, layer), in any order (readers sort into access order):
 *
 *   {"seq":0,"token":5,"layer":3,"experts":[7,0],"weights":[0.8,0.2]}
 *
 * with optional "probs" (router probabilities of all experts of the layer) and "gate" (the router
 * input). Without a header, numLayers/numExperts/topK are the largest values seen (+1).
 */
import * as fs from "node:fs";
import { finishTrace, numberArray, TraceInvalidError, wholeNumber, type RoutingRecord, type RoutingTrace, type TraceMeta } from "./trace.js";

export const JSONL_FORMAT = "moe-run-trace";

export function parseJsonlTrace(text: string, source = "trace"): RoutingTrace {
  const records: RoutingRecord[] = [];
  let meta: Partial<TraceMeta> = {};
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === "") continue;
    const where = `${source}:${i + 1}`;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch (err) {
      throw new TraceInvalidError(`${where}: not JSON (${(err as Error).message})`);
    }
    if (typeof o !== "object" || o === null || Array.isArray(o)) throw new TraceInvalidError(`${where}: expected a JSON object per line`);
    if ("format" in o) {
      if (records.length > 0) throw new TraceInvalidError(`${where}: the header must be the first line`);
      meta = parseHeader(o, where);
      continue;
    }
    const r: RoutingRecord = {
      seq: wholeNumber(o.seq, '"seq"', where),
      token: wholeNumber(o.token, '"token"', where),
      layer: wholeNumber(o.layer, '"layer"', where),
      experts: numberArray(o.experts, '"experts"', where, true),
      weights: numberArray(o.weights, '"weights"', where, false),
    };
    if (o.probs !== undefined) r.probs = numberArray(o.probs, '"probs"', where, false);
    if (o.gate !== undefined) r.gate = numberArray(o.gate, '"gate"', where, false);
    records.push(r);
  }
  return finishTrace(records, meta, source);
}

function parseHeader(o: Record<string, unknown>, where: string): Partial<TraceMeta> {
  if (o.format !== JSONL_FORMAT) throw new TraceInvalidError(`${where}: header format is ${JSON.stringify(o.format)}, expected "${JSONL_FORMAT}"`);
  if (o.version !== 1) throw new TraceInvalidError(`${where}: trace version ${JSON.stringify(o.version)} is not supported (this moe-run reads version 1)`);
  const meta: Partial<TraceMeta> = {};
  if (o.numLayers !== undefined) meta.numLayers = wholeNumber(o.numLayers, '"numLayers"', where);
  if (o.numExperts !== undefined) meta.numExperts = wholeNumber(o.numExperts, '"numExperts"', where);
  if (o.topK !== undefined) meta.topK = wholeNumber(o.topK, '"topK"', where);
  if (o.expertBytes !== undefined) meta.expertBytes = wholeNumber(o.expertBytes, '"expertBytes"', where);
  if (typeof o.model === "string") meta.model = o.model;
  return meta;
}

export function formatJsonlTrace(trace: RoutingTrace): string {
  const { meta } = trace;
  const header: Record<string, unknown> = { format: JSONL_FORMAT, version: 1, numLayers: meta.numLayers, numExperts: meta.numExperts, topK: meta.topK };
  if (meta.model !== undefined) header.model = meta.model;
  if (meta.expertBytes !== undefined) header.expertBytes = meta.expertBytes;
  const out = [JSON.stringify(header)];
  for (const r of trace.records) {
    const o: Record<string, unknown> = { seq: r.seq, token: r.token, layer: r.layer, experts: r.experts, weights: r.weights };
    if (r.probs) o.probs = r.probs;
    if (r.gate) o.gate = r.gate;
    out.push(JSON.stringify(o));
  }
  return out.join("\n") + "\n";
}

export function readJsonlTrace(file: string): RoutingTrace {
  return parseJsonlTrace(fs.readFileSync(file, "utf8"), file);
}

export function writeJsonlTrace(file: string, trace: RoutingTrace): void {
  fs.writeFileSync(file, formatJsonlTrace(trace));
}
