/**
 * ExpertCache and its policies: the invariants (budget, pins, protection, counters) under random
 * workloads, each policy's choice on small cases, and Belady's MIN as an upper bound.
 */
import { describe, expect, it } from "vitest";
import { ExpertCache } from "../src/cache/ExpertCache.js";
import { createPolicy, parsePolicyName, POLICY_NAMES, type PolicyName } from "../src/cache/policies/index.js";
import { CacheCapacityError, CacheInUseError, expertKey, type ExpertId } from "../src/cache/types.js";
import { InvalidOptionError, MoeRunError } from "../src/errors.js";
import { createRng } from "../src/evaluator/sampler.js";
import { replay } from "../src/profiling/simulate.js";
import { accessSequence, finishTrace, type RoutingRecord, type RoutingTrace } from "../src/profiling/trace.js";

const rng = createRng;

const ONLINE = POLICY_NAMES.filter((p) => p !== "belady");
const id = (layer: number, expert: number): ExpertId => ({ layer, expert });

/** A synthetic top-k routing trace with some locality: each layer favours a drifting hot set. */
function randomTrace(seed: number, opts = { seqs: 2, tokens: 40, layers: 4, experts: 8, topK: 2 }): RoutingTrace {
  const r = rng(seed);
  const records: RoutingRecord[] = [];
  for (let s = 0; s < opts.seqs; s++) {
    for (let t = 0; t < opts.tokens; t++) {
      for (let l = 0; l < opts.layers; l++) {
        const chosen = new Set<number>();
        while (chosen.size < opts.topK) chosen.add(r() < 0.6 ? (l + Math.floor(t / 10) + Math.floor(r() * 3)) % opts.experts : Math.floor(r() * opts.experts));
        const experts = [...chosen];
        const probs = Array.from({ length: opts.experts }, () => r() * 0.1);
        experts.forEach((e, k) => (probs[e] = 0.5 - 0.1 * k));
        records.push({ seq: s, token: t, layer: l, experts, weights: experts.map((e) => probs[e]!), probs });
      }
    }
  }
  return finishTrace(records, { numExperts: opts.experts }, `random trace ${seed}`);
}

describe("ExpertCache basics", () => {
  it("counts hits and misses, keeps bytes, and reports per-layer stats that add up", () => {
    const cache = new ExpertCache<string>({ capacityBytes: 100, policy: "lru" });
    expect(cache.lookup(id(0, 1))).toBeUndefined();
    expect(cache.insert(id(0, 1), "a", 40)).toEqual({ admitted: true, evicted: [] });
    expect(cache.lookup(id(0, 1))).toBe("a");
    expect(cache.lookup(id(1, 2))).toBeUndefined();
    cache.insert(id(1, 2), "b", 40);
    expect(cache.lookup(id(2, 3))).toBeUndefined();
    const r = cache.insert(id(2, 3), "c", 40); // evicts the LRU: (0, 1)
    expect(r.evicted).toEqual([id(0, 1)]);
    const s = cache.stats();
    expect(s).toMatchObject({ hits: 1, misses: 3, accesses: 4, evictions: 1, bytesIn: 120, bytesEvicted: 40, residentBytes: 80, residentBytesMax: 80, residentCount: 2 });
    expect(s.hitRate).toBeCloseTo(0.25);
    expect(s.layers!.reduce((n, l) => n + l.hits + l.misses, 0)).toBe(s.accesses);
    expect(s.layers!.reduce((n, l) => n + l.evictions, 0)).toBe(s.evictions);
    expect(s.layers!.map((l) => l.bytesIn)).toEqual([40, 40, 40]);
    expect(cache.clock).toBe(4);
  });

  it("refuses an expert larger than the budget, and a full cache of pinned or in-use experts, evicting nothing", () => {
    const cache = new ExpertCache<number>({ capacityBytes: 10, policy: "lru", pinned: [id(0, 0)] });
    expect(() => cache.insert(id(0, 9), 1, 11)).toThrow(CacheCapacityError);
    cache.insert(id(0, 0), 0, 5);
    cache.insert(id(0, 1), 1, 5);
    cache.protect([id(0, 1)]);
    const err = (() => {
      try {
        cache.insert(id(0, 2), 2, 1);
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(CacheCapacityError);
    expect((err as CacheCapacityError).code).toBe("CACHE_CAPACITY");
    expect((err as CacheCapacityError).reason).toBe("no-victim");
    expect((err as Error).message).toMatch(/pinned \(5\), in use \(5\)/);
    expect(cache.size).toBe(2);
    cache.unprotect([id(0, 1)]);
    expect(cache.insert(id(0, 2), 2, 1).evicted).toEqual([id(0, 1)]);
  });

  it("explicit evict refuses pinned and protected experts; onEvict sees every departure; clear resets", () => {
    const gone: string[] = [];
    const cache = new ExpertCache<string>({ capacityBytes: 3, policy: "lru", onEvict: (i, v, b) => gone.push(`${i.layer}/${i.expert}=${v}:${b}`) });
    cache.insert(id(0, 0), "x", 1);
    cache.insert(id(0, 1), "y", 1);
    cache.pin(id(0, 0));
    cache.protect([id(0, 1)]);
    expect(() => cache.evict(id(0, 0))).toThrow(CacheInUseError);
    expect(() => cache.evict(id(0, 1))).toThrow(/in use/);
    cache.unprotect([id(0, 1)]);
    expect(() => cache.unprotect([id(0, 1)])).toThrow(/not protected/);
    expect(cache.evict(id(0, 1))).toBe(true);
    expect(cache.evict(id(0, 1))).toBe(false);
    cache.clear();
    expect(gone).toEqual(["0/1=y:1", "0/0=x:1"]);
    expect(cache.stats()).toMatchObject({ hits: 0, misses: 0, residentBytes: 0, residentBytesMax: 0, residentCount: 0 });
    expect(cache.isPinned(id(0, 0))).toBe(true);
  });

  it("resolves every policy name, rejects unknown names, and keeps offline Belady out of live caches", () => {
    for (const name of POLICY_NAMES) expect(createPolicy(name, { future: [] }).name).toBe(name);
    expect(parsePolicyName(" LRU ")).toBe("lru");
    expect(() => parsePolicyName("fifo")).toThrow(InvalidOptionError);
    expect(() => parsePolicyName("fifo")).toThrow(/known policies: lru, lfu, layer-lru, score, shallow, belady/);
    expect(() => new ExpertCache({ capacityBytes: 1, policy: "belady" })).toThrow(/needs the future/);
    expect(() => new ExpertCache({ capacityBytes: 1, policy: "belady", policyOptions: { future: [0] } })).toThrow(/cannot serve a live run/);
    expect(() => new ExpertCache({ capacityBytes: 1, policy: "belady", policyOptions: { future: [0] }, replay: true })).not.toThrow();
    expect(() => new ExpertCache({ capacityBytes: -1, policy: "lru" })).toThrow(MoeRunError);
  });

  it("Belady fails loudly when the replay diverges from the future it was given", () => {
    const cache = new ExpertCache<true>({ capacityBytes: 2, policy: "belady", policyOptions: { future: [expertKey(0, 1)] }, replay: true });
    expect(() => cache.lookup(id(0, 2))).toThrow(/future sequence says layer 0 expert 1/);
  });
});

describe("policy choices", () => {
  const fill = (policy: PolicyName, ids: ExpertId[], capacity = ids.length) => {
    const cache = new ExpertCache<true>({ capacityBytes: capacity, policy, policyOptions: { numLayers: 4 } });
    for (const i of ids) if (!cache.lookup(i)) cache.insert(i, true, 1);
    return cache;
  };

  it("lru evicts the least recently used; layer-lru prefers the incoming expert's layer", () => {
    const lru = fill("lru", [id(0, 0), id(1, 0), id(0, 1), id(0, 0)], 3);
    lru.lookup(id(1, 1));
    expect(lru.insert(id(1, 1), true, 1).evicted).toEqual([id(1, 0)]);
    const layer = fill("layer-lru", [id(0, 0), id(1, 0), id(0, 1)], 3);
    layer.lookup(id(0, 2));
    expect(layer.insert(id(0, 2), true, 1).evicted).toEqual([id(0, 0)]); // the LRU of layer 0
    layer.lookup(id(2, 0));
    expect(layer.insert(id(2, 0), true, 1).evicted).toEqual([id(1, 0)]); // no layer-2 resident: global LRU
  });

  it("lfu evicts the least frequent (ties by LRU) and bypasses a newcomer rarer than its victim", () => {
    const c = fill("lfu", [id(0, 0), id(0, 0), id(0, 1), id(0, 2), id(0, 1)], 3);
    expect(c.lookup(id(0, 3))).toBeUndefined();
    expect(c.insert(id(0, 3), true, 1).evicted).toEqual([id(0, 2)]); // freq 1 vs (0,1)=2, (0,0)=2
    for (let i = 0; i < 3; i++) c.lookup(id(0, 3));
    expect(c.lookup(id(0, 4))).toBeUndefined(); // freq 1 < every resident's
    expect(c.insert(id(0, 4), true, 1)).toEqual({ admitted: false, evicted: [] });
    expect(c.stats().bypasses).toBe(1);
    c.protect([id(0, 4)]); // needed now: admission cannot refuse it
    expect(c.insert(id(0, 4), true, 1).admitted).toBe(true);
  });

  it("score evicts the expert the router has favoured least recently; shallow evicts deeper layers first", () => {
    const score = new ExpertCache<true>({ capacityBytes: 2, policy: "score", policyOptions: { decay: 0.5 } });
    score.observeRouting(0, new Float32Array([0.9, 0.1, 0, 0]));
    score.insert(id(0, 0), true, 1);
    score.insert(id(0, 1), true, 1);
    score.observeRouting(0, new Float32Array([0.1, 0.2, 0.7, 0]));
    expect(score.insert(id(0, 2), true, 1).evicted).toEqual([id(0, 1)]); // scores: (0,0) 0.45+0.1, (0,1) 0.05+0.2
    const shallow = fill("shallow", [id(3, 0), id(0, 0)], 2);
    expect(shallow.insert(id(1, 0), true, 1).evicted).toEqual([id(3, 0)]);
    const old = fill("shallow", [id(0, 0), id(3, 0), id(3, 0), id(3, 0), id(3, 0), id(3, 0)], 2);
    expect(old.insert(id(1, 0), true, 1).evicted).toEqual([id(0, 0)]); // layer 0 unused for long enough still goes
  });
});

describe("invariants under random workloads", () => {
  it.each(ONLINE)("%s: the budget holds, pinned and protected experts stay, counters add up", (policy) => {
    const r = rng(1234 + POLICY_NAMES.indexOf(policy));
    const capacity = 1000;
    const pinned = [id(0, 0), id(2, 5)];
    const sizes = new Map<number, number>();
    const sizeOf = (i: ExpertId) => {
      const k = expertKey(i.layer, i.expert);
      if (!sizes.has(k)) sizes.set(k, 1 + Math.floor(r() * 250));
      return sizes.get(k)!;
    };
    const cache = new ExpertCache<number>({ capacityBytes: capacity, policy, pinned, policyOptions: { numLayers: 4 } });
    let lookups = 0;
    let refusals = 0;
    let bypasses = 0;
    const everPinnedResident = new Set<number>();
    for (let step = 0; step < 3000; step++) {
      const layer = Math.floor(r() * 4);
      cache.observeRouting(layer, Float32Array.from({ length: 8 }, () => r()));
      const batch = [id(layer, Math.floor(r() * 8)), id(layer, Math.floor(r() * 8))];
      const protect = r() < 0.5;
      if (protect) cache.protect(batch);
      for (const i of batch) {
        lookups++;
        if (cache.lookup(i) !== undefined) continue;
        try {
          const res = cache.insert(i, step, sizeOf(i));
          if (!res.admitted) bypasses++;
          for (const e of res.evicted) {
            expect(pinned.some((p) => p.layer === e.layer && p.expert === e.expert)).toBe(false);
            expect(protect && batch.some((b) => b.layer === e.layer && b.expert === e.expert)).toBe(false);
          }
        } catch (err) {
          expect(err).toBeInstanceOf(CacheCapacityError); // everything left is pinned or protected
          refusals++;
        }
        expect(cache.residentBytes).toBeLessThanOrEqual(capacity);
      }
      for (const p of pinned) if (cache.has(p)) everPinnedResident.add(expertKey(p.layer, p.expert));
      for (const k of everPinnedResident) expect(cache.has({ layer: Math.floor(k / 65536), expert: k % 65536 })).toBe(true);
      if (protect) cache.unprotect(batch);
      if (step % 100 === 0) cache.checkInvariants();
    }
    const s = cache.stats();
    expect(s.hits + s.misses).toBe(lookups);
    expect(s.accesses).toBe(lookups);
    expect(s.bypasses).toBe(bypasses);
    expect(s.residentBytesMax).toBeLessThanOrEqual(capacity);
    expect(s.residentBytesMax).toBeGreaterThan(capacity * 0.7);
    expect(s.layers!.reduce((n, l) => n + l.hits, 0)).toBe(s.hits);
    expect(s.layers!.reduce((n, l) => n + l.bytesIn, 0)).toBe(s.bytesIn);
    expect(refusals).toBeLessThan(lookups / 10);
    cache.checkInvariants();
  });

  it("Belady's MIN gets at least as many hits as every online policy on random traces", () => {
    for (let seed = 1; seed <= 6; seed++) {
      const trace = randomTrace(seed);
      const future = accessSequence(trace);
      for (const capacity of [2, 5, 9, 16]) {
        const best = replay(trace, "belady", capacity, { future }).hits;
        for (const p of ONLINE) {
          expect(replay(trace, p, capacity, { numLayers: 4 }).hits, `${p} at ${capacity} on trace ${seed}`).toBeLessThanOrEqual(best);
          if (p === "lfu") expect(replay(trace, p, capacity, { admission: false }).hits).toBeLessThanOrEqual(best);
        }
      }
    }
  });
});
