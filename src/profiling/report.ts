/**
 * The data behind `moe-run report` (written as report JSON, rendered by reportHtml.ts): hit rate vs
 * capacity for every policy beside Belady's MIN, the best online policy at 25/37.5/50/75% of all
 * experts, per-layer expert usage, top-1 change rates, SRP/SCH routing consistency, and predictor
 * recall per layer when an evaluation is given (the optional `predictors` section).
 */
import * as fs from "node:fs";
import { InvalidOptionError } from "../errors.js";
import { POLICY_NAMES, OFFLINE_POLICIES, type PolicyName } from "../cache/policies/index.js";
import { localRoutingConsistency, type ConsistencyReport } from "./consistency.js";
import { shareCapacities } from "./profileSummary.js";
import { simulate } from "./simulate.js";
import { table } from "./textTable.js";
import { countAccesses, type RoutingTrace } from "./trace.js";
import type { ModelManifest } from "../model/manifest.js";
import { evaluatePredictors, type PredictorEvaluation } from "./predictorEval.js";
import { countTokens, expertUsage, top1ChangeRates, usageEntropy } from "./traceStats.js";

export const REPORT_FORMAT = "moe-run-report";
export const KEY_SHARES = [0.25, 0.375, 0.5, 0.75] as const;

export interface ReportCapacityRow {
  capacity: number;
  share: number;
  hitRate: Partial<Record<PolicyName, number>>;
  /** The online (non-Belady) policy with the highest hit rate here. */
  bestOnline: { policy: PolicyName; hitRate: number } | null;
  belady: number | null;
}

export interface ReportData {
  format: typeof REPORT_FORMAT;
  version: 1;
  generatedAt: string;
  trace: { source: string; model?: string; numLayers: number; numExperts: number; topK: number; records: number; tokens: number; prompts: number; accesses: number; expertBytes?: number; hasProbs: boolean };
  totalExperts: number;
  policies: PolicyName[];
  /** Hit rate vs capacity (one cache over all experts, cold start), increasing capacity. */
  curve: ReportCapacityRow[];
  /** Rows at 25, 37.5, 50 and 75% of all experts. */
  keyCapacities: ReportCapacityRow[];
  usage: { counts: number[][]; entropyBits: number[]; normalizedEntropy: number[] };
  top1: { toNextLayer: (number | null)[]; adjacentTokens: (number | null)[] };
  consistency: ConsistencyReport;
  /** Predictor recall per layer (supplied, or evaluated on the trace with src/predict). */
  predictors?: PredictorEvaluation[];
  /** Why the predictor section looks the way it does. */
  predictorNote?: string;
}

export interface ReportOptions {
  source: string;
  policies?: readonly PolicyName[];
  /** Points on the capacity axis besides the key shares. Default 16. */
  curvePoints?: number;
  /** Predictor evaluations to show as given (--predictors); default: evaluate on the trace. */
  predictors?: PredictorEvaluation[];
  /** The trace's model: enables the cross-layer gate predictor when the trace has gate inputs. */
  model?: { dir: string; manifest: ModelManifest };
}

export function buildReport(trace: RoutingTrace, options: ReportOptions): ReportData {
  const { meta } = trace;
  const total = meta.numLayers * meta.numExperts;
  const policies = [...(options.policies ?? POLICY_NAMES)];
  if (!policies.includes("belady")) policies.push("belady");
  const points = options.curvePoints ?? 16;
  const keys = shareCapacities(total, KEY_SHARES);
  const caps = new Set<number>(keys.map((k) => k.capacity));
  for (let i = 1; i <= points; i++) caps.add(Math.max(1, Math.round((i / points) * total)));
  const capacities = [...caps].sort((a, b) => a - b);
  const sims = simulate(trace, { capacities, policies });
  const row = (capacity: number): ReportCapacityRow => {
    const hitRate: Partial<Record<PolicyName, number>> = {};
    for (const s of sims) if (s.capacity === capacity) hitRate[s.policy] = s.hitRate;
    let bestOnline: ReportCapacityRow["bestOnline"] = null;
    for (const p of policies) {
      const h = hitRate[p];
      if (h !== undefined && !OFFLINE_POLICIES.includes(p) && (bestOnline === null || h > bestOnline.hitRate)) bestOnline = { policy: p, hitRate: h };
    }
    return { capacity, share: capacity / total, hitRate, bestOnline, belady: hitRate.belady ?? null };
  };
  const counts = expertUsage(trace);
  const entropies = counts.map(usageEntropy);
  const top1 = top1ChangeRates(trace);
  const data: ReportData = {
    format: REPORT_FORMAT,
    version: 1,
    generatedAt: new Date().toISOString(),
    trace: {
      source: options.source,
      numLayers: meta.numLayers,
      numExperts: meta.numExperts,
      topK: meta.topK,
      records: trace.records.length,
      tokens: countTokens(trace),
      prompts: new Set(trace.records.map((r) => r.seq)).size,
      accesses: countAccesses(trace),
      hasProbs: trace.records.every((r) => r.probs !== undefined),
    },
    totalExperts: total,
    policies,
    curve: capacities.map(row),
    keyCapacities: keys.map((k) => row(k.capacity)),
    usage: { counts, entropyBits: entropies.map((e) => e.bits), normalizedEntropy: entropies.map((e) => e.normalized) },
    top1: { toNextLayer: top1.layerPairs, adjacentTokens: top1.adjacentTokens },
    consistency: localRoutingConsistency(trace),
  };
  if (meta.model !== undefined) data.trace.model = meta.model;
  if (meta.expertBytes !== undefined) data.trace.expertBytes = meta.expertBytes;
  if (options.predictors && options.predictors.length > 0) {
    data.predictors = options.predictors;
    data.predictorNote = "Predictor evaluation supplied with --predictors.";
  } else {
    const ev = evaluatePredictors(trace, options.model);
    data.predictors = ev.evaluations;
    data.predictorNote =
      "Next-layer recall@top-k of the predictor module's predictors (src/predict), replaying this trace token by token. " +
      ev.skipped.map((s) => `Not shown: ${s.name} (${s.reason}).`).join(" ");
  }
  return data;
}

/** Reads the `predictors` section of a JSON file (a predictor evaluation, or a report JSON). */
export function readPredictors(file: string): PredictorEvaluation[] {
  let o: unknown;
  try {
    o = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (err) {
    throw new InvalidOptionError(`${file}: cannot read a predictor evaluation (${(err as Error).message})`);
  }
  const list = Array.isArray(o) ? o : (o as { predictors?: unknown } | null)?.predictors;
  if (!Array.isArray(list)) throw new InvalidOptionError(`${file}: expected a JSON object with a "predictors" array (or the array itself)`);
  list.forEach((p: Partial<PredictorEvaluation>, i) => {
    const ok =
      typeof p?.name === "string" &&
      Array.isArray(p.ks) &&
      Array.isArray(p.layers) &&
      Array.isArray(p.recall) &&
      p.recall.length === p.ks.length &&
      p.recall.every((r) => Array.isArray(r) && r.length === p.layers!.length && r.every((v) => v === null || (typeof v === "number" && v >= 0 && v <= 1)));
    if (!ok) throw new InvalidOptionError(`${file}: predictors[${i}] needs "name", "ks", "layers" and "recall" [ks.length][layers.length] of numbers in [0, 1] or null`);
  });
  return list as PredictorEvaluation[];
}

const f3 = (v: number | null | undefined) => (v === null || v === undefined ? "n/a" : v.toFixed(3));

/** The terminal summary of a report. */
export function formatReport(r: ReportData): string {
  const t = r.trace;
  const online = r.policies.filter((p) => !OFFLINE_POLICIES.includes(p));
  const lines = [
    `trace ${t.source}${t.model ? ` (${t.model})` : ""}: ${t.records} records, ${t.tokens} tokens, ${t.prompts} prompt(s), ${t.accesses} expert accesses; ${t.numLayers} layers x ${t.numExperts} experts, top-${t.topK}`,
    "",
    `hit rate (one cache over all ${r.totalExperts} experts, cold start)`,
    table(
      ["capacity", ...online, "best online", "belady", "best/belady"],
      r.keyCapacities.map((k) => [
        `${k.capacity} (${(100 * k.share).toFixed(1)}%)`,
        ...online.map((p) => f3(k.hitRate[p])),
        k.bestOnline ? `${k.bestOnline.policy} ${f3(k.bestOnline.hitRate)}` : "n/a",
        f3(k.belady),
        k.bestOnline && k.belady ? f3(k.bestOnline.hitRate / k.belady) : "n/a",
      ])
    ),
    "",
    `expert-usage entropy per layer: ${Math.min(...r.usage.normalizedEntropy).toFixed(3)} to ${Math.max(...r.usage.normalizedEntropy).toFixed(3)} of log2(${t.numExperts})`,
    `routing consistency (SCH with ${r.consistency.schCapacity} experts per layer): ` +
      Object.keys(r.consistency.srp).map((m) => `m=${m} SRP ${f3(r.consistency.srp[m])} SCH ${f3(r.consistency.sch[m])}`).join("; "),
  ];
  for (const p of r.predictors ?? []) {
    lines.push(`predictor ${p.name}: next-layer recall ${p.ks.map((k, i) => `@${k} ${f3(p.mean?.[i])}`).join(", ")}${p.label ? ` (${p.label})` : ""}`);
  }
  if (r.predictorNote) lines.push(r.predictorNote);
  return lines.join("\n");
}
