/**
 * Writes a Mixtral-shaped Hugging Face checkpoint with deterministic pseudo-random weights, for
 * benchmarks and tests that need a model of a given size. One seed gives the same bytes.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { writeSafetensors, type SafetensorsWriteEntry } from "../formats/safetensors.js";
import { encodeFromFloat32, type FloatDType } from "../util/dtype.js";

export interface SyntheticOptions {
  /** Folder whose tokenizer.json / tokenizer_config.json are copied (their vocab must fit). */
  tokenizerFrom: string;
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  numExperts: number;
  topK: number;
  /** Intermediate size of one expert. */
  expertFfn: number;
  maxPositions?: number;
  dtype?: FloatDType;
  seed?: number;
}

/** xorshift-based uniform(-1, 1) stream; fast enough for gigabytes. */
function uniformStream(seed: number): (out: Float32Array, scale: number) => void {
  let s = (seed ^ 0x9e3779b9) >>> 0 || 1;
  return (out, scale) => {
    for (let i = 0; i < out.length; i++) {
      s ^= s << 13;
      s >>>= 0;
      s ^= s >>> 17;
      s ^= s << 5;
      s >>>= 0;
      out[i] = ((s / 4294967296) * 2 - 1) * scale;
    }
  };
}

export function writeSyntheticCheckpoint(dir: string, o: SyntheticOptions): void {
  fs.mkdirSync(dir, { recursive: true });
  const dtype = o.dtype ?? "BF16";
  const H = o.hiddenSize;
  const hd = H / o.numHeads;
  const config = {
    architectures: ["MixtralForCausalLM"],
    model_type: "mixtral",
    vocab_size: o.vocabSize,
    hidden_size: H,
    intermediate_size: o.expertFfn,
    num_hidden_layers: o.numLayers,
    num_attention_heads: o.numHeads,
    num_key_value_heads: o.numKvHeads,
    num_local_experts: o.numExperts,
    num_experts_per_tok: o.topK,
    max_position_embeddings: o.maxPositions ?? 4096,
    rms_norm_eps: 1e-5,
    rope_theta: 1e6,
    sliding_window: null,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype],
  };
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config, null, 2));
  for (const f of ["tokenizer.json", "tokenizer_config.json"]) {
    const src = path.join(o.tokenizerFrom, f);
    if (fs.existsSync(src)) fs.copyFileSync(src, path.join(dir, f));
  }

  const entries: (SafetensorsWriteEntry & { scale: number; ones?: boolean })[] = [];
  const add = (name: string, shape: number[], scale: number, ones = false) => entries.push({ name, dtype, shape, scale, ones });
  add("model.embed_tokens.weight", [o.vocabSize, H], 1);
  for (let l = 0; l < o.numLayers; l++) {
    const p = `model.layers.${l}`;
    add(`${p}.input_layernorm.weight`, [H], 0, true);
    add(`${p}.self_attn.q_proj.weight`, [o.numHeads * hd, H], 1 / Math.sqrt(H));
    add(`${p}.self_attn.k_proj.weight`, [o.numKvHeads * hd, H], 1 / Math.sqrt(H));
    add(`${p}.self_attn.v_proj.weight`, [o.numKvHeads * hd, H], 1 / Math.sqrt(H));
    add(`${p}.self_attn.o_proj.weight`, [H, o.numHeads * hd], 1 / Math.sqrt(H));
    add(`${p}.post_attention_layernorm.weight`, [H], 0, true);
    add(`${p}.block_sparse_moe.gate.weight`, [o.numExperts, H], 2 / Math.sqrt(H));
    for (let j = 0; j < o.numExperts; j++) {
      add(`${p}.block_sparse_moe.experts.${j}.w1.weight`, [o.expertFfn, H], 1 / Math.sqrt(H));
      add(`${p}.block_sparse_moe.experts.${j}.w3.weight`, [o.expertFfn, H], 1 / Math.sqrt(H));
      add(`${p}.block_sparse_moe.experts.${j}.w2.weight`, [H, o.expertFfn], 1 / Math.sqrt(o.expertFfn));
    }
  }
  add("model.norm.weight", [H], 0, true);
  add("lm_head.weight", [o.vocabSize, H], 2 / Math.sqrt(H));

  const fill = uniformStream(o.seed ?? 1);
  writeSafetensors(path.join(dir, "model.safetensors"), entries, (e) => {
    const src = entries.find((x) => x.name === e.name)!;
    const values = new Float32Array(e.shape.reduce((a, b) => a * b, 1));
    if (src.ones) values.fill(1);
    else fill(values, src.scale * Math.sqrt(3)); // uniform with std = scale
    return encodeFromFloat32(values, dtype);
  });
}
