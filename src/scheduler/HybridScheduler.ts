/**
 * Splits each layer's activated experts between the device side (the engine's expert kernel over
 * the device tier; GPU with a device provider) and the CPU pool (workers computing from host
 * memory), to finish the layer soonest: resident experts cost their compute; missing ones cost a
 * load plus compute on the device, or compute alone on the CPU pool. Costs come from a
 * calibration measured on this machine (CostModel). Both sides run at once.
 *
 * When the device side is the CPU itself (no GPU provider), both sides share the same cores and
 * memory bandwidth: splitting resident experts gains nothing (measured: decode 0.78x), so resident
 * experts stay on the device side and the pool takes the missing ones it can compute from host
 * memory sooner than the device side could load and compute them.
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
    private readonly deviceIsCpu = true
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
    if (this.deviceIsCpu) {
      for (const e of experts) if (!e.resident && c.cpuSeconds(e.tokens) < c.loadSeconds + c.deviceSeconds(e.tokens)) cpu.add(e.expert);
      return cpu;
    }
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
