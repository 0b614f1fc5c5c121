/**
 * Expert kernels: compute one expert, out[T,H] = down(silu(gate x) * up x) (or another activation,
 * with or without biases: kernels/expertActivation.ts), from its weights in the form the kernel
 * computes from (prepare() turns a store record into that form once, when the
 * cache admits the expert; free() releases it on eviction). Backends, checked against each other
 * in test/kernels.test.ts and test/backends.test.ts:
 *   native : native-bindings (SIMD, OpenMP rows); computes straight from the encoded record. The
 *            default on the CPU.
 *   onnx   : onnxruntime's expert graph on an execution provider, weights resident there
 *            (DeviceExpertKernel: GPU buffers on WebGPU). The default with a GPU provider, and
 *            the CPU fallback when the native kernels are not built.
 *   js     : plain loops; the reference the others are tested against.
 */
import type { ExecutionDevice } from "../backends/onnx.js";
import type { ResidencyStats } from "../cache/TieredExpertSource.js";
import { InvalidOptionError } from "../errors.js";
import { decodeMatrix, readExpertBiases, type ExpertBiases, type ExpertEncoding, type RecordEncodings } from "../store/expertEncoding.js";
import { encodingsOf, largestRecordBytes, layerRecordBytes, layerRecordLayout, nativeRecordCode, recordEncodingOf } from "../store/recordEncodings.js";
import { DeviceExpertKernel } from "./DeviceExpertKernel.js";
import { SILU, activate, checkActivation, isPlainExpert, nativeExpertSpec, type ExpertActivation } from "./expertActivation.js";
import { loadNativeAddon } from "./nativeAddon.js";

export type ExpertKernelName = "native" | "onnx" | "js";

/**
 * `R` is an expert's compute-ready form: the encoded record itself for host kernels, tensors
 * held by the execution provider for the onnx kernel. Methods (not function properties) so a
 * kernel of any form fits ExpertKernel<unknown>.
 */
export interface ExpertKernel<R = Uint8Array> {
  readonly name: ExpertKernelName;
  /** Bytes one prepared expert occupies where this kernel computes (the largest, where layers differ). */
  readonly residentBytes: number;
  /** Bytes a prepared expert of `layer` occupies: what the device tier counts for it. */
  residentBytesOf(layer: number): number;
  /** `layer`: whose record it is (a model whose layers differ in encoding reads each its own way). */
  prepare(record: Uint8Array, layer: number): R | Promise<R>;
  free(resident: R): void;
  forward(resident: R, x: Float32Array, tokens: number, out: Float32Array, layer: number): void | Promise<void>;
  /**
   * Several experts of `layer` at once, synchronously: outs[k] gets exactly what forward(residents[k],
   * xs[k], tokens[k], outs[k], layer) would give. Kernels that can share the work between threads
   * better across experts than within one have it; the others do not.
   */
  forwardMany?(residents: readonly R[], xs: readonly Float32Array[], tokens: readonly number[], outs: readonly Float32Array[], layer: number): void;
  /**
   * What the native decode step (evaluator/FusedDecode.ts) needs to compute these experts itself:
   * each layer's record code and the activation spec. Only the native kernel has it.
   */
  nativeDecodeCall?(numLayers: number): { codes: Float64Array; spec: Float64Array | undefined };
  /** Device memory held by prepared experts (kernels whose form is not the record). */
  residency?(): ResidencyStats;
  dispose(): Promise<void>;
}

export interface ExpertKernelOptions {
  encoding: ExpertEncoding;
  /** Per layer, where the matrices' encodings differ (store/recordEncodings.ts). Default: `encoding` throughout. */
  layerEncodings?: readonly RecordEncodings[];
  hiddenSize: number;
  expertFfn: number;
  threads: number;
  /** Execution provider of the onnx kernel. Default "cpu". */
  device?: ExecutionDevice;
  /** What the expert computes between its matrices. Default { kind: "silu" }. */
  activation?: ExpertActivation;
  /** Records end with fp32 biases gate [F], up [F], down [H] (store/expertEncoding.ts). Default false. */
  expertBias?: boolean;
  /** Told why a requested kernel fell back to another. */
  log?: (line: string) => void;
}

function splitRecord(o: ExpertKernelOptions, record: Uint8Array, layer: number) {
  const l = layerRecordLayout(o, layer);
  const part = ([at, bytes]: [number, number]) => record.subarray(at, at + bytes);
  return { gate: part(l.gate), up: part(l.up), down: part(l.down) };
}

/** Host kernels compute from the record as stored: preparing is the identity. */
abstract class HostExpertKernel implements ExpertKernel<Uint8Array> {
  abstract readonly name: ExpertKernelName;
  readonly residentBytes: number;
  constructor(protected readonly o: ExpertKernelOptions) {
    this.residentBytes = largestRecordBytes(o);
  }
  residentBytesOf(layer: number): number {
    return layerRecordBytes(this.o, layer);
  }
  prepare(record: Uint8Array): Uint8Array {
    return record;
  }
  free(): void {}
  abstract forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array, layer: number): void;
  async dispose(): Promise<void> {}
}

class NativeExpertKernel extends HostExpertKernel {
  readonly name = "native" as const;
  /** The native encoding code of each layer's records (nativeRecordCode). */
  private readonly codes: number[];
  /** Absent for the plain expert (silu, no biases): the call is what it always was. */
  private readonly spec: Float64Array | undefined;
  constructor(
    o: ExpertKernelOptions,
    private readonly addon: NonNullable<ReturnType<typeof loadNativeAddon>["addon"]>
  ) {
    super(o);
    this.codes = o.layerEncodings ? o.layerEncodings.map((_, l) => nativeRecordCode(o, l)) : [nativeRecordCode(o, 0)];
    this.spec = isPlainExpert(o) ? undefined : nativeExpertSpec(o.activation, o.expertBias);
  }
  forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array, layer: number): void {
    // A layer the encodings do not name: nativeRecordCode throws (encodingsOf's error).
    const code = this.codes[this.o.layerEncodings ? layer : 0] ?? nativeRecordCode(this.o, layer);
    this.addon.expertForward(code, record, this.o.hiddenSize, this.o.expertFfn, x, tokens, out, this.o.threads, this.spec);
  }
  forwardMany(records: readonly Uint8Array[], xs: readonly Float32Array[], tokens: readonly number[], outs: readonly Float32Array[], layer: number): void {
    const code = this.codes[this.o.layerEncodings ? layer : 0] ?? nativeRecordCode(this.o, layer);
    this.addon.expertsForward(code, records, this.o.hiddenSize, this.o.expertFfn, xs, tokens, outs, this.o.threads, this.spec);
  }
  nativeDecodeCall(numLayers: number): { codes: Float64Array; spec: Float64Array | undefined } {
    return { codes: Float64Array.from({ length: numLayers }, (_, l) => this.codes[this.o.layerEncodings ? l : 0] ?? nativeRecordCode(this.o, l)), spec: this.spec };
  }
}

class JsExpertKernel extends HostExpertKernel {
  readonly name = "js" as const;
  forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array, layer: number): void {
    const { hiddenSize: H, expertFfn: F } = this.o;
    const enc = encodingsOf(this.o, layer);
    const m = splitRecord(this.o, record, layer);
    const gate = decodeMatrix(enc.gate, m.gate, F, H);
    const up = decodeMatrix(enc.up, m.up, F, H);
    const down = decodeMatrix(enc.down, m.down, H, F);
    const act = this.o.activation ?? SILU;
    const b: ExpertBiases | undefined = this.o.expertBias ? readExpertBiases(record, recordEncodingOf(this.o, layer), H, F) : undefined;
    const h = new Float32Array(F);
    for (let t = 0; t < tokens; t++) {
      const xt = x.subarray(t * H, (t + 1) * H);
      for (let f = 0; f < F; f++) {
        let g = 0;
        let u = 0;
        for (let i = 0; i < H; i++) {
          g += gate[f * H + i]! * xt[i]!;
          u += up[f * H + i]! * xt[i]!;
        }
        if (b) {
          g += b.gate[f]!;
          u += b.up[f]!;
        }
        h[f] = activate(act, g, u);
      }
      for (let r = 0; r < H; r++) {
        let acc = 0;
        for (let f = 0; f < F; f++) acc += down[r * F + f]! * h[f]!;
        out[t * H + r] = b ? acc + b.down[r]! : acc;
      }
    }
  }
}

/**
 * Resolves a kernel by name; "auto" = onnx on a GPU provider, else native when built, else onnx
 * on the CPU (with a note why).
 */
export async function createExpertKernel(name: ExpertKernelName | "auto", o: ExpertKernelOptions): Promise<ExpertKernel<unknown>> {
  const { addon, reason } = loadNativeAddon();
  const device = o.device ?? "cpu";
  if (o.activation) checkActivation(o.activation);
  const onnx = () =>
    DeviceExpertKernel.create({ encoding: o.encoding, layerEncodings: o.layerEncodings, hiddenSize: o.hiddenSize, expertFfn: o.expertFfn, device, threads: o.threads, activation: o.activation, expertBias: o.expertBias });
  switch (name) {
    case "auto":
      if (device !== "cpu") return onnx();
      if (addon) return new NativeExpertKernel(o, addon);
      o.log?.(`moe-run: native kernels ${reason}; computing experts with onnxruntime (slower)`);
      return onnx();
    case "native":
      if (!addon) throw new InvalidOptionError(`the native expert kernel is unavailable: ${reason}`);
      return new NativeExpertKernel(o, addon);
    case "onnx":
      return onnx();
    case "js":
      return new JsExpertKernel(o);
    default: {
      const never: never = name;
      throw new InvalidOptionError(`unknown expert kernel "${String(never)}"; use auto, native, onnx or js`);
    }
  }
}
