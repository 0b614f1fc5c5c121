/**
 * Predictor recall per layer from a recorded trace, with the predictor module's own predictors
 * and scorer (src/predict: ExpertPredictor, PredictionTracker): the trace is replayed token by
 * token, and after each layer the predictor's next-layer scores are compared with the routing
 * the trace says came next. Routing-only predictors (reuse, affinity) work on any trace; the
 * cross-layer gate needs the trace's gate inputs (profile --gate-inputs) and the model's routers
 * (--model-dir). pregate needs the residual stream, which traces do not hold.
 */
import type { Routing } from "../evaluator/routing.js";
import type { ModelManifest } from "../model/manifest.js";
import { AffinityPredictor } from "../predict/AffinityPredictor.js";
import { createPredictor } from "../predict/createPredictor.js";
import { ReusePredictor } from "../predict/ReusePredictor.js";
import { PredictionTracker } from "../predict/PredictionTracker.js";
import type { ExpertPredictor, PredictorName } from "../predict/types.js";
import type { RoutingTrace } from "./trace.js";

/**
 * A predictor's recall per target layer (the report's `predictors` section; evaluations written
 * elsewhere should use this shape). recall[i][j] is recall@ks[i] at layers[j]: the share of a
 * token's k predicted experts that it really used there (k = top-k: the module's definition).
 */
export interface PredictorEvaluation {
  name: string;
  /** What was evaluated, on what. */
  label?: string;
  ks: number[];
  layers: number[];
  recall: (number | null)[][];
  /** Per k, over all layers and tokens. */
  mean?: (number | null)[];
  /** Per layer: predicted experts above the prefetch threshold that were used. */
  precision?: (number | null)[];
}

export interface PredictorEvalResult {
  evaluations: PredictorEvaluation[];
  /** Predictors that could not be evaluated on this trace, and why. */
  skipped: { name: PredictorName; reason: string }[];
}

/** Prefetch threshold the runtime uses by default (LoadModelOptions.prefetchThreshold). */
const THRESHOLD = 0.05;

function evaluateOne(trace: RoutingTrace, predictor: ExpertPredictor, label: string): PredictorEvaluation {
  const { numLayers: L, numExperts: E, topK: K } = trace.meta;
  const tracker = new PredictionTracker(predictor.name, L, K, THRESHOLD);
  const H = trace.records.find((r) => r.gate)?.gate?.length ?? 0;
  const empty = new Float32Array(H);
  let seq = -1;
  for (const r of trace.records) {
    if (r.seq !== seq) {
      seq = r.seq;
      predictor.reset();
      tracker.reset();
    }
    if (r.experts.length !== K) continue; // the scorer compares k against k
    const probs = new Float32Array(E);
    if (r.probs) probs.set(r.probs);
    else r.experts.forEach((e, k) => (probs[e] = r.weights[k]!));
    const routing: Routing = { tokens: 1, topK: K, experts: Int32Array.from(r.experts), weights: Float32Array.from(r.weights), probs };
    tracker.actual(r.layer, routing);
    const gateInput = r.gate ? Float32Array.from(r.gate) : empty;
    const next = predictor.observe({ layer: r.layer, tokens: 1, routing, gateInput, residual: empty }, 1);
    if (next[0]) tracker.predicted(r.layer + 1, next[0], 1);
  }
  const report = tracker.report();
  return {
    name: predictor.name,
    label,
    ks: [K],
    layers: report.layers.map((l) => l.layer),
    recall: [report.layers.map((l) => l.recall)],
    mean: [report.layers.length > 0 ? report.recall : null],
    precision: report.layers.map((l) => l.precision),
  };
}

/**
 * Evaluates the predictors a trace allows. `model` (a model directory and its manifest) enables
 * the cross-layer gate when the trace has gate inputs.
 */
export function evaluatePredictors(trace: RoutingTrace, model?: { dir: string; manifest: ModelManifest }): PredictorEvalResult {
  const out: PredictorEvalResult = { evaluations: [], skipped: [] };
  const { numLayers: L, numExperts: E } = trace.meta;
  out.evaluations.push(evaluateOne(trace, new ReusePredictor(L, E), "previous-token reuse: the experts the previous token used at the layer"));
  // No statistics file: affinity learns while the trace replays (the runtime's persisted counts stay untouched).
  out.evaluations.push(evaluateOne(trace, new AffinityPredictor(L, E), "inter-layer affinity, learned online from this trace (cold start)"));
  const hasGate = trace.records.length > 0 && trace.records.every((r) => r.gate);
  if (!hasGate) out.skipped.push({ name: "gate", reason: "the trace has no gate inputs (record them with `moe-run profile --gate-inputs`)" });
  else if (!model) out.skipped.push({ name: "gate", reason: "needs the model's routers: pass --model-dir" });
  else {
    try {
      const gate = createPredictor("gate", { modelDir: model.dir, manifest: model.manifest, log: () => {} })!;
      out.evaluations.push(evaluateOne(trace, gate, "cross-layer gate: the next layer's router applied to this layer's gate input"));
    } catch (err) {
      out.skipped.push({ name: "gate", reason: (err as Error).message });
    }
  }
  out.skipped.push({ name: "pregate", reason: "needs the residual stream, which traces do not record" });
  return out;
}
