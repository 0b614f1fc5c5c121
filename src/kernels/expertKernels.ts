/**
 * Expert kernels: compute one expert, out[T,H] = down(silu(gate x) * up x), straight from an
 * encoded store record. Three backends, checked against each other in test/kernels.test.ts:
 *   native : native-bindings (SIMD, OpenMP rows); reads every encoding directly. The default.
 *   onnx   : onnxruntime's expert graph with weights as inputs; fp32 only, so other encodings are
 *            decoded on every call (the slow path design.md warns about). Fallback.
 *   js     : plain loops; the reference the others are tested against.
 */
import { OnnxSession } from "../backends/onnx.js";
import { InvalidOptionError } from "../errors.js";
import { IO } from "../importer/modelGraphs.js";
import { decodeMatrix, encodingCode, matrixBytes, type ExpertEncoding } from "../store/expertEncoding.js";
import { loadNativeAddon } from "./nativeAddon.js";

export type ExpertKernelName = "native" | "onnx" | "js";

export interface ExpertKernel {
  readonly name: ExpertKernelName;
  forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array): void | Promise<void>;
  dispose(): Promise<void>;
}

export interface ExpertKernelOptions {
  encoding: ExpertEncoding;
  hiddenSize: number;
  expertFfn: number;
  threads: number;
  /** The model's expert graph (graphs/expert.onnx), for the onnx kernel. */
  expertGraph: string;
  /** Told why a requested kernel fell back to another. */
  log?: (line: string) => void;
}

function splitRecord(o: ExpertKernelOptions, record: Uint8Array) {
  const { encoding: enc, hiddenSize: H, expertFfn: F } = o;
  const gm = matrixBytes(enc, F, H);
  return { gate: record.subarray(0, gm), up: record.subarray(gm, 2 * gm), down: record.subarray(2 * gm) };
}

class NativeExpertKernel implements ExpertKernel {
  readonly name = "native" as const;
  private readonly code: number;
  constructor(
    private readonly o: ExpertKernelOptions,
    private readonly addon: NonNullable<ReturnType<typeof loadNativeAddon>["addon"]>
  ) {
    this.code = encodingCode(o.encoding);
  }
  forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array): void {
    this.addon.expertForward(this.code, record, this.o.hiddenSize, this.o.expertFfn, x, tokens, out, this.o.threads);
  }
  async dispose(): Promise<void> {}
}

class OnnxExpertKernel implements ExpertKernel {
  readonly name = "onnx" as const;
  constructor(
    private readonly o: ExpertKernelOptions,
    private readonly session: OnnxSession
  ) {}
  async forward(record: Uint8Array, x: Float32Array, tokens: number, out: Float32Array): Promise<void> {
    const { hiddenSize: H, expertFfn: F, encoding: enc } = this.o;
    const m = splitRecord(this.o, record);
    const E = IO.expert;
    const y = await this.session.run({
      [E.x]: { data: x.subarray(0, tokens * H), dims: [tokens, H] },
      [E.gate]: { data: decodeMatrix(enc, m.gate, F, H), dims: [F, H] },
      [E.up]: { data: decodeMatrix(enc, m.up, F, H), dims: [F, H] },
      [E.down]: { data: decodeMatrix(enc, m.down, H, F), dims: [H, F] },
    });
    out.set(y[E.y]!.data);
  }
  dispose(): Promise<void> {
    return this.session.dispose();
  }
}

class JsExpertKernel implements ExpertKernel {
  readonly name = "js" as const;
  constructor(private readonly o: ExpertKernelOptions) {}
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
  async dispose(): Promise<void> {}
}

/** Resolves a kernel by name; "auto" = native when built, else onnx (with a note why). */
export async function createExpertKernel(name: ExpertKernelName | "auto", o: ExpertKernelOptions): Promise<ExpertKernel> {
  const { addon, reason } = loadNativeAddon();
  switch (name) {
    case "auto":
      if (addon) return new NativeExpertKernel(o, addon);
      o.log?.(`moe-run: native kernels ${reason}; computing experts with onnxruntime (slower)`);
      return new OnnxExpertKernel(o, await OnnxSession.create(o.expertGraph, { threads: o.threads }));
    case "native":
      if (!addon) throw new InvalidOptionError(`the native expert kernel is unavailable: ${reason}`);
      return new NativeExpertKernel(o, addon);
    case "onnx":
      return new OnnxExpertKernel(o, await OnnxSession.create(o.expertGraph, { threads: o.threads }));
    case "js":
      return new JsExpertKernel(o);
    default: {
      const never: never = name;
      throw new InvalidOptionError(`unknown expert kernel "${String(never)}"; use auto, native, onnx or js`);
    }
  }
}
