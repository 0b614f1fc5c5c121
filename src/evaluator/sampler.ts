/**
 * Token sampling: greedy at temperature 0; otherwise temperature, top-k, top-p (nucleus), drawn
 * from a seeded generator so a seed reproduces a run.
 */
import { InvalidOptionError, MoeRunError } from "../errors.js";

export interface SamplingOptions {
  /** 0 = greedy (argmax). Default 0. */
  temperature?: number;
  /** Keep only the K most likely tokens; 0 = all. Default 0. */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches P. Default 1. */
  topP?: number;
  /** Seed of the sampling generator. Default: random. */
  seed?: number;
}

/** mulberry32: small, fast, good enough for sampling (and for tests' random workloads). */
export function createRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The error for logits that are NaN or infinite: the model's numbers broke down (NaN or Inf in
 * its weights, or an overflow), and whatever would be sampled or scored from them is garbage.
 */
export function nonFiniteLogitsError(where: string): MoeRunError {
  return new MoeRunError(
    "NON_FINITE_OUTPUT",
    `the model computed non-finite logits (NaN or infinity) ${where}: its weights may hold NaN or Inf values or overflow; ` +
      `check the model with --verify, re-import it (the import refuses non-finite weights), or try another precision`
  );
}

/** Throws nonFiniteLogitsError when any logit is NaN or infinite. */
export function assertFiniteLogits(logits: Float32Array, where = "for the next token"): void {
  for (let i = 0; i < logits.length; i++) {
    if (!Number.isFinite(logits[i]!)) throw nonFiniteLogitsError(where);
  }
}

export function argmax(v: Float32Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

export class Sampler {
  private readonly temperature: number;
  private readonly topK: number;
  private readonly topP: number;
  private readonly rng: () => number;

  constructor(options: SamplingOptions = {}) {
    this.temperature = options.temperature ?? 0;
    this.topK = options.topK ?? 0;
    this.topP = options.topP ?? 1;
    if (!(this.temperature >= 0)) throw new InvalidOptionError(`temperature must be >= 0, got ${options.temperature}`);
    if (!Number.isInteger(this.topK) || this.topK < 0) throw new InvalidOptionError(`top-k must be a whole number >= 0, got ${options.topK}`);
    if (!(this.topP > 0 && this.topP <= 1)) throw new InvalidOptionError(`top-p must be in (0, 1], got ${options.topP}`);
    this.rng = createRng(options.seed ?? Math.floor(Math.random() * 2 ** 32));
  }

  /** A token id drawn from `logits`; throws (NON_FINITE_OUTPUT) when they hold NaN or infinity. */
  sample(logits: Float32Array): number {
    assertFiniteLogits(logits);
    if (this.temperature === 0) return argmax(logits);
    const ids = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]!);
    const kept = this.topK > 0 ? ids.slice(0, this.topK) : ids;
    const max = logits[kept[0]!]!;
    const p = kept.map((i) => Math.exp((logits[i]! - max) / this.temperature));
    const total = p.reduce((a, b) => a + b, 0);
    let cut = kept.length;
    if (this.topP < 1) {
      let acc = 0;
      for (let i = 0; i < kept.length; i++) {
        acc += p[i]! / total;
        if (acc >= this.topP) {
          cut = i + 1;
          break;
        }
      }
    }
    const mass = p.slice(0, cut).reduce((a, b) => a + b, 0);
    let r = this.rng() * mass;
    for (let i = 0; i < cut; i++) {
      r -= p[i]!;
      if (r <= 0) return kept[i]!;
    }
    return kept[cut - 1]!;
  }
}
