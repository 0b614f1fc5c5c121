/**
 * Reader for the Mixtral routing trace format of ../shared/traces (from Mario928/speculative-moe):
 * one JSON object per line, {"problem_id", "token_idx", "layer", "experts", "gating_probs"},
 * stored layer by layer; we map problem -> seq, token_idx -> token, gating_probs -> weights and
 * sort into access order (problem, token, layer).
 */
import * as fs from "node:fs";
import { finishTrace, numberArray, TraceInvalidError, wholeNumber, type RoutingRecord, type RoutingTrace } from "./trace.js";

/** One Mixtral-8x7B expert (w1, w3: 14336x4096, w2: 4096x14336) at one byte per weight (FP8, as served for the trace). */
export const MIXTRAL_8X7B_EXPERT_BYTES_FP8 = 3 * 4096 * 14336;

export function parseMixtralTrace(text: string, source = "trace"): RoutingTrace {
  const records: RoutingRecord[] = [];
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
    records.push({
      seq: wholeNumber(o.problem_id, '"problem_id"', where),
      token: wholeNumber(o.token_idx, '"token_idx"', where),
      layer: wholeNumber(o.layer, '"layer"', where),
      experts: numberArray(o.experts, '"experts"', where, true),
      weights: numberArray(o.gating_probs, '"gating_probs"', where, false),
    });
  }
  const trace = finishTrace(records, {}, source);
  if (trace.meta.numLayers === 32 && trace.meta.numExperts === 8) {
    trace.meta.model = "Mixtral-8x7B";
    trace.meta.expertBytes = MIXTRAL_8X7B_EXPERT_BYTES_FP8;
  }
  return trace;
}

export function readMixtralTrace(file: string): RoutingTrace {
  return parseMixtralTrace(fs.readFileSync(file, "utf8"), file);
}
