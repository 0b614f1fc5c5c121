/**
 * The download progress bar on stderr (bytes, rate, time left), over util/progress.ts. Many
 * downloads report small chunks at once, so the bar is redrawn at most five times a second.
 */
import { formatBytes } from "../util/bytes.js";
import { Progress } from "../util/progress.js";

const REDRAW_MS = 200;

function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return "?";
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export class DownloadProgress {
  private readonly bar: Progress;
  /** Bytes in place: downloaded now plus resumed from earlier runs. */
  private done: number;
  /** Bytes downloaded by this process (the rate counts only these). */
  private fetched = 0;
  private shown = 0;
  private lastDraw = 0;
  private readonly started = performance.now();

  constructor(
    private readonly total: number,
    resumed: number,
    enabled: boolean,
    stream: NodeJS.WriteStream = process.stderr
  ) {
    this.bar = new Progress("downloading", total, stream, enabled);
    this.done = resumed;
    if (resumed > 0) this.draw(true);
  }

  /** `n` more bytes arrived. */
  add(n: number): void {
    this.done += n;
    this.fetched += n;
    this.draw(false);
  }

  /** `n` bytes thought in place were dropped (a server that ignored a resume sent the file again). */
  rewind(n: number): void {
    this.done -= n;
  }

  /** Bytes downloaded by this process so far. */
  get downloaded(): number {
    return this.fetched;
  }

  rate(): number {
    const secs = (performance.now() - this.started) / 1000;
    return secs > 0 ? this.fetched / secs : 0;
  }

  private draw(force: boolean): void {
    const now = performance.now();
    if (!force && now - this.lastDraw < REDRAW_MS && this.done < this.total) return;
    this.lastDraw = now;
    const rate = this.rate();
    const eta = rate > 0 ? (this.total - this.done) / rate : Infinity;
    // The first fraction of a second says nothing about the rate.
    const settled = now - this.started >= 1000 || this.done >= this.total;
    const timing = !settled ? "" : `, ${formatBytes(rate)}/s, ${this.done >= this.total ? "done" : `${formatSeconds(eta)} left`}`;
    const detail = `${formatBytes(this.done)} / ${formatBytes(this.total)}${timing}`;
    // Progress counts what it is told; tell it the growth since the last draw (never backwards).
    const step = Math.max(0, this.done - this.shown);
    this.shown += step;
    this.bar.tick(step, detail);
  }

  finish(message: string): void {
    this.bar.finish(message);
  }
}
