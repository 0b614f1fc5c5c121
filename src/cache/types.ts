/**
 * Types shared by the expert cache, its replacement policies and the trace simulator. The cache
 * knows nothing about models: an expert is a (layer, expert) pair and a number of bytes.
 */
import { MoeRunError } from "../errors.js";

export interface ExpertId {
  readonly layer: number;
  readonly expert: number;
}

/**
 * An ExpertId packed into one number (layer * 2^16 + expert), so that maps and arrays keyed by it
 * stay cheap on the per-token path. Both parts must be integers in [0, 65535].
 */
export type ExpertKey = number;

const EXPERT_BITS = 0x10000;

export function expertKey(layer: number, expert: number): ExpertKey {
  if (!Number.isInteger(layer) || !Number.isInteger(expert) || layer < 0 || expert < 0 || layer >= EXPERT_BITS || expert >= EXPERT_BITS) {
    throw new RangeError(`expert id (layer ${layer}, expert ${expert}) must be two integers in [0, 65535]`);
  }
  return layer * EXPERT_BITS + expert;
}

export function keyOf(id: ExpertId): ExpertKey {
  return expertKey(id.layer, id.expert);
}

export function layerOfKey(key: ExpertKey): number {
  return Math.floor(key / EXPERT_BITS);
}

export function expertOfKey(key: ExpertKey): number {
  return key % EXPERT_BITS;
}

export function idOfKey(key: ExpertKey): ExpertId {
  return { layer: layerOfKey(key), expert: expertOfKey(key) };
}

export function formatExpert(key: ExpertKey): string {
  return `layer ${layerOfKey(key)} expert ${expertOfKey(key)}`;
}

/**
 * A replacement policy: decides which resident expert leaves when room is needed, and optionally
 * whether an incoming expert is worth keeping at all. The cache tells it every access, insertion
 * and removal, in order; the policy keeps whatever bookkeeping it needs (recency, counts, scores).
 * The cache alone enforces the budget, pins and protection: a policy may only return keys that
 * the cache's `evictable` predicate accepts.
 */
export interface ReplacementPolicy {
  readonly name: string;
  /** True when the policy needs the future access sequence (Belady): replay only, never live. */
  readonly offline: boolean;
  /** Every lookup, hit or miss; `clock` is the 0-based index of this access. */
  onAccess(key: ExpertKey, clock: number, hit: boolean): void;
  /** `key` became resident; `clock` is the number of accesses so far. */
  onInsert(key: ExpertKey, clock: number): void;
  /** `key` stopped being resident (evicted, removed or cleared). */
  onRemove(key: ExpertKey): void;
  /**
   * A resident key to evict to make room for `incoming`, chosen among those `evictable` accepts
   * (the cache excludes pinned, protected and already chosen victims); undefined if none.
   */
  chooseVictim(incoming: ExpertKey, evictable: (key: ExpertKey) => boolean, clock: number): ExpertKey | undefined;
  /**
   * Whether `incoming` should displace `victims` at all. False makes the cache bypass it: the
   * caller uses the value once and the cache keeps nothing (what MIN and frequency-based LFU do
   * with items worth less than what they would displace). Absent means always admit.
   */
  admit?(incoming: ExpertKey, victims: readonly ExpertKey[]): boolean;
  /** Router probabilities of all experts of `layer` for one token, for policies that score by them. */
  observeRouting?(layer: number, probs: Float32Array): void;
  /** Forget all state (the cache was cleared). */
  reset(): void;
}

export interface LayerCacheStats {
  layer: number;
  hits: number;
  misses: number;
  hitRate: number;
  evictions: number;
  /** Bytes of experts of this layer admitted into the cache. */
  bytesIn: number;
}

export interface CacheStats {
  hits: number;
  misses: number;
  accesses: number;
  /** hits / accesses; 0 before the first access. */
  hitRate: number;
  evictions: number;
  /** Inserts the policy declined to keep (used once, not resident). */
  bypasses: number;
  /** Bytes admitted into the cache (moved into this tier and kept). */
  bytesIn: number;
  /** Bytes handed to insert() and bypassed. */
  bytesBypassed: number;
  bytesEvicted: number;
  residentBytes: number;
  /** High-water mark of residentBytes since construction, clear() or resetStats(). */
  residentBytesMax: number;
  residentCount: number;
  capacityBytes: number;
  /** Indexed by layer; present when the cache keeps per-layer accounting. */
  layers?: LayerCacheStats[];
}

export interface InsertResult {
  /** False when the policy bypassed the expert: nothing was evicted and nothing is resident. */
  admitted: boolean;
  evicted: ExpertId[];
}

/**
 * The cache cannot hold an expert within its budget: either the expert alone is larger than the
 * budget, or everything that could make room is pinned or in use.
 */
export class CacheCapacityError extends MoeRunError {
  readonly reason: "too-large" | "no-victim";
  constructor(reason: "too-large" | "no-victim", message: string) {
    super("CACHE_CAPACITY", message);
    this.name = "CacheCapacityError";
    this.reason = reason;
  }
}

/** An explicit eviction of an expert that is pinned or protected (in use). */
export class CacheInUseError extends MoeRunError {
  constructor(message: string) {
    super("CACHE_IN_USE", message);
    this.name = "CacheInUseError";
  }
}
