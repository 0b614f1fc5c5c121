/** Predictors by name (`--predictor gate`), resolved with an exhaustiveness check. */
import * as fs from "node:fs";
import * as path from "node:path";
import { modelFeatures, type ModelDims } from "../architectures/ModelDims.js";
import { InvalidOptionError, MoeRunError } from "../errors.js";
import type { ModelManifest } from "../model/manifest.js";
import { AffinityPredictor } from "./AffinityPredictor.js";
import { GatePredictor, type RouterWeights } from "./GatePredictor.js";
import { OraclePredictor, type RoutingLog } from "./OraclePredictor.js";
import { ReusePredictor } from "./ReusePredictor.js";
import { PREDICTOR_NAMES, type ExpertPredictor, type PredictorName } from "./types.js";

export function parsePredictorName(name: string): PredictorName {
  const n = name.trim().toLowerCase();
  if (!(PREDICTOR_NAMES as readonly string[]).includes(n)) throw new InvalidOptionError(`unknown predictor "${name}"; known predictors: ${PREDICTOR_NAMES.join(", ")}`);
  return n as PredictorName;
}

/** Routers and post-attention norms of every layer, written by the importer as predictor.bin. */
export function readRouterWeights(modelDir: string, manifest: ModelManifest): RouterWeights {
  const d: ModelDims = manifest.dims;
  const file = path.join(modelDir, manifest.predictor.file);
  const bytes = fs.readFileSync(file);
  const routers = d.numLayers * d.numExperts * d.hiddenSize;
  const norms = d.numLayers * d.hiddenSize;
  if (bytes.byteLength !== 4 * (routers + norms)) throw new MoeRunError("MODEL_DIR_INVALID", `${file} has ${bytes.byteLength} bytes, expected ${4 * (routers + norms)}; re-import the model`);
  const all = new Float32Array(Uint8Array.from(bytes).buffer);
  return {
    numLayers: d.numLayers,
    numExperts: d.numExperts,
    hiddenSize: d.hiddenSize,
    routers: all.subarray(0, routers),
    postNorms: all.subarray(routers),
    rmsNormEps: d.rmsNormEps,
    denseLayers: modelFeatures(d).denseLayers,
  };
}

export interface PredictorContext {
  modelDir: string;
  manifest: ModelManifest;
  /** oracle: the routing of a previous identical run. */
  oracleLog?: RoutingLog;
  log?: (line: string) => void;
}

/** The predictor, or undefined for "none". */
export function createPredictor(name: PredictorName, ctx: PredictorContext): ExpertPredictor | undefined {
  const d = ctx.manifest.dims;
  switch (name) {
    case "none":
      return undefined;
    case "gate":
    case "pregate":
      return new GatePredictor(name, readRouterWeights(ctx.modelDir, ctx.manifest));
    case "affinity":
      return new AffinityPredictor(d.numLayers, d.numExperts, path.join(ctx.modelDir, "routing-stats.mdb"), ctx.log);
    case "reuse":
      return new ReusePredictor(d.numLayers, d.numExperts);
    case "oracle":
      if (!ctx.oracleLog) throw new InvalidOptionError('the "oracle" predictor needs the routing of a previous identical run (profiling only; see bench/prefetch.mjs)');
      return new OraclePredictor(ctx.oracleLog, d.numLayers, d.numExperts);
    default: {
      const never: never = name;
      throw new InvalidOptionError(`unknown predictor "${String(never)}"`);
    }
  }
}
