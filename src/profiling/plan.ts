/**
 * Decode speed prediction for `moe-run plan`, from measured machine figures (machine.ts) and the
 * miss rate of a routing trace replayed through the expert cache at the device budget:
 *
 *   time per token = layers x dense + layers x topK x expert compute
 *                    + misses per token x record bytes / bandwidth of the tier misses come from
 *
 * The tier is the host (page cache, warm store reads) when the whole store fits the host budget,
 * else the disk (cold store reads). Physical bounds beside it: the bytes every token must read
 * (active experts + dense weights) over memory bandwidth, and the missed bytes over the tier's
 * bandwidth; no schedule beats the larger of the two.
 */
import type { ModelManifest } from "../model/manifest.js";
import { InvalidOptionError } from "../errors.js";
import { OFFLINE_POLICIES, type PolicyName } from "../cache/policies/index.js";
import type { MachineFigures, ModelFigures } from "./machine.js";
import { simulate } from "./simulate.js";
import { table } from "./textTable.js";
import { countAccesses, type RoutingTrace } from "./trace.js";

export interface DeviceBudget {
  /** As the user wrote it, e.g. "25%" or "4MiB". */
  label: string;
  /** Infinity = unlimited. */
  bytes: number;
}

export interface PlanRow {
  budget: string;
  deviceBytes: number | null;
  /** Experts the device tier holds: floor((budget - kernel working memory) / record bytes), at most all. */
  capacity: number;
  capacityShare: number;
  hitRate: number;
  missesPerToken: number;
  tier: "host" | "disk";
  tierGBps: number;
  /** Predicted seconds per token, by part. */
  seconds: { dense: number; experts: number; misses: number; total: number };
  tokensPerSecond: number;
  bounds: {
    /** Active expert records + dense weights read per token. */
    activeBytesPerToken: number;
    /** activeBytesPerToken / memory bandwidth. */
    memorySeconds: number;
    missedBytesPerToken: number;
    /** missedBytesPerToken / tier bandwidth. */
    tierSeconds: number;
    /** 1 / max(memorySeconds, tierSeconds): no schedule decodes faster. */
    maxTokensPerSecond: number;
  };
}

export interface Plan {
  model: string;
  policy: PolicyName;
  numLayers: number;
  numExperts: number;
  topK: number;
  recordBytes: number;
  storeBytes: number;
  denseBytesPerToken: number;
  hostBytes: number;
  machine: { memoryReadGBps: number } & Omit<ModelFigures, "key" | "measuredAt">;
  trace: { records: number; accesses: number; source: string };
  notes: string[];
  rows: PlanRow[];
}

/** Bytes of dense weights the onnx dense layers read per decode step: layer graphs and head with their data, one embedding row. */
export function denseBytesPerToken(manifest: ModelManifest): number {
  const graphs = [...manifest.graphs.layers, manifest.graphs.head];
  let bytes = manifest.dims.hiddenSize * 4;
  for (const [file, info] of Object.entries(manifest.files)) if (graphs.some((g) => file === g || file === `${g}.data`)) bytes += info.bytes;
  return bytes;
}

export interface PlanInput {
  manifest: ModelManifest;
  machine: MachineFigures;
  figures: ModelFigures;
  trace: RoutingTrace;
  traceSource: string;
  budgets: readonly DeviceBudget[];
  /** Host budget in bytes (the store's pages in RAM). */
  hostBytes: number;
  /**
   * Dense bytes a decode step reads as the loaded runtime holds them (engineInfo().denseBytesPerToken:
   * the native layers' weights at the experts' width or a GGUF's own blocks). Default: the graph
   * files' fp32 weights (what the onnx dense layers read).
   */
  denseBytesPerToken?: number;
  policy: PolicyName;
  /**
   * Prompt tokens of each trace seq, when known (a trace profiled just now): miss rates then
   * count decode steps only, with the cache as prefill left it.
   */
  promptTokens?: readonly number[];
}

/**
 * Hit rate of decode steps alone. Online policies decide from the past only, so replaying the
 * trace to the end of a prompt's prefill and to the end of its decode and subtracting gives that
 * decode's misses with the cache state it really had; summed over prompts.
 */
export function decodeHitRates(trace: RoutingTrace, promptTokens: readonly number[], capacities: number[], policy: PolicyName): Map<number, number> | undefined {
  const recs = trace.records;
  const marks: { start: number; end: number }[] = []; // per seq: first decode record, end of seq
  for (let i = 0; i < recs.length; ) {
    const seq = recs[i]!.seq;
    let start = -1;
    for (; i < recs.length && recs[i]!.seq === seq; i++) if (start < 0 && recs[i]!.token >= (promptTokens[seq] ?? Infinity)) start = i;
    if (start >= 0) marks.push({ start, end: i });
  }
  const missesAt = new Map<number, Map<number, number>>(); // prefix length -> capacity -> misses
  const at = (n: number) => {
    let m = missesAt.get(n);
    if (!m) {
      m = new Map(n === 0 ? capacities.map((c) => [c, 0]) : simulate({ meta: trace.meta, records: recs.slice(0, n) }, { capacities, policies: [policy] }).map((r) => [r.capacity, r.misses]));
      missesAt.set(n, m);
    }
    return m;
  };
  let accesses = 0;
  for (const { start, end } of marks) for (let i = start; i < end; i++) accesses += recs[i]!.experts.length;
  if (accesses === 0) return undefined;
  return new Map(capacities.map((c) => [c, 1 - marks.reduce((sum, { start, end }) => sum + at(end).get(c)! - at(start).get(c)!, 0) / accesses]));
}

export function planDecode(input: PlanInput): Plan {
  const { manifest, figures, trace } = input;
  const d = manifest.dims;
  if (trace.meta.numLayers !== d.numLayers || trace.meta.numExperts !== d.numExperts) {
    throw new InvalidOptionError(`the trace has ${trace.meta.numLayers} layers x ${trace.meta.numExperts} experts but the model ${d.numLayers} x ${d.numExperts}; profile this model (--prompts) or pass its own trace`);
  }
  const record = manifest.experts.recordBytes;
  const total = d.numLayers * d.numExperts;
  const storeBytes = total * record;
  const working = (2 * d.expertFfn + d.hiddenSize) * 4; // the runtime's kernel scratch (MoeModel.load)
  const notes: string[] = [];
  const onHost = storeBytes <= input.hostBytes;
  let tierGBps = onHost ? figures.storeWarmGBps : (figures.storeColdGBps ?? figures.storeWarmGBps);
  if (!onHost && figures.storeColdGBps === null) notes.push(`disk tier: ${figures.storeColdNote ?? "cold reads not measured"}; using the warm store bandwidth`);
  if (!(tierGBps > 0)) tierGBps = figures.storeWarmGBps;
  const accessesPerToken = d.numLayers * d.topK;
  const dense = d.numLayers * figures.denseSecondsPerLayer;
  const experts = accessesPerToken * figures.expertSeconds;
  const denseBytes = input.denseBytesPerToken ?? denseBytesPerToken(manifest);
  const activeBytes = accessesPerToken * record + denseBytes;
  const memorySeconds = activeBytes / (input.machine.memoryReadGBps * 1e9);
  const accesses = countAccesses(trace);
  const capacities = input.budgets.map((b) => Math.max(1, Math.min(total, Number.isFinite(b.bytes) ? Math.floor((b.bytes - working) / record) : total)));
  const unique = [...new Set(capacities)];
  const decode = input.promptTokens !== undefined && !OFFLINE_POLICIES.includes(input.policy) ? decodeHitRates(trace, input.promptTokens, unique, input.policy) : undefined;
  const decodeOnly = decode !== undefined;
  const hitRates = decode ?? new Map(simulate(trace, { capacities: unique, policies: [input.policy] }).map((r) => [r.capacity, r.hitRate]));
  notes.push(`capacity = floor((budget - ${working} B kernel scratch) / ${record} B per record): the experts the runtime's device tier holds`);
  notes.push(decodeOnly ? "miss rates over decode steps only (prefill warms the cache, as in a run)" : "miss rates over every token of the trace, prefill included (prompt lengths unknown)");
  const rows = input.budgets.map((b, i): PlanRow => {
    const capacity = capacities[i]!;
    const hitRate = hitRates.get(capacity)!;
    const missesPerToken = (1 - hitRate) * accessesPerToken;
    const missSeconds = (missesPerToken * record) / (tierGBps * 1e9);
    const seconds = { dense, experts, misses: missSeconds, total: dense + experts + missSeconds };
    const tierSeconds = missSeconds;
    return {
      budget: b.label,
      deviceBytes: Number.isFinite(b.bytes) ? b.bytes : null,
      capacity,
      capacityShare: capacity / total,
      hitRate,
      missesPerToken,
      tier: onHost ? "host" : "disk",
      tierGBps,
      seconds,
      tokensPerSecond: 1 / seconds.total,
      bounds: {
        activeBytesPerToken: activeBytes,
        memorySeconds,
        missedBytesPerToken: missesPerToken * record,
        tierSeconds,
        maxTokensPerSecond: 1 / Math.max(memorySeconds, tierSeconds),
      },
    };
  });
  if (capacities.some((c, i) => c < d.topK && Number.isFinite(input.budgets[i]!.bytes))) notes.push(`a budget below ${d.topK} experts is refused by the runtime (it needs one token's experts of a layer)`);
  const { key: _key, measuredAt: _at, ...rest } = figures;
  return {
    model: trace.meta.model ?? manifest.source.dir,
    policy: input.policy,
    numLayers: d.numLayers,
    numExperts: d.numExperts,
    topK: d.topK,
    recordBytes: record,
    storeBytes,
    denseBytesPerToken: denseBytes,
    hostBytes: input.hostBytes,
    machine: { memoryReadGBps: input.machine.memoryReadGBps, ...rest },
    trace: { records: trace.records.length, accesses, source: input.traceSource },
    notes,
    rows,
  };
}

const ms = (s: number) => (1000 * s).toFixed(3);
const mib = (b: number) => (b / 2 ** 20).toFixed(2);

/** The plan as terminal text: machine figures, one row per budget, bounds. */
export function formatPlan(plan: Plan): string {
  const m = plan.machine;
  const lines = [
    `model ${plan.model}: ${plan.numLayers} layers x ${plan.numExperts} experts, top-${plan.topK}, record ${mib(plan.recordBytes)} MiB, store ${mib(plan.storeBytes)} MiB, dense ${mib(plan.denseBytesPerToken)} MiB/token`,
    `machine: memory read ${m.memoryReadGBps.toFixed(1)} GB/s; store reads warm ${m.storeWarmGBps.toFixed(2)} GB/s, cold ${m.storeColdGBps === null ? "n/a" : m.storeColdGBps.toFixed(3) + " GB/s"}; ` +
      `expert ${(1e6 * m.expertSeconds).toFixed(1)} us (${m.kernel}, ${m.threads} thread${m.threads > 1 ? "s" : ""}); dense ${ms(m.denseSecondsPerLayer)} ms/layer; all-resident decode ${ms(m.tokenSeconds)} ms/token`,
    `miss rates: policy ${plan.policy} replaying ${plan.trace.source} (${plan.trace.accesses} expert accesses); host budget ${plan.hostBytes === Infinity ? "unlimited" : mib(plan.hostBytes) + " MiB"}`,
  ];
  const head = ["device budget", "capacity", "hit rate", "miss/tok", "tier", "dense ms", "experts ms", "misses ms", "pred tok/s", "bound tok/s"];
  const rows = plan.rows.map((r) => [
    r.budget,
    `${r.capacity} (${(100 * r.capacityShare).toFixed(0)}%)`,
    r.hitRate.toFixed(3),
    r.missesPerToken.toFixed(2),
    `${r.tier} ${r.tierGBps.toFixed(2)} GB/s`,
    ms(r.seconds.dense),
    ms(r.seconds.experts),
    ms(r.seconds.misses),
    r.tokensPerSecond.toFixed(1),
    r.bounds.maxTokensPerSecond.toFixed(1),
  ]);
  lines.push(table(head, rows, 2));
  const b = plan.rows[0]?.bounds;
  if (b) lines.push(`bounds: active bytes ${mib(b.activeBytesPerToken)} MiB/token / memory ${m.memoryReadGBps.toFixed(1)} GB/s = ${ms(b.memorySeconds)} ms/token; missed bytes / tier bandwidth per budget: ${plan.rows.map((r) => `${r.budget} ${ms(r.bounds.tierSeconds)} ms`).join(", ")}`);
  for (const n of plan.notes) lines.push(`note: ${n}`);
  return lines.join("\n");
}
