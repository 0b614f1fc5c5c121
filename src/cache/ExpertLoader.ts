/**
 * Asynchronous expert loads on a piscina worker: the main thread keeps computing resident
 * experts while records are read from the store. Queued loads for a layer that has already run
 * are dropped before they start (cancelled predictions).
 */
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import type { LoadTask } from "./loaderWorker.js";

export class ExpertLoader {
  private readonly pool: Piscina;
  private closed = false;

  constructor(
    private readonly storePath: string,
    threads = 1
  ) {
    // Always the compiled worker: it runs in a plain worker thread without a TypeScript loader.
    const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
    this.pool = new Piscina({ filename: path.join(root, "dist", "workers", "loaderEntry.cjs"), minThreads: threads, maxThreads: threads, idleTimeout: 60_000 });
  }

  /** Reads one record; `stillWanted` is asked before queueing, so stale predictions cost nothing. */
  async load(layer: number, expert: number, bytes: number, stillWanted: () => boolean = () => true): Promise<Uint8Array | undefined> {
    if (this.closed) return undefined;
    const task: LoadTask = { store: this.storePath, layer, expert, bytes };
    if (!stillWanted()) return undefined;
    const buffer = (await this.pool.run(task)) as ArrayBuffer;
    return new Uint8Array(buffer);
  }

  /** Waits for loads in flight, then stops the worker (never terminate a worker mid-task). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.close();
  }
}
