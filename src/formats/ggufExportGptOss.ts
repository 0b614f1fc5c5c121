/**
 * A Hugging Face gpt-oss checkpoint -> GGUF as llama.cpp's convert_hf_to_gguf.py (GptOssModel)
 * writes it: arch `gpt-oss`, the MXFP4 experts repacked into ggml's block_mxfp4 without touching
 * a float (gate_up split into ffn_gate_exps / ffn_up_exps by its interleaved rows), sinks as
 * attn_sinks.weight, the post-attention norm as post_attention_norm, biases F32, YaRN and the
 * sliding window as metadata. Dense matrices get `options.type` (BF16 keeps bf16 weights exact).
 *
 * The project's writer (gguf.ts) has no MXFP4 tag: each MXFP4 tensor [cols, rows, E] is written as
 * the Q8_0 tensor of the same byte size ([cols/2, rows, E]: 34 bytes per 64 values = two 17-byte
 * MXFP4 blocks) and its header entry is then re-tagged in place (ggml type 39, ne0 = cols), so
 * rows of `cols` values must be whole multiples of 64.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { ModelDims } from "../architectures/ModelDims.js";
import { UnsupportedConfigError } from "../errors.js";
import { FILE_TYPE, GGUF_DEFAULT_ALIGNMENT, encodeGgml, gguf, writeGguf, type GgmlTypeName, type GgufValue } from "./gguf.js";
import type { GgufExportOptions, GgufExportResult } from "./ggufExport.js";
import type { HfCheckpoint } from "./HfCheckpoint.js";
import { ggufTensorList } from "./ggufTensorList.js";
import { GgmlType, dequantize } from "./ggmlQuants.js";
import "../store/expertEncoding.js"; // registers the MXFP4 decoder

const MXFP4_ID = 39;

/** HF MXFP4 rows (blocks [rows, cols/32, 16] with element 2i low / 2i+1 high, scales [rows, cols/32]) -> ggml block_mxfp4 rows. */
export function ggmlMxfp4FromHf(blocks: Uint8Array, scales: Uint8Array, rows: readonly number[], cols: number): Uint8Array {
  const nb = cols / 32;
  const out = new Uint8Array(rows.length * nb * 17);
  rows.forEach((r, i) => {
    for (let k = 0; k < nb; k++) {
      const src = (r * nb + k) * 16;
      const dst = (i * nb + k) * 17;
      out[dst] = scales[r * nb + k]!;
      const code = (e: number) => (e & 1 ? blocks[src + (e >> 1)]! >> 4 : blocks[src + (e >> 1)]! & 15);
      for (let q = 0; q < 16; q++) out[dst + 1 + q] = code(q) | (code(q + 16) << 4);
    }
  });
  return out;
}

export function exportGptOss(ckpt: HfCheckpoint, hfDir: string, d: ModelDims, outPath: string, options: GgufExportOptions, tokenizer: [string, GgufValue][]): GgufExportResult {
  const H = d.hiddenSize;
  const V = d.vocabSize;
  const F = d.expertFfn;
  const E = d.numExperts;
  const qRows = d.numHeads * d.headDim;
  const kvRows = d.numKvHeads * d.headDim;
  const c = ckpt.config;
  if (H % 64 !== 0 || F % 64 !== 0) throw new UnsupportedConfigError(`gpt-oss GGUF export needs hidden and expert sizes that are multiples of 64, got ${H}, ${F}`);
  const mx: { name: string; cols: number }[] = [];
  const list = ggufTensorList(ckpt, hfDir, (name, dims) => options.typeFor?.(name, dims) ?? options.type);
  const { types, tensors, read, f32 } = list;
  const matrix = (name: string, dims: number[], get: () => Float32Array) => list.matrix(name, dims, [get]);
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  matrix("token_embd.weight", [H, V], read("model.embed_tokens.weight", [V, H]));
  for (let l = 0; l < d.numLayers; l++) {
    const b = `blk.${l}`;
    f32(`${b}.attn_norm.weight`, [H], read(hf(l, "input_layernorm.weight"), [H]));
    for (const [p, t, rows] of [["q", "attn_q", qRows], ["k", "attn_k", kvRows], ["v", "attn_v", kvRows]] as const) {
      matrix(`${b}.${t}.weight`, [H, rows], read(hf(l, `self_attn.${p}_proj.weight`), [rows, H]));
      f32(`${b}.${t}.bias`, [rows], read(hf(l, `self_attn.${p}_proj.bias`), [rows]));
    }
    matrix(`${b}.attn_output.weight`, [qRows, H], read(hf(l, "self_attn.o_proj.weight"), [H, qRows]));
    f32(`${b}.attn_output.bias`, [H], read(hf(l, "self_attn.o_proj.bias"), [H]));
    f32(`${b}.attn_sinks.weight`, [d.numHeads], read(hf(l, "self_attn.sinks"), [d.numHeads]));
    f32(`${b}.post_attention_norm.weight`, [H], read(hf(l, "post_attention_layernorm.weight"), [H]));
    f32(`${b}.ffn_gate_inp.weight`, [H, E], read(hf(l, "mlp.router.weight"), [E, H]));
    f32(`${b}.ffn_gate_inp.bias`, [E], read(hf(l, "mlp.router.bias"), [E]));
    const x = (rest: string) => hf(l, `mlp.experts.${rest}`);
    if (!ckpt.has(x("gate_up_proj_blocks"))) throw new UnsupportedConfigError(`gpt-oss GGUF export reads MXFP4 experts; ${hfDir} stores them unquantized`);
    const gu = (j: number) => ({
      blocks: ckpt.readSliceBytes(x("gate_up_proj_blocks"), [E, 2 * F, H / 32, 16], j),
      scales: ckpt.readSliceBytes(x("gate_up_proj_scales"), [E, 2 * F, H / 32], j),
    });
    const even = Array.from({ length: F }, (_, f) => 2 * f);
    const odd = even.map((r) => r + 1);
    const mxTensor = (name: string, dims: number[], rows: (j: number) => Uint8Array) => {
      const et = options.gptOssExperts ?? "MXFP4";
      if (et !== "MXFP4") {
        // Decoded exactly (E2M1 times a power of two), then encoded as asked.
        types.set(name, et);
        const n = dims[0]! * dims[1]!;
        tensors.push({ name, dims, type: et, data: function* () { for (let j = 0; j < E; j++) yield encodeGgml(dequantize(GgmlType.MXFP4, rows(j), n), et); } });
        return;
      }
      types.set(name, "Q8_0");
      mx.push({ name, cols: dims[0]! });
      tensors.push({ name, dims: [dims[0]! / 2, dims[1]!, dims[2]!], type: "Q8_0", data: function* () { for (let j = 0; j < E; j++) yield rows(j); } });
    };
    mxTensor(`${b}.ffn_gate_exps.weight`, [H, F, E], (j) => { const t = gu(j); return ggmlMxfp4FromHf(t.blocks, t.scales, even, H); });
    mxTensor(`${b}.ffn_up_exps.weight`, [H, F, E], (j) => { const t = gu(j); return ggmlMxfp4FromHf(t.blocks, t.scales, odd, H); });
    mxTensor(`${b}.ffn_down_exps.weight`, [F, H, E], (j) =>
      ggmlMxfp4FromHf(ckpt.readSliceBytes(x("down_proj_blocks"), [E, H, F / 32, 16], j), ckpt.readSliceBytes(x("down_proj_scales"), [E, H, F / 32], j), Array.from({ length: H }, (_, h) => h), F)
    );
    const guBias = read(x("gate_up_proj_bias"), [E, 2 * F]);
    const half = (s: 0 | 1) => () => {
      const all = guBias();
      const out = new Float32Array(E * F);
      for (let i = 0; i < E * F; i++) out[i] = all[2 * i + s]!;
      return out;
    };
    f32(`${b}.ffn_gate_exps.bias`, [F, E], half(0));
    f32(`${b}.ffn_up_exps.bias`, [F, E], half(1));
    f32(`${b}.ffn_down_exps.bias`, [H, E], read(x("down_proj_bias"), [E, H]));
  }
  f32("output_norm.weight", [H], read("model.norm.weight", [H]));
  if (ckpt.has("lm_head.weight")) matrix("output.weight", [H, V], read("lm_head.weight", [V, H]));

  const k = (key: string) => `gpt-oss.${key}`;
  const metadata: [string, GgufValue][] = [
    ["general.architecture", gguf.str("gpt-oss")],
    ["general.name", gguf.str(options.name ?? path.basename(path.resolve(hfDir)))],
    ["general.file_type", gguf.u32(FILE_TYPE[options.type])],
    ["general.quantization_version", gguf.u32(2)],
    ["general.alignment", gguf.u32(GGUF_DEFAULT_ALIGNMENT)],
    [k("context_length"), gguf.u32(d.maxPositions)],
    [k("embedding_length"), gguf.u32(H)],
    [k("feed_forward_length"), gguf.u32(F)],
    [k("block_count"), gguf.u32(d.numLayers)],
    [k("attention.head_count"), gguf.u32(d.numHeads)],
    [k("attention.head_count_kv"), gguf.u32(d.numKvHeads)],
    [k("rope.freq_base"), gguf.f32(d.ropeTheta)],
    [k("attention.layer_norm_rms_epsilon"), gguf.f32(d.rmsNormEps)],
    [k("expert_count"), gguf.u32(E)],
    [k("expert_used_count"), gguf.u32(d.topK)],
    [k("attention.key_length"), gguf.u32(d.headDim)],
    [k("attention.value_length"), gguf.u32(d.headDim)],
    [k("rope.dimension_count"), gguf.u32(d.headDim)],
  ];
  const rs = c["rope_scaling"] as Record<string, unknown> | null | undefined;
  if (rs && (rs["rope_type"] ?? rs["type"]) === "yarn") {
    metadata.push([k("rope.scaling.type"), gguf.str("yarn")], [k("rope.scaling.factor"), gguf.f32(Number(rs["factor"]))]);
    if (typeof rs["original_max_position_embeddings"] === "number") metadata.push([k("rope.scaling.original_context_length"), gguf.u32(rs["original_max_position_embeddings"])]);
    if (typeof rs["beta_fast"] === "number") metadata.push([k("rope.scaling.yarn_beta_fast"), gguf.f32(rs["beta_fast"])]);
    if (typeof rs["beta_slow"] === "number") metadata.push([k("rope.scaling.yarn_beta_slow"), gguf.f32(rs["beta_slow"])]);
  }
  if (typeof c["sliding_window"] === "number") metadata.push([k("attention.sliding_window"), gguf.u32(c["sliding_window"])]);
  metadata.push([k("expert_feed_forward_length"), gguf.u32(F)], ...tokenizer);
  const result = writeGguf(outPath, metadata, tensors);
  retagMxfp4(outPath, mx);
  for (const t of mx) types.set(t.name, "MXFP4" as GgmlTypeName);
  return { ...result, arch: "gpt-oss", types };
}

/** Re-tags the Q8_0 stand-ins of MXFP4 tensors in a written file's header (same byte size). */
function retagMxfp4(file: string, tensors: { name: string; cols: number }[]): void {
  const fd = fs.openSync(file, "r+");
  try {
    const head = Buffer.alloc(Math.min(fs.fstatSync(fd).size, 1 << 24));
    fs.readSync(fd, head, 0, head.length, 0);
    for (const t of tensors) {
      const name = Buffer.from(t.name, "utf8");
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(name.length));
      const at = head.indexOf(Buffer.concat([len, name]));
      if (at < 0) throw new Error(`gguf: tensor ${t.name} not found in the header`);
      let p = at + 8 + name.length;
      const nd = head.readUInt32LE(p);
      p += 4;
      head.writeBigUInt64LE(BigInt(t.cols), p);
      p += 8 * nd;
      head.writeUInt32LE(MXFP4_ID, p);
      fs.writeSync(fd, head, at, p + 4 - at, at);
    }
  } finally {
    fs.closeSync(fd);
  }
}
