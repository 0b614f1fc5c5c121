/**
 * The expert cache: holds resident expert values under a byte budget and asks a replacement
 * policy what to evict. It knows nothing about models (an expert is a (layer, expert) id, a value
 * and a size), so the runtime's ExpertSource and the trace simulator run the very same code.
 *
 * Guarantees (asserted after every change): resident bytes never exceed the budget; pinned
 * experts are never evicted; protected (in-use) experts are never evicted; hits + misses equal
 * lookups. The logical clock counts lookups; policies see it.
 */
import { invariant, InvalidOptionError } from "../errors.js";
import { createPolicy, type PolicyName, type PolicyOptions } from "./policies/index.js";
import {
  CacheCapacityError,
  CacheInUseError,
  formatExpert,
  idOfKey,
  keyOf,
  layerOfKey,
  type CacheStats,
  type ExpertId,
  type ExpertKey,
  type InsertResult,
  type LayerCacheStats,
  type ReplacementPolicy,
} from "./types.js";

export interface ExpertCacheOptions<V> {
  /** The budget: resident bytes never exceed it. */
  capacityBytes: number;
  /** A policy object, or a name resolved with `policyOptions`. */
  policy: ReplacementPolicy | PolicyName;
  policyOptions?: PolicyOptions;
  /** Experts that are never evicted once resident (shared experts, user-listed hot experts). */
  pinned?: Iterable<ExpertId>;
  /** Keep hits/misses/evictions/bytesIn per layer. Default true. */
  layerStats?: boolean;
  /** Let the policy bypass (not keep) an unpinned, unprotected newcomer. Default true. */
  allowBypass?: boolean;
  /** Replaying a recorded trace: offline policies (Belady) are allowed only then. Default false. */
  replay?: boolean;
  /** Called when an expert leaves the cache (evicted, removed, cleared): free its buffers here. */
  onEvict?: (id: ExpertId, value: V, bytes: number) => void;
}

interface Entry<V> {
  value: V;
  bytes: number;
}

interface LayerCounters {
  hits: number;
  misses: number;
  evictions: number;
  bytesIn: number;
}

export class ExpertCache<V extends NonNullable<unknown>> {
  readonly capacityBytes: number;
  readonly policy: ReplacementPolicy;
  private readonly entries = new Map<ExpertKey, Entry<V>>();
  private readonly pinned = new Set<ExpertKey>();
  private readonly inUse = new Map<ExpertKey, number>(); // protection reference counts
  private readonly allowBypass: boolean;
  private readonly onEvict?: (id: ExpertId, value: V, bytes: number) => void;
  private readonly layers?: LayerCounters[];
  private clockValue = 0;
  private changes = 0;
  private resident = 0;
  /** Bytes reserved for loads in flight; counted against the budget. */
  private reservedBytes = 0;
  private residentMax = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;
  private bypasses = 0;
  private bytesIn = 0;
  private bytesBypassed = 0;
  private bytesEvicted = 0;

  constructor(options: ExpertCacheOptions<V>) {
    const { capacityBytes } = options;
    if (!Number.isFinite(capacityBytes) || capacityBytes < 0) throw new InvalidOptionError(`cache capacity must be a finite number of bytes >= 0, got ${capacityBytes}`);
    this.capacityBytes = capacityBytes;
    this.policy = typeof options.policy === "string" ? createPolicy(options.policy, options.policyOptions) : options.policy;
    if (this.policy.offline && !options.replay) {
      throw new InvalidOptionError(`cache policy "${this.policy.name}" needs the future access sequence: it can replay a trace (moe-run simulate) but cannot serve a live run`);
    }
    this.allowBypass = options.allowBypass ?? true;
    this.onEvict = options.onEvict;
    if (options.layerStats ?? true) this.layers = [];
    for (const id of options.pinned ?? []) this.pinned.add(keyOf(id));
  }

  /** Lookups so far: the logical clock policies see. */
  get clock(): number {
    return this.clockValue;
  }

  /** Counts insertions and removals: unchanged = the same experts resident, with the same values. */
  get generation(): number {
    return this.changes;
  }

  get residentBytes(): number {
    return this.resident;
  }

  /** High-water mark of residentBytes. */
  get residentBytesMax(): number {
    return this.residentMax;
  }

  get size(): number {
    return this.entries.size;
  }

  /**
   * The resident value, counting a hit or a miss and telling the policy. `loadedForThis`: the
   * value was loaded on demand for this very access (it was missing when asked for): a miss.
   */
  lookup(id: ExpertId, options: { loadedForThis?: boolean } = {}): V | undefined {
    const key = keyOf(id);
    const entry = this.entries.get(key);
    const hit = entry !== undefined && !options.loadedForThis;
    if (hit) this.hits++;
    else this.misses++;
    const l = this.layer(key);
    if (l) {
      if (hit) l.hits++;
      else l.misses++;
    }
    this.policy.onAccess(key, this.clockValue++, hit);
    return entry?.value;
  }

  /** The resident value without counting an access. */
  peek(id: ExpertId): V | undefined {
    return this.entries.get(keyOf(id))?.value;
  }

  has(id: ExpertId): boolean {
    return this.entries.has(keyOf(id));
  }

  /**
   * Makes `id` resident with `bytes`, evicting policy-chosen victims until it fits. The policy may
   * bypass an unpinned, unprotected newcomer (admitted: false; nothing changes). Throws
   * CacheCapacityError, evicting nothing, when the expert alone exceeds the budget or everything
   * that could make room is pinned or protected.
   */
  insert(id: ExpertId, value: V, bytes: number, options: { reserved?: boolean } = {}): InsertResult {
    const key = keyOf(id);
    invariant(Number.isFinite(bytes) && bytes >= 0, `insert of ${formatExpert(key)}: bytes must be a finite number >= 0, got ${bytes}`);
    invariant(!this.entries.has(key), `insert of ${formatExpert(key)}: it is already resident (look it up first)`);
    if (options.reserved) {
      invariant(this.reservedBytes >= bytes, `insert of ${formatExpert(key)} claims a reservation of ${bytes} bytes but only ${this.reservedBytes} are reserved`);
      this.reservedBytes -= bytes;
    }
    if (bytes > this.capacityBytes) {
      throw new CacheCapacityError("too-large", `${formatExpert(key)} needs ${bytes} bytes but the cache budget is ${this.capacityBytes} bytes; raise the budget`);
    }
    const victims = this.chooseVictims(key, bytes);
    if (!victims) {
      if (options.reserved) this.reservedBytes += bytes;
      const held = this.heldBytes();
      throw new CacheCapacityError(
        "no-victim",
        `cannot make room for ${formatExpert(key)} (${bytes} bytes): the ${this.capacityBytes}-byte budget is pinned (${held.pinned}), in use (${held.inUse}) or reserved for loads in flight (${this.reservedBytes}); raise the budget or protect fewer experts`
      );
    }
    const mustKeep = this.pinned.has(key) || this.inUse.has(key);
    if (this.allowBypass && !mustKeep && this.policy.admit && !this.policy.admit(key, victims)) {
      this.bypasses++;
      this.bytesBypassed += bytes;
      return { admitted: false, evicted: [] };
    }
    for (const v of victims) this.remove(v, true);
    this.entries.set(key, { value, bytes });
    this.changes++;
    this.resident += bytes;
    this.residentMax = Math.max(this.residentMax, this.resident + this.reservedBytes);
    this.bytesIn += bytes;
    const l = this.layer(key);
    if (l) l.bytesIn += bytes;
    this.policy.onInsert(key, this.clockValue);
    invariant(this.resident + this.reservedBytes <= this.capacityBytes, `resident bytes ${this.resident} (+${this.reservedBytes} reserved) exceed the budget ${this.capacityBytes} after inserting ${formatExpert(key)}`);
    return { admitted: true, evicted: victims.map(idOfKey) };
  }

  /**
   * Reserves room for a load in flight (a prefetch): evicts policy-chosen victims until
   * `bytes` fit beside the resident and already reserved bytes, which together never exceed the
   * budget. Returns false, evicting nothing, when no such room can be made. The load then calls
   * insert(..., { reserved: true }) or cancelReservation(bytes).
   */
  reserve(id: ExpertId, bytes: number): boolean {
    const key = keyOf(id);
    if (bytes > this.capacityBytes) return false;
    const victims = this.chooseVictims(key, bytes);
    if (!victims) return false;
    for (const v of victims) this.remove(v, true);
    this.reservedBytes += bytes;
    this.residentMax = Math.max(this.residentMax, this.resident + this.reservedBytes);
    return true;
  }

  cancelReservation(bytes: number): void {
    invariant(this.reservedBytes >= bytes, `cancelling ${bytes} reserved bytes but only ${this.reservedBytes} are reserved`);
    this.reservedBytes -= bytes;
  }

  /** Bytes reserved for loads in flight. */
  get reserved(): number {
    return this.reservedBytes;
  }

  /** Victims whose eviction makes `bytes` fit, or undefined if pins and protections forbid it. */
  private chooseVictims(key: ExpertKey, bytes: number): ExpertKey[] | undefined {
    const victims: ExpertKey[] = [];
    let free = this.capacityBytes - this.resident - this.reservedBytes;
    if (bytes <= free) return victims;
    const chosen = new Set<ExpertKey>();
    const evictable = (k: ExpertKey) => this.entries.has(k) && !chosen.has(k) && !this.pinned.has(k) && !this.inUse.has(k);
    while (bytes > free) {
      const v = this.policy.chooseVictim(key, evictable, this.clockValue);
      if (v === undefined) return undefined;
      invariant(evictable(v), `policy "${this.policy.name}" chose ${formatExpert(v)}, which is not evictable (absent, pinned, in use or already chosen)`);
      chosen.add(v);
      victims.push(v);
      free += this.entries.get(v)!.bytes;
    }
    return victims;
  }

  /** Removes `id` now (not counted as a policy eviction). Refuses pinned or protected experts. */
  evict(id: ExpertId): boolean {
    const key = keyOf(id);
    if (!this.entries.has(key)) return false;
    if (this.pinned.has(key)) throw new CacheInUseError(`${formatExpert(key)} is pinned; unpin it before evicting it`);
    if (this.inUse.has(key)) throw new CacheInUseError(`${formatExpert(key)} is in use (protected ${this.inUse.get(key)} times); unprotect it before evicting it`);
    this.remove(key, false);
    return true;
  }

  /**
   * Marks experts in use (reference counted): they cannot be evicted until unprotected as many
   * times. Works for experts not yet resident, e.g. predicted experts whose load is in flight.
   */
  protect(ids: Iterable<ExpertId>): void {
    for (const id of ids) {
      const key = keyOf(id);
      this.inUse.set(key, (this.inUse.get(key) ?? 0) + 1);
    }
  }

  unprotect(ids: Iterable<ExpertId>): void {
    for (const id of ids) {
      const key = keyOf(id);
      const n = this.inUse.get(key);
      invariant(n !== undefined && n > 0, `unprotect of ${formatExpert(key)}, which is not protected`);
      if (n === 1) this.inUse.delete(key);
      else this.inUse.set(key, n - 1);
    }
  }

  isProtected(id: ExpertId): boolean {
    return this.inUse.has(keyOf(id));
  }

  pin(id: ExpertId): void {
    this.pinned.add(keyOf(id));
  }

  unpin(id: ExpertId): void {
    this.pinned.delete(keyOf(id));
  }

  isPinned(id: ExpertId): boolean {
    return this.pinned.has(keyOf(id));
  }

  /** Router probabilities of all experts of `layer` for one token, for policies that use them. */
  observeRouting(layer: number, probs: Float32Array): void {
    this.policy.observeRouting?.(layer, probs);
  }

  /** Resident experts, in no particular order. */
  *residents(): IterableIterator<{ id: ExpertId; bytes: number }> {
    for (const [key, e] of this.entries) yield { id: idOfKey(key), bytes: e.bytes };
  }

  stats(): CacheStats {
    const accesses = this.hits + this.misses;
    const s: CacheStats = {
      hits: this.hits,
      misses: this.misses,
      accesses,
      hitRate: accesses > 0 ? this.hits / accesses : 0,
      evictions: this.evictions,
      bypasses: this.bypasses,
      bytesIn: this.bytesIn,
      bytesBypassed: this.bytesBypassed,
      bytesEvicted: this.bytesEvicted,
      residentBytes: this.resident,
      residentBytesMax: this.residentMax,
      residentCount: this.entries.size,
      capacityBytes: this.capacityBytes,
    };
    if (this.layers) {
      s.layers = Array.from(this.layers, (l, layer): LayerCacheStats => {
        const c = l ?? { hits: 0, misses: 0, evictions: 0, bytesIn: 0 };
        const n = c.hits + c.misses;
        return { layer, ...c, hitRate: n > 0 ? c.hits / n : 0 };
      });
    }
    return s;
  }

  /** Zeroes the counters (e.g. after a warm-up), keeping the contents; the high-water mark restarts at the current size. */
  resetStats(): void {
    this.hits = this.misses = this.evictions = this.bypasses = 0;
    this.bytesIn = this.bytesBypassed = this.bytesEvicted = 0;
    this.residentMax = this.resident;
    if (this.layers) this.layers.length = 0;
  }

  /** Drops every resident expert (calling onEvict), all protection and the policy's state, and zeroes the counters. Pins stay. */
  clear(): void {
    this.inUse.clear();
    for (const key of [...this.entries.keys()]) this.remove(key, false, true);
    this.policy.reset();
    this.clockValue = 0;
    this.resetStats();
    this.residentMax = 0;
  }

  /** Recomputes what the counters claim; throws on any disagreement. For tests and debugging. */
  checkInvariants(): void {
    let sum = 0;
    for (const e of this.entries.values()) sum += e.bytes;
    invariant(sum === this.resident, `resident bytes counter ${this.resident} disagrees with the entries' sum ${sum}`);
    invariant(this.resident <= this.capacityBytes, `resident bytes ${this.resident} exceed the budget ${this.capacityBytes}`);
    invariant(this.residentMax <= this.capacityBytes, `high-water mark ${this.residentMax} exceeds the budget ${this.capacityBytes}`);
    invariant(this.hits + this.misses <= this.clockValue, `hits ${this.hits} + misses ${this.misses} exceed the ${this.clockValue} lookups`);
  }

  private remove(key: ExpertKey, policyEviction: boolean, clearing = false): void {
    const entry = this.entries.get(key)!;
    invariant(clearing || (!this.pinned.has(key) && !this.inUse.has(key)), `${formatExpert(key)} is pinned or in use and must not leave the cache`);
    this.entries.delete(key);
    this.changes++;
    this.resident -= entry.bytes;
    this.policy.onRemove(key);
    if (policyEviction) {
      this.evictions++;
      this.bytesEvicted += entry.bytes;
      const l = this.layer(key);
      if (l) l.evictions++;
    }
    this.onEvict?.(idOfKey(key), entry.value, entry.bytes);
  }

  private layer(key: ExpertKey): LayerCounters | undefined {
    if (!this.layers) return undefined;
    const layer = layerOfKey(key);
    return (this.layers[layer] ??= { hits: 0, misses: 0, evictions: 0, bytesIn: 0 });
  }

  private heldBytes(): { pinned: number; inUse: number } {
    let pinned = 0;
    let inUse = 0;
    for (const [key, e] of this.entries) {
      if (this.pinned.has(key)) pinned += e.bytes;
      else if (this.inUse.has(key)) inUse += e.bytes;
    }
    return { pinned, inUse };
  }
}
