/**
 * A token sequence whose KV cache persists between generations: each generate(ids) is given the
 * whole prompt, and only the part after what the cache already holds is computed. Chat sessions
 * (one conversation, turn after turn) and the server (requests that repeat a conversation) build
 * on it. A prompt that parts from the cached tokens keeps their common prefix (the cache is cut
 * back to it) and computes the rest.
 */
import { ContextOverflowError, InvalidOptionError, MoeRunError } from "../errors.js";
import type { KvCache } from "../evaluator/KvCache.js";
import type { GenerateOptions, GenerationStats, MoeModel } from "./MoeModel.js";

export interface SequenceStats extends GenerationStats {
  /** Tokens of the prompt (promptTokens) taken from the KV cache, not computed again; prefill tok/s is over the rest. */
  reusedTokens: number;
}

/** What KvSequence (on this thread) and the worker's sequences (WorkerModel) both offer. */
export interface TokenSequence {
  /** Generates after the prompt `ids` (token ids, chat template applied), reusing the cached prefix. */
  generate(ids: readonly number[], options?: SequenceGenerateOptions): AsyncGenerator<string, SequenceStats>;
  /** Empties the KV cache. */
  reset(): Promise<void>;
  /** Frees the KV cache; the sequence cannot be used again. */
  dispose(): Promise<void>;
}

/** generate()'s options; `chat` does not apply (the ids are the prompt) and onStats gets SequenceStats. */
export type SequenceGenerateOptions = Omit<GenerateOptions, "chat" | "onStats"> & { onStats?: (stats: SequenceStats) => void };

export class KvSequence implements TokenSequence {
  private kv: KvCache | undefined;
  /** The token ids the KV cache holds, in order. */
  private cached: number[] = [];
  private busy = false;
  private disposed = false;

  constructor(private readonly model: MoeModel) {}

  /** Tokens the KV cache holds now. */
  get cachedTokens(): number {
    return this.cached.length;
  }

  async *generate(ids: readonly number[], options: SequenceGenerateOptions = {}): AsyncGenerator<string, SequenceStats> {
    if (this.disposed) throw new MoeRunError("DISPOSED", "this sequence has been disposed");
    if (this.busy) throw new InvalidOptionError("this sequence is generating already: one generation at a time per sequence");
    if (ids.length === 0) throw new InvalidOptionError("the prompt is empty after tokenization");
    if (ids.length > this.model.contextSize) throw new ContextOverflowError(ids.length, this.model.contextSize);
    this.busy = true;
    const d = this.model.dims;
    const kv = (this.kv ??= this.model.newKvCache());
    // The common prefix stays in the cache; one prompt token at least is computed again (its
    // logits give the first new token).
    let reused = Math.min(commonPrefix(this.cached, ids), ids.length - 1);
    if (reused < this.cached.length) {
      kv.truncate(reused);
      this.cached = this.cached.slice(0, reused);
    }
    if (reused === 0) this.model.experts.startSequence();
    const generated: number[] = [];
    const extend = (s: GenerationStats): SequenceStats => ({ ...s, promptTokens: ids.length, reusedTokens: reused });
    let failed = false;
    try {
      const stats = yield* this.model.continueSequence(kv, ids.slice(reused), {
        ...options,
        onToken: (id) => {
          generated.push(id);
          options.onToken?.(id);
        },
        onStats: options.onStats && ((s) => options.onStats!(extend(s))),
      });
      return extend(stats);
    } catch (err) {
      // An abort comes between forward passes: the cache is whole. After another error it may
      // hold part of a pass: start the next generation afresh.
      failed = !options.signal?.aborted;
      throw err;
    } finally {
      if (failed) {
        kv.reset();
        this.cached = [];
      } else {
        // The cache holds the prompt and the generated tokens fed back (not the last one sampled).
        this.cached = [...ids, ...generated].slice(0, kv.length);
      }
      this.busy = false;
    }
  }

  async reset(): Promise<void> {
    if (this.busy) throw new InvalidOptionError("cannot reset a sequence while it generates; abort the generation first");
    this.kv?.reset();
    this.cached = [];
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    this.kv = undefined;
    this.cached = [];
  }
}

/** Length of the longest common prefix of `a` and `b`. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}
