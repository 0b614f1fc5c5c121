/**
 * A model whose compute runs on its own worker thread (what loadModel() returns): onnxruntime's
 * run() and the native kernels are synchronous, so an app (Electron, a server) that generated on
 * its main thread would freeze for a forward pass at a time. The same API as MoeModel
 * (LanguageModel); tokenization stays on the caller's thread.
 */
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import type { ModelDims } from "../architectures/ModelDims.js";
import type { ExecutionDevice } from "../backends/onnx.js";
import * as errors from "../errors.js";
import { InvalidOptionError, MoeRunError, type MoeRunErrorCode } from "../errors.js";
import { CacheCapacityError, CacheInUseError } from "../cache/types.js";
import type { EngineInfo, LanguageModel } from "../model/LanguageModel.js";
import type { ModelManifest } from "../model/manifest.js";
import type { GenerateOptions, LoadModelOptions } from "../model/MoeModel.js";
import { ChatSession, type ChatSessionOptions } from "../model/ChatSession.js";
import { TextTokenizer, type ChatMessage } from "../tokenizer/TextTokenizer.js";
import { checkLoadOptions } from "../util/optionChecks.js";
import type { ExpertCacheReport, GenerationStats, LoadInfo, PerplexityResult, Request, Response, ScheduleStats, WireError, WireGenerateOptions } from "./protocol.js";
import { WorkerSequence } from "./WorkerSequence.js";

type Listener = (msg: Response) => void;

/** Error classes by name, so that an error from the worker keeps its subclass (instanceof works). */
const ERROR_CLASSES: Record<string, { prototype: MoeRunError }> = { ...errors, CacheCapacityError, CacheInUseError } as never;

function toError(e: WireError): Error {
  if (e.code) {
    const err = new MoeRunError(e.code as MoeRunErrorCode, e.message);
    const cls = ERROR_CLASSES[e.name];
    if (cls && cls.prototype instanceof MoeRunError) Object.setPrototypeOf(err, cls.prototype);
    err.name = e.name;
    return err;
  }
  if (e.name === "AbortError") return new DOMException(e.message, "AbortError");
  const err = new Error(e.message);
  err.name = e.name;
  return err;
}

/** Drop-in for distributive Omit over the Request union. */
type RequestBody = Request extends infer R ? (R extends { id: number } ? Omit<R, "id"> : never) : never;

export class WorkerModel implements LanguageModel {
  readonly dims: ModelDims;
  readonly manifest: ModelManifest;
  readonly contextSize: number;
  readonly tokenizer: TextTokenizer;
  readonly expertKernel: string;
  readonly device: ExecutionDevice;
  private readonly engine: EngineInfo;
  private readonly eos: readonly number[];
  private readonly listeners = new Map<number, Listener>();
  private nextId = 1;
  private disposed = false;

  private constructor(
    private readonly worker: Worker,
    info: LoadInfo,
    tokenizer: TextTokenizer
  ) {
    this.dims = info.dims;
    this.manifest = info.manifest;
    this.contextSize = info.contextSize;
    this.expertKernel = info.engine.expertKernel;
    this.device = info.device;
    this.engine = info.engine;
    this.eos = info.eosIds;
    this.tokenizer = tokenizer;
    worker.on("message", (msg: Response) => this.listeners.get(msg.id)?.(msg));
  }

  static async load(modelDir: string, options: LoadModelOptions = {}): Promise<WorkerModel> {
    // Checked here first: a bad value is refused before a thread is started (threads capped once, here).
    const { log, oracleLog, ...wire } = checkLoadOptions(options);
    if (oracleLog !== undefined || wire.predictor === "oracle") {
      throw new InvalidOptionError("the oracle predictor (oracleLog) replays routing observed on the compute thread: load the model with loadModelOnThisThread() to use it");
    }
    const write = log ?? ((line: string) => process.stderr.write(line + "\n"));
    const dir = path.resolve(modelDir);
    const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
    const worker = new Worker(path.join(root, "dist", "engine", "engineWorker.js"), {
      // No Node options from the caller: the engine is plain compiled JS that needs none, and some
      // the app may run with make a worker fail to start (--input-type, --expose-gc, ...).
      execArgv: [],
    });
    const listeners = new Map<number, Listener>();
    const onMessage = (msg: Response) => listeners.get(msg.id)?.(msg);
    worker.on("message", onMessage);
    try {
      const info = await new Promise<LoadInfo>((resolve, reject) => {
        worker.once("error", reject);
        listeners.set(0, (msg) => {
          if (msg.type === "log") write(msg.line);
          else if (msg.type === "result") resolve(msg.value as LoadInfo);
          else if (msg.type === "error") reject(toError(msg.error));
        });
        try {
          worker.postMessage({ id: 0, method: "load", dir, options: wire } satisfies Request);
        } catch (err) {
          // A function or another value that cannot be copied to the compute thread.
          if (!(err instanceof Error && err.name === "DataCloneError")) throw err;
          throw new InvalidOptionError(`loadModel's options must be plain data to reach the compute thread (${err.message}); log is the one callback it takes; use loadModelOnThisThread() for others`);
        }
      });
      const m = info.manifest;
      const tokenizer = TextTokenizer.load(path.join(dir, m.tokenizer.json), m.tokenizer.config && path.join(dir, m.tokenizer.config));
      worker.off("message", onMessage);
      return new WorkerModel(worker, info, tokenizer);
    } catch (err) {
      await worker.terminate();
      throw err;
    }
  }

  tokenize(prompt: string | readonly ChatMessage[], chat = false): number[] {
    return this.tokenizer.encodePrompt(prompt, chat);
  }

  eosIds(): number[] {
    return [...this.eos];
  }

  /** Which implementations run this model, and the dense bytes one decode token reads (as loaded). */
  engineInfo(): EngineInfo {
    if (this.disposed) throw new MoeRunError("DISPOSED", "this model has been disposed");
    return { ...this.engine };
  }

  generate(prompt: string | readonly ChatMessage[], options: GenerateOptions = {}): AsyncGenerator<string, GenerationStats> {
    return this.stream((o) => ({ method: "generate", prompt: typeof prompt === "string" ? prompt : [...prompt], options: o }), options);
  }

  /** A token sequence whose KV cache, kept on the worker, persists between generations (see KvSequence). */
  openSequence(): WorkerSequence {
    const id = this.nextId++;
    this.post({ method: "sequenceOpen" }, id);
    // Requests are served in order: the sequence exists before any request that names it.
    return new WorkerSequence({
      generate: (ids, options) => this.stream((o) => ({ method: "sequenceGenerate", sequence: id, ids: [...ids], options: o }), options, true),
      reset: async () => void (await this.call({ method: "sequenceReset", sequence: id })),
      close: async () => void (this.disposed ? undefined : await this.call({ method: "sequenceClose", sequence: id })),
    });
  }

  /** A conversation whose KV cache persists between turns (see ChatSession); tokenization stays on this thread. */
  createChatSession(options: ChatSessionOptions = {}): ChatSession {
    return new ChatSession(this.tokenizer, this.contextSize, this.openSequence(), options);
  }

  /** Streams the pieces of the generation `request` starts on the worker; callbacks and abort stay on this thread. */
  private async *stream<S>(
    request: (wire: WireGenerateOptions) => RequestBody,
    options: Omit<GenerateOptions, "onStats"> & { onStats?: (stats: S) => void },
    waitOnLeave = false
  ): AsyncGenerator<string, S> {
    const { signal, onStats, onToken, onLogits, ...wire } = options;
    const id = this.nextId++;
    const queue: Response[] = [];
    let wake: (() => void) | undefined;
    const next = async (): Promise<Response> => {
      while (queue.length === 0) await new Promise<void>((r) => (wake = r));
      return queue.shift()!;
    };
    this.listeners.set(id, (msg) => {
      queue.push(msg);
      wake?.();
    });
    const onAbort = () => {
      if (!this.disposed) this.worker.postMessage({ id: this.nextId++, method: "abort", target: id } satisfies Request);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    let settled = false;
    // After an abort nothing more is delivered, as on the caller's thread where generation stops
    // at its next step; the worker may have computed a token or two before the abort reached it.
    // The piece of the last token delivered still comes, unless a dropped token came first.
    let pieceOwed = false;
    try {
      this.post(request({ ...wire, wantLogits: onLogits !== undefined }), id);
      if (signal?.aborted) onAbort();
      for (;;) {
        const msg = await next();
        switch (msg.type) {
          case "piece":
            if (signal?.aborted && !pieceOwed) break;
            pieceOwed = false;
            yield msg.text;
            break;
          case "token":
            if (signal?.aborted) pieceOwed = false;
            else if (msg.logits) onLogits?.(msg.logits);
            else {
              pieceOwed = true;
              onToken?.(msg.token);
            }
            break;
          case "stats":
            onStats?.(msg.stats as S);
            break;
          case "log":
            process.stderr.write(msg.line + "\n");
            break;
          case "result":
            settled = true;
            return msg.value as S;
          case "error":
            settled = true;
            if (msg.error.name === "AbortError" && signal?.aborted) throw signal.reason ?? toError(msg.error);
            throw toError(msg.error);
        }
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      // The consumer left early (break, return, throw): stop the worker's generation too, and for
      // a sequence wait until it has stopped (its KV cache is then settled, and its stats known).
      if (!settled) onAbort();
      while (!settled && waitOnLeave && !this.disposed) {
        const msg = await next();
        if (msg.type === "stats") onStats?.(msg.stats as S);
        settled = msg.type === "result" || msg.type === "error";
      }
      this.listeners.delete(id);
    }
  }

  async logits(ids: readonly number[]): Promise<{ data: Float32Array; dims: readonly number[] }> {
    const data = (await this.call({ method: "logits", ids: [...ids] })) as Float32Array;
    return { data, dims: [ids.length, this.dims.vocabSize] };
  }

  perplexity(text: string, options: { window?: number; signal?: AbortSignal } = {}): Promise<PerplexityResult> {
    return this.call({ method: "perplexity", text, window: options.window }, { signal: options.signal }) as Promise<PerplexityResult>;
  }

  async teacherForce(ids: readonly number[], options: { signal?: AbortSignal } = {}): Promise<void> {
    await this.call({ method: "teacherForce", ids: [...ids] }, { signal: options.signal });
  }

  /** Expert cache statistics since load (see MoeModel.cacheStats), from the compute thread. */
  cacheStats(): Promise<ExpertCacheReport> {
    return this.call({ method: "cacheStats" }) as Promise<ExpertCacheReport>;
  }

  /** Where experts ran, per layer (see MoeModel.scheduleStats), from the compute thread. */
  scheduleStats(): Promise<ScheduleStats> {
    return this.call({ method: "scheduleStats" }) as Promise<ScheduleStats>;
  }

  /** Finishes the model on its thread (sessions, pools, statistics), then ends the thread. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    try {
      await this.call({ method: "dispose" }, { disposing: true });
    } finally {
      await this.worker.terminate();
      // Anything still waiting on the worker (a generation its consumer did not finish) settles now.
      const gone = { name: "MoeRunError", code: "DISPOSED", message: "the model was disposed during generation" };
      for (const [id, listener] of [...this.listeners]) listener({ id, type: "error", error: gone });
    }
  }

  private post(body: RequestBody, id: number): void {
    if (this.disposed) throw new MoeRunError("DISPOSED", "this model has been disposed");
    this.worker.postMessage({ ...body, id } as Request);
  }

  /** One request and its result; `signal` stops it on the worker (perplexity, teacherForce). */
  private call(body: RequestBody, options: { disposing?: boolean; signal?: AbortSignal } = {}): Promise<unknown> {
    const { disposing, signal } = options;
    if (this.disposed && !disposing) return Promise.reject(new MoeRunError("DISPOSED", "this model has been disposed"));
    if (signal?.aborted) return Promise.reject(signal.reason ?? new DOMException("aborted", "AbortError"));
    const id = this.nextId++;
    const onAbort = () => {
      if (!this.disposed) this.worker.postMessage({ id: this.nextId++, method: "abort", target: id } satisfies Request);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    return new Promise((resolve, reject) => {
      this.listeners.set(id, (msg) => {
        if (msg.type === "log") return process.stderr.write(msg.line + "\n");
        this.listeners.delete(id);
        signal?.removeEventListener("abort", onAbort);
        if (msg.type === "result") resolve(msg.value);
        else if (msg.type === "error") reject(msg.error.name === "AbortError" && signal?.aborted ? (signal.reason ?? toError(msg.error)) : toError(msg.error));
      });
      this.worker.postMessage({ ...body, id } as Request);
    });
  }
}
