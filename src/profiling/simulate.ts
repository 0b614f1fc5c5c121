/**
 * Trace replay: runs a routing trace through the product's ExpertCache under each policy and
 * capacity, cold start, accessing experts in order (seq, token, layer), and reports hit rates,
 * bytes moved and the stall those bytes would cost at a given bandwidth with no prefetch.
 */
import { InvalidOptionError } from "../errors.js";
import { ExpertCache } from "../cache/ExpertCache.js";
import { createPolicy, type PolicyName, type PolicyOptions } from "../cache/policies/index.js";
import { accessSequence, recordProbs, type RoutingTrace } from "./trace.js";

export interface SimulateOptions {
  /** Cache capacities in experts (every expert is the same size). */
  capacities: readonly number[];
  policies: readonly PolicyName[];
  /** Bytes per expert for bytesMoved/stallSeconds; default the trace's meta.expertBytes. */
  expertBytes?: number;
  /** Bandwidth of the tier misses come from, GB/s (1e9 bytes/s). Default 16. */
  bandwidthGBps?: number;
  /**
   * Protect each record's experts while it is served, as the runtime does for the layer being
   * computed. Off by default: the reference hit rates access a record's experts one by one.
   */
  protectLayer?: boolean;
  /** Options for the named policies (the future for belady is supplied here). */
  policyOptions?: Omit<PolicyOptions, "future">;
}

export interface SimulationResult {
  policy: PolicyName;
  /** In experts. */
  capacity: number;
  hitRate: number;
  hits: number;
  misses: number;
  accesses: number;
  evictions: number;
  /** Misses the policy chose not to keep (Belady, LFU admission). */
  bypasses: number;
  /** misses x expertBytes; null when the expert size is unknown. */
  bytesMoved: number | null;
  /** bytesMoved / bandwidth: load time not hidden by prefetch; null when the size is unknown. */
  stallSeconds: number | null;
}

export const DEFAULT_BANDWIDTH_GBPS = 16;

export function simulate(trace: RoutingTrace, options: SimulateOptions): SimulationResult[] {
  const expertBytes = options.expertBytes ?? trace.meta.expertBytes;
  const bandwidth = (options.bandwidthGBps ?? DEFAULT_BANDWIDTH_GBPS) * 1e9;
  if (!(bandwidth > 0)) throw new InvalidOptionError(`bandwidth must be > 0 GB/s, got ${options.bandwidthGBps}`);
  for (const c of options.capacities) {
    if (!Number.isInteger(c) || c < 1) throw new InvalidOptionError(`cache capacities are whole numbers of experts >= 1, got ${c}`);
  }
  const future = options.policies.includes("belady") ? accessSequence(trace) : undefined;
  const results: SimulationResult[] = [];
  for (const policy of options.policies) {
    for (const capacity of options.capacities) {
      const s = replay(trace, policy, capacity, { ...options.policyOptions, future, numLayers: options.policyOptions?.numLayers ?? trace.meta.numLayers }, options.protectLayer ?? false);
      const bytesMoved = expertBytes !== undefined ? s.misses * expertBytes : null;
      results.push({
        policy,
        capacity,
        hitRate: s.hitRate,
        hits: s.hits,
        misses: s.misses,
        accesses: s.accesses,
        evictions: s.evictions,
        bypasses: s.bypasses,
        bytesMoved,
        stallSeconds: bytesMoved !== null ? bytesMoved / bandwidth : null,
      });
    }
  }
  return results;
}

/** One replay; experts are one unit each, so capacityBytes = capacity. Returns the cache's stats. */
export function replay(trace: RoutingTrace, policy: PolicyName, capacity: number, policyOptions: PolicyOptions, protectLayer = false) {
  const cache = new ExpertCache<true>({ capacityBytes: capacity, policy: createPolicy(policy, policyOptions), replay: true, layerStats: false });
  const probs = new Float32Array(trace.meta.numExperts);
  const wantsRouting = cache.policy.observeRouting !== undefined;
  for (const r of trace.records) {
    if (wantsRouting) cache.observeRouting(r.layer, recordProbs(r, trace.meta.numExperts, probs));
    const ids = r.experts.map((expert) => ({ layer: r.layer, expert }));
    if (protectLayer) cache.protect(ids);
    for (const id of ids) if (cache.lookup(id) === undefined) cache.insert(id, true, 1);
    if (protectLayer) cache.unprotect(ids);
  }
  cache.checkInvariants();
  return cache.stats();
}
