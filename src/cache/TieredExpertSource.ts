/**
 * The expert cache manager the runtime uses: a device tier (experts in the form the expert kernel
 * computes from: the encoded record in host memory for the CPU kernels, tensors in GPU memory for
 * a GPU provider) managed by ExpertCache under a byte budget, over the
 * host tier (expert records in RAM, HostTier) and the store on disk (direct reads). A layer's
 * misses are read at once, several in flight, while its resident experts compute; with a predictor
 * the experts of upcoming layers are prefetched the same way: each load reserves its bytes in the
 * budget first, and a prefetch is protected from eviction until its layer has run. Counts hits, misses, bytes moved, time
 * stalled and prefetches used or wasted, per layer.
 */
import type { Routing } from "../evaluator/routing.js";
import type { MemoryPlan } from "../model/memoryPlan.js";
import { PredictionTracker, type PredictionReport } from "../predict/PredictionTracker.js";
import { topIds, type ExpertPredictor } from "../predict/types.js";
import type { ExpertStore } from "../store/ExpertStore.js";
import { layerRecordBytes } from "../store/recordEncodings.js";
import { copyRecord, releaseRecord } from "../store/RecordFile.js";
import { freeResident, prepareOwned } from "./residentRecords.js";
import { ExpertCache } from "./ExpertCache.js";
import { ExpertLoader } from "./ExpertLoader.js";
import { HostTier, type HostTierStats } from "./HostTier.js";
import { parsePolicyName, type PolicyName } from "./policies/index.js";
import { expertKey, idOfKey, type CacheStats, type ExpertId, type ExpertKey, type ReplacementPolicy } from "./types.js";

export interface PrefetchOptions {
  predictor: ExpertPredictor;
  /** Load predictions ahead; false = only score them. */
  fetch: boolean;
  /** Layers ahead to predict. Default 1. */
  depth?: number;
  /** Minimum predicted probability to prefetch. Default 0.05. */
  threshold?: number;
  /** Experts prefetched per upcoming layer at most. Default: the model's top-k. */
  perLayer?: number;
}

/**
 * How a store record becomes the device tier's compute-ready form, and how that form is freed:
 * the expert kernel (ExpertKernel satisfies this). The cache counts `residentBytesOf(layer)` per expert.
 */
export interface ResidentForm {
  /** Bytes a prepared expert of `layer` occupies (layers that differ in encoding differ). */
  residentBytesOf(layer: number): number;
  prepare(record: Uint8Array, layer: number): unknown;
  free(resident: unknown): void;
  /** Where prepared experts live and how many bytes they hold there (kernels with device memory). */
  residency?(): ResidencyStats;
}

export interface ResidencyStats {
  /** The execution provider computing resident experts. */
  device: string;
  /** Where their bytes are: GPU memory, or host memory (CPU provider; CUDA, whose Node binding cannot hold device tensors between runs). */
  memory: "gpu" | "host";
  /** Experts made resident and freed so far; bytes held now and at most. */
  prepared: number;
  freed: number;
  liveBytes: number;
  liveBytesMax: number;
}

export interface TieredExpertSourceOptions {
  /** The device tier's form of an expert; prepared on admission, freed on eviction. */
  form: ResidentForm;
  /** The user's device-tier budget in bytes (Infinity = unlimited). */
  deviceBudgetBytes: number;
  /** Of that budget, bytes the expert kernel's working memory takes; the cache gets the rest. */
  workingBytes: number;
  /** Host-tier budget in bytes: expert records kept in RAM (0 = none; records go straight to the device tier). */
  hostBytes: number;
  policy: PolicyName | ReplacementPolicy;
  pinned?: ExpertId[];
  numLayers: number;
  topK: number;
  prefetch?: PrefetchOptions;
  /** Records read at once by the loader (prefetches and a layer's misses). Default 4. */
  readsInFlight?: number;
  /**
   * Promote CPU-served experts into free device-tier room, from the record the pool read (so a
   * hot expert still becomes resident when the pool served its miss). Default true.
   */
  promote?: boolean;
  log?: (line: string) => void;
}

export interface PrefetchStats {
  issued: number;
  /** Prefetched experts that their layer then used. */
  used: number;
  /** Prefetched experts their layer did not use (wrong predictions). */
  wasted: number;
  /** Predictions dropped: their layer ran before the load started, or no room could be made. */
  dropped: number;
  /** Used prefetches still loading when needed (part of their load was waited for). */
  late: number;
  /** Load time of used prefetches that overlapped compute instead of stalling it. */
  stallSavedSeconds: number;
}

export interface ExpertCacheReport {
  /** How memory was divided at load (MoeModel adds it; budgets of Infinity serialize as null = unlimited). */
  memoryPlan?: MemoryPlan;
  cache: { hits: number; misses: number; hitRate: number; budgetBytes: number; residentBytesMax: number; policy: string };
  tiers: {
    device: {
      budgetBytes: number;
      workingBytes: number;
      cacheBytes: number;
      residentBytes: number;
      residentBytesMax: number;
      bytesIn: number;
      evictions: number;
      bypasses: number;
      /** Measured by the kernel that holds the memory (absent for host kernels, whose form is the record). */
      residency?: ResidencyStats;
    };
    host: HostTierStats;
  };
  /** Seconds the compute thread spent waiting for experts to be read from the store. */
  stallSeconds: number;
  /** stallSeconds per acquire() call that had to wait, and per forward pass (token, in decode). */
  stalls: { waits: number; forwards: number; secondsPerForward: number };
  prefetch?: PrefetchStats;
  predictor?: PredictionReport;
  layers: { layer: number; hits: number; misses: number; hitRate: number; evictions: number; bytesIn: number; stallSeconds: number }[];
}

interface Inflight {
  targetLayer: number;
  promise: Promise<void>;
  started: number;
  loadSeconds: number;
  done: boolean;
}

export class TieredExpertSource {
  readonly cache: ExpertCache<NonNullable<unknown>>;
  readonly host: HostTier;
  private readonly loader: ExpertLoader;
  private readonly stall: number[];
  private stallWaits = 0;
  private forwards = 0;
  /** Experts being loaded (or loaded) for the layer that needs them now: their acquire() is a miss. */
  private readonly demanded = new Set<ExpertKey>();
  /** Experts used once without being kept (no room): freed at release(). */
  private readonly bypassed = new Map<ExpertKey, unknown>();
  /** Experts the CPU pool is computing whose record will be admitted (room reserved). */
  private readonly promoting = new Set<ExpertKey>();
  private readonly inflight = new Map<ExpertKey, Inflight>();
  /** Prefetched experts (resident or loading) protected until their layer runs. */
  private readonly held = new Map<ExpertKey, number>(); // key -> target layer
  private readonly tracker?: PredictionTracker;
  private readonly prefetchStats: PrefetchStats = { issued: 0, used: 0, wasted: 0, dropped: 0, late: 0, stallSavedSeconds: 0 };
  private readonly prefetched = new Map<ExpertKey, number>(); // key -> load seconds, until used or wasted
  /** residentTable()'s last answer and the cache generation it was read at. */
  private table: { generation: number; values: unknown[] } | undefined;
  /** Whether the device budget holds every expert of the model at once (residentTable). */
  private allFit: boolean | undefined;

  constructor(
    private readonly store: ExpertStore,
    private readonly options: TieredExpertSourceOptions
  ) {
    this.cache = new ExpertCache<NonNullable<unknown>>({
      // ExpertCache wants a finite capacity: "unlimited" is more than any store can hold.
      capacityBytes: Number.isFinite(options.deviceBudgetBytes) ? options.deviceBudgetBytes - options.workingBytes : Number.MAX_SAFE_INTEGER,
      policy: typeof options.policy === "string" ? parsePolicyName(options.policy) : options.policy,
      policyOptions: { numLayers: options.numLayers },
      pinned: options.pinned,
      onEvict: (_id, resident) => this.drop(resident),
    });
    this.host = new HostTier(store, options.hostBytes, options.policy, options.numLayers);
    this.loader = new ExpertLoader((layer, expert) => this.host.record({ layer, expert }), options.readsInFlight);
    this.stall = new Array<number>(options.numLayers).fill(0);
    const p = options.prefetch;
    if (p) this.tracker = new PredictionTracker(p.predictor.name, options.numLayers, options.topK, p.threshold ?? 0.05);
  }

  /** Bytes an expert of `layer` occupies in the device tier (layers that differ in encoding differ). */
  private residentBytes(layer: number): number {
    return this.options.form.residentBytesOf(layer);
  }

  /** The compute-ready form of (layer, expert), protected from eviction until release(). */
  async acquire(layer: number, expert: number): Promise<unknown> {
    const id = { layer, expert };
    const key = expertKey(layer, expert);
    const t0 = performance.now();
    const loading = this.inflight.get(key);
    let waited = false;
    if (loading && !loading.done) {
      if (this.held.has(key)) this.prefetchStats.late++;
      waited = true;
      await loading.promise; // a load already on its way: wait for the rest of it
    }
    const demanded = this.demanded.delete(key); // request() loaded it for this access: a miss
    let resident: unknown = this.cache.lookup(id, { loadedForThis: demanded });
    if (!resident) {
      waited = true;
      resident = await this.loadDemand(id, key);
    }
    this.usePrefetched(key, (performance.now() - t0) / 1000);
    if (waited) this.stallWaits++;
    this.stall[layer] = this.stall[layer]! + (performance.now() - t0) / 1000;
    if (this.cache.has(id)) this.cache.protect([id]);
    return resident;
  }

  /**
   * acquire() of an expert that is resident now, without a promise (no wait, no microtask: a small
   * model's decode step acquires tens of experts); undefined when it is not resident or still
   * loading, and acquire() then does the rest. The bookkeeping is acquire()'s.
   */
  acquireNow(layer: number, expert: number): unknown {
    const id = { layer, expert };
    const key = expertKey(layer, expert);
    const loading = this.inflight.get(key);
    if ((loading && !loading.done) || !this.cache.has(id)) return undefined;
    const resident = this.cache.lookup(id, { loadedForThis: this.demanded.delete(key) });
    this.usePrefetched(key, 0);
    this.cache.protect([id]);
    return resident;
  }

  /** A prefetched expert is used, after `waitedSeconds` of waiting: its load time less that was saved. */
  private usePrefetched(key: ExpertKey, waitedSeconds: number): void {
    const loadSeconds = this.prefetched.get(key);
    if (loadSeconds === undefined) return;
    this.prefetched.delete(key);
    this.prefetchStats.used++;
    this.prefetchStats.stallSavedSeconds += Math.max(0, loadSeconds - waitedSeconds);
  }

  /**
   * The layer about to compute needs these experts: start reading every one that is missing now,
   * several at once, so that the reads overlap each other and the compute of resident experts.
   * Each reserves its room first; one that finds no room is loaded by acquire() instead.
   */
  request(layer: number, experts: readonly number[]): void {
    for (const expert of experts) {
      const key = expertKey(layer, expert);
      if (this.cache.has({ layer, expert }) || this.inflight.has(key)) continue;
      // Not protected until acquire(): protecting a whole prefill's worth of requests would leave
      // a small budget no victim for the layer's other misses. A request evicted before its
      // acquire() (the newest entries are the last an LRU picks) is read again.
      if (this.startLoad(layer, expert, true)) this.demanded.add(key);
    }
  }

  /** A forward pass (one decode step, or a prefill chunk) is done: for stall-per-token figures. */
  endForward(): void {
    this.forwards++;
  }

  /**
   * Reads and prepares an expert the current layer needs now. Room is made before preparing, so
   * device memory never holds more than the budget. Demand beats prediction: when prefetches hold
   * the room, their protection is dropped. When loads in flight still hold it, a host record is
   * used once without being kept (a bypass) rather than waiting for unrelated loads to land; a
   * device form waits for them instead (a bypass would put one expert over the device budget).
   */
  private async loadDemand(id: ExpertId, key: ExpertKey): Promise<unknown> {
    const form = this.options.form;
    const bytes = this.residentBytes(id.layer);
    let reserved = this.cache.reserve(id, bytes);
    if (!reserved) {
      this.releaseHeld(() => true);
      reserved = this.cache.reserve(id, bytes);
    }
    if (!reserved && this.cache.reserved > 0 && form.residency) {
      await this.drain();
      this.releaseHeld(() => true);
      if (this.cache.has(id)) return this.cache.peek(id)!;
      reserved = this.cache.reserve(id, bytes);
    }
    let resident: NonNullable<unknown>;
    try {
      resident = await this.prepareFrom(await this.host.record(id), id.layer);
    } catch (err) {
      if (reserved) this.cache.cancelReservation(bytes);
      throw err;
    }
    // A prefetch may have landed while this one was being prepared (on a GPU, prepare awaits the upload).
    if (this.cache.has(id)) {
      if (reserved) this.cache.cancelReservation(bytes);
      this.drop(resident);
      return this.cache.peek(id)!;
    }
    try {
      if (reserved) {
        if (!this.cache.insert(id, resident, bytes, { reserved: true }).admitted) this.bypassed.set(key, resident); // the policy declined it
      } else if (this.cache.reserved > 0 || !this.cache.insert(id, resident, bytes).admitted) this.bypassed.set(key, resident);
    } catch (err) {
      this.drop(resident); // CacheCapacityError: pins and protections leave no room; it says so
      throw err;
    }
    return resident;
  }

  /** Drops the prefetch protection of held experts matching `which`. */
  private releaseHeld(which: (key: ExpertKey, target: number) => boolean): void {
    for (const [key, target] of [...this.held]) {
      if (!which(key, target)) continue;
      this.held.delete(key);
      this.cache.unprotect([idOfKey(key)]);
    }
  }

  /** The device form of a record the caller owns (prepareOwned). */
  private prepareFrom(record: Uint8Array, layer: number): Promise<NonNullable<unknown>> {
    return prepareOwned(this.options.form, record, layer);
  }

  /** Frees a device-tier form (GPU memory, or the record's own memory for the CPU kernels). */
  private drop(resident: unknown): void {
    freeResident(this.options.form, resident);
  }

  /** Resident or on its way: computing it first would not wait on the store. */
  isReady(layer: number, expert: number): boolean {
    return this.cache.has({ layer, expert });
  }

  /**
   * The CPU pool computes this expert from host memory: count the access, and say whether to
   * promote it into the device tier (free room, warm-up). Room is then reserved; the pool hands
   * back the record it read and admit() inserts it, so promotion costs no second read.
   * Promotions never evict: at a tight budget they would only trade one resident expert for
   * another on every miss (measured: 5x slower decode).
   */
  recordAccess(layer: number, expert: number): boolean {
    const id = { layer, expert };
    if (this.cache.lookup(id)) return false;
    this.host.countRead(layerRecordBytes(this.store.layout, layer)); // the pool worker reads the record from the store
    if (!this.wouldPromote(layer, expert) || !this.cache.reserve(id, this.residentBytes(layer))) return false;
    this.promoting.add(expertKey(layer, expert));
    return true;
  }

  /** Not resident, not on its way, and free room for it: served by the pool, it would be promoted. */
  wouldPromote(layer: number, expert: number): boolean {
    const key = expertKey(layer, expert);
    if (this.options.promote === false || this.inflight.has(key) || this.promoting.has(key) || this.cache.has({ layer, expert })) return false;
    return this.cache.residentBytes + this.cache.reserved + this.residentBytes(layer) <= this.cache.capacityBytes;
  }

  /** The record of an expert recordAccess() chose to promote (undefined: the computation failed). */
  async admit(layer: number, expert: number, record: Uint8Array | undefined): Promise<void> {
    const id = { layer, expert };
    const key = expertKey(layer, expert);
    if (!this.promoting.delete(key)) return;
    if (!record || this.cache.has(id)) {
      this.cache.cancelReservation(this.residentBytes(layer));
      return;
    }
    let resident: NonNullable<unknown>;
    try {
      // The pool's copy lives in a GC-managed buffer: kept, it goes into memory freed on eviction.
      resident = await this.prepareFrom(copyRecord(record), layer);
    } catch (err) {
      this.cache.cancelReservation(this.residentBytes(layer));
      throw err;
    }
    if (this.cache.has(id)) {
      this.cache.cancelReservation(this.residentBytes(layer));
      this.drop(resident);
    } else if (!this.cache.insert(id, resident, this.residentBytes(layer), { reserved: true }).admitted) this.drop(resident);
  }

  release(layer: number, expert: number): void {
    const id = { layer, expert };
    const key = expertKey(layer, expert);
    const once = this.bypassed.get(key);
    if (once !== undefined) {
      this.bypassed.delete(key);
      this.drop(once);
    }
    if (this.cache.isProtected(id)) this.cache.unprotect([id]);
  }

  /**
   * Every expert of every layer in its resident form, null where not resident yet (index layer *
   * numExperts + expert), for decode steps computed whole in native code (evaluator/FusedDecode.ts);
   * undefined unless the budget holds every expert (none is ever evicted: a missing one is one not
   * used yet) and nothing is loading, prefetched, held for a layer ahead or used once.
   * noteResidentUse() then does each routed expert's bookkeeping.
   */
  residentTable(numExperts: number): readonly unknown[] | undefined {
    const L = this.options.numLayers;
    if (this.options.prefetch || this.inflight.size || this.bypassed.size || this.held.size || this.promoting.size) return undefined;
    if (this.allFit === undefined) {
      let all = 0;
      for (let l = 0; l < L; l++) all += numExperts * this.residentBytes(l);
      this.allFit = all <= this.cache.capacityBytes;
    }
    if (!this.allFit) return undefined;
    if (this.table?.generation !== this.cache.generation || this.table.values.length !== L * numExperts) {
      const values: unknown[] = [];
      for (let layer = 0; layer < L; layer++) for (let expert = 0; expert < numExperts; expert++) values.push(this.cache.peek({ layer, expert }) ?? null);
      this.table = { generation: this.cache.generation, values };
    }
    return this.table.values;
  }

  /** A resident expert computed outside acquire(): acquireNow() + release()'s bookkeeping (a hit). */
  noteResidentUse(layer: number, expert: number): void {
    const key = expertKey(layer, expert);
    this.cache.lookup({ layer, expert }, { loadedForThis: this.demanded.delete(key) });
    this.usePrefetched(key, 0);
  }

  /** Tells score-based policies the router's probabilities over all experts for one token. */
  observeRouting(layer: number, probs: Float32Array): void {
    this.cache.observeRouting(layer, probs);
  }

  /**
   * Layer `layer` has routed: settle the prefetches that targeted it, score the predictor, and
   * predict and prefetch the layers ahead.
   */
  onLayerRouted(layer: number, routing: Routing, gateInput: Float32Array, residual: Float32Array): void {
    this.settle(layer, routing);
    const p = this.options.prefetch;
    if (!p) return;
    this.tracker!.actual(layer, routing);
    const T = routing.tokens;
    const predictions = p.predictor.observe({ layer, tokens: T, routing, gateInput, residual }, p.depth ?? 1);
    const E = routing.probs.length / T;
    if (predictions[0]) this.tracker!.predicted(layer + 1, predictions[0], T);
    if (!p.fetch) return;
    const threshold = p.threshold ?? 0.05;
    predictions.forEach((scores, i) => {
      const target = layer + 1 + i;
      const last = scores.subarray((T - 1) * E, T * E); // decode: the token whose layers come next
      for (const e of topIds(last, p.perLayer ?? this.options.topK)) if (last[e]! >= threshold) this.prefetch(target, e);
    });
  }

  /** A new sequence: forget per-sequence predictor state. */
  startSequence(): void {
    this.options.prefetch?.predictor.reset();
    this.tracker?.reset();
  }

  private prefetch(layer: number, expert: number): void {
    const key = expertKey(layer, expert);
    const id = { layer, expert };
    if (this.cache.has(id)) {
      if (!this.held.has(key)) {
        this.cache.protect([id]); // keep it until its layer runs
        this.held.set(key, layer);
      }
      return;
    }
    this.startLoad(layer, expert, false);
  }

  /**
   * Loads an expert into the device tier on the loader, its bytes reserved in the budget first.
   * A prefetch (`demand` false) is protected until its layer runs and counted in the prefetch
   * stats; a demand load is for the layer computing now. False when no room could be reserved.
   */
  private startLoad(layer: number, expert: number, demand: boolean): boolean {
    const key = expertKey(layer, expert);
    const id = { layer, expert };
    if (this.inflight.has(key)) return false;
    if (!this.cache.reserve(id, this.residentBytes(layer))) {
      if (!demand) this.prefetchStats.dropped++;
      return false;
    }
    if (!demand) {
      this.cache.protect([id]);
      this.held.set(key, layer);
      this.prefetchStats.issued++;
    }
    const entry: Inflight = { targetLayer: layer, started: performance.now(), loadSeconds: 0, done: false, promise: Promise.resolve() };
    entry.promise = this.loader
      .load(layer, expert, () => demand || this.held.has(key))
      .then(async (record) => {
        if (!record) return { record, resident: undefined };
        if (this.cache.has(id)) {
          releaseRecord(record);
          return { record, resident: undefined };
        }
        return { record, resident: await this.prepareFrom(record, layer) };
      })
      .then(
        ({ record, resident }) => {
          entry.done = true;
          entry.loadSeconds = (performance.now() - entry.started) / 1000;
          this.inflight.delete(key);
          if (!record) {
            this.cache.cancelReservation(this.residentBytes(layer));
            this.prefetchStats.dropped++;
            return;
          }
          if (!resident || this.cache.has(id)) {
            this.cache.cancelReservation(this.residentBytes(layer)); // a demand load got there first
            if (resident) this.drop(resident);
            return;
          }
          if (this.cache.insert(id, resident, this.residentBytes(layer), { reserved: true }).admitted) {
            if (!demand) this.prefetched.set(key, entry.loadSeconds);
          } else this.drop(resident); // the policy declined it, as admit() handles
        },
        (err: unknown) => {
          entry.done = true;
          this.inflight.delete(key);
          this.cache.cancelReservation(this.residentBytes(layer));
          if (demand) return; // acquire() reads it again and reports the error where it is awaited
          this.options.log?.(`moe-run: prefetch of expert (${layer}, ${expert}) failed: ${err instanceof Error ? err.message : String(err)}`);
        }
      );
    this.inflight.set(key, entry);
    return true;
  }

  /** Prefetches aimed at `layer` are now right or wrong: release their protection. */
  private settle(layer: number, routing: Routing): void {
    const used = new Set(routing.experts);
    this.releaseHeld((key, target) => {
      if (target > layer) return false;
      if (target === layer && !used.has(idOfKey(key).expert) && this.prefetched.delete(key)) this.prefetchStats.wasted++;
      return true;
    });
  }

  /** Waits for loads in flight (before disposing). */
  async drain(): Promise<void> {
    await Promise.all([...this.inflight.values()].map((e) => e.promise));
    await this.loader.close();
  }

  /** Frees every resident expert (device memory included). Call after drain(), before the kernel is disposed. */
  dispose(): void {
    this.cache.clear();
    this.host.clear();
    for (const resident of this.bypassed.values()) this.drop(resident);
    this.bypassed.clear();
  }

  report(): ExpertCacheReport {
    const s: CacheStats = this.cache.stats();
    const stallSeconds = this.stall.reduce((a, b) => a + b, 0);
    return {
      cache: { hits: s.hits, misses: s.misses, hitRate: s.hitRate, budgetBytes: this.options.deviceBudgetBytes, residentBytesMax: s.residentBytesMax, policy: this.cache.policy.name },
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
          residency: this.options.form.residency?.(),
        },
        host: this.host.stats(),
      },
      stallSeconds,
      stalls: { waits: this.stallWaits, forwards: this.forwards, secondsPerForward: this.forwards ? stallSeconds / this.forwards : 0 },
      prefetch: this.options.prefetch?.fetch ? { ...this.prefetchStats } : undefined,
      predictor: this.tracker?.report(),
      layers: (s.layers ?? []).map((l, i) => ({ ...l, layer: i, stallSeconds: this.stall[i] ?? 0 })),
    };
  }
}
