/**
 * llama.cpp's `gpt-oss` GGUF files (LLM_ARCH_OPENAI_MOE) seen as a Hugging Face gpt-oss checkpoint.
 * Names and keys as llama.cpp writes them (gguf-py constants / tensor_mapping, convert_hf_to_gguf.py
 * GptOssModel, llama-model.cpp):
 *
 *   blk.N.attn_norm / post_attention_norm .weight      input_layernorm / post_attention_layernorm
 *   blk.N.attn_{q,k,v,output}.{weight,bias}            self_attn.{q,k,v,o}_proj (NEOX RoPE: no permutation)
 *   blk.N.attn_sinks.weight [n_head]                   self_attn.sinks
 *   blk.N.ffn_gate_inp.{weight,bias}                   mlp.router
 *   blk.N.ffn_{gate,up}_exps.weight [H, F, E]          gate_up_proj (de-interleaved: HF row 2f is
 *   blk.N.ffn_down_exps.weight [F, H, E]               gate row f, 2f+1 up row f), down_proj; or
 *   blk.N.ffn_gate_up_exps.weight [H, 2F, E]           fused (gate rows, then up rows, per expert)
 *   blk.N.ffn_{gate,up,down}_exps.bias                 gate_up_proj_bias (interleaved), down_proj_bias
 *
 * Keys: expert_feed_forward_length (F), attention.sliding_window; the layer pattern is llama.cpp's
 * fixed one for this architecture (set_swa_pattern(2): even layers sliding, odd layers full);
 * rope.scaling.type "yarn" with factor, original_context_length and yarn_beta_fast/slow. llama.cpp
 * rounds YaRN's correction range to whole dimensions (ggml_rope_yarn_corr_dims floor/ceil), which
 * is `truncate: true` in transformers' terms, so the config says so. SwiGLU limit 7 is llama.cpp's
 * constant for the architecture.
 *
 * MXFP4 experts become Hugging Face's `_blocks` / `_scales` tensors byte for byte (the E8M0 scale
 * byte moved out of each 17-byte ggml block, nibbles put back in pair order), so the importer's
 * gpt-oss path imports them into mxfp4 records without touching a float. Other expert types are
 * offered as the fp32 `gate_up_proj` [E, H, 2F] / `down_proj` [E, F, H] of bf16 checkpoints.
 */
import { GgufTensorShapeError, UnsupportedConfigError } from "../errors.js";
import type { GgufFile, GgufTensor } from "./ggufReader.js";
import type { HfConfig } from "./HfCheckpoint.js";

const MXFP4_ID = 39;

/** A Hugging Face tensor computed from GGUF tensors (byte moves and transposes only). */
export interface Derived {
  /** The GGUF tensors it reads. */
  tensors: string[];
  /** Type name reported by entry(). */
  dtype: string;
  /** fp32 values of slice `index` of the first dimension, or of the whole tensor. */
  floats?(g: GgufFile, index?: number): Float32Array;
  /** Stored bytes of slice `index` of the first dimension. */
  bytes?(g: GgufFile, index: number): Uint8Array;
}

/** What the per-architecture mapping needs from GgufCheckpoint's describe(). */
export interface ArchContext {
  g: GgufFile;
  uniform(k: string, fallback?: number): number;
  key(k: string): string;
  required(name: string): GgufTensor;
  /** A tensor stored as-is under a Hugging Face name with a Hugging Face shape. */
  add(name: string, tensor: string, shape: number[]): void;
  /** A q/k matrix stored in llama.cpp's permuted row order (arch llama's RoPE), put back for `heads` heads. */
  addPermuted(name: string, tensor: string, shape: number[], heads: number): void;
  /** Rows [first, first + count) of a stacked tensor (one expert), under a Hugging Face name. */
  addRows(name: string, tensor: string, shape: number[], first: number, count: number): void;
  /** A tensor derived from stored ones. */
  derive(name: string, shape: number[], d: Derived): void;
}

/** GGUF block_mxfp4 {e, qs[16]} (element k < 16 low nibble of qs[k], k >= 16 high nibble of qs[k-16]) -> HF pairs. */
function ggmlBlockToHf(src: Uint8Array, at: number, blocks: Uint8Array, bAt: number): void {
  const code = (k: number) => (k < 16 ? src[at + 1 + k]! & 15 : src[at + 1 + k - 16]! >> 4);
  for (let i = 0; i < 16; i++) blocks[bAt + i] = code(2 * i) | (code(2 * i + 1) << 4);
}

export function describeGptOss(c: ArchContext, config: HfConfig, dims: { L: number; H: number; V: number; heads: number; kvHeads: number; headDim: number; experts: number; topK: number }): void {
  const { g } = c;
  const { L, H, heads, kvHeads, headDim, experts: E } = dims;
  const F = c.uniform("expert_feed_forward_length");
  const window = c.uniform("attention.sliding_window", 0);
  if (H % 32 !== 0 || F % 32 !== 0) throw new UnsupportedConfigError(`${g.path}: gpt-oss sizes ${H}, ${F} are not whole MXFP4 blocks`);
  Object.assign(config, {
    architectures: ["GptOssForCausalLM"],
    model_type: "gpt_oss",
    num_local_experts: E,
    intermediate_size: F,
    attention_bias: true,
    swiglu_limit: 7,
    norm_topk_prob: true,
  });
  if (window > 0) {
    config["sliding_window"] = window;
    config["layer_types"] = Array.from({ length: L }, (_, l) => (l % 2 === 0 ? "sliding_attention" : "full_attention"));
  }
  const scaling = g.value(c.key("rope.scaling.type"));
  if (scaling === "yarn") {
    const max = g.number(c.key("context_length"));
    config["rope_scaling"] = {
      rope_type: "yarn",
      factor: g.number(c.key("rope.scaling.factor")),
      original_max_position_embeddings: g.number(c.key("rope.scaling.original_context_length"), max),
      beta_fast: g.number(c.key("rope.scaling.yarn_beta_fast"), 32),
      beta_slow: g.number(c.key("rope.scaling.yarn_beta_slow"), 1),
      truncate: true,
    };
  } else if (scaling !== undefined && scaling !== "none") {
    throw new UnsupportedConfigError(`${g.path}: rope scaling "${String(scaling)}" is not supported for gpt-oss`);
  }
  const qRows = heads * headDim;
  const kvRows = kvHeads * headDim;
  const hf = (l: number, rest: string) => `model.layers.${l}.${rest}`;
  for (let l = 0; l < L; l++) {
    const b = `blk.${l}`;
    c.add(hf(l, "input_layernorm.weight"), `${b}.attn_norm.weight`, [H]);
    c.add(hf(l, "post_attention_layernorm.weight"), `${b}.post_attention_norm.weight`, [H]);
    for (const [p, t, rows] of [["q", "attn_q", qRows], ["k", "attn_k", kvRows], ["v", "attn_v", kvRows]] as const) {
      c.add(hf(l, `self_attn.${p}_proj.weight`), `${b}.${t}.weight`, [rows, H]);
      c.add(hf(l, `self_attn.${p}_proj.bias`), `${b}.${t}.bias`, [rows]);
    }
    c.add(hf(l, "self_attn.o_proj.weight"), `${b}.attn_output.weight`, [H, qRows]);
    c.add(hf(l, "self_attn.o_proj.bias"), `${b}.attn_output.bias`, [H]);
    c.add(hf(l, "self_attn.sinks"), `${b}.attn_sinks.weight`, [heads]);
    c.add(hf(l, "mlp.router.weight"), `${b}.ffn_gate_inp.weight`, [E, H]);
    c.add(hf(l, "mlp.router.bias"), `${b}.ffn_gate_inp.bias`, [E]);
    experts(c, l, H, F, E);
  }
}

function experts(c: ArchContext, l: number, H: number, F: number, E: number): void {
  const { g } = c;
  const b = `blk.${l}`;
  const at = (rest: string) => `model.layers.${l}.mlp.experts.${rest}`;
  const fused = g.has(`${b}.ffn_gate_up_exps.weight`);
  const check = (name: string, dims: number[]) => {
    const t = c.required(name);
    if (t.dims.length !== dims.length || t.dims.some((d, i) => d !== dims[i])) {
      throw new GgufTensorShapeError(`${g.path}: tensor "${name}" has dims [${t.dims.join(", ")}] but the metadata implies [${dims.join(", ")}] (innermost first)`);
    }
    return t;
  };
  // Rows (of ne0 values) of expert j's gate row f and up row f.
  const gateT = fused ? `${b}.ffn_gate_up_exps.weight` : `${b}.ffn_gate_exps.weight`;
  const upT = fused ? gateT : `${b}.ffn_up_exps.weight`;
  const downT = `${b}.ffn_down_exps.weight`;
  if (fused) check(gateT, [H, 2 * F, E]);
  else {
    check(gateT, [H, F, E]);
    check(upT, [H, F, E]);
  }
  const down = check(downT, [F, H, E]);
  const gateRow = (j: number, f: number) => (fused ? j * 2 * F + f : j * F + f);
  const upRow = (j: number, f: number) => (fused ? j * 2 * F + F + f : j * F + f);
  const types = new Set([c.required(gateT).type.id, c.required(upT).type.id, down.type.id]);
  const mx = types.size === 1 && down.type.id === MXFP4_ID;

  // Biases: gate_up_proj_bias [E, 2F] interleaved, down_proj_bias [E, H].
  let gateB: string, upB: string;
  if (g.has(`${b}.ffn_gate_up_exps.bias`)) {
    check(`${b}.ffn_gate_up_exps.bias`, [2 * F, E]);
    gateB = upB = `${b}.ffn_gate_up_exps.bias`;
  } else {
    gateB = `${b}.ffn_gate_exps.bias`;
    upB = `${b}.ffn_up_exps.bias`;
    check(gateB, [F, E]);
    check(upB, [F, E]);
  }
  const fusedBias = gateB === upB;
  const biasSlice = (gg: GgufFile, j: number) => {
    const gate = fusedBias ? gg.readFloat32(gateB, j, 1).subarray(0, F) : gg.readFloat32(gateB, j, 1);
    const up = fusedBias ? gg.readFloat32(upB, j, 1).subarray(F) : gg.readFloat32(upB, j, 1);
    const out = new Float32Array(2 * F);
    for (let f = 0; f < F; f++) {
      out[2 * f] = gate[f]!;
      out[2 * f + 1] = up[f]!;
    }
    return out;
  };
  const whole = (slice: (gg: GgufFile, j: number) => Float32Array, per: number) => (gg: GgufFile, index?: number) => {
    if (index !== undefined) return slice(gg, index);
    const out = new Float32Array(E * per);
    for (let j = 0; j < E; j++) out.set(slice(gg, j), j * per);
    return out;
  };
  c.derive(at("gate_up_proj_bias"), [E, 2 * F], { tensors: [gateB, upB], dtype: "F32", floats: whole(biasSlice, 2 * F) });
  c.add(at("down_proj_bias"), `${b}.ffn_down_exps.bias`, [E, H]);

  if (mx) {
    // One matrix's rows as HF blocks [rows, cols/32, 16] and scales [rows, cols/32].
    const rowsOf = (gg: GgufFile, tensor: string, rows: number[], cols: number, part: "blocks" | "scales") => {
      const nb = cols / 32;
      const rowBytes = nb * 17;
      const out = new Uint8Array(rows.length * nb * (part === "blocks" ? 16 : 1));
      rows.forEach((r, i) => {
        const src = gg.readBytes(tensor, r * rowBytes, rowBytes);
        for (let k = 0; k < nb; k++) {
          if (part === "scales") out[i * nb + k] = src[k * 17]!;
          else ggmlBlockToHf(src, k * 17, out, (i * nb + k) * 16);
        }
      });
      return out;
    };
    const guRows = (j: number) => Array.from({ length: 2 * F }, (_, r) => (r % 2 === 0 ? gateRow(j, r >> 1) : upRow(j, r >> 1)));
    // Interleaved rows alternate between the gate and up tensors when they are separate.
    const guBytes = (gg: GgufFile, j: number, part: "blocks" | "scales") => {
      if (fused) return rowsOf(gg, gateT, guRows(j), H, part);
      const g1 = rowsOf(gg, gateT, Array.from({ length: F }, (_, f) => gateRow(j, f)), H, part);
      const u1 = rowsOf(gg, upT, Array.from({ length: F }, (_, f) => upRow(j, f)), H, part);
      const per = g1.length / F;
      const out = new Uint8Array(g1.length * 2);
      for (let f = 0; f < F; f++) {
        out.set(g1.subarray(f * per, (f + 1) * per), 2 * f * per);
        out.set(u1.subarray(f * per, (f + 1) * per), (2 * f + 1) * per);
      }
      return out;
    };
    const dRows = (j: number) => Array.from({ length: H }, (_, h) => j * H + h);
    c.derive(at("gate_up_proj_blocks"), [E, 2 * F, H / 32, 16], { tensors: [gateT, upT], dtype: "MXFP4", bytes: (gg, j) => guBytes(gg, j, "blocks") });
    c.derive(at("gate_up_proj_scales"), [E, 2 * F, H / 32], { tensors: [gateT, upT], dtype: "MXFP4", bytes: (gg, j) => guBytes(gg, j, "scales") });
    c.derive(at("down_proj_blocks"), [E, H, F / 32, 16], { tensors: [downT], dtype: "MXFP4", bytes: (gg, j) => rowsOf(gg, downT, dRows(j), F, "blocks") });
    c.derive(at("down_proj_scales"), [E, H, F / 32], { tensors: [downT], dtype: "MXFP4", bytes: (gg, j) => rowsOf(gg, downT, dRows(j), F, "scales") });
  } else {
    // fp32 in the bf16 checkpoints' layout: gate_up_proj [E, H, 2F] (x @ W, interleaved), down_proj [E, F, H].
    const gu = (gg: GgufFile, j: number) => {
      const gate = gg.readFloat32(gateT, gateRow(j, 0), F);
      const up = gg.readFloat32(upT, upRow(j, 0), F);
      const out = new Float32Array(H * 2 * F);
      for (let f = 0; f < F; f++)
        for (let h = 0; h < H; h++) {
          out[h * 2 * F + 2 * f] = gate[f * H + h]!;
          out[h * 2 * F + 2 * f + 1] = up[f * H + h]!;
        }
      return out;
    };
    const dp = (gg: GgufFile, j: number) => {
      const w = gg.readFloat32(downT, j * H, H);
      const out = new Float32Array(F * H);
      for (let h = 0; h < H; h++) for (let f = 0; f < F; f++) out[f * H + h] = w[h * F + f]!;
      return out;
    };
    c.derive(at("gate_up_proj"), [E, H, 2 * F], { tensors: [gateT, upT], dtype: c.required(gateT).type.name, floats: whole(gu, 2 * F * H) });
    c.derive(at("down_proj"), [E, F, H], { tensors: [downT], dtype: down.type.name, floats: whole(dp, F * H) });
  }
}
