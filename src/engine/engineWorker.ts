/**
 * The compute thread behind WorkerModel: owns a MoeModel (onnxruntime sessions, kernels, cache)
 * and serves requests, so the caller's event loop never waits on compute.
 */
import { parentPort } from "node:worker_threads";
import { MoeRunError } from "../errors.js";
import { loadNativeAddon } from "../kernels/nativeAddon.js";
import { MoeModel } from "../model/MoeModel.js";
import type { Request, Response, WireError } from "./protocol.js";

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

function send(msg: Response, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer);
}

function wireError(err: unknown): WireError {
  if (err instanceof MoeRunError) return { name: err.name, code: err.code, message: err.message };
  if (err instanceof Error) return { name: err.name, message: err.message };
  return { name: "Error", message: String(err) };
}

function live(): MoeModel {
  if (!model) throw new MoeRunError("DISPOSED", "the model is not loaded or has been disposed");
  return model;
}

async function handle(req: Request): Promise<unknown> {
  switch (req.method) {
    case "load":
      model = await MoeModel.load(req.dir, { ...req.options, log: (line) => send({ id: req.id, type: "log", line }) });
      return { dims: model.dims, contextSize: model.contextSize, manifest: model.manifest, expertKernel: model.expertKernel };
    case "generate": {
      const controller = new AbortController();
      aborts.set(req.id, controller);
      try {
        const { wantLogits, ...options } = req.options;
        const gen = live().generate(req.prompt, {
          ...options,
          signal: controller.signal,
          onToken: (token) => send({ id: req.id, type: "token", token }),
          onLogits: wantLogits ? (l) => send({ id: req.id, type: "token", token: -1, logits: l.slice() }) : undefined,
          onStats: (stats) => send({ id: req.id, type: "stats", stats }),
        });
        for (;;) {
          const r = await gen.next();
          if (r.done) return r.value;
          send({ id: req.id, type: "piece", text: r.value });
        }
      } finally {
        aborts.delete(req.id);
      }
    }
    case "abort":
      aborts.get(req.target)?.abort(new DOMException("generation aborted", "AbortError"));
      return undefined;
    case "logits":
      return (await live().logits(req.ids)).data;
    case "perplexity":
      return live().perplexity(req.text, { window: req.window });
    case "teacherForce":
      return live().teacherForce(req.ids);
    case "cacheStats":
      return live().cacheStats();
    case "dispose": {
      const m = model;
      model = undefined;
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
