/**
 * A loaded model computing on the caller's thread: tokenizer, graphs and expert store, with text
 * generation and perplexity. Create with loadModelOnThisThread() (profilers and tools: it also has
 * onRouting, the oracle predictor and the cache objects); loadModel() puts one on a worker thread
 * behind WorkerModel. Call dispose() when done.
 */
import * as os from "node:os";
import * as path from "node:path";
import { kvShape, modelFeatures, moeLayers, type ModelDims } from "../architectures/ModelDims.js";
import { TieredExpertSource, type ExpertCacheReport } from "../cache/TieredExpertSource.js";
import { ContextOverflowError, InvalidOptionError, MoeRunError } from "../errors.js";
import { measurePrefetchPayoff } from "../cache/prefetchPayoff.js";
import { createPredictor } from "../predict/createPredictor.js";
import type { ExpertPredictor, PredictorName } from "../predict/types.js";
import { loadNativeAddon } from "../kernels/nativeAddon.js";
import type { ExecutionDevice } from "../backends/onnx.js";
import { CostModel } from "../scheduler/CostModel.js";
import { CpuExpertPool } from "../scheduler/CpuExpertPool.js";
import { HybridScheduler } from "../scheduler/HybridScheduler.js";
import { expertChecksum, expertRecordBytes } from "../store/ExpertStore.js";
import { formatBytes, formatBytesDistinct, resolveByteSize } from "../util/bytes.js";
import { checkLoadOptions, checkPins } from "../util/optionChecks.js";
import type { KvCache } from "../evaluator/KvCache.js";
import { IncrementalDecoder } from "../tokenizer/IncrementalDecoder.js";
import { ModelRunner, type RoutingObserver } from "../evaluator/ModelRunner.js";
import { nonFiniteLogitsError, Sampler } from "../evaluator/sampler.js";
import { ExpertStore } from "../store/ExpertStore.js";
import { releaseRecord } from "../store/RecordFile.js";
import { describeExpertEncodings, layerRecordBytes } from "../store/recordEncodings.js";
import { TextTokenizer, type ChatMessage } from "../tokenizer/TextTokenizer.js";
import { ChatSession, type ChatSessionOptions } from "./ChatSession.js";
import { KvSequence } from "./KvSequence.js";
import type { GenerateOptions, GenerationStats, PerplexityResult } from "./GenerateOptions.js";
import type { EngineInfo, LanguageModel, ScheduleStats } from "./LanguageModel.js";
import type { LoadModelOptions } from "./LoadModelOptions.js";
import { expertShape, readManifest, type ModelManifest } from "./manifest.js";
import { describePlan, planMemory, readGpuFreeBytes, readMemoryLimits, type MemoryPlan } from "./memoryPlan.js";

export type { LoadModelOptions } from "./LoadModelOptions.js";
export type { GenerateOptions, GenerationStats, PerplexityResult } from "./GenerateOptions.js";

export class MoeModel implements LanguageModel {
  readonly dir: string;
  readonly manifest: ModelManifest;
  readonly dims: ModelDims;
  readonly tokenizer: TextTokenizer;
  readonly contextSize: number;
  private runner: ModelRunner | undefined;
  private readonly store: ExpertStore;
  readonly experts: TieredExpertSource;
  /** How memory was divided between the tiers at load. */
  readonly memoryPlan: MemoryPlan;
  /** Forward passes running now (settled or not), for dispose() to wait on. */
  private readonly passes = new Set<Promise<void>>();

  private constructor(
    dir: string,
    manifest: ModelManifest,
    tokenizer: TextTokenizer,
    contextSize: number,
    runner: ModelRunner,
    store: ExpertStore,
    experts: TieredExpertSource,
    private readonly predictor: ExpertPredictor | undefined,
    memoryPlan: MemoryPlan
  ) {
    this.memoryPlan = memoryPlan;
    this.dir = dir;
    this.manifest = manifest;
    this.dims = manifest.dims;
    this.tokenizer = tokenizer;
    this.contextSize = contextSize;
    this.runner = runner;
    this.store = store;
    this.experts = experts;
  }

  static async load(modelDir: string, options: LoadModelOptions = {}): Promise<MoeModel> {
    options = checkLoadOptions(options);
    const dir = path.resolve(modelDir);
    const manifest = readManifest(dir, { verify: options.verify });
    const d = manifest.dims;
    checkPins(options.pin, d.numLayers, d.numExperts, modelFeatures(d).denseLayers);
    const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
    const limits = options.memoryLimits ?? readMemoryLimits();
    if (options.contextSize !== undefined && (!Number.isInteger(options.contextSize) || options.contextSize < 2 || options.contextSize > d.maxPositions)) {
      throw new InvalidOptionError(`context size must be a whole number from 2 to ${d.maxPositions} (the model's limit), got ${options.contextSize}`);
    }
    const tokenizer = TextTokenizer.load(path.join(dir, manifest.tokenizer.json), manifest.tokenizer.config && path.join(dir, manifest.tokenizer.config));
    const f = modelFeatures(d);
    const layout = { ...expertShape(manifest), activation: f.expertActivation };
    const record = expertRecordBytes(layout);
    const threads = options.threads ?? os.availableParallelism();
    const rssBefore = process.memoryUsage().rss;
    // The expert kernel decides the device tier's form of an expert (record, or GPU tensors), hence its size.
    const runner = await ModelRunner.create(dir, manifest, { threads, expertKernel: options.expertKernel, device: options.device, dense: options.dense, kvCache: options.kvCache, fusedDecode: options.fusedDecode, log });
    // KV cache per position: K [Hkv, S, keyDim] and V [Hkv, S, valueDim] per layer (MLA: the latent
    // alone), in the precision the dense layers keep it in (the onnx graphs: fp32 whatever was
    // asked); a step holds past and present at once.
    const kv = kvShape(d);
    const kvBytesPerPosition = 2 * d.numLayers * kv.heads * (kv.keyDim + kv.valueDim) * (runner.kvPrecision === "f32" ? 4 : 2);
    let contextSize = options.contextSize ?? d.maxPositions;
    if (options.contextSize === undefined && kvBytesPerPosition * contextSize > limits.availableBytes / 8) {
      // The model's full context would take over an eighth of the memory there is, memory the
      // experts need more: default to less.
      const fit = Math.floor(limits.availableBytes / 8 / kvBytesPerPosition);
      contextSize = Math.max(Math.min(256, d.maxPositions), 2 ** Math.floor(Math.log2(Math.max(2, fit))));
      log(`moe-run: context size ${contextSize} (the model allows ${d.maxPositions}, whose KV cache would take ${formatBytes(kvBytesPerPosition * d.maxPositions)} of ${formatBytes(limits.availableBytes)} available); --context-size to change`);
    }
    let store: ExpertStore | undefined;
    let predictor: ExpertPredictor | undefined;
    let pool: CpuExpertPool | undefined;
    let experts: TieredExpertSource | undefined;
    try {
      const resident = runner.kernel.residentBytes;
      const expertLayers = moeLayers(d);
      // Per layer: the layers of a GGUF that mixes expert types differ (store/recordEncodings.ts).
      const totalResidentBytes = expertLayers.reduce((s, l) => s + runner.kernel.residentBytesOf(l), 0) * d.numExperts;
      const totalRecordBytes = expertLayers.reduce((s, l) => s + layerRecordBytes(layout, l), 0) * d.numExperts;
      // Kernel scratch of one decode step: gate and up activations [F] and the output [H], fp32.
      const kernelBytes = (2 * d.expertFfn + d.hiddenSize) * 4;
      const readsInFlight = 4;
      const minDevice = d.topK * resident + kernelBytes;
      const deviceOverride = options.deviceMem === undefined ? undefined : resolveByteSize(options.deviceMem, totalResidentBytes);
      if (deviceOverride !== undefined && deviceOverride < minDevice) {
        const [budget, minimum] = formatBytesDistinct(deviceOverride, minDevice);
        throw new InvalidOptionError(
          `device memory budget ${budget} is below the minimum ${minimum} (${minDevice} bytes): ` +
            `${d.topK} activated experts of ${formatBytes(resident)} each plus ${formatBytes(kernelBytes)} working memory`
        );
      }
      const hostOverride = options.hostMem === undefined ? undefined : resolveByteSize(options.hostMem, totalRecordBytes);
      if (hostOverride !== undefined && hostOverride !== 0 && hostOverride < record) {
        const [budget, minimum] = formatBytesDistinct(hostOverride, record);
        throw new InvalidOptionError(`host memory budget ${budget} is below the minimum ${minimum} (${record} bytes): one expert record (or 0 for no host tier)`);
      }
      store = ExpertStore.openReadOnly(path.join(dir, manifest.experts.store), layout, { layers: expertLayers, numExperts: d.numExperts });
      if (options.verify) verifyExperts(store, manifest);
      const depth = options.prefetchDepth ?? 1;
      if (!Number.isInteger(depth) || depth < 1) throw new InvalidOptionError(`prefetch depth must be a whole number >= 1, got ${options.prefetchDepth}`);
      // The plan is made with what is loaded so far; made again once the CPU pool's workers (if
      // any) are up, so that the process's RSS then is what the experts must fit beside.
      const plan = () => {
        const rss = process.memoryUsage().rss;
        return planMemory(
          {
            // Read again, not `limits`: what is available changed as the graphs loaded.
            limits: options.memoryLimits ?? readMemoryLimits(),
            processBytes: rss,
            denseBytes: Math.max(0, rss - rssBefore),
            kvBytes: kvBytesPerPosition * contextSize,
            // The kernel's scratch, plus the records held beyond the budget at once: a bypass (used once, not
            // kept) and a host-tier read; loads in flight have their room reserved inside the budget.
            workingBytes: kernelBytes + 2 * record,
            deviceFormTotalBytes: totalResidentBytes,
            recordTotalBytes: totalRecordBytes,
            formIsRecord: runner.kernel.residency === undefined,
            gpuFreeBytes: runner.device === "cpu" || deviceOverride !== undefined ? undefined : readGpuFreeBytes(),
            deviceOverride,
            hostOverride,
          },
          minDevice
        );
      };
      let memoryPlan = plan();
      let schedule = options.schedule ?? (loadNativeAddon().addon ? "auto" : "device");
      // On the CPU with every expert resident after its first use, the pool would only serve the
      // first misses while costing a worker, its calibration and memory: compute on one side.
      if (options.schedule === undefined && schedule === "auto" && runner.device === "cpu" && memoryPlan.allExpertsFit) schedule = "device";
      let hybrid: ModelRunner["hybrid"];
      if (schedule !== "device") {
        if (!loadNativeAddon().addon) throw new InvalidOptionError(`--schedule ${schedule} needs the CPU expert pool, which needs the native kernels: ${loadNativeAddon().reason}`);
        pool = new CpuExpertPool(store, layout, options.cpuThreads);
        const cost = schedule === "auto" ? await CostModel.calibrate({ ...layout, numLayers: d.numLayers, numExperts: d.numExperts, layers: expertLayers }, store, runner.kernel, runner.device, pool, { recalibrate: options.recalibrate }) : undefined;
        hybrid = { scheduler: new HybridScheduler(schedule, cost, d.numLayers, runner.device === "cpu", pool.threads), pool };
        memoryPlan = plan();
      }
      if (memoryPlan.deviceFrom === "user" && deviceOverride! > memoryPlan.availableBytes && !memoryPlan.allExpertsFit) {
        log(`moe-run: warning: the device budget ${formatBytes(deviceOverride!)} is more than this process may use (${formatBytes(memoryPlan.availableBytes)}, ${memoryPlan.source}); it may run out of memory`);
      }
      if (!memoryPlan.allExpertsFit) log(`moe-run: ${describePlan(memoryPlan)}`);
      // Prefetch: a predictor the user named, loaded ahead where it pays; by default ("auto") the
      // cross-layer gate, only for a model that does not fit and only where loading ahead pays.
      const asked = options.predictor ?? "auto";
      const compute = { topK: d.topK, hiddenSize: d.hiddenSize, kernel: runner.kernel };
      let fetch = asked !== "none" && options.prefetch !== false;
      let predictorName: PredictorName = asked === "auto" ? "none" : asked;
      if (asked === "auto") {
        if (!memoryPlan.allExpertsFit && options.prefetch !== false) {
          const payoff = options.prefetch === true ? undefined : await measurePrefetchPayoff(store, expertLayers, d.numExperts, compute);
          if (!payoff || payoff.pays) predictorName = "gate";
          else log(`moe-run: no prefetch: ${payoff.reason} (--predictor gate --prefetch-always to force)`);
        }
        fetch = predictorName !== "none";
      } else if (fetch && options.prefetch !== true) {
        const payoff = await measurePrefetchPayoff(store, expertLayers, d.numExperts, compute);
        if (!payoff.pays) {
          fetch = false;
          log(`moe-run: prefetch off: ${payoff.reason}; the predictor is still scored (--prefetch-always to force)`);
        } else if (memoryPlan.allExpertsFit) {
          fetch = false; // everything stays resident after its first use: prefetch only helps the first tokens
        }
      }
      predictor = createPredictor(predictorName, { modelDir: dir, manifest, oracleLog: options.oracleLog, log });
      experts = new TieredExpertSource(store, {
        form: runner.kernel,
        deviceBudgetBytes: memoryPlan.deviceBytes,
        workingBytes: kernelBytes,
        hostBytes: memoryPlan.hostBytes,
        policy: options.policy ?? "lru",
        pinned: options.pin,
        numLayers: d.numLayers,
        topK: d.topK,
        prefetch: predictor ? { predictor, fetch, depth, threshold: options.prefetchThreshold } : undefined,
        readsInFlight,
        promote: schedule === "auto",
        log,
      });
      runner.attach(experts);
      runner.hybrid = hybrid;
      return new MoeModel(dir, manifest, tokenizer, contextSize, runner, store, experts, predictor, memoryPlan);
    } catch (err) {
      await experts?.drain();
      await pool?.close();
      await runner.dispose();
      store?.close();
      throw err;
    }
  }

  /** An empty KV cache in the form the dense layers compute with (LoadModelOptions.kvCache). */
  newKvCache(): KvCache {
    return this.live().newKvCache();
  }

  /** Prompt text -> token ids (chat template applied when asked). */
  tokenize(prompt: string | readonly ChatMessage[], chat = false): number[] {
    return this.tokenizer.encodePrompt(prompt, chat);
  }

  /** Streams generated text pieces; the generator's return value is the run's stats. */
  async *generate(prompt: string | readonly ChatMessage[], options: GenerateOptions = {}): AsyncGenerator<string, GenerationStats> {
    const runner = this.live();
    const maxTokens = checkMaxTokens(options.maxTokens);
    const sampler = new Sampler(options);
    const promptIds = this.tokenize(prompt, options.chat);
    if (promptIds.length === 0) throw new InvalidOptionError("the prompt is empty after tokenization");
    if (promptIds.length > this.contextSize) throw new ContextOverflowError(promptIds.length, this.contextSize);
    const kv = this.newKvCache();
    this.experts.startSequence();
    return yield* this.generateFrom(runner, kv, promptIds, maxTokens, sampler, options);
  }

  /**
   * A conversation whose KV cache persists between turns: each prompt() feeds only what the cache
   * does not hold yet. See ChatSession.
   */
  createChatSession(options: ChatSessionOptions = {}): ChatSession {
    return new ChatSession(this.tokenizer, this.contextSize, this.openSequence(), options);
  }

  /** A token sequence whose KV cache persists between generations (what chat sessions and the server build on). */
  openSequence(): KvSequence {
    this.live();
    return new KvSequence(this);
  }

  /**
   * Generation that continues a sequence: `kv` holds its first kv.length tokens, `ids` follow
   * them. For KvSequence, which keeps a KV cache between generations.
   */
  async *continueSequence(kv: KvCache, ids: readonly number[], options: GenerateOptions = {}): AsyncGenerator<string, GenerationStats> {
    const runner = this.live();
    const maxTokens = checkMaxTokens(options.maxTokens);
    const sampler = new Sampler(options);
    if (ids.length === 0) throw new InvalidOptionError("the prompt is empty after tokenization");
    if (kv.length + ids.length > this.contextSize) throw new ContextOverflowError(kv.length + ids.length, this.contextSize);
    return yield* this.generateFrom(runner, kv, ids, maxTokens, sampler, options);
  }

  /** Feeds `promptIds` after what `kv` holds, then samples: the loop of generate() and continueSequence(). */
  private async *generateFrom(runner: ModelRunner, kv: KvCache, promptIds: readonly number[], maxTokens: number, sampler: Sampler, options: GenerateOptions): AsyncGenerator<string, GenerationStats> {
    const eos = new Set(this.eosIds());
    const stats: GenerationStats = {
      promptTokens: promptIds.length,
      generatedTokens: 0,
      prefillSeconds: 0,
      decodeSeconds: 0,
      prefillTokensPerSecond: 0,
      decodeTokensPerSecond: 0,
      finishReason: "length",
      decodeBreakdown: runner.times.since(runner.times.snapshot()),
      prefillBreakdown: runner.times.since(runner.times.snapshot()),
    };
    let timesMark = runner.times.snapshot();
    const generated: number[] = [];
    const detok = new IncrementalDecoder((ids) => this.tokenizer.decode(ids));
    let t0 = performance.now();
    try {
      if (maxTokens === 0) return stats;
      throwIfAborted(options.signal);
      // The cache grows once, to what this generation can reach, not by doubling past the prompt.
      kv.plannedLength = Math.min(kv.length + promptIds.length + maxTokens, this.contextSize);
      t0 = performance.now();
      let logits = (await this.forward(runner, promptIds, kv)).data;
      stats.prefillSeconds = (performance.now() - t0) / 1000;
      stats.prefillBreakdown = runner.times.since(timesMark);
      timesMark = runner.times.snapshot();
      t0 = performance.now();
      for (;;) {
        options.onLogits?.(logits);
        const sampleStart = performance.now();
        const id = sampler.sample(logits);
        runner.times.seconds.sampling += (performance.now() - sampleStart) / 1000;
        if (options.stopAtEos !== false && eos.has(id)) {
          stats.finishReason = "eos";
          break;
        }
        generated.push(id);
        stats.generatedTokens = generated.length;
        options.onToken?.(id);
        const piece = detok.push(id);
        if (piece) yield piece;
        if (generated.length >= maxTokens) break;
        if (kv.length >= this.contextSize) {
          stats.finishReason = "context";
          break;
        }
        // Let the caller's event loop run between tokens.
        await new Promise((r) => setImmediate(r));
        throwIfAborted(options.signal);
        logits = (await this.forward(runner, [id], kv)).data;
      }
      stats.decodeSeconds = (performance.now() - t0) / 1000;
      return stats;
    } catch (err) {
      if (options.signal?.aborted) stats.finishReason = "abort";
      throw err;
    } finally {
      // Stopped early (Ctrl-C, an error, the consumer's break): the decode time so far, not 0.
      if (stats.prefillSeconds > 0 && stats.decodeSeconds === 0) stats.decodeSeconds = (performance.now() - t0) / 1000;
      if (stats.prefillSeconds > 0) stats.decodeBreakdown = runner.times.since(timesMark);
      stats.prefillTokensPerSecond = stats.prefillSeconds > 0 ? stats.promptTokens / stats.prefillSeconds : 0;
      stats.decodeTokensPerSecond = stats.decodeSeconds > 0 && stats.generatedTokens > 1 ? (stats.generatedTokens - 1) / stats.decodeSeconds : 0;
      options.onStats?.(stats);
    }
  }

  /** Logits for every position of `ids`, from an empty cache: [T, V]. For tests and evaluation. */
  async logits(ids: readonly number[]): Promise<{ data: Float32Array; dims: readonly number[] }> {
    if (ids.length > this.contextSize) throw new ContextOverflowError(ids.length, this.contextSize);
    const kv = this.newKvCache();
    this.experts.startSequence();
    return this.forward(this.live(), ids, kv, { allLogits: true });
  }

  /**
   * Feeds `ids` one token at a time through the decode path (KV cache), as generation would, but
   * with the given tokens instead of sampled ones: for profiling routing, the cache and the
   * predictor on held-out text. Restarts from an empty cache when the context is full.
   */
  async teacherForce(ids: readonly number[], options: { signal?: AbortSignal } = {}): Promise<void> {
    const runner = this.live();
    let kv = this.newKvCache();
    this.experts.startSequence();
    for (const id of ids) {
      throwIfAborted(options.signal);
      if (kv.length >= this.contextSize) {
        kv = this.newKvCache();
        this.experts.startSequence();
      }
      await this.forward(runner, [id], kv);
      // Let the caller's event loop run between tokens (on the worker: an abort message arrives).
      await new Promise((r) => setImmediate(r));
    }
  }

  /**
   * Perplexity of a text: ids = tokenize(text) (BOS as the tokenizer adds it); windows of `window`
   * predictions, ids[s .. s+window], s = 0, window, 2*window, ...; each window from an empty cache.
   */
  async perplexity(text: string, options: { window?: number; signal?: AbortSignal } = {}): Promise<PerplexityResult> {
    const window = options.window ?? Math.min(256, this.contextSize);
    if (!Number.isInteger(window) || window < 1 || window > this.contextSize) {
      throw new InvalidOptionError(`window must be a whole number from 1 to the context size ${this.contextSize}, got ${options.window}`);
    }
    const ids = this.tokenizer.encode(text);
    if (ids.length < 2) throw new InvalidOptionError("the text is too short to score (needs at least 2 tokens)");
    const V = this.dims.vocabSize;
    let nll = 0;
    let count = 0;
    for (let s = 0; s + 1 < ids.length; s += window) {
      throwIfAborted(options.signal);
      const chunk = ids.slice(s, s + window + 1);
      const logits = (await this.logits(chunk.slice(0, -1))).data;
      for (let i = 0; i + 1 < chunk.length; i++) {
        const row = logits.subarray(i * V, (i + 1) * V);
        let max = -Infinity;
        for (let v = 0; v < V; v++) max = Math.max(max, row[v]!);
        let sum = 0;
        for (let v = 0; v < V; v++) sum += Math.exp(row[v]! - max);
        nll += Math.log(sum) + max - row[chunk[i + 1]!]!;
        count++;
      }
      if (!Number.isFinite(nll)) throw nonFiniteLogitsError(`for tokens ${s}-${s + chunk.length - 1} of the text`);
      await new Promise((r) => setImmediate(r));
    }
    return { perplexity: Math.exp(nll / count), nll, tokens: count };
  }

  /**
   * Calls `observer(layer, routing, gateInput)` for every layer of every forward pass (prefill
   * chunks and decode steps, in order) until the returned function is called. For profilers.
   */
  onRouting(observer: RoutingObserver): () => void {
    const runner = this.live();
    runner.observers.push(observer);
    return () => {
      runner.observers = runner.observers.filter((o) => o !== observer);
    };
  }

  /** Which implementations run this model, and the dense bytes one decode token reads. */
  engineInfo(): EngineInfo {
    const runner = this.live();
    return { dense: runner.dense.name, denseBytesPerToken: runner.dense.bytesPerToken, expertKernel: runner.kernel.name, experts: describeExpertEncodings(expertShape(this.manifest)), threads: runner.threads, kvCache: runner.kvPrecision, fusedDecode: runner.fusedDecode };
  }

  /** Expert cache statistics since load: hits, misses, bytes per tier, stalls, per layer, and the memory plan. */
  cacheStats(): ExpertCacheReport {
    return { ...this.experts.report(), memoryPlan: this.memoryPlan };
  }

  /** Where experts ran, per layer, and the cost figures the scheduler planned with. */
  scheduleStats(): ScheduleStats {
    return this.live().hybrid?.scheduler.stats() ?? { schedule: "device", layers: [] };
  }

  /** The execution provider the dense graphs run on. */
  get device(): ExecutionDevice {
    return this.live().device;
  }

  /** The expert kernel in use ("native", "onnx" or "js"). */
  get expertKernel(): string {
    return this.live().kernel.name;
  }

  eosIds(): number[] {
    const ids = new Set(this.dims.eosTokenIds);
    const t = this.tokenizer.eosToken;
    const id = t === undefined ? undefined : this.tokenizer.tokenId(t);
    if (id !== undefined) ids.add(id);
    return [...ids];
  }

  /**
   * Frees everything the model holds. Safe while a generation runs: the forward pass in flight
   * finishes first (onnxruntime must not lose a session mid-run: that aborts the process), and the
   * generation then ends with a DISPOSED error at its next step.
   */
  async dispose(): Promise<void> {
    const runner = this.runner;
    this.runner = undefined;
    if (runner) {
      while (this.passes.size) await Promise.all(this.passes);
      await this.experts.drain();
      this.experts.dispose(); // frees resident experts (GPU memory) before the kernel goes
      await runner.hybrid?.pool.close();
      this.predictor?.save?.();
      await runner.dispose();
      this.store.close();
    }
  }

  /** One forward pass, tracked so that dispose() waits for it; refused once disposal has begun. */
  private async forward(runner: ModelRunner, ids: readonly number[], kv: KvCache, options?: { allLogits?: boolean }) {
    if (!this.runner) throw new MoeRunError("DISPOSED", "this model was disposed during generation");
    const pass = runner.forward(ids, kv, options);
    const settled = pass.then(
      () => undefined,
      () => undefined
    );
    this.passes.add(settled);
    try {
      return await pass;
    } finally {
      this.passes.delete(settled);
    }
  }

  private live(): ModelRunner {
    if (!this.runner) throw new MoeRunError("DISPOSED", "this model has been disposed");
    return this.runner;
  }
}

/** Every expert record against its checksum in the manifest (part of `verify`). */
function verifyExperts(store: ExpertStore, manifest: ModelManifest): void {
  manifest.experts.checksums.forEach((layer, l) =>
    layer.forEach((sum, e) => {
      const record = store.getRecord(l, e);
      const ok = expertChecksum(record) === sum;
      releaseRecord(record);
      if (!ok) {
        store.close();
        throw new MoeRunError("STORE_CORRUPT", `expert (${l}, ${e}) in ${store.path} fails its checksum; re-import the model`);
      }
    })
  );
}

function checkMaxTokens(maxTokens = 128): number {
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new InvalidOptionError(`max tokens must be a whole number >= 0, got ${maxTokens}`);
  return maxTokens;
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw signal.reason ?? new DOMException("generation aborted", "AbortError");
}
