/**
 * Router: softmax over all experts' logits, top-k, optional renormalisation (Mixtral always;
 * Qwen/OLMoE by norm_topk_prob). Computed per token in fp32.
 */
export interface Routing {
  tokens: number; // T
  topK: number; // K
  experts: Int32Array; // [T, K] expert ids, highest weight first
  weights: Float32Array; // [T, K] combine weights
  probs: Float32Array; // [T, E] router softmax over all experts
}

export function routeTokens(logits: Float32Array, tokens: number, numExperts: number, topK: number, normTopkProb: boolean): Routing {
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
    order.sort((a, b) => probs[b]! - probs[a]! || a - b);
    let topSum = 0;
    for (let k = 0; k < topK; k++) topSum += probs[order[k]!]!;
    for (let k = 0; k < topK; k++) {
      experts[t * topK + k] = order[k]!;
      weights[t * topK + k] = normTopkProb ? probs[order[k]!]! / topSum : probs[order[k]!]!;
    }
  }
  return { tokens, topK, experts, weights, probs: allProbs };
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
