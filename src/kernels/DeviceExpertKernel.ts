/**
 * The expert kernel of an execution provider (WebGPU or CUDA; the CPU provider runs the same code
 * for tests and as a fallback). An expert's weights become resident on the provider once, when
 * the cache admits the expert (prepare), in their compact form: f16 stays half precision, int8,
 * int4 and mxfp4 become int8 values plus fp32 block scales (mxfp4: its doubled E2M1 values -12..12
 * and 2^(e-128), exactly); the graph dequantizes to fp32 as it computes. Expert biases
 * (expertBias) are fp32 tensors beside the weights. They are freed when the cache evicts the
 * expert (free). forward() moves only activations: x [T, H] in, y [T, H] out. WebGPU has no
 * 8-bit tensor types (its kernels take f32, f16, i32, u32), so there int8, int4 and mxfp4 experts
 * are held as f16, dequantized at upload.
 *
 * On WebGPU the weights are GPU buffers: an upload graph copies them to the GPU and its outputs
 * stay there (onnxruntime's "gpu-buffer" output location), and the expert graph takes them as
 * inputs without a copy. The Node binding cannot hold CUDA memory between runs, so on CUDA the
 * weights stay in host memory and travel with each run (the scheduler's cost model sees that).
 */
import { DeviceTensor, OnnxSession, type ExecutionDevice, type HostTensor, type TensorData } from "../backends/onnx.js";
import { invariant } from "../errors.js";
import { GraphBuilder, type ElemType } from "../onnx/GraphBuilder.js";
import { expertMlp } from "../importer/modelGraphs.js";
import {
  BLOCK,
  MXFP4_X2,
  decodeMatrix,
  encodeMatrix,
  expertRecordLayout,
  isGgmlBlocks,
  matrixBytes,
  partEncodings,
  readExpertBiases,
  type ExpertEncoding,
  type RecordEncoding,
  type RecordEncodings,
} from "../store/expertEncoding.js";
import { recordEncodingOf } from "../store/recordEncodings.js";
import type { ExpertActivation } from "./expertActivation.js";
import type { ResidencyStats } from "../cache/TieredExpertSource.js";
import type { ExpertKernel } from "./expertKernels.js";

/** An expert's weights held by the provider; the cache owns it and frees it on eviction. */
export interface ResidentExpert {
  /** Graph input name -> tensor on the provider. */
  readonly tensors: Readonly<Record<string, DeviceTensor>>;
  /** Bytes it occupies on the provider. */
  readonly bytes: number;
}


const MATRICES = ["gate", "up", "down"] as const;
type MatrixName = (typeof MATRICES)[number];

interface MatrixForm {
  /** Graph inputs of this matrix: the values (and, quantized, the block scales). */
  values: { name: string; elem: ElemType };
  scales?: { name: string };
}

/**
 * How weights are held on the provider: f32; f16; q8 = int8 values + fp32 scales per block of 32
 * (int8 records as stored, int4 records widened to int8, mxfp4 records as doubled E2M1 values
 * with half their E8M0 scales: the same numbers).
 */
export type ResidentLayout = "f32" | "f16" | "q8";

/**
 * The layout for an encoding on a provider: as compact as the provider's tensor types allow. For
 * a model whose matrices differ in encoding (store/recordEncodings.ts), the one layout that holds
 * all of them exactly: theirs where they agree, else f32 (f16 on WebGPU unless one is f32).
 */
export function residentLayoutFor(encoding: ExpertEncoding | readonly ExpertEncoding[], device: ExecutionDevice): ResidentLayout {
  if (typeof encoding !== "string") {
    const layouts = new Set(encoding.map((e) => residentLayoutFor(e, device)));
    if (layouts.size === 1) return [...layouts][0]!;
    return device === "webgpu" && !layouts.has("f32") ? "f16" : "f32";
  }
  if (encoding === "f32" || encoding === "f16") return encoding;
  // GGUF blocks other than Q8_0/Q4_0 (two scales per block of 32, or a scale and a min) have no
  // exact q8 form: their values are dequantized at prepare, to f32 (f16 on WebGPU).
  if (isGgmlBlocks(encoding)) return device === "webgpu" ? "f16" : "f32";
  return device === "webgpu" ? "f16" : "q8";
}

/** Every encoding a model's records use (one, or the union of its layers' matrices'). */
function allEncodings(o: { encoding: ExpertEncoding; layerEncodings?: readonly RecordEncodings[] }): ExpertEncoding | ExpertEncoding[] {
  return o.layerEncodings ? [...new Set(o.layerEncodings.flatMap((e) => [e.gate, e.up, e.down]))] : o.encoding;
}

function residentForm(layout: ResidentLayout): Record<MatrixName, MatrixForm> {
  const elem: ElemType = layout === "f32" ? "float32" : layout === "f16" ? "float16" : "int8";
  const form = {} as Record<MatrixName, MatrixForm>;
  for (const m of MATRICES) form[m] = { values: { name: `w_${m}`, elem }, scales: layout === "q8" ? { name: `s_${m}` } : undefined };
  return form;
}

/** Bytes of one expert held in `layout` (with expertBias, its fp32 biases too). */
export function residentExpertBytes(layout: ResidentLayout, H: number, F: number, expertBias = false): number {
  const perWeight = { f32: 4, f16: 2, q8: 1 + 4 / BLOCK }[layout];
  return 3 * H * F * perWeight + (expertBias ? 4 * (2 * F + H) : 0);
}

/** Graph inputs of the expert biases (expertBias): gate [F], up [F], down [H], fp32. */
const BIAS_INPUTS = { gate: "b_gate", up: "b_up", down: "b_down" } as const;

/** What the expert computes (kernels/expertActivation.ts); defaults: silu, no biases. */
export interface ExpertGraphOptions {
  activation?: ExpertActivation;
  expertBias?: boolean;
}

/** Rows x cols of each matrix: gate and up [F, H], down [H, F]. */
function shapeOf(m: MatrixName, H: number, F: number): [number, number] {
  return m === "down" ? [H, F] : [F, H];
}

/** The expert graph over resident weights: dequantize to fp32, then the expert's activation. */
export function buildResidentExpertGraph(layout: ResidentLayout, H: number, F: number, o: ExpertGraphOptions = {}): Uint8Array {
  const g = new GraphBuilder(`expert_${layout}`);
  const x = g.input("x", "float32", ["T", H]);
  const form = residentForm(layout);
  const w = {} as Record<MatrixName, string>;
  for (const m of MATRICES) {
    const [rows, cols] = shapeOf(m, H, F);
    const f = form[m];
    const values = g.input(f.values.name, f.values.elem, [rows, cols]);
    if (f.values.elem === "float32") w[m] = values;
    else if (!f.scales) w[m] = g.op("Cast", [values], { to: 1 }); // float16 -> float32
    else {
      // value = q * scale of its block of 32 along the row.
      const scales = g.input(f.scales.name, "float32", [rows, cols / BLOCK]);
      const q = g.op("Reshape", [g.op("Cast", [values], { to: 1 }), g.constInt64([rows, cols / BLOCK, BLOCK])]);
      const s = g.op("Reshape", [scales, g.constInt64([rows, cols / BLOCK, 1])]);
      w[m] = g.op("Reshape", [g.op("Mul", [q, s]), g.constInt64([rows, cols])]);
    }
  }
  const bias = o.expertBias
    ? { gate: g.input(BIAS_INPUTS.gate, "float32", [F]), up: g.input(BIAS_INPUTS.up, "float32", [F]), down: g.input(BIAS_INPUTS.down, "float32", [H]) }
    : undefined;
  g.output(expertMlp(g, x, w, { activation: o.activation, bias }), "y", "float32", ["T", H]);
  return g.toBytes();
}

/** Copies every weight input to an output of the same type, which stays on the GPU. */
export function buildUploadGraph(layout: ResidentLayout, H: number, F: number, o: ExpertGraphOptions = {}): Uint8Array {
  const g = new GraphBuilder(`upload_${layout}`);
  const form = residentForm(layout);
  for (const m of MATRICES) {
    const [rows, cols] = shapeOf(m, H, F);
    const f = form[m];
    g.output(g.input(f.values.name, f.values.elem, [rows, cols]), `${f.values.name}_device`, f.values.elem, [rows, cols]);
    if (f.scales) g.output(g.input(f.scales.name, "float32", [rows, cols / BLOCK]), `${f.scales.name}_device`, "float32", [rows, cols / BLOCK]);
  }
  if (o.expertBias)
    for (const [name, n] of [[BIAS_INPUTS.gate, F], [BIAS_INPUTS.up, F], [BIAS_INPUTS.down, H]] as const) g.output(g.input(name, "float32", [n]), `${name}_device`, "float32", [n]);
  return g.toBytes();
}

/**
 * Splits an encoded record into the host tensors of its resident layout (views where possible);
 * with expertBias also its biases.
 */
export function recordTensors(
  encodings: RecordEncoding,
  layout: ResidentLayout,
  record: Uint8Array,
  H: number,
  F: number,
  expertBias = false
): Record<string, HostTensor<TensorData>> {
  const form = residentForm(layout);
  const out: Record<string, HostTensor<TensorData>> = {};
  const expected = expertRecordLayout(encodings, H, F, expertBias).bytes;
  invariant(record.byteLength === expected, `expert record has ${record.byteLength} bytes, expected ${expected} (${JSON.stringify(encodings)}${expertBias ? " with biases" : ""})`);
  if (expertBias) {
    const b = readExpertBiases(record, encodings, H, F);
    out[BIAS_INPUTS.gate] = { data: b.gate, dims: [F] };
    out[BIAS_INPUTS.up] = { data: b.up, dims: [F] };
    out[BIAS_INPUTS.down] = { data: b.down, dims: [H] };
  }
  let offset = 0;
  for (const m of MATRICES) {
    const encoding = partEncodings(encodings)[m];
    const [rows, cols] = shapeOf(m, H, F);
    const n = rows * cols;
    const bytes = record.subarray(offset, offset + matrixBytes(encoding, rows, cols));
    invariant(bytes.byteLength === matrixBytes(encoding, rows, cols), `expert record too short for ${m} [${rows}, ${cols}] (${encoding})`);
    offset += bytes.byteLength;
    const f = form[m];
    const dims = [rows, cols];
    const aligned = (k: number) => (bytes.byteOffset % k === 0 ? bytes : bytes.slice());
    if (layout === "f16" && encoding !== "f16") {
      // Quantized record, provider without 8-bit types: dequantize, then round to half.
      const halves = encodeMatrix("f16", decodeMatrix(encoding, bytes, rows, cols), rows, cols);
      out[f.values.name] = { data: new Uint16Array(halves.buffer, halves.byteOffset, n), dims };
      continue;
    }
    if (layout === "f32" && encoding !== "f32") {
      // GGUF blocks without a q8 form, or a mixed model's matrices: their fp32 values, exactly.
      out[f.values.name] = { data: decodeMatrix(encoding, bytes, rows, cols), dims };
      continue;
    }
    invariant(layout !== "f32" || encoding === "f32", `a ${encoding} record cannot be held as f32`);
    switch (encoding) {
      case "f32": {
        const b = aligned(4);
        out[f.values.name] = { data: new Float32Array(b.buffer, b.byteOffset, n), dims };
        break;
      }
      case "f16": {
        const b = aligned(2);
        out[f.values.name] = { data: new Uint16Array(b.buffer, b.byteOffset, n), dims };
        break;
      }
      case "int8":
      case "int4": {
        // Layout (expertEncoding.ts): fp32 scales [n / 32], then int8 values or packed nibbles (q + 8, low first).
        const b = aligned(4);
        out[f.scales!.name] = { data: new Float32Array(b.buffer, b.byteOffset, n / BLOCK), dims: [rows, cols / BLOCK] };
        const packed = b.subarray((n / BLOCK) * 4);
        let q: Int8Array;
        if (encoding === "int8") q = new Int8Array(packed.buffer, packed.byteOffset, n);
        else {
          q = new Int8Array(n);
          for (let i = 0; i < n / 2; i++) {
            const byte = packed[i]!;
            q[2 * i] = (byte & 15) - 8;
            q[2 * i + 1] = (byte >> 4) - 8;
          }
        }
        out[f.values.name] = { data: q, dims };
        break;
      }
      case "mxfp4": {
        // Layout (store/mxfp4.ts): E8M0 bytes [n / 32], then E2M1 codes (low nibble first). Held
        // as q8: the codes' doubled values (-12..12) and 2^(e - 128) per block, the same numbers.
        const scales = new Float32Array(n / BLOCK);
        for (let b = 0; b < n / BLOCK; b++) scales[b] = bytes[b] === 255 ? NaN : 2 ** (bytes[b]! - 128);
        out[f.scales!.name] = { data: scales, dims: [rows, cols / BLOCK] };
        const packed = bytes.subarray(n / BLOCK);
        const q = new Int8Array(n);
        for (let i = 0; i < n / 2; i++) {
          const byte = packed[i]!;
          q[2 * i] = MXFP4_X2[byte & 15]!;
          q[2 * i + 1] = MXFP4_X2[byte >> 4]!;
        }
        out[f.values.name] = { data: q, dims };
        break;
      }
      case "q2_k":
      case "q3_k":
      case "q4_k":
      case "q5_k":
      case "q6_k":
      case "q4_1":
      case "q5_0":
      case "q5_1":
        throw new Error(`a ${encoding} record is held as f32 or f16, not ${layout}`);
      default: {
        const never: never = encoding;
        throw new Error(`unknown encoding ${String(never)}`);
      }
    }
  }
  return out;
}

export interface DeviceExpertKernelOptions {
  encoding: ExpertEncoding;
  /** Per layer, where the matrices' encodings differ (store/recordEncodings.ts). */
  layerEncodings?: readonly RecordEncodings[];
  hiddenSize: number;
  expertFfn: number;
  device: ExecutionDevice;
  /** Intra-op threads (matter on the CPU provider). Default 1. */
  threads?: number;
  /** How weights are held. Default: residentLayoutFor(every encoding used, device). */
  layout?: ResidentLayout;
  /** What the expert computes. Default { kind: "silu" }. */
  activation?: ExpertActivation;
  /** Records end with fp32 biases gate [F], up [F], down [H]. Default false. */
  expertBias?: boolean;
}

export class DeviceExpertKernel implements ExpertKernel<ResidentExpert> {
  readonly name = "onnx" as const;
  readonly residentBytes: number;
  readonly layout: ResidentLayout;
  private readonly stats_: ResidencyStats;

  private constructor(
    private readonly o: DeviceExpertKernelOptions,
    private readonly expert: OnnxSession,
    /** Present on WebGPU: moves weights into GPU buffers. */
    private readonly upload: OnnxSession | undefined
  ) {
    this.layout = o.layout ?? residentLayoutFor(allEncodings(o), o.device);
    this.residentBytes = residentExpertBytes(this.layout, o.hiddenSize, o.expertFfn, o.expertBias);
    this.stats_ = { device: o.device, memory: upload ? "gpu" : "host", prepared: 0, freed: 0, liveBytes: 0, liveBytesMax: 0 };
  }

  static async create(o: DeviceExpertKernelOptions): Promise<DeviceExpertKernel> {
    const { hiddenSize: H, expertFfn: F, device } = o;
    const layout = o.layout ?? residentLayoutFor(allEncodings(o), device);
    const threads = o.threads ?? 1;
    const graph = { activation: o.activation, expertBias: o.expertBias };
    const expert = await OnnxSession.create(buildResidentExpertGraph(layout, H, F, graph), { device, threads, name: `expert graph (${layout}, ${device})` });
    let upload: OnnxSession | undefined;
    try {
      if (device === "webgpu") upload = await OnnxSession.create(buildUploadGraph(layout, H, F, graph), { device, threads, outputsOnDevice: true, name: `upload graph (${layout})` });
    } catch (err) {
      await expert.dispose();
      throw err;
    }
    return new DeviceExpertKernel({ ...o, layout }, expert, upload);
  }

  get device(): ExecutionDevice {
    return this.o.device;
  }

  /** Every layer's experts are held in one layout (residentLayoutFor), so of one size. */
  residentBytesOf(): number {
    return this.residentBytes;
  }

  async prepare(record: Uint8Array, layer: number): Promise<ResidentExpert> {
    const host = recordTensors(recordEncodingOf(this.o, layer), this.layout, record, this.o.hiddenSize, this.o.expertFfn, this.o.expertBias);
    const tensors: Record<string, DeviceTensor> = {};
    if (this.upload) {
      const out = await this.upload.runOnDevice(host);
      for (const name of Object.keys(host)) tensors[name] = out[`${name}_device`]!;
    } else for (const [name, t] of Object.entries(host)) tensors[name] = DeviceTensor.fromHost(t);
    const bytes = Object.values(tensors).reduce((a, t) => a + t.bytes, 0);
    invariant(bytes === this.residentBytes, `resident expert holds ${bytes} bytes, expected ${this.residentBytes}`);
    this.stats_.prepared++;
    this.stats_.liveBytes += bytes;
    this.stats_.liveBytesMax = Math.max(this.stats_.liveBytesMax, this.stats_.liveBytes);
    return { tensors, bytes };
  }

  free(resident: ResidentExpert): void {
    for (const t of Object.values(resident.tensors)) t.dispose();
    this.stats_.freed++;
    this.stats_.liveBytes -= resident.bytes;
    invariant(this.stats_.liveBytes >= 0 && this.stats_.freed <= this.stats_.prepared, "a resident expert was freed twice");
  }

  async forward(resident: ResidentExpert, x: Float32Array, tokens: number, out: Float32Array): Promise<void> {
    const H = this.o.hiddenSize;
    const y = await this.expert.run({ x: { data: x.subarray(0, tokens * H), dims: [tokens, H] }, ...resident.tensors }, ["y"]);
    out.set(y.y!.data);
  }

  residency(): ResidencyStats {
    return { ...this.stats_ };
  }

  async dispose(): Promise<void> {
    await this.expert.dispose();
    await this.upload?.dispose();
  }
}
