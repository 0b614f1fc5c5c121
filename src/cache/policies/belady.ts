/**
 * Belady's MIN (offline, for profiling only): evict the resident expert whose next use is farthest
 * in the future, and bypass the incoming expert when it is itself needed no sooner than every
 * victim. MIN with bypass is the optimum for equal-sized items (no demand policy gets more hits at
 * the same capacity) and is what reproduces the reference MIN column of ../shared/traces, where
 * always-admit MIN is up to 0.003 lower. It is given the whole future access sequence, one key per
 * cache lookup in order, and checks every lookup against it, so a replay that diverges fails loudly.
 */
import { invariant } from "../../errors.js";
import { formatExpert, type ExpertKey, type ReplacementPolicy } from "../types.js";

export class BeladyPolicy implements ReplacementPolicy {
  readonly name = "belady";
  readonly offline = true;
  private readonly future: Int32Array;
  /** nextIndex[i]: the next position after i holding the same key, or Infinity. */
  private readonly nextIndex: Float64Array;
  /** Sorted positions of each key, for insertions that do not follow a lookup (prefetch). */
  private readonly positions = new Map<ExpertKey, number[]>();
  /** Next use of each resident (and of recently accessed keys), as a position in `future`. */
  private readonly nextUse = new Map<ExpertKey, number>();
  private readonly resident = new Set<ExpertKey>();
  /** Accesses seen so far. */
  private now = 0;

  constructor(future: ArrayLike<ExpertKey>) {
    this.future = Int32Array.from(future);
    this.nextIndex = new Float64Array(this.future.length);
    const seen = new Map<ExpertKey, number>();
    for (let i = this.future.length - 1; i >= 0; i--) {
      const key = this.future[i]!;
      this.nextIndex[i] = seen.get(key) ?? Infinity;
      seen.set(key, i);
    }
    for (let i = 0; i < this.future.length; i++) {
      const key = this.future[i]!;
      let list = this.positions.get(key);
      if (!list) this.positions.set(key, (list = []));
      list.push(i);
    }
  }

  onAccess(key: ExpertKey, clock: number): void {
    invariant(clock < this.future.length, `belady: access ${clock} is past the end of the ${this.future.length}-access future it was given`);
    invariant(this.future[clock] === key, `belady: access ${clock} is ${formatExpert(key)} but the future sequence says ${formatExpert(this.future[clock]!)}`);
    this.nextUse.set(key, this.nextIndex[clock]!);
    this.now = clock + 1;
  }

  onInsert(key: ExpertKey, clock: number): void {
    this.resident.add(key);
    this.nextUse.set(key, this.upcoming(key, clock));
  }

  onRemove(key: ExpertKey): void {
    this.resident.delete(key);
    this.nextUse.delete(key);
  }

  chooseVictim(_incoming: ExpertKey, evictable: (key: ExpertKey) => boolean): ExpertKey | undefined {
    let best: ExpertKey | undefined;
    let bestNext = -1;
    for (const key of this.resident) {
      if (!evictable(key)) continue;
      const next = this.nextUse.get(key) ?? Infinity;
      if (next > bestNext) [best, bestNext] = [key, next];
    }
    return best;
  }

  admit(incoming: ExpertKey, victims: readonly ExpertKey[]): boolean {
    const next = this.upcoming(incoming, this.now);
    return victims.every((v) => next < (this.nextUse.get(v) ?? Infinity));
  }

  reset(): void {
    this.resident.clear();
    this.nextUse.clear();
    this.now = 0;
  }

  /** Next use at or after `clock`: what a lookup recorded, or (prefetch, no lookup) a search. */
  private upcoming(key: ExpertKey, clock: number): number {
    const known = this.nextUse.get(key);
    return known !== undefined && known >= clock ? known : this.firstUseFrom(key, clock);
  }

  private firstUseFrom(key: ExpertKey, clock: number): number {
    const list = this.positions.get(key);
    if (!list) return Infinity;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (list[mid]! < clock) lo = mid + 1;
      else hi = mid;
    }
    return lo < list.length ? list[lo]! : Infinity;
  }
}
