/**
 * The CPU side of the hybrid scheduler: a piscina pool whose workers compute experts from host
 * memory (each worker reads the records it computes from the store file). Closed gracefully (never terminated mid-task: that would abort the process).
 */
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { Piscina } from "piscina";
import { isPlainExpert, nativeExpertSpec, type ExpertActivation } from "../kernels/expertActivation.js";
import { layerRecordBytes, nativeRecordCode, type ExpertRecordShape } from "../store/recordEncodings.js";
import type { ExpertStore } from "../store/ExpertStore.js";
import type { ExpertResult, ExpertTask } from "./expertWorker.js";

export class CpuExpertPool {
  private readonly pool: Piscina;
  readonly threads: number;
  /** The native kernel's activation/bias spec; absent for the plain expert (silu, no biases). */
  private readonly spec: number[] | undefined;

  constructor(
    private readonly store: ExpertStore,
    /** The store's records (each layer's size: store/recordEncodings.ts) and what an expert computes. */
    private readonly layout: ExpertRecordShape & { activation?: ExpertActivation },
    threads = Math.max(1, os.availableParallelism() - 1)
  ) {
    const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
    this.threads = threads;
    this.spec = isPlainExpert(layout) ? undefined : Array.from(nativeExpertSpec(layout.activation, layout.expertBias));
    this.pool = new Piscina({ filename: path.join(root, "dist", "workers", "expertEntry.cjs"), minThreads: threads, maxThreads: threads, idleTimeout: 60_000 });
  }

  /** y [T, H] of expert (layer, expert) for x [T, H]; x is copied, the caller keeps it. */
  async compute(layer: number, expert: number, x: Float32Array, tokens: number): Promise<Float32Array> {
    return (await this.computeAndRead(layer, expert, x, tokens, false)).y;
  }

  /** compute(), and with `withRecord` the expert's record as the worker read it (for promotion). */
  async computeAndRead(layer: number, expert: number, x: Float32Array, tokens: number, withRecord: boolean): Promise<{ y: Float32Array; record?: Uint8Array }> {
    const { hiddenSize, expertFfn } = this.layout;
    const recordBytes = layerRecordBytes(this.layout, layer);
    const encoding = nativeRecordCode(this.layout, layer);
    const task: ExpertTask = { store: this.store.path, offset: this.store.span(layer, expert).offset, encoding, hiddenSize, expertFfn, recordBytes, layer, expert, x: x.slice(), tokens, returnRecord: withRecord, spec: this.spec };
    const result = (await this.pool.run(task, { transferList: [task.x.buffer as ArrayBuffer] })) as ExpertResult;
    const yBytes = tokens * hiddenSize * 4;
    return { y: new Float32Array(result, 0, tokens * hiddenSize), record: withRecord ? new Uint8Array(result, yBytes, recordBytes) : undefined };
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}
