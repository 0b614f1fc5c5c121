/** A progress bar on stderr: redrawn in place on a terminal, coarse lines otherwise (logs, CI). */
export class Progress {
  private done = 0;
  private lastPrinted = -1;
  private readonly tty: boolean;
  private readonly started = performance.now();

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly enabled = true
  ) {
    this.tty = Boolean(stream.isTTY);
  }

  tick(n = 1, detail = ""): void {
    this.done = Math.min(this.total, this.done + n);
    if (!this.enabled) return;
    const pct = this.total === 0 ? 100 : Math.floor((100 * this.done) / this.total);
    if (this.tty) {
      const width = 30;
      const filled = Math.round((width * pct) / 100);
      this.stream.write(`\r${this.label} [${"#".repeat(filled)}${".".repeat(width - filled)}] ${pct}% ${detail}\x1b[K`);
    } else if (pct >= this.lastPrinted + 10 || this.done === this.total) {
      this.lastPrinted = pct;
      this.stream.write(`${this.label} ${pct}% ${detail}\n`);
    }
  }

  finish(message: string): void {
    if (!this.enabled) return;
    const secs = ((performance.now() - this.started) / 1000).toFixed(1);
    this.stream.write(`${this.tty ? "\r\x1b[K" : ""}${this.label}: ${message} (${secs} s)\n`);
  }
}
