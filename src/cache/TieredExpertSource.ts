/**
 * The expert cache manager the runtime uses: a device tier (compute-ready records in memory; GPU
 * memory once a device provider is used) managed by ExpertCache under a byte budget, over the
 * host tier (the store's pages in RAM, HostTier) and the disk. Counts hits, misses, bytes moved
 * and time stalled per layer.
 */
import { expertRecordBytes, type ExpertStore } from "../store/ExpertStore.js";
import { ExpertCache } from "./ExpertCache.js";
import { HostTier, type HostTierStats } from "./HostTier.js";
import { parsePolicyName, type PolicyName } from "./policies/index.js";
import type { CacheStats, ExpertId, ReplacementPolicy } from "./types.js";

export interface TieredExpertSourceOptions {
  /** The user's device-tier budget in bytes (Infinity = unlimited). */
  deviceBudgetBytes: number;
  /** Of that budget, bytes the expert kernel's working memory takes; the cache gets the rest. */
  workingBytes: number;
  /** Host-tier (page cache) budget in bytes (Infinity = not managed). */
  hostBytes: number;
  policy: PolicyName | ReplacementPolicy;
  pinned?: ExpertId[];
  numLayers: number;
  log?: (line: string) => void;
}

export interface ExpertCacheReport {
  cache: {
    hits: number;
    misses: number;
    hitRate: number;
    budgetBytes: number;
    residentBytesMax: number;
    policy: string;
  };
  tiers: {
    device: { budgetBytes: number; workingBytes: number; cacheBytes: number; residentBytes: number; residentBytesMax: number; bytesIn: number; evictions: number; bypasses: number };
    host: HostTierStats;
  };
  /** Seconds spent waiting for experts to be read from the store. */
  stallSeconds: number;
  layers: { layer: number; hits: number; misses: number; hitRate: number; evictions: number; bytesIn: number; stallSeconds: number }[];
}

export class TieredExpertSource {
  readonly cache: ExpertCache<Uint8Array>;
  readonly host: HostTier;
  private readonly stall: number[];

  constructor(
    private readonly store: ExpertStore,
    private readonly options: TieredExpertSourceOptions
  ) {
    this.cache = new ExpertCache<Uint8Array>({
      // ExpertCache wants a finite capacity: "unlimited" is more than any store can hold.
      capacityBytes: Number.isFinite(options.deviceBudgetBytes) ? options.deviceBudgetBytes - options.workingBytes : Number.MAX_SAFE_INTEGER,
      policy: typeof options.policy === "string" ? parsePolicyName(options.policy) : options.policy,
      policyOptions: { numLayers: options.numLayers },
      pinned: options.pinned,
    });
    this.host = new HostTier(store.path, options.hostBytes, options.log);
    this.stall = new Array<number>(options.numLayers).fill(0);
  }

  /** The record of (layer, expert), protected from eviction until release(). */
  acquire(layer: number, expert: number): Uint8Array {
    const id = { layer, expert };
    let record = this.cache.lookup(id);
    if (!record) {
      const t0 = performance.now();
      this.host.beforeRead(expertRecordBytes(this.store.layout));
      record = this.store.getRecord(layer, expert);
      this.cache.insert(id, record, record.byteLength);
      this.stall[layer] = this.stall[layer]! + (performance.now() - t0) / 1000;
    }
    if (this.cache.has(id)) this.cache.protect([id]);
    return record;
  }

  release(layer: number, expert: number): void {
    const id = { layer, expert };
    if (this.cache.isProtected(id)) this.cache.unprotect([id]);
  }

  /** Tells score-based policies the router's probabilities over all experts for one token. */
  observeRouting(layer: number, probs: Float32Array): void {
    this.cache.observeRouting(layer, probs);
  }

  report(): ExpertCacheReport {
    const s: CacheStats = this.cache.stats();
    return {
      cache: {
        hits: s.hits,
        misses: s.misses,
        hitRate: s.hitRate,
        budgetBytes: this.options.deviceBudgetBytes,
        residentBytesMax: s.residentBytesMax,
        policy: this.cache.policy.name,
      },
      tiers: {
        device: {
          budgetBytes: this.options.deviceBudgetBytes,
          workingBytes: this.options.workingBytes,
          cacheBytes: s.capacityBytes,
          residentBytes: s.residentBytes,
          residentBytesMax: s.residentBytesMax,
          bytesIn: s.bytesIn,
          evictions: s.evictions,
          bypasses: s.bypasses,
        },
        host: this.host.stats(),
      },
      stallSeconds: this.stall.reduce((a, b) => a + b, 0),
      layers: (s.layers ?? []).map((l, i) => ({ ...l, layer: i, stallSeconds: this.stall[i] ?? 0 })),
    };
  }
}
