/**
 * DeepSeek-V2's multi-head latent attention tensors in a Hugging Face checkpoint, read into the
 * form the runtime computes with (modelGraphs.ts MlaWeights).
 */
import { modelFeatures, type ModelDims } from "../architectures/ModelDims.js";
import type { HfCheckpoint } from "../formats/HfCheckpoint.js";
import type { MlaWeights } from "./modelGraphs.js";

/** The MLA tensors of one layer (DeepSeek-V2 names), shapes from the config. */
export function mlaShapes(d: ModelDims, ckpt: HfCheckpoint, n: (rest: string) => string): Map<string, number[]> {
  const m = modelFeatures(d).mla!;
  const { hiddenSize: H, numHeads: nh } = d;
  const a = "self_attn";
  const shapes = new Map<string, number[]>();
  if (m.qLoraRank) {
    shapes.set(n(`${a}.q_a_proj.weight`), [m.qLoraRank, H]);
    shapes.set(n(`${a}.q_a_layernorm.weight`), [m.qLoraRank]);
    shapes.set(n(`${a}.q_b_proj.weight`), [nh * (m.nopeDim + m.ropeDim), m.qLoraRank]);
    if (ckpt.has(n(`${a}.q_a_proj.bias`))) shapes.set(n(`${a}.q_a_proj.bias`), [m.qLoraRank]);
  } else {
    shapes.set(n(`${a}.q_proj.weight`), [nh * (m.nopeDim + m.ropeDim), H]);
  }
  shapes.set(n(`${a}.kv_a_proj_with_mqa.weight`), [m.kvLoraRank + m.ropeDim, H]);
  if (ckpt.has(n(`${a}.kv_a_proj_with_mqa.bias`))) shapes.set(n(`${a}.kv_a_proj_with_mqa.bias`), [m.kvLoraRank + m.ropeDim]);
  shapes.set(n(`${a}.kv_a_layernorm.weight`), [m.kvLoraRank]);
  shapes.set(n(`${a}.kv_b_proj.weight`), [nh * (m.nopeDim + m.vDim), m.kvLoraRank]);
  shapes.set(n(`${a}.o_proj.weight`), [H, nh * m.vDim]);
  return shapes;
}

/**
 * One layer's MLA weights in the runtime's form: the rope rows of q and of the shared rope key
 * permuted from DeepSeek's interleaved pairs (2i, 2i+1) to half-split order (i, i + dr/2), which
 * leaves every q . k unchanged; kv_b_proj split per head into W_uk [dn, r] and W_uv [dv, r].
 */
export function readMlaWeights(
  d: ModelDims,
  n: (rest: string) => string,
  read: (name: string) => Float32Array,
  opt: (name: string | undefined) => Float32Array | undefined
): MlaWeights {
  const m = modelFeatures(d).mla!;
  const { numHeads: nh } = d;
  const { kvLoraRank: r, nopeDim: dn, ropeDim: dr, vDim: dv } = m;
  const a = "self_attn";
  const half = dr / 2;
  const order = Array.from({ length: dr }, (_, k) => (k < half ? 2 * k : 2 * (k - half) + 1)); // new row k <- old row order[k]
  const permuteRows = (w: Float32Array, cols: number, first: number) => {
    const out = w.slice();
    for (let k = 0; k < dr; k++) out.set(w.subarray((first + order[k]!) * cols, (first + order[k]! + 1) * cols), (first + k) * cols);
    return out;
  };
  const qIn = m.qLoraRank || d.hiddenSize;
  let qB = read(n(m.qLoraRank ? `${a}.q_b_proj.weight` : `${a}.q_proj.weight`));
  for (let h = 0; h < nh; h++) qB = permuteRows(qB, qIn, h * (dn + dr) + dn);
  const kvA = permuteRows(read(n(`${a}.kv_a_proj_with_mqa.weight`)), d.hiddenSize, r);
  let kvABias = opt(n(`${a}.kv_a_proj_with_mqa.bias`));
  if (kvABias) kvABias = permuteRows(kvABias, 1, r);
  const kvB = read(n(`${a}.kv_b_proj.weight`)); // [nh*(dn+dv), r]
  const uk = new Float32Array(nh * dn * r);
  const uv = new Float32Array(nh * dv * r);
  for (let h = 0; h < nh; h++) {
    uk.set(kvB.subarray(h * (dn + dv) * r, (h * (dn + dv) + dn) * r), h * dn * r);
    uv.set(kvB.subarray((h * (dn + dv) + dn) * r, (h + 1) * (dn + dv) * r), h * dv * r);
  }
  return {
    qA: m.qLoraRank ? read(n(`${a}.q_a_proj.weight`)) : undefined,
    qABias: m.qLoraRank ? opt(n(`${a}.q_a_proj.bias`)) : undefined,
    qANorm: m.qLoraRank ? read(n(`${a}.q_a_layernorm.weight`)) : undefined,
    qB,
    kvA,
    kvABias,
    kvANorm: read(n(`${a}.kv_a_layernorm.weight`)),
    uk,
    uv,
  };
}
