/**
 * Token ids for a prompt that continues the previous one (a conversation one turn longer): the
 * previous prompt's ids, with its reply's tokens as they were sampled (what the KV cache holds),
 * are kept, and only the new text is tokenized. Tokenizing the whole text again would often give
 * other ids for the reply (a sampled sequence need not be the canonical tokenization), and the
 * cache could not be reused.
 */
export class PromptContinuation {
  private text = "";
  private ids: number[] = [];

  constructor(private readonly encode: (text: string) => number[]) {}

  /** Tokens of the remembered conversation. */
  get length(): number {
    return this.ids.length;
  }

  /**
   * The ids of `text`. When the remembered text is a prefix of it and tokenizes the same on its
   * own as within it (the boundary splits no token), the remembered ids are kept and the rest
   * tokenized; otherwise the whole text is tokenized.
   */
  encodeText(text: string): number[] {
    const all = this.encode(text);
    if (this.ids.length > 0 && text.startsWith(this.text)) {
      const before = this.encode(this.text);
      if (before.length <= all.length && before.every((id, i) => all[i] === id)) return [...this.ids, ...all.slice(before.length)];
    }
    return all;
  }

  /** Remembers a conversation: its text and ids (the prompt's, then the reply's as sampled). */
  remember(text: string, ids: readonly number[]): void {
    this.text = text;
    this.ids = [...ids];
  }

  clear(): void {
    this.text = "";
    this.ids = [];
  }
}
