/**
 * Stop sequences over streamed text: text is passed on as it comes, except a tail that could be
 * the start of a stop sequence, which is held until the next piece tells; at a stop sequence the
 * text before it is the last.
 */
export class StopMatcher {
  private pending = "";

  constructor(private readonly stops: readonly string[]) {}

  /** Feeds a piece; returns the text that can be sent now and whether a stop sequence was reached. */
  push(piece: string): { text: string; stopped: boolean } {
    this.pending += piece;
    if (this.stops.length === 0) return this.take(this.pending.length, false);
    let cut = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      const text = this.pending.slice(0, cut);
      this.pending = "";
      return { text, stopped: true };
    }
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.pending.length); k > hold; k--) {
        if (this.pending.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    return this.take(this.pending.length - hold, false);
  }

  /** The text held back, at the end of generation. */
  flush(): string {
    return this.take(this.pending.length, false).text;
  }

  private take(n: number, stopped: boolean): { text: string; stopped: boolean } {
    const text = this.pending.slice(0, n);
    this.pending = this.pending.slice(n);
    return { text, stopped };
  }
}
