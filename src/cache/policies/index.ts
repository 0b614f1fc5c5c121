/** Replacement policies by name (`--policy lru`), with an exhaustiveness check over the names. */
import { InvalidOptionError } from "../../errors.js";
import type { ExpertKey, ReplacementPolicy } from "../types.js";
import { BeladyPolicy } from "./belady.js";
import { LayerLruPolicy } from "./layerLru.js";
import { LfuPolicy } from "./lfu.js";
import { LruPolicy } from "./lru.js";
import { ScorePolicy } from "./score.js";
import { ShallowPolicy } from "./shallow.js";

export { BeladyPolicy, LayerLruPolicy, LfuPolicy, LruPolicy, ScorePolicy, ShallowPolicy };

export const POLICY_NAMES = ["lru", "lfu", "layer-lru", "score", "shallow", "belady"] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** Policies that need the future; the runtime refuses them for live runs. */
export const OFFLINE_POLICIES: readonly PolicyName[] = ["belady"];

export interface PolicyOptions {
  /** belady: the whole access sequence, one key per cache lookup, in order. */
  future?: ArrayLike<ExpertKey>;
  /** lfu: bypass newcomers less frequent than their victims (default true). */
  admission?: boolean;
  /** score: decay per router step (default 0.8). */
  decay?: number;
  /** shallow: layers in the model (default: learnt from the ids seen). */
  numLayers?: number;
  /** shallow: extra ageing of the deepest layer (default 1). */
  depthWeight?: number;
}

export function isPolicyName(name: string): name is PolicyName {
  return (POLICY_NAMES as readonly string[]).includes(name);
}

export function parsePolicyName(name: string): PolicyName {
  const n = name.trim().toLowerCase();
  if (!isPolicyName(n)) throw new InvalidOptionError(`unknown cache policy "${name}"; known policies: ${POLICY_NAMES.join(", ")}`);
  return n;
}

export function createPolicy(name: PolicyName, options: PolicyOptions = {}): ReplacementPolicy {
  switch (name) {
    case "lru":
      return new LruPolicy();
    case "lfu":
      return new LfuPolicy({ admission: options.admission });
    case "layer-lru":
      return new LayerLruPolicy();
    case "score":
      return new ScorePolicy({ decay: options.decay });
    case "shallow":
      return new ShallowPolicy({ numLayers: options.numLayers, depthWeight: options.depthWeight });
    case "belady":
      if (!options.future) {
        throw new InvalidOptionError(`cache policy "belady" is offline: it needs the future access sequence, so it can only replay a trace (moe-run simulate), not serve a live run`);
      }
      return new BeladyPolicy(options.future);
    default: {
      const unhandled: never = name;
      throw new InvalidOptionError(`unknown cache policy "${String(unhandled)}"`);
    }
  }
}
