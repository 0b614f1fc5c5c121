/**
 * How a family stores its routed experts in a Hugging Face checkpoint, and how the importer reads
 * expert j of a layer as the three fp32 matrices moe-run keeps: gate [F, H], up [F, H], down [H, F].
 *   separate : one tensor per expert and projection (Mixtral's w1/w3/w2, Qwen's gate/up/down_proj)
 *   fused    : Granite's input_linear [E, 2F, H] (gate rows, then up rows) and output_linear
 *              [E, H, F]; each expert is the contiguous slice j of the first dimension
 */
import type { HfCheckpoint } from "../formats/HfCheckpoint.js";
import { decodeMatrix, expertRecordLayout, gptOssExpertRecord, type ExpertBiases, type ExpertEncoding, type GptOssExpertTensors, type RecordEncodings } from "../store/expertEncoding.js";
import { expertMatrixFromGgml } from "../store/ggmlExpertBlocks.js";
import { isMoeLayer, type ModelDims } from "./ModelDims.js";

export type ExpertPart = "gate" | "up" | "down";

export interface ExpertWeights {
  gate: Float32Array; // [F, H]
  up: Float32Array; // [F, H]
  down: Float32Array; // [H, F]
  /** fp32 gate [F], up [F], down [H] (families whose experts have biases). */
  biases?: ExpertBiases;
}

export interface CheckpointExperts {
  /** Every tensor one layer's experts read, with the shape config.json implies. `at` names a tensor of the layer. */
  shapes(at: (rest: string) => string, d: ModelDims): Map<string, number[]>;
  /** Expert j of the layer. */
  read(ckpt: HfCheckpoint, at: (rest: string) => string, j: number, d: ModelDims): ExpertWeights;
  /** Tensors whose form depends on the checkpoint (gpt-oss: MXFP4 blocks or bf16), checked like `shapes`. */
  storedShapes?(ckpt: HfCheckpoint, at: (rest: string) => string, d: ModelDims): Map<string, number[]>;
  /**
   * The expert encodings the checkpoint already stores (imported without loss by default): one,
   * or per layer where a GGUF file mixes types. `layerAt(l)` names tensors of layer l.
   */
  storedEncoding?(ckpt: HfCheckpoint, layerAt: (l: number) => (rest: string) => string, d: ModelDims): StoredExperts | undefined;
  /** Expert j's record in `enc` straight from the stored bytes, when they are in those encodings (unpadded). */
  rawRecord?(ckpt: HfCheckpoint, at: (rest: string) => string, j: number, d: ModelDims, enc: RecordEncodings): Uint8Array | undefined;
}

/** Experts a checkpoint stores in moe-run's encodings: one for all, or each layer's (store/recordEncodings.ts). */
export interface StoredExperts {
  encoding: ExpertEncoding;
  layerEncodings?: RecordEncodings[];
}

/** GGUF tensor types whose blocks moe-run keeps as they are (store/ggmlExpertBlocks.ts). */
const GGML_AS_IS: Record<string, ExpertEncoding> = { F32: "f32", F16: "f16", Q8_0: "int8", Q4_0: "int4", MXFP4: "mxfp4", Q4_1: "q4_1", Q5_0: "q5_0", Q5_1: "q5_1", Q2_K: "q2_k", Q3_K: "q3_k", Q4_K: "q4_k", Q5_K: "q5_k", Q6_K: "q6_k" };

/** A GGUF checkpoint view (formats/GgufCheckpoint.ts) hands out its tensors' stored blocks. */
export interface RawBlocks {
  readRaw(name: string, shape: readonly number[]): { type: { id: number; name: string }; bytes: Uint8Array };
}
export const rawBlocks = (ckpt: HfCheckpoint): RawBlocks | undefined => ("readRaw" in ckpt ? (ckpt as unknown as RawBlocks) : undefined);

export function separateExperts(name: (j: number, part: ExpertPart) => string): CheckpointExperts {
  return {
    // A GGUF file's experts in types moe-run computes from directly (Q8_0 -> int8, Q4_0 -> int4,
    // MXFP4, F16, F32, the k-quants, Q4_1, Q5_0, Q5_1) import as they are, computing as llama.cpp
    // does: one encoding, or each layer's gate, up and down (Q4_K_M's Q6_K ffn_down layers).
    storedEncoding(ckpt, layerAt, d) {
      if (!rawBlocks(ckpt)) return undefined;
      const moe: { l: number; e: RecordEncodings }[] = [];
      for (let l = 0; l < d.numLayers; l++) {
        if (!isMoeLayer(d, l)) continue;
        const at = layerAt(l);
        const of = (p: ExpertPart): ExpertEncoding | undefined => {
          const types = new Set<string>();
          for (let j = 0; j < d.numExperts; j++) types.add(ckpt.entry(at(name(j, p))).dtype);
          return types.size === 1 ? GGML_AS_IS[[...types][0]!] : undefined; // experts of one layer differ: no record form
        };
        const gate = of("gate");
        const up = of("up");
        const down = of("down");
        if (!gate || !up || !down) return undefined;
        moe.push({ l, e: { gate, up, down } });
      }
      if (moe.length === 0) return undefined;
      // The model's encoding: the commonest gate encoding (the one a mix's description is against).
      const count = new Map<ExpertEncoding, number>();
      for (const { e } of moe) count.set(e.gate, (count.get(e.gate) ?? 0) + 1);
      const encoding = [...count].sort((a, b) => b[1] - a[1])[0]![0];
      if (moe.every(({ e }) => e.gate === encoding && e.up === encoding && e.down === encoding)) return { encoding };
      const layerEncodings: RecordEncodings[] = Array.from({ length: d.numLayers }, () => ({ gate: encoding, up: encoding, down: encoding }));
      for (const { l, e } of moe) layerEncodings[l] = e;
      return { encoding, layerEncodings };
    },
    rawRecord(ckpt, at, j, d, enc) {
      const raw = rawBlocks(ckpt);
      if (!raw) return undefined;
      const { hiddenSize: H, expertFfn: F } = d;
      const parts = ([["gate", F, H], ["up", F, H], ["down", H, F]] as const).map(([p, rows, cols]) => ({ ...raw.readRaw(at(name(j, p)), [rows, cols]), rows, cols, want: enc[p] }));
      if (!parts.every((p) => GGML_AS_IS[p.type.name] === p.want)) return undefined;
      const matrices = parts.map((p) => expertMatrixFromGgml(p.type.id, p.bytes, p.rows, p.cols).bytes);
      const out = new Uint8Array(matrices.reduce((s, m) => s + m.byteLength, 0));
      let offset = 0;
      for (const m of matrices) {
        out.set(m, offset);
        offset += m.byteLength;
      }
      return out;
    },
    shapes(at, d) {
      const m = new Map<string, number[]>();
      const { hiddenSize: H, expertFfn: F } = d;
      for (let j = 0; j < d.numExperts; j++) {
        m.set(at(name(j, "gate")), [F, H]);
        m.set(at(name(j, "up")), [F, H]);
        m.set(at(name(j, "down")), [H, F]);
      }
      return m;
    },
    read(ckpt, at, j, d) {
      const { hiddenSize: H, expertFfn: F } = d;
      return {
        gate: ckpt.readFloat32(at(name(j, "gate")), [F, H]),
        up: ckpt.readFloat32(at(name(j, "up")), [F, H]),
        down: ckpt.readFloat32(at(name(j, "down")), [H, F]),
      };
    },
  };
}

/** Granite: gate and up stacked in one [E, 2F, H] tensor, down in [E, H, F]. */
export function fusedGateUpExperts(gateUp: string, down: string): CheckpointExperts {
  return {
    shapes(at, d) {
      const { hiddenSize: H, expertFfn: F, numExperts: E } = d;
      return new Map([
        [at(gateUp), [E, 2 * F, H]],
        [at(down), [E, H, F]],
      ]);
    },
    read(ckpt, at, j, d) {
      const { hiddenSize: H, expertFfn: F, numExperts: E } = d;
      const gu = ckpt.readFloat32Slice(at(gateUp), [E, 2 * F, H], j); // [2F, H]
      return { gate: gu.slice(0, F * H), up: gu.slice(F * H), down: ckpt.readFloat32Slice(at(down), [E, H, F], j) };
    },
  };
}

/**
 * gpt-oss: `${prefix}.gate_up_proj` [E, H, 2F] (x @ W; gate columns 2i, up 2i+1) with bias
 * [E, 2F], `down_proj` [E, F, H] with bias [E, H]; or, as released, MXFP4 blocks and scales
 * (`gate_up_proj_blocks` [E, 2F, H/32, 16], `_scales` [E, 2F, H/32]; down [E, H, F/32, 16] and
 * [E, H, F/32]), which import into mxfp4 records without touching a float.
 */
export function gptOssExperts(prefix: string): CheckpointExperts {
  const t = (name: string) => `${prefix}.${name}`;
  const isMx = (ckpt: HfCheckpoint, at: (rest: string) => string) => ckpt.has(at(t("gate_up_proj_blocks")));
  const mxShapes = (d: ModelDims) => {
    const { hiddenSize: H, expertFfn: F, numExperts: E } = d;
    return {
      gateUpBlocks: [E, 2 * F, H / 32, 16],
      gateUpScales: [E, 2 * F, H / 32],
      downBlocks: [E, H, F / 32, 16],
      downScales: [E, H, F / 32],
    };
  };
  const readBiases = (ckpt: HfCheckpoint, at: (rest: string) => string, j: number, d: ModelDims) => {
    const { hiddenSize: H, expertFfn: F, numExperts: E } = d;
    return { gateUp: ckpt.readFloat32Slice(at(t("gate_up_proj_bias")), [E, 2 * F], j), down: ckpt.readFloat32Slice(at(t("down_proj_bias")), [E, H], j) };
  };
  const mxTensors = (ckpt: HfCheckpoint, at: (rest: string) => string, j: number, d: ModelDims): GptOssExpertTensors => {
    const s = mxShapes(d);
    const b = readBiases(ckpt, at, j, d);
    return {
      hiddenSize: d.hiddenSize,
      expertFfn: d.expertFfn,
      gateUpBlocks: ckpt.readSliceBytes(at(t("gate_up_proj_blocks")), s.gateUpBlocks, j),
      gateUpScales: ckpt.readSliceBytes(at(t("gate_up_proj_scales")), s.gateUpScales, j),
      downBlocks: ckpt.readSliceBytes(at(t("down_proj_blocks")), s.downBlocks, j),
      downScales: ckpt.readSliceBytes(at(t("down_proj_scales")), s.downScales, j),
      gateUpBias: b.gateUp,
      downBias: b.down,
    };
  };
  return {
    shapes(at, d) {
      const { hiddenSize: H, expertFfn: F, numExperts: E } = d;
      const m = new Map<string, number[]>([
        [at(t("gate_up_proj_bias")), [E, 2 * F]],
        [at(t("down_proj_bias")), [E, H]],
      ]);
      // The weights' tensors depend on the form the checkpoint holds: storedShapes.
      return m;
    },
    storedShapes(ckpt, at, d) {
      const { hiddenSize: H, expertFfn: F, numExperts: E } = d;
      if (isMx(ckpt, at)) {
        const s = mxShapes(d);
        return new Map([
          [at(t("gate_up_proj_blocks")), s.gateUpBlocks],
          [at(t("gate_up_proj_scales")), s.gateUpScales],
          [at(t("down_proj_blocks")), s.downBlocks],
          [at(t("down_proj_scales")), s.downScales],
        ]);
      }
      return new Map([
        [at(t("gate_up_proj")), [E, H, 2 * F]],
        [at(t("down_proj")), [E, F, H]],
      ]);
    },
    storedEncoding(ckpt, layerAt) {
      return isMx(ckpt, layerAt(0)) ? { encoding: "mxfp4" } : undefined;
    },
    rawRecord(ckpt, at, j, d, enc) {
      const mx = enc.gate === "mxfp4" && enc.up === "mxfp4" && enc.down === "mxfp4";
      return mx && isMx(ckpt, at) ? gptOssExpertRecord(mxTensors(ckpt, at, j, d)) : undefined;
    },
    read(ckpt, at, j, d) {
      const { hiddenSize: H, expertFfn: F, numExperts: E } = d;
      const b = readBiases(ckpt, at, j, d);
      const gate = new Float32Array(F * H);
      const up = new Float32Array(F * H);
      const down = new Float32Array(H * F);
      if (isMx(ckpt, at)) {
        // Dequantize the stored blocks (exact: E2M1 values times a power of two).
        const rec = gptOssExpertRecord({ ...mxTensors(ckpt, at, j, d), gateUpBias: undefined, downBias: undefined });
        const l = expertRecordLayout("mxfp4", H, F);
        gate.set(decodeMatrix("mxfp4", rec.subarray(l.gate[0], l.gate[0] + l.gate[1]), F, H));
        up.set(decodeMatrix("mxfp4", rec.subarray(l.up[0], l.up[0] + l.up[1]), F, H));
        down.set(decodeMatrix("mxfp4", rec.subarray(l.down[0], l.down[0] + l.down[1]), H, F));
      } else {
        const gu = ckpt.readFloat32Slice(at(t("gate_up_proj")), [E, H, 2 * F], j); // [H, 2F]
        const dp = ckpt.readFloat32Slice(at(t("down_proj")), [E, F, H], j); // [F, H]
        for (let h = 0; h < H; h++)
          for (let f = 0; f < F; f++) {
            gate[f * H + h] = gu[h * 2 * F + 2 * f]!;
            up[f * H + h] = gu[h * 2 * F + 2 * f + 1]!;
            down[h * F + f] = dp[f * H + h]!;
          }
      }
      const gateBias = new Float32Array(F);
      const upBias = new Float32Array(F);
      for (let f = 0; f < F; f++) {
        gateBias[f] = b.gateUp[2 * f]!;
        upBias[f] = b.gateUp[2 * f + 1]!;
      }
      return { gate, up, down, biases: { gate: gateBias, up: upBias, down: b.down } };
    },
  };
}
