/**
 * The summary `moe-run profile` prints and writes (--json): tokens profiled, per-layer expert-usage
 * entropy, top-1 change rates, and hit rates of the recorded trace replayed through the cache at
 * 25/50/75% of all experts under lru, lfu, score and belady.
 */
import type { PolicyName } from "../cache/policies/index.js";
import { simulate, type SimulationResult } from "./simulate.js";
import { table } from "./textTable.js";
import { countAccesses, type RoutingTrace } from "./trace.js";
import { countTokens, expertUsage, top1ChangeRates, usageEntropy } from "./traceStats.js";

export const SUMMARY_POLICIES: readonly PolicyName[] = ["lru", "lfu", "score", "belady"];
export const SUMMARY_SHARES = [0.25, 0.5, 0.75] as const;

export interface ProfileSummary {
  model?: string;
  numLayers: number;
  numExperts: number;
  topK: number;
  prompts: number;
  tokens: number;
  records: number;
  accesses: number;
  layers: { layer: number; entropyBits: number; normalizedEntropy: number; top1ChangeToNextLayer: number | null; top1ChangeAdjacentTokens: number | null }[];
  hitRates: Pick<SimulationResult, "policy" | "capacity" | "hitRate" | "hits" | "misses">[];
  capacities: { share: number; capacity: number }[];
}

/** Capacities (in experts) at the given shares of all experts, at least 1 each. */
export function shareCapacities(total: number, shares: readonly number[]): { share: number; capacity: number }[] {
  return shares.map((share) => ({ share, capacity: Math.min(total, Math.max(1, Math.round(share * total))) }));
}

export function summarizeTrace(trace: RoutingTrace): ProfileSummary {
  const { meta } = trace;
  const usage = expertUsage(trace);
  const top1 = top1ChangeRates(trace);
  const capacities = shareCapacities(meta.numLayers * meta.numExperts, SUMMARY_SHARES);
  const sims = simulate(trace, { capacities: [...new Set(capacities.map((c) => c.capacity))], policies: SUMMARY_POLICIES });
  const summary: ProfileSummary = {
    numLayers: meta.numLayers,
    numExperts: meta.numExperts,
    topK: meta.topK,
    prompts: new Set(trace.records.map((r) => r.seq)).size,
    tokens: countTokens(trace),
    records: trace.records.length,
    accesses: countAccesses(trace),
    layers: usage.map((counts, layer) => {
      const h = usageEntropy(counts);
      return { layer, entropyBits: h.bits, normalizedEntropy: h.normalized, top1ChangeToNextLayer: top1.layerPairs[layer] ?? null, top1ChangeAdjacentTokens: top1.adjacentTokens[layer] ?? null };
    }),
    hitRates: sims.map(({ policy, capacity, hitRate, hits, misses }) => ({ policy, capacity, hitRate, hits, misses })),
    capacities,
  };
  if (meta.model !== undefined) summary.model = meta.model;
  return summary;
}

const pct = (v: number | null) => (v === null ? "n/a" : `${(100 * v).toFixed(1)}%`);

export function formatSummary(s: ProfileSummary): string {
  const lines = [
    `profiled ${s.tokens} tokens (${s.prompts} prompt${s.prompts === 1 ? "" : "s"}): ${s.records} records = tokens x ${s.numLayers} layers, ${s.accesses} expert accesses; ${s.numExperts} experts per layer, top-${s.topK}`,
    "",
    "per layer: expert-usage entropy (bits, share of log2 E) and top-1 change rates",
    table(
      ["layer", "entropy", "of max", "top-1 != next layer's", "top-1 != previous token's"],
      s.layers.map((l) => [String(l.layer), l.entropyBits.toFixed(3), pct(l.normalizedEntropy), pct(l.top1ChangeToNextLayer), pct(l.top1ChangeAdjacentTokens)])
    ),
    "",
    `hit rate replaying this trace (one cache over all ${s.numLayers * s.numExperts} experts, cold start)`,
    table(
      ["capacity", ...SUMMARY_POLICIES],
      s.capacities.map((c) => [
        `${c.capacity} (${Math.round(100 * c.share)}%)`,
        ...SUMMARY_POLICIES.map((p) => s.hitRates.find((r) => r.policy === p && r.capacity === c.capacity)?.hitRate.toFixed(3) ?? "n/a"),
      ])
    ),
  ];
  return lines.join("\n");
}
