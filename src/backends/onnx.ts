/**
 * The one module that touches onnxruntime. Everything else passes plain typed arrays with dims.
 */
import * as ort from "onnxruntime-node";

// Failures surface as exceptions with their message; onnxruntime's own stderr lines would only
// repeat them (e.g. every probe for a provider this machine lacks).
ort.env.logLevel = "fatal";

/** Element data a host tensor may hold; Uint16Array carries IEEE half bits (float16). */
export type TensorData = Float32Array | BigInt64Array | Int8Array | Uint16Array;

/** A dense row-major tensor in host memory. */
export interface HostTensor<T extends TensorData = Float32Array> {
  data: T;
  dims: readonly number[];
}

function elementType(data: TensorData): "float32" | "int64" | "int8" | "float16" {
  if (data instanceof Float32Array) return "float32";
  if (data instanceof BigInt64Array) return "int64";
  if (data instanceof Int8Array) return "int8";
  return "float16";
}

/**
 * A tensor owned by an execution provider: GPU memory on WebGPU (onnxruntime's "gpu-buffer"
 * location), host memory on the CPU provider. Sessions on the same provider take it as an input
 * without a copy; dispose() frees it (GPU memory is not garbage collected).
 */
export class DeviceTensor {
  private tensor: ort.Tensor | undefined;
  /** Bytes it occupies on the provider. */
  readonly bytes: number;
  readonly dims: readonly number[];

  /** @internal Sessions create these; nothing outside this module sees onnxruntime's types. */
  constructor(tensor: ort.Tensor, bytes: number) {
    this.tensor = tensor;
    this.bytes = bytes;
    this.dims = tensor.dims;
  }

  /** Wraps host data as a CPU-provider tensor (the CPU provider's "device memory" is host memory). */
  static fromHost(t: HostTensor<TensorData>): DeviceTensor {
    return new DeviceTensor(new ort.Tensor(elementType(t.data), t.data, t.dims), t.data.byteLength);
  }

  get location(): string {
    return this.tensor?.location ?? "disposed";
  }

  /** @internal */
  get value(): ort.Tensor {
    if (!this.tensor) throw new Error("device tensor used after dispose()");
    return this.tensor;
  }

  /**
   * A host copy of the contents, for checks. Host-backed tensors only: onnxruntime-node 1.30
   * cannot download a GPU buffer ("not implemented"); run it through a session with CPU outputs.
   */
  async read(): Promise<TensorData> {
    const t = this.value;
    if (t.location !== "cpu") throw new Error(`cannot read a ${t.location} tensor on the host; run it through a session whose outputs are on the CPU`);
    return (await t.getData()) as TensorData;
  }

  dispose(): void {
    const t = this.tensor;
    this.tensor = undefined;
    // Host-backed tensors have nothing to free; GPU buffers must be released explicitly.
    if (t && t.location !== "cpu") t.dispose();
  }
}

export const DEVICE_NAMES = ["auto", "cpu", "webgpu", "cuda"] as const;
export type DeviceName = (typeof DEVICE_NAMES)[number];
export type ExecutionDevice = Exclude<DeviceName, "auto">;

export interface OnnxSessionOptions {
  /** Intra-op threads of this session. Default 1. */
  threads?: number;
  /** Execution provider. Default "cpu". */
  device?: ExecutionDevice;
  /**
   * Outputs stay on the provider (runOnDevice): GPU buffers on WebGPU. Default false. On the CPU
   * provider outputs are host memory either way.
   */
  outputsOnDevice?: boolean;
}

type Feed = HostTensor<TensorData> | DeviceTensor;

/** onnxruntime's create() from a file or bytes (its overloads take one or the other, not the union). */
function openSession(model: string | Uint8Array, options: ort.InferenceSession.SessionOptions): Promise<ort.InferenceSession> {
  return typeof model === "string" ? ort.InferenceSession.create(model, options) : ort.InferenceSession.create(model, options);
}

/**
 * The execution provider to use for `requested`, found by opening `probeModel` with it: "auto"
 * tries CUDA, then WebGPU, then the CPU. A provider this machine lacks falls back to the CPU,
 * and `log` says why.
 */
export async function resolveDevice(requested: DeviceName, probeModel: string | Uint8Array, log: (line: string) => void): Promise<ExecutionDevice> {
  const candidates: ExecutionDevice[] = requested === "auto" ? ["cuda", "webgpu"] : requested === "cpu" ? [] : [requested];
  const reasons: string[] = [];
  for (const device of candidates) {
    try {
      const options = { executionProviders: [device], logSeverityLevel: 4 as const };
      const s = await openSession(probeModel, options);
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
  /** The model file, or the label of a graph built in memory. */
  readonly path: string;

  private constructor(path: string, session: ort.InferenceSession) {
    this.path = path;
    this.session = session;
  }

  /** Opens a model file, or model bytes built at run time (`name` then labels it in errors). */
  static async create(model: string | Uint8Array, options: OnnxSessionOptions & { name?: string } = {}): Promise<OnnxSession> {
    const label = typeof model === "string" ? model : (options.name ?? "in-memory graph");
    const onDevice = options.outputsOnDevice === true && options.device === "webgpu";
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      // The CPU provider stays as the fallback for any operator the device provider lacks.
      executionProviders: options.device && options.device !== "cpu" ? [options.device, "cpu"] : ["cpu"],
      intraOpNumThreads: options.threads ?? 1,
      interOpNumThreads: 1,
      graphOptimizationLevel: "all",
      // Many sessions live at once; idle spinning pools would steal the cores (design notes).
      extra: { session: { intra_op: { allow_spinning: "0" }, inter_op: { allow_spinning: "0" } } },
      ...(onDevice ? { preferredOutputLocation: "gpu-buffer" as const } : {}),
    };
    const session = await openSession(model, sessionOptions);
    return new OnnxSession(label, session);
  }

  private feeds(feeds: Record<string, Feed>): Record<string, ort.Tensor> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const [name, t] of Object.entries(feeds)) ortFeeds[name] = t instanceof DeviceTensor ? t.value : new ort.Tensor(elementType(t.data), t.data, t.dims);
    return ortFeeds;
  }

  /**
   * Runs the graph and keeps every output on the provider (the session must be created with
   * `outputsOnDevice`). The caller owns the results and disposes them.
   */
  async runOnDevice(feeds: Record<string, Feed>): Promise<Record<string, DeviceTensor>> {
    const session = this.session;
    if (!session) throw new Error(`session ${this.path} is disposed`);
    const result = await session.run(this.feeds(feeds));
    const out: Record<string, DeviceTensor> = {};
    for (const [name, t] of Object.entries(result)) {
      const bytes = t.size * (t.type === "float32" ? 4 : t.type === "float16" ? 2 : t.type === "int8" ? 1 : 8);
      out[name] = new DeviceTensor(t, bytes);
    }
    return out;
  }

  /** Runs the graph; returns the requested outputs (all when `outputs` is omitted) as fp32 tensors. */
  async run(feeds: Record<string, Feed>, outputs?: readonly string[]): Promise<Record<string, HostTensor>> {
    const session = this.session;
    if (!session) throw new Error(`session ${this.path} is disposed`);
    const ortFeeds = this.feeds(feeds);
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
