/** Options every command that loads a model shares: threads, budgets, policy, pins, kernel. */
import { describePlan } from "../model/memoryPlan.js";
import * as fs from "node:fs";
import type { Command } from "commander";
import { POLICY_NAMES, parsePolicyName, type PolicyName } from "../cache/policies/index.js";
import type { ExpertId } from "../cache/types.js";
import { InvalidOptionError, MoeRunError } from "../errors.js";
import type { DenseLayersName } from "../evaluator/DenseLayers.js";
import { KV_CACHE_PRECISIONS, type KvCachePrecision } from "../evaluator/KvCache.js";
import type { StepTimesSnapshot } from "../evaluator/StepTimes.js";
import type { ExpertKernelName } from "../kernels/expertKernels.js";
import { loadModelOnThisThread } from "../model/loadModel.js";
import type { LoadModelOptions, MoeModel } from "../model/MoeModel.js";
import { DEVICE_NAMES, type DeviceName } from "../backends/onnx.js";
import { parsePredictorName } from "../predict/createPredictor.js";
import { PREDICTOR_NAMES, type PredictorName } from "../predict/types.js";
import { parseScheduleName, SCHEDULE_NAMES, type ScheduleName } from "../scheduler/HybridScheduler.js";
import { formatBytes, parseByteSize, type ByteSize } from "../util/bytes.js";
import { parseFloatOption, parseIntOption, parseOutputFile, parseThreadsOption } from "./parse.js";

export interface ModelCliOptions {
  threads?: number;
  contextSize?: number;
  deviceMem?: ByteSize;
  hostMem?: ByteSize;
  policy: PolicyName;
  pin?: ExpertId[];
  expertKernel: ExpertKernelName | "auto";
  dense: DenseLayersName | "auto";
  kvCache: KvCachePrecision;
  /** False with --no-fused-decode. */
  fusedDecode: boolean;
  predictor: PredictorName | "auto";
  schedule?: ScheduleName;
  cpuThreads?: number;
  device: DeviceName;
  prefetch: boolean;
  prefetchAlways: boolean;
  prefetchDepth: number;
  prefetchThreshold: number;
  stats: boolean;
  statsJson?: string;
  verify: boolean;
}

function parsePins(text: string): ExpertId[] {
  return text.split(",").map((part) => {
    const m = /^\s*(\d+):(\d+)\s*$/.exec(part);
    if (!m) throw new InvalidOptionError(`--pin takes layer:expert pairs like 0:3,1:7, got "${part}"`);
    return { layer: Number(m[1]), expert: Number(m[2]) };
  });
}

function parseDevice(text: string): DeviceName {
  if ((DEVICE_NAMES as readonly string[]).includes(text)) return text as DeviceName;
  throw new InvalidOptionError(`--device must be one of ${DEVICE_NAMES.join(", ")}, got "${text}"`);
}

function parseDense(text: string): DenseLayersName | "auto" {
  if (["auto", "native", "onnx"].includes(text)) return text as DenseLayersName | "auto";
  throw new InvalidOptionError(`--dense must be auto, native or onnx, got "${text}"`);
}

function parseKvCache(text: string): KvCachePrecision {
  if ((KV_CACHE_PRECISIONS as readonly string[]).includes(text)) return text as KvCachePrecision;
  throw new InvalidOptionError(`--kv-cache must be ${KV_CACHE_PRECISIONS.join(" or ")}, got "${text}"`);
}

function parseKernel(text: string): ExpertKernelName | "auto" {
  if (["auto", "native", "onnx", "js"].includes(text)) return text as ExpertKernelName | "auto";
  throw new InvalidOptionError(`--expert-kernel must be auto, native, onnx or js, got "${text}"`);
}

export function addModelOptions(cmd: Command): Command {
  return cmd
    .option("--threads <n>", "compute threads (default: all cores; more do not help and are capped there)", parseThreadsOption("threads"))
    .option("--context-size <n>", "context length (default: the model's)", parseIntOption("context-size", 2))
    .option("--device-mem <size>", "budget for resident experts, e.g. 2GiB or 50% of expert bytes (default: unlimited)", (v) => parseByteSize(v, "device-mem"))
    .option("--host-mem <size>", "budget for the expert store's pages in RAM (default: not managed)", (v) => parseByteSize(v, "host-mem"))
    .option("--policy <name>", `expert cache replacement policy: ${POLICY_NAMES.filter((p) => p !== "belady").join(", ")}`, parsePolicyName, "lru")
    .option("--pin <layer:expert,...>", "experts never evicted", parsePins)
    .option("--expert-kernel <name>", "auto, native, onnx or js", parseKernel, "auto")
    .option("--dense <name>", "dense layers (attention, router, LM head): auto (native on the CPU), native or onnx", parseDense, "auto")
    .option("--kv-cache <precision>", "KV cache of the native dense layers: f16 (half the bytes attention reads per token, as llama.cpp's default) or f32 (exact)", parseKvCache, "f16")
    .option("--no-fused-decode", "decode layer by layer from JavaScript even when every expert is resident (default: such steps run whole in native code, with the same output)")
    .option("--device <name>", `execution provider: ${DEVICE_NAMES.join(", ")} (unavailable ones fall back to the CPU with a note)`, parseDevice, "cpu")
    .option("--schedule <name>", `where experts run: ${SCHEDULE_NAMES.join(", ")} (default auto: split by a measured cost model)`, parseScheduleName)
    .option("--cpu-threads <n>", "threads of the CPU expert pool (default: cores - 1; at most the cores)", parseThreadsOption("cpu-threads"))
    .option("--predictor <name>", `predict upcoming layers' experts: auto (gate where prefetch pays for a model that does not fit, else none), ${PREDICTOR_NAMES.filter((p) => p !== "oracle").join(", ")}`, (v: string) => (v.trim().toLowerCase() === "auto" ? "auto" : parsePredictorName(v)), "auto")
    .option("--no-prefetch", "score the predictor but do not load its predictions ahead")
    .option("--prefetch-always", "load predictions ahead even where reading an expert is cheaper than the loader's round trip (default: measured at load)", false)
    .option("--prefetch-depth <n>", "layers ahead to predict and prefetch", parseIntOption("prefetch-depth", 1), 1)
    .option("--prefetch-threshold <p>", "minimum predicted probability to prefetch", parseFloatOption("prefetch-threshold", 0, 1), 0.05)
    .option("--verify", "check every file and expert against the manifest's checksums first", false)
    .option("--stats", "print expert cache statistics to stderr", false)
    .option("--stats-json <file>", "write statistics as JSON", parseOutputFile("stats-json"));
}

export function loadOptions(o: ModelCliOptions): LoadModelOptions {
  return {
    threads: o.threads,
    contextSize: o.contextSize,
    verify: o.verify,
    deviceMem: o.deviceMem,
    hostMem: o.hostMem,
    policy: o.policy,
    pin: o.pin,
    expertKernel: o.expertKernel,
    dense: o.dense,
    kvCache: o.kvCache,
    fusedDecode: o.fusedDecode,
    predictor: o.predictor,
    schedule: o.schedule,
    device: o.device,
    cpuThreads: o.cpuThreads,
    prefetch: o.prefetch === false ? false : o.prefetchAlways ? true : "auto",
    prefetchDepth: o.prefetchDepth,
    prefetchThreshold: o.prefetchThreshold,
  };
}

/**
 * Loads the model for a command, on the CLI's own thread: run, chat, perplexity, profile and plan
 * have no event loop that must stay free while the model computes (Ctrl-C and stdin are handled
 * between tokens), in-process compute skips a message per token and a second copy of the
 * runtime's modules, and profile needs onRouting. (serve computes on a worker: its HTTP loop
 * must stay free.) An error that is not moe-run's own (onnxruntime refusing a graph file, say)
 * becomes one line that names the model directory and what to do.
 */
export async function loadModelForCli(modelDir: string, options: LoadModelOptions): Promise<MoeModel> {
  try {
    return await loadModelOnThisThread(modelDir, options);
  } catch (err) {
    if (err instanceof MoeRunError || (err instanceof Error && err.name === "AbortError")) throw err;
    const message = (err instanceof Error ? err.message : String(err)).split("\n").map((l) => l.trim()).find((l) => l !== "") ?? "unknown error";
    throw new MoeRunError(
      "MODEL_DIR_INVALID",
      `cannot load the model in ${modelDir}: ${message.length > 300 ? message.slice(0, 300) + "..." : message}; it may be damaged: check it with --verify, or re-import it`,
      { cause: err }
    );
  }
}

/** Prints and/or writes the statistics the options asked for. */
export function reportStats(model: MoeModel, o: ModelCliOptions, extra: Record<string, unknown> = {}): void {
  if (!o.stats && !o.statsJson) return;
  const r = model.cacheStats();
  const sched = model.scheduleStats();
  const engine = model.engineInfo();
  if (o.statsJson) fs.writeFileSync(o.statsJson, JSON.stringify({ ...r, device: model.device, expertKernel: model.expertKernel, engine, scheduler: sched, ...extra }, null, 2) + "\n");
  const pf = r.prefetch;
  const pr = r.predictor;
  if (!o.stats) return;
  const dev = r.tiers.device;
  const host = r.tiers.host;
  const lines = [
    `expert cache (${r.cache.policy}, kernel ${model.expertKernel}): ${r.cache.hits} hits, ${r.cache.misses} misses, hit rate ${(100 * r.cache.hitRate).toFixed(1)}%, stalled ${(1000 * r.stallSeconds).toFixed(1)} ms`,
    `  device tier: budget ${formatBytes(dev.budgetBytes)}, resident max ${formatBytes(dev.residentBytesMax)}, loaded ${formatBytes(dev.bytesIn)}, ${dev.evictions} evictions` +
      (dev.residency ? `; held by onnxruntime on ${dev.residency.device} (${dev.residency.memory} memory): ${formatBytes(dev.residency.liveBytes)}, max ${formatBytes(dev.residency.liveBytesMax)}, ${dev.residency.prepared} made resident` : ""),
    `  host tier:   budget ${formatBytes(host.budgetBytes)}, resident max ${formatBytes(host.residentBytesMax)}, ${host.hits} hits; read from the store ${host.reads} records, ${formatBytes(host.bytesRead)}${host.directReads ? " (direct I/O)" : " (buffered, pages dropped)"}`,
    `  stalls: ${(1000 * r.stalls.secondsPerForward).toFixed(2)} ms per forward pass (${r.stalls.forwards} passes, ${r.stalls.waits} waits)`,
    ...(r.memoryPlan ? [`  ${describePlan(r.memoryPlan)}`] : []),
    `  engine: dense ${engine.dense} (${formatBytes(engine.denseBytesPerToken)} of dense weights per token), expert kernel ${engine.expertKernel} (experts ${engine.experts}), ${engine.threads} thread(s), ${engine.kvCache} KV cache`,
    ...stepLines(extra.generation as { decodeBreakdown?: StepTimesSnapshot; prefillBreakdown?: StepTimesSnapshot } | undefined),
    ...(pr ? [`  predictor ${pr.name}: next-layer recall@k ${(100 * pr.recall).toFixed(1)}%, precision ${(100 * pr.precision).toFixed(1)}%`] : []),
    ...(pf ? [`  prefetch: ${pf.issued} issued, ${pf.used} used (${pf.late} late), ${pf.wasted} wasted, ${pf.dropped} dropped, ${(1000 * pf.stallSavedSeconds).toFixed(1)} ms of loads overlapped`] : []),
    `  schedule ${sched.schedule}: experts on device / cpu pool per layer below`,
    "  layer  hits  misses  hit%   stall ms  device  cpu",
    ...r.layers.map((l) => {
      const p = sched.layers[l.layer];
      return `  ${String(l.layer).padStart(5)} ${String(l.hits).padStart(5)} ${String(l.misses).padStart(7)} ${(100 * l.hitRate).toFixed(1).padStart(5)} ${(1000 * l.stallSeconds).toFixed(1).padStart(9)} ${String(p?.device ?? "-").padStart(7)} ${String(p?.cpu ?? "-").padStart(4)}`;
    }),
  ];
  process.stderr.write(lines.join("\n") + "\n");
}

/** The per-token time breakdown of a generation: where decode (and prefill) time went. */
function stepLines(g: { decodeBreakdown?: StepTimesSnapshot; prefillBreakdown?: StepTimesSnapshot } | undefined): string[] {
  const line = (label: string, b: StepTimesSnapshot | undefined) => {
    if (!b || b.forwards === 0) return [];
    const total = Object.values(b.seconds).reduce((x, y) => x + y, 0);
    const parts = Object.entries(b.seconds).map(([k, v]) => `${k} ${((1000 * v) / b.forwards).toFixed(2)}`);
    return [
      `  ${label} per forward (ms): ${parts.join(", ")}; total ${((1000 * total) / b.forwards).toFixed(2)}` +
        (b.kvCopiedBytes ? `; KV cache grown by copying ${formatBytes(b.kvCopiedBytes)}` : "") +
        (b.fusedTokens ? `; ${b.fusedTokens} of ${b.tokens} tokens in one native call each (every expert resident)` : ""),
    ];
  };
  return [...line("prefill", g?.prefillBreakdown), ...line("decode", g?.decodeBreakdown)];
}
