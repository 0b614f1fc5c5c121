/**
 * Router: logits -> top-k experts and combine weights, per token in fp32, by the family's rule
 * (ModelFeatures.router):
 *   softmax     : softmax over all experts, top-k, optional renormalisation (Mixtral always;
 *                 Qwen/OLMoE by norm_topk_prob; Granite and gpt-oss take a softmax over the top-k
 *                 logits, which is the same renormalised softmax).
 *   sparsemixer : Phi-MoE at inference. Pick 1 is the argmax; its weight is the softmax over the
 *                 logits s with (max - s) / max(|s|, max) <= 2 * jitterEps. Pick 2 is the argmax
 *                 with pick 1 removed, weighted the same way against the second maximum.
 *   grouped     : DeepSeek / GLM-4.5. s = softmax or sigmoid of the logits; c = s (+ correction
 *                 bias); groups of E/nGroup experts scored by their max (or best-two sum) of c; c
 *                 outside the best topkGroup groups set to 0; the top-k of c are picked, weighted
 *                 by s (renormalised with a 1e-20 guard when normTopkProb) x routedScale.
 * `probs` is always the softmax over all experts: what predictors and profilers observe.
 */
import type { GroupedRouter, RouterKind } from "../architectures/ModelDims.js";

export interface Routing {
  tokens: number; // T
  topK: number; // K
  experts: Int32Array; // [T, K] expert ids, highest weight first
  weights: Float32Array; // [T, K] combine weights
  probs: Float32Array; // [T, E] router softmax over all experts
}

export interface RouterRule {
  kind: RouterKind;
  normTopkProb: boolean;
  jitterEps: number;
  grouped?: GroupedRouter;
  /** grouped: e_score_correction_bias [E] of the layer being routed. */
  correctionBias?: Float32Array;
}

export function routeTokens(logits: Float32Array, tokens: number, numExperts: number, topK: number, rule: RouterRule): Routing {
  const experts = new Int32Array(tokens * topK);
  const weights = new Float32Array(tokens * topK);
  const allProbs = new Float32Array(tokens * numExperts);
  const order = Array.from({ length: numExperts }, (_, i) => i);
  for (let t = 0; t < tokens; t++) {
    const row = logits.subarray(t * numExperts, (t + 1) * numExperts);
    const probs = allProbs.subarray(t * numExperts, (t + 1) * numExperts);
    let max = -Infinity;
    for (let e = 0; e < numExperts; e++) max = Math.max(max, row[e]!);
    let sum = 0;
    for (let e = 0; e < numExperts; e++) sum += probs[e] = Math.exp(row[e]! - max);
    for (let e = 0; e < numExperts; e++) probs[e] = probs[e]! / sum;
    switch (rule.kind) {
      case "softmax": {
        order.sort((a, b) => probs[b]! - probs[a]! || a - b);
        let topSum = 0;
        for (let k = 0; k < topK; k++) topSum += probs[order[k]!]!;
        for (let k = 0; k < topK; k++) {
          experts[t * topK + k] = order[k]!;
          weights[t * topK + k] = rule.normTopkProb ? probs[order[k]!]! / topSum : probs[order[k]!]!;
        }
        break;
      }
      case "sparsemixer":
        sparsemixer(row, topK, rule.jitterEps, experts.subarray(t * topK, (t + 1) * topK), weights.subarray(t * topK, (t + 1) * topK));
        break;
      case "grouped":
        grouped(row, probs, topK, rule, experts.subarray(t * topK, (t + 1) * topK), weights.subarray(t * topK, (t + 1) * topK));
        break;
      default: {
        const never: never = rule.kind;
        throw new Error(`unknown router ${String(never)}`);
      }
    }
  }
  return { tokens, topK, experts, weights, probs: allProbs };
}

/** DeepSeek / GLM-4.5 group-limited top-k over softmax or sigmoid scores, in fp32 like the references. */
function grouped(logits: Float32Array, softmax: Float32Array, topK: number, rule: RouterRule, experts: Int32Array, weights: Float32Array): void {
  const g = rule.grouped!;
  const E = logits.length;
  const scores = new Float32Array(E); // s
  for (let e = 0; e < E; e++) scores[e] = g.score === "softmax" ? softmax[e]! : 1 / (1 + Math.exp(-logits[e]!));
  const choice = new Float32Array(E); // c = s + bias
  for (let e = 0; e < E; e++) choice[e] = rule.correctionBias ? scores[e]! + rule.correctionBias[e]! : scores[e]!;
  if (g.nGroup > 1) {
    const size = E / g.nGroup;
    const groupScores = Array.from({ length: g.nGroup }, (_, k) => {
      const members = Array.from(choice.subarray(k * size, (k + 1) * size)).sort((a, b) => b - a);
      return g.groupScore === "max" ? members[0]! : Math.fround(members[0]! + members[1]!);
    });
    const keep = new Set(topIndices(Float32Array.from(groupScores), g.topkGroup));
    for (let k = 0; k < g.nGroup; k++) if (!keep.has(k)) choice.fill(0, k * size, (k + 1) * size);
  }
  const picks = topIndices(choice, topK);
  let sum = 0;
  for (const e of picks) sum += scores[e]!;
  picks.forEach((e, k) => {
    experts[k] = e;
    const w = rule.normTopkProb && topK > 1 ? Math.fround(scores[e]! / Math.fround(sum + 1e-20)) : scores[e]!;
    weights[k] = Math.fround(w * g.routedScale);
  });
}

/** Indices of the k largest values, largest first (ties: lower index first). */
function topIndices(values: Float32Array, k: number): number[] {
  return Array.from({ length: values.length }, (_, i) => i)
    .sort((a, b) => values[b]! - values[a]! || a - b)
    .slice(0, k);
}

/** Phi-MoE's top-k sparsemixer at inference (k picks, each masked against its own maximum). */
function sparsemixer(scores: Float32Array, topK: number, eps: number, experts: Int32Array, weights: Float32Array): void {
  const E = scores.length;
  const taken = new Uint8Array(E);
  for (let k = 0; k < topK; k++) {
    let best = -1;
    for (let e = 0; e < E; e++) if (!taken[e] && (best < 0 || scores[e]! > scores[best]!)) best = e;
    const m = scores[best]!;
    // Softmax over the logits close to this maximum (relative to max(|s|, m)), picks before excluded.
    let sum = 0;
    for (let e = 0; e < E; e++) {
      if (taken[e]) continue;
      const s = scores[e]!;
      if ((m - s) / Math.max(Math.abs(s), m) > 2 * eps) continue;
      sum += Math.exp(s - m);
    }
    experts[k] = best;
    weights[k] = 1 / sum;
    taken[best] = 1;
  }
}

/** Tokens routed to each expert, for running each expert once per batch: expert -> [(token, weight)]. */
export function groupByExpert(r: Routing): Map<number, { rows: number[]; weights: number[] }> {
  const groups = new Map<number, { rows: number[]; weights: number[] }>();
  for (let t = 0; t < r.tokens; t++) {
    for (let k = 0; k < r.topK; k++) {
      const e = r.experts[t * r.topK + k]!;
      let g = groups.get(e);
      if (!g) groups.set(e, (g = { rows: [], weights: [] }));
      g.rows.push(t);
      g.weights.push(r.weights[t * r.topK + k]!);
    }
  }
  return new Map([...groups.entries()].sort((a, b) => a[0] - b[0]));
}
