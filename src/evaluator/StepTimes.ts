/**
 * Where forward passes spend their time (seconds, summed), so a user can see the fixed cost per
 * token next to the expert kernels:
 *   embed   : token embedding lookup
 *   dense   : attention + router (+ shared expert) of every layer, KV append included
 *   routing : top-k, observers/predictor hooks, combining expert outputs (JS)
 *   experts : expert kernels, including waits for experts still being read
 *   kv      : growing the KV cache (copies), RoPE tables
 *   head    : final norm + LM head
 *   sampling: choosing the next token (added by the generator)
 * A decode step run whole in native code (FusedDecode) puts its native-timed dense layers and
 * experts under dense and experts, and the rest of its call and its bookkeeping under routing.
 */
export class StepTimes {
  readonly seconds = { embed: 0, dense: 0, routing: 0, experts: 0, kv: 0, head: 0, sampling: 0 };
  /** Bytes copied to grow the KV cache. */
  kvCopiedBytes = 0;
  forwards = 0;
  tokens = 0;
  /** Tokens decoded in one native call (FusedDecode). */
  fusedTokens = 0;

  snapshot(): StepTimesSnapshot {
    return { seconds: { ...this.seconds }, kvCopiedBytes: this.kvCopiedBytes, forwards: this.forwards, tokens: this.tokens, fusedTokens: this.fusedTokens };
  }

  /** What happened between `before` and now. */
  since(before: StepTimesSnapshot): StepTimesSnapshot {
    const seconds = { ...this.seconds };
    for (const k of Object.keys(seconds) as (keyof typeof seconds)[]) seconds[k] -= before.seconds[k];
    return {
      seconds,
      kvCopiedBytes: this.kvCopiedBytes - before.kvCopiedBytes,
      forwards: this.forwards - before.forwards,
      tokens: this.tokens - before.tokens,
      fusedTokens: this.fusedTokens - before.fusedTokens,
    };
  }
}

export interface StepTimesSnapshot {
  seconds: StepTimes["seconds"];
  kvCopiedBytes: number;
  forwards: number;
  tokens: number;
  fusedTokens: number;
}
