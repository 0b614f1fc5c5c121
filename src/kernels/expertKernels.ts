/**
 * Expert kernels: compute one expert, out[T,H] = down(silu(gate x) * up x), from its weights in
 * the form the kernel computes from (prepare() turns a store record into that form once, when the
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
import { decodeMatrix, encodingCode, matrixBytes, recordBytes, type ExpertEncoding } from "../store/expertEncoding.js";
import { DeviceExpertKernel } from "./DeviceExpertKernel.js";
import { loadNativeAddon } from "./nativeAddon.js";

export type ExpertKernelName = "native" | "onnx" | "js";

/**
 * `R` is an expert's compute-ready form: the encoded record itself for host kernels, tensors
 * held by the execution provider for the onnx kernel. Methods (not function properties) so a
 * kernel of any form fits ExpertKernel<unknown>.
 */
export interface ExpertKernel<R = Uint8Array> {
  readonly name: ExpertKernelName;
  /** Bytes one prepared expert occupies where this kernel computes: the device tier's unit. */
  readonly residentBytes: number;
  prepare(record: Uint8Array): R | Promise<R>;
  free(resident: R): void;
  forward(resident: R, x: Float32Array, tokens: number, out: Float32Array): void | Promise<void>;
  /** Device memory held by prepared experts (kernels whose form is not the record). */
  residency?(): ResidencyStats;
  dispose(): Promise<void>;
}

export interface ExpertKernelOptions {
  encoding: ExpertEncoding;
  hiddenSize: number;
  expertFfn: number;
  threads: number;
  /** Execution provider of the onnx kernel. Default "cpu". */
  device?: ExecutionDevice;
  /** Told why a requested kernel fell back to another. */
  log?: (line: string) => void;
}

function splitRecord(o: ExpertKernelOptions, record: Uint8Array) {
  const { encoding: enc, hiddenSize: H, expertFfn: F } = o;
  const gm = matrixBytes(enc, F, H);
  return { gate: record.subarray(0, gm), up: record.subarray(gm, 2 * gm), down: record.subarray(2 * gm) };
}

/** Host kernels compute from the record as stored: preparing is the identity. */
abstract class HostExpertKernel implements ExpertKernel<Uint8Array> {
  abstract readonly name: ExpertKernelName;
  readonly residentBytes: number;
  constructor(protected readonly o: ExpertKernelOptions) {
    this.residentBytes = recordBytes(o.encoding, o.hiddenSize, o.expertFfn);
  }
  prepare(record: Uint8Array): Uint8Array {
    return record;
  }
  free(): void {}
  abstract forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array): void;
  async dispose(): Promise<void> {}
}

class NativeExpertKernel extends HostExpertKernel {
  readonly name = "native" as const;
  private readonly code: number;
  constructor(
    o: ExpertKernelOptions,
    private readonly addon: NonNullable<ReturnType<typeof loadNativeAddon>["addon"]>
  ) {
    super(o);
    this.code = encodingCode(o.encoding);
  }
  forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array): void {
    this.addon.expertForward(this.code, record, this.o.hiddenSize, this.o.expertFfn, x, tokens, out, this.o.threads);
  }
}

class JsExpertKernel extends HostExpertKernel {
  readonly name = "js" as const;
  forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array): void {
    const { hiddenSize: H, expertFfn: F, encoding: enc } = this.o;
    const m = splitRecord(this.o, record);
    const gate = decodeMatrix(enc, m.gate, F, H);
    const up = decodeMatrix(enc, m.up, F, H);
    const down = decodeMatrix(enc, m.down, H, F);
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
        h[f] = (g / (1 + Math.exp(-g))) * u;
      }
      for (let r = 0; r < H; r++) {
        let acc = 0;
        for (let f = 0; f < F; f++) acc += down[r * F + f]! * h[f]!;
        out[t * H + r] = acc;
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
  const onnx = () => DeviceExpertKernel.create({ encoding: o.encoding, hiddenSize: o.hiddenSize, expertFfn: o.expertFfn, device, threads: o.threads });
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
