/**
 * Splits each layer's activated experts between the device side (the engine's expert kernel over
 * the device tier; GPU with a device provider) and the CPU pool (workers computing from host
 * memory), to finish the layer soonest: resident experts cost their compute; missing ones cost a
 * load plus compute on the device, or compute alone on the CPU pool. Costs come from a
 * calibration measured on this machine (CostModel). Both sides run at once.
 *
 * When the device side is the CPU itself (no GPU provider), both sides share the same cores and
 * memory bandwidth, so their times add up rather than overlap. Plans are costed and the cheapest
 * taken: everything on the device side (loading what is missing); everything on the pool, whose
 * workers run experts side by side; and, for decode (one token per expert), resident experts on
 * the device side with the missing ones on the pool where that beats load + compute. That mixed
 * plan is not offered for multi-token chunks: there both sides are compute-bound and running them
 * at once oversubscribes the cores (measured, 64-token prefill on 2 cores: mixed 0.71x of
 * device-only, pool-only 0.91-1.07x).
 */
import { InvalidOptionError } from "../errors.js";
import type { CostModel } from "./CostModel.js";

export const SCHEDULE_NAMES = ["auto", "device", "cpu"] as const;
export type ScheduleName = (typeof SCHEDULE_NAMES)[number];

export function parseScheduleName(name: string): ScheduleName {
  if ((SCHEDULE_NAMES as readonly string[]).includes(name)) return name as ScheduleName;
  throw new InvalidOptionError(`--schedule must be one of ${SCHEDULE_NAMES.join(", ")}, got "${name}"`);
}

export interface PlannedExpert {
  expert: number;
  tokens: number;
  resident: boolean;
  /** Served by the pool, it would also be promoted into the device tier: the pool reads its record out too. */
  promote?: boolean;
}

export interface LayerPlacement {
  layer: number;
  device: number;
  cpu: number;
  deviceSeconds: number;
  cpuSeconds: number;
}

export class HybridScheduler {
  private readonly placement: LayerPlacement[];

  constructor(
    readonly name: ScheduleName,
    private readonly cost: CostModel | undefined,
    numLayers: number,
    /** The device side computes on the same CPU cores as the pool. Default true. */
    private readonly deviceIsCpu = true,
    /** Workers of the CPU pool (experts it runs side by side). Default 1. */
    private readonly poolThreads = 1
  ) {
    if (name === "auto" && !cost) throw new Error("the auto schedule needs a cost model");
    this.placement = Array.from({ length: numLayers }, (_, layer) => ({ layer, device: 0, cpu: 0, deviceSeconds: 0, cpuSeconds: 0 }));
  }

  /** Which experts of a layer run on the CPU pool (the rest run on the device side). */
  plan(experts: readonly PlannedExpert[]): Set<number> {
    const cpu = new Set<number>();
    if (this.name === "device") return cpu;
    if (this.name === "cpu") {
      for (const e of experts) cpu.add(e.expert);
      return cpu;
    }
    const c = this.cost!;
    if (this.deviceIsCpu) return this.planSharedCores(experts, c);
    // Separate device: longest first, each to the side where the layer would finish sooner (greedy makespan).
    const items = experts.map((e) => ({ e, device: (e.resident ? 0 : c.loadSeconds) + c.deviceSeconds(e.tokens), cpu: c.cpuSeconds(e.tokens) }));
    items.sort((a, b) => Math.max(b.device, b.cpu) - Math.max(a.device, a.cpu) || a.e.expert - b.e.expert);
    let deviceBusy = 0;
    let cpuBusy = 0;
    for (const it of items) {
      if (Math.max(deviceBusy + it.device, cpuBusy) <= Math.max(deviceBusy, cpuBusy + it.cpu)) deviceBusy += it.device;
      else {
        cpuBusy += it.cpu;
        cpu.add(it.e.expert);
      }
    }
    return cpu;
  }

  /** The cheapest of device-only, missing-to-pool and pool-only when both sides share the cores. */
  private planSharedCores(experts: readonly PlannedExpert[], c: CostModel): Set<number> {
    const onDevice = (e: PlannedExpert) => (e.resident ? 0 : c.loadSeconds) + c.deviceSeconds(e.tokens);
    const onPool = (e: PlannedExpert) => c.cpuSeconds(e.tokens) + (e.promote ? c.loadSeconds : 0);
    const cost = (toPool: Set<number>) => {
      let device = 0;
      let pool = 0;
      let longest = 0;
      for (const e of experts) {
        if (!toPool.has(e.expert)) device += onDevice(e);
        else {
          const t = onPool(e);
          pool += t;
          longest = Math.max(longest, t);
        }
      }
      return device + Math.max(longest, pool / this.poolThreads);
    };
    const plans = [new Set<number>(), new Set(experts.map((e) => e.expert))];
    if (experts.every((e) => e.tokens === 1)) plans.splice(1, 0, new Set(experts.filter((e) => !e.resident && onPool(e) < onDevice(e)).map((e) => e.expert)));
    // Ties go to the plan listed first: fewer experts on the pool.
    let best = plans[0]!;
    let bestCost = cost(best);
    for (const p of plans.slice(1)) {
      const t = cost(p);
      if (t < bestCost) {
        best = p;
        bestCost = t;
      }
    }
    return best;
  }

  record(layer: number, side: "device" | "cpu", experts: number, seconds: number): void {
    const p = this.placement[layer]!;
    if (side === "device") {
      p.device += experts;
      p.deviceSeconds += seconds;
    } else {
      p.cpu += experts;
      p.cpuSeconds += seconds;
    }
  }

  stats(): { schedule: ScheduleName; cost?: CostModel["figures"]; layers: LayerPlacement[] } {
    return { schedule: this.name, cost: this.cost?.figures, layers: this.placement.map((p) => ({ ...p })) };
  }
}
