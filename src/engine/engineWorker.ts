/**
 * The compute thread behind WorkerModel: owns a MoeModel (onnxruntime sessions, kernels, cache)
 * and serves requests, so the caller's event loop never waits on compute.
 */
import { parentPort } from "node:worker_threads";
import { MoeRunError } from "../errors.js";
import { loadNativeAddon } from "../kernels/nativeAddon.js";
import type { KvSequence } from "../model/KvSequence.js";
import { MoeModel, type GenerateOptions, type GenerationStats } from "../model/MoeModel.js";
import type { LoadInfo, Request, Response, WireError, WireGenerateOptions } from "./protocol.js";

const port = parentPort!;
// Compute yields the cores to the app's thread first: its event loop stays responsive even when
// the machine is busy. The threads this one starts (onnxruntime, pools) inherit the priority.
try {
  loadNativeAddon().addon?.lowerThreadPriority(10);
} catch {
  // Not permitted here: responsiveness then rests on the thread split alone.
}
let model: MoeModel | undefined;
const aborts = new Map<number, AbortController>();
/** Sequences (KV caches kept between generations) by the id of the request that opened them. */
const sequences = new Map<number, KvSequence>();

function send(msg: Response, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

function wireError(err: unknown): WireError {
  if (err instanceof MoeRunError) return { name: err.name, code: err.code, message: err.message };
  if (err instanceof Error) return { name: err.name, message: err.message };
  return { name: "Error", message: String(err) };
}

function sequence(id: number): KvSequence {
  const s = sequences.get(id);
  if (!s) throw new MoeRunError("DISPOSED", "this sequence has been disposed");
  return s;
}

/** Runs a generation for request `id`, sending its pieces, tokens and stats as they come; resolves to its stats. */
async function stream<S>(id: number, wire: WireGenerateOptions, start: (options: GenerateOptions & { onStats: (s: S) => void }) => AsyncGenerator<string, S>): Promise<S> {
  const controller = new AbortController();
  aborts.set(id, controller);
  try {
    const { wantLogits, ...options } = wire;
    const gen = start({
      ...options,
      signal: controller.signal,
      onToken: (token) => send({ id, type: "token", token }),
      onLogits: wantLogits ? (l) => send({ id, type: "token", token: -1, logits: l.slice() }) : undefined,
      onStats: (stats) => send({ id, type: "stats", stats: stats as GenerationStats }),
    });
    for (;;) {
      const r = await gen.next();
      if (r.done) return r.value;
      send({ id, type: "piece", text: r.value });
    }
  } finally {
    aborts.delete(id);
  }
}

function live(): MoeModel {
  if (!model) throw new MoeRunError("DISPOSED", "the model is not loaded or has been disposed");
  return model;
}

/** Runs `work` with a signal that an "abort" request naming request `id` fires. */
async function abortable<T>(id: number, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const controller = new AbortController();
  aborts.set(id, controller);
  try {
    return await work(controller.signal);
  } finally {
    aborts.delete(id);
  }
}

async function handle(req: Request): Promise<unknown> {
  switch (req.method) {
    case "load": {
      const m = (model = await MoeModel.load(req.dir, { ...req.options, log: (line) => send({ id: req.id, type: "log", line }) }));
      return { dims: m.dims, contextSize: m.contextSize, manifest: m.manifest, device: m.device, engine: m.engineInfo(), eosIds: m.eosIds() } satisfies LoadInfo;
    }
    case "generate":
      return stream(req.id, req.options, (options) => live().generate(req.prompt, options));
    case "sequenceOpen":
      sequences.set(req.id, live().openSequence());
      return undefined;
    case "sequenceGenerate":
      return stream(req.id, req.options, (options) => sequence(req.sequence).generate(req.ids, options));
    case "sequenceReset":
      return sequence(req.sequence).reset();
    case "sequenceClose": {
      const s = sequences.get(req.sequence);
      sequences.delete(req.sequence);
      return s?.dispose();
    }
    case "abort":
      aborts.get(req.target)?.abort(new DOMException("generation aborted", "AbortError"));
      return undefined;
    case "logits":
      return (await live().logits(req.ids)).data;
    case "perplexity":
      return abortable(req.id, (signal) => live().perplexity(req.text, { window: req.window, signal }));
    case "teacherForce":
      return abortable(req.id, (signal) => live().teacherForce(req.ids, { signal }));
    case "cacheStats":
      return live().cacheStats();
    case "scheduleStats":
      return live().scheduleStats();
    case "dispose": {
      const m = model;
      model = undefined;
      sequences.clear();
      // Generations still running end at their next step with DISPOSED; dispose() waits for the
      // forward pass in flight, so no session goes away under onnxruntime.
      for (const c of aborts.values()) c.abort(new MoeRunError("DISPOSED", "the model was disposed during generation"));
      await m?.dispose();
      return undefined;
    }
    default: {
      const never: never = req;
      throw new Error(`unknown request ${JSON.stringify(never)}`);
    }
  }
}

port.on("message", (req: Request) => {
  handle(req).then(
    (value) => send({ id: req.id, type: "result", value }, value instanceof Float32Array ? [value.buffer as ArrayBuffer] : []),
    (err: unknown) => send({ id: req.id, type: "error", error: wireError(err) })
  );
});
