/**
 * The caller's side of a KvSequence that lives on WorkerModel's compute thread: the same
 * generate/reset/dispose, as messages to the worker (WorkerModel.openSequence makes one).
 */
import { MoeRunError } from "../errors.js";
import type { SequenceGenerateOptions, SequenceStats, TokenSequence } from "../model/KvSequence.js";

export interface WorkerSequenceLink {
  generate(ids: readonly number[], options: SequenceGenerateOptions): AsyncGenerator<string, SequenceStats>;
  reset(): Promise<void>;
  close(): Promise<void>;
}

export class WorkerSequence implements TokenSequence {
  private disposed = false;

  constructor(private readonly link: WorkerSequenceLink) {}

  generate(ids: readonly number[], options: SequenceGenerateOptions = {}): AsyncGenerator<string, SequenceStats> {
    if (this.disposed) throw new MoeRunError("DISPOSED", "this sequence has been disposed");
    return this.link.generate(ids, options);
  }

  reset(): Promise<void> {
    return this.link.reset();
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await this.link.close();
  }
}
