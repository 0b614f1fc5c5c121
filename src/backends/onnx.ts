/**
 * The one module that touches onnxruntime. Everything else passes plain typed arrays with dims.
 */
import * as ort from "onnxruntime-node";

// Failures surface as exceptions with their message; onnxruntime's own stderr lines would only
// repeat them (e.g. every probe for a provider this machine lacks).
ort.env.logLevel = "fatal";

/** A dense row-major tensor. */
export interface HostTensor<T extends Float32Array | BigInt64Array = Float32Array> {
  data: T;
  dims: readonly number[];
}

export const DEVICE_NAMES = ["auto", "cpu", "webgpu", "cuda"] as const;
export type DeviceName = (typeof DEVICE_NAMES)[number];
export type ExecutionDevice = Exclude<DeviceName, "auto">;

export interface OnnxSessionOptions {
  /** Intra-op threads of this session. Default 1. */
  threads?: number;
  /** Execution provider. Default "cpu". */
  device?: ExecutionDevice;
}

/**
 * The execution provider to use for `requested`, found by opening `probeModel` with it: "auto"
 * tries CUDA, then WebGPU, then the CPU. A provider this machine lacks falls back to the CPU,
 * and `log` says why.
 */
export async function resolveDevice(requested: DeviceName, probeModel: string, log: (line: string) => void): Promise<ExecutionDevice> {
  const candidates: ExecutionDevice[] = requested === "auto" ? ["cuda", "webgpu"] : requested === "cpu" ? [] : [requested];
  const reasons: string[] = [];
  for (const device of candidates) {
    try {
      const s = await ort.InferenceSession.create(probeModel, { executionProviders: [device], logSeverityLevel: 4 });
      await s.release();
      return device;
    } catch (err) {
      reasons.push(`${device}: ${(err instanceof Error ? err.message : String(err)).split("\n")[0]!.slice(0, 160)}`);
    }
  }
  if (requested !== "auto" && requested !== "cpu") log(`moe-run: device ${requested} is not available on this machine (${reasons.join("; ")}); using the CPU`);
  return "cpu";
}

export class OnnxSession {
  private session: ort.InferenceSession | undefined;
  readonly path: string;

  private constructor(path: string, session: ort.InferenceSession) {
    this.path = path;
    this.session = session;
  }

  static async create(modelPath: string, options: OnnxSessionOptions = {}): Promise<OnnxSession> {
    const session = await ort.InferenceSession.create(modelPath, {
      // The CPU provider stays as the fallback for any operator the device provider lacks.
      executionProviders: options.device && options.device !== "cpu" ? [options.device, "cpu"] : ["cpu"],
      intraOpNumThreads: options.threads ?? 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: "all",
      // Many sessions live at once; idle spinning pools would steal the cores (design notes).
      extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
    });
    return new OnnxSession(modelPath, session);
  }

  /** Runs the graph; returns the requested outputs (all when `outputs` is omitted) as fp32 tensors. */
  async run(feeds: Record<string, HostTensor<Float32Array> | HostTensor<BigInt64Array>>, outputs?: readonly string[]): Promise<Record<string, HostTensor>> {
    const session = this.session;
    if (!session) throw new Error(`session ${this.path} is disposed`);
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) {
      ortFeeds[name] = t.data instanceof BigInt64Array ? new ort.Tensor("int64", t.data, t.dims) : new ort.Tensor("float32", t.data, t.dims);
    }
    const result = outputs ? await session.run(ortFeeds, outputs as string[]) : await session.run(ortFeeds);
    const out: Record<string, HostTensor> = {};
    for (const [name, t] of Object.entries(result)) {
      if (!(t.data instanceof Float32Array)) throw new Error(`output ${name} of ${this.path} is ${t.type}, expected float32`);
      out[name] = { data: t.data, dims: t.dims };
    }
    return out;
  }

  async dispose(): Promise<void> {
    const s = this.session;
    this.session = undefined;
    if (s) await s.release();
  }
}
