/**
 * One generation at a time (the model computes one sequence), with a bounded FIFO of requests
 * waiting their turn: past it, requests are refused at once (the server answers 429).
 */
export class QueueFullError extends Error {
  constructor(readonly waiting: number) {
    super(`the server is busy: ${waiting} requests are already waiting; try again later`);
    this.name = "QueueFullError";
  }
}

interface Waiter {
  start: () => void;
  fail: (err: unknown) => void;
}

export class GenerationQueue {
  private running = false;
  private readonly waiting: Waiter[] = [];

  constructor(readonly maxWaiting: number) {}

  /** Whether a generation runs now. */
  get busy(): boolean {
    return this.running;
  }

  /** Requests waiting their turn. */
  get waitingCount(): number {
    return this.waiting.length;
  }

  /**
   * Resolves when it is this request's turn, to the function that ends it (call it once, always).
   * Rejects at once with QueueFullError when the queue is full, and with the signal's reason when
   * it is aborted while waiting (it then leaves the queue).
   */
  acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.running = false;
      this.waiting.shift()?.start();
    };
    if (!this.running) {
      this.running = true;
      return Promise.resolve(release);
    }
    if (this.waiting.length >= this.maxWaiting) return Promise.reject(new QueueFullError(this.waiting.length));
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal!.reason);
      };
      const waiter: Waiter = {
        start: () => {
          signal?.removeEventListener("abort", onAbort);
          this.running = true;
          resolve(release);
        },
        fail: (err) => {
          signal?.removeEventListener("abort", onAbort);
          reject(err);
        },
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  /** Refuses every waiting request with `err` (shutdown). */
  rejectWaiting(err: unknown): void {
    for (const w of this.waiting.splice(0)) w.fail(err);
  }
}
