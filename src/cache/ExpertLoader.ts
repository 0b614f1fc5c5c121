/**
 * Asynchronous expert reads for prefetch and for a layer's misses: records come from the host
 * tier or the store's data file, read on libuv's thread pool (RecordFile: large direct reads), so the compute thread
 * keeps computing resident experts meanwhile. At most `maxInFlight` records are read at once (each
 * read itself is several 1 MiB preads in flight); queued loads whose prediction went stale (their
 * layer has already run) are dropped before they start.
 */
/** Reads one record (the host tier's record(), or ExpertStore.readRecord). */
export type RecordReader = (layer: number, expert: number) => Promise<Uint8Array>;

interface Queued {
  layer: number;
  expert: number;
  stillWanted: () => boolean;
  resolve: (r: Uint8Array | undefined) => void;
  reject: (e: unknown) => void;
}

export class ExpertLoader {
  private closed = false;
  private inFlight = 0;
  private readonly queue: Queued[] = [];
  private readonly idle = new Set<() => void>();

  constructor(
    private readonly read: RecordReader,
    /** Records read at once. Default 4 (libuv's default thread pool size). */
    private readonly maxInFlight = 4
  ) {}

  /** Reads one record; `stillWanted` is asked when the read would start, so stale predictions cost nothing. */
  load(layer: number, expert: number, stillWanted: () => boolean = () => true): Promise<Uint8Array | undefined> {
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      this.queue.push({ layer, expert, stillWanted, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length) {
      const job = this.queue.shift()!;
      if (this.closed || !job.stillWanted()) {
        job.resolve(undefined);
        continue;
      }
      this.inFlight++;
      this.read(job.layer, job.expert).then(
        (r) => this.finish(job, () => job.resolve(r)),
        (e) => this.finish(job, () => job.reject(e))
      );
    }
    if (this.inFlight === 0 && this.queue.length === 0) for (const f of [...this.idle]) f();
  }

  private finish(job: Queued, settle: () => void): void {
    this.inFlight--;
    settle();
    this.pump();
  }

  /** Drops queued loads and waits for reads in flight (the store must outlive them). Later loads resolve to undefined. */
  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.resolve(undefined);
    if (this.inFlight === 0) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.idle.delete(done);
        resolve();
      };
      this.idle.add(done);
    });
  }
}
