/**
 * Local routing consistency metrics of Liang et al. 2025, "Not All Models Suit Expert Offloading:
 * On Local Routing Consistency of Mixture-of-Expert Models" (arXiv 2505.16056), as computed by the
 * authors' code (github.com/ljcleo/moe-lrc, src/30_srp_calc.py, 31_srp_refine.py, 41_sch_calc.py).
 * Both look at each layer's token sequence of one prompt separately, over segments of m tokens.
 *
 * SRP (Segment Routing best Performance): for every window of m consecutive tokens (all start
 * positions, full windows only) and every expert e, let c_e be the number of tokens in the window
 * routed to e. A fixed group of experts serves the whole segment: those with c_e >= t. Summed over
 * windows, experts, layers and prompts, matches(t) = sum c_e [c_e >= t], predicted(t) =
 * m * #[c_e >= t], activated = sum c_e (= k m per window); F1(t) = 2 matches / (predicted +
 * activated), and SRP(m) = max over thresholds t in 0..m of F1(t). Null when no prompt has m tokens.
 *
 * SCH (Segment Cache best Hit rate) at a cache of C experts per layer: a demand cache whose
 * victim is the resident expert with the fewest activations among the next m tokens (counting the
 * current one, less activations already served), ties by least recent use; an activation is a hit
 * if its expert was resident when the token began, and a first activation is a hit while the cache
 * still has room (the best warm start). SCH(m) = hits / activations over all layers and prompts.
 * The reference averages prompts of equal length (512 tokens); we weight by activations. The
 * reference computes every C at once with a stack algorithm; we run the same policy through
 * ExpertCache and match it exactly (checked on the Mixtral trace for C = 1..8).
 */
import { ExpertCache } from "../cache/ExpertCache.js";
import { expertKey, type ExpertKey, type ReplacementPolicy } from "../cache/types.js";
import { layerSequences, type RoutingTrace } from "./trace.js";

export const SEGMENT_LENGTHS = [4, 16, 64, 256] as const;

/** SRP(m) over per-(prompt, layer) token sequences of expert lists. */
export function segmentRoutingBestPerformance(sequences: readonly number[][][], numExperts: number, m: number): number | null {
  const hist = new Float64Array(m + 1); // hist[c]: (window, expert) pairs with c activations
  const cnt = new Int32Array(numExperts);
  let windows = 0;
  for (const s of sequences) {
    if (s.length < m) continue;
    cnt.fill(0);
    for (let t = 0; t < m; t++) for (const e of s[t]!) cnt[e]!++;
    for (let i = 0; ; i++) {
      for (let e = 0; e < numExperts; e++) hist[cnt[e]!]!++;
      windows++;
      if (i + m >= s.length) break;
      for (const e of s[i]!) cnt[e]!--;
      for (const e of s[i + m]!) cnt[e]!++;
    }
  }
  if (windows === 0) return null;
  let activated = 0;
  for (let c = 0; c <= m; c++) activated += c * hist[c]!;
  let best = 0;
  let matches = 0;
  let groups = 0;
  for (let t = m; t >= 0; t--) {
    matches += t * hist[t]!;
    groups += hist[t]!;
    const predicted = m * groups;
    if (predicted + activated > 0) best = Math.max(best, (2 * matches) / (predicted + activated));
  }
  return best;
}

/** Evicts the resident with the fewest activations in the look-ahead window, then the least recent. */
class WindowFrequencyPolicy implements ReplacementPolicy {
  readonly name = "window-frequency";
  readonly offline = true;
  readonly upcoming = new Map<ExpertKey, number>();
  private readonly last = new Map<ExpertKey, number>(); // residents: last use, in event order
  private tick = 0;

  enter(key: ExpertKey): void {
    this.upcoming.set(key, (this.upcoming.get(key) ?? 0) + 1);
  }
  onAccess(key: ExpertKey): void {
    this.upcoming.set(key, (this.upcoming.get(key) ?? 0) - 1);
    if (this.last.has(key)) this.last.set(key, ++this.tick);
  }
  onInsert(key: ExpertKey): void {
    this.last.set(key, ++this.tick);
  }
  onRemove(key: ExpertKey): void {
    this.last.delete(key);
  }
  chooseVictim(_incoming: ExpertKey, evictable: (key: ExpertKey) => boolean): ExpertKey | undefined {
    let best: ExpertKey | undefined;
    let bestCount = Infinity;
    let bestLast = Infinity;
    for (const [key, last] of this.last) {
      if (!evictable(key)) continue;
      const c = this.upcoming.get(key) ?? 0;
      if (c < bestCount || (c === bestCount && last < bestLast)) [best, bestCount, bestLast] = [key, c, last];
    }
    return best;
  }
  reset(): void {
    this.upcoming.clear();
    this.last.clear();
  }
}

/** Hits and activations of one (prompt, layer) sequence under SCH's cache of `capacity` experts. */
function segmentCacheHits(s: readonly number[][], m: number, capacity: number): { hits: number; accesses: number } {
  const policy = new WindowFrequencyPolicy();
  const cache = new ExpertCache<true>({ capacityBytes: capacity, policy, replay: true, layerStats: false });
  const key = (e: number) => expertKey(0, e);
  for (let t = 0; t < Math.min(m, s.length); t++) for (const e of s[t]!) policy.enter(key(e));
  const seen = new Set<number>();
  let hits = 0;
  let accesses = 0;
  for (let i = 0; i < s.length; i++) {
    const experts = s[i]!;
    for (const e of experts) {
      accesses++;
      if (cache.has({ layer: 0, expert: e })) hits++;
      else if (!seen.has(e)) {
        if (seen.size < capacity) hits++;
        seen.add(e);
      }
    }
    for (const e of experts) {
      const id = { layer: 0, expert: e };
      if (cache.lookup(id) === undefined) cache.insert(id, true, 1);
    }
    if (i + m < s.length) for (const e of s[i + m]!) policy.enter(key(e));
  }
  return { hits, accesses };
}

/** SCH(m) at `capacity` experts per layer over per-(prompt, layer) sequences. */
export function segmentCacheBestHitRate(sequences: readonly number[][][], m: number, capacity: number): number | null {
  let hits = 0;
  let accesses = 0;
  for (const s of sequences) {
    const r = segmentCacheHits(s, m, capacity);
    hits += r.hits;
    accesses += r.accesses;
  }
  return accesses > 0 ? hits / accesses : null;
}

export interface ConsistencyReport {
  srp: Record<string, number | null>;
  sch: Record<string, number | null>;
  /** Experts per layer in SCH's cache (default 2 x top-k, the paper's suggested operating point). */
  schCapacity: number;
}

export function localRoutingConsistency(trace: RoutingTrace, options: { segmentLengths?: readonly number[]; schCapacity?: number } = {}): ConsistencyReport {
  const lengths = options.segmentLengths ?? SEGMENT_LENGTHS;
  const schCapacity = options.schCapacity ?? 2 * trace.meta.topK;
  const sequences = layerSequences(trace);
  const report: ConsistencyReport = { srp: {}, sch: {}, schCapacity };
  for (const m of lengths) {
    report.srp[m] = segmentRoutingBestPerformance(sequences, trace.meta.numExperts, m);
    report.sch[m] = segmentCacheBestHitRate(sequences, m, schCapacity);
  }
  return report;
}
