/**
 * GGUF import of the newer architectures: the bundled tiny fixtures are written as GGUF the way
 * llama.cpp's convert_hf_to_gguf.py writes them (src/formats/ggufExport*.ts), imported back, and
 * compared with the Hugging Face import of the same checkpoint and with llama.cpp (node-llama-cpp)
 * on the same file.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getLlama, LlamaLogLevel, type Llama } from "node-llama-cpp";
import { GgufCheckpoint } from "../src/formats/GgufCheckpoint.js";
import { encodeGgml, writeGguf, type GgmlTypeName, type GgufTensorSpec } from "../src/formats/gguf.js";
import { exportGguf, rewriteGgufMetadata } from "../src/formats/ggufExport.js";
import { GgufFile } from "../src/formats/ggufReader.js";
import { HfCheckpoint } from "../src/formats/HfCheckpoint.js";
import { importModel } from "../src/importer/importModel.js";
import { loadModel } from "../src/index.js";
import { MODELS, greedyRun, tmpDir } from "./helpers.js";

const quiet = { progress: false, log: () => {} };
const PROMPTS = ["And the LORD spake unto Moses, saying,", "Once upon a time there was", "It is a truth universally acknowledged"];

/** A copy of a fixture with config.json edited (the tensors are linked, not copied). */
function configCopy(fx: string, out: string, edit: (c: Record<string, unknown>) => void): string {
  fs.mkdirSync(out, { recursive: true });
  for (const f of fs.readdirSync(path.join(MODELS, fx))) {
    if (f !== "config.json") fs.symlinkSync(path.join(MODELS, fx, f), path.join(out, f));
  }
  const c = JSON.parse(fs.readFileSync(path.join(MODELS, fx, "config.json"), "utf8")) as Record<string, unknown>;
  edit(c);
  fs.writeFileSync(path.join(out, "config.json"), JSON.stringify(c, null, 1));
  return out;
}

describe("gpt-oss (llama.cpp arch gpt-oss, MXFP4 experts)", () => {
  const fx = "tiny-gpt-oss";
  let dir: string;
  let file: string;
  let llama: Llama | undefined;
  beforeAll(() => {
    dir = tmpDir("moe-run-gguf-gptoss-");
    file = path.join(dir, `${fx}-BF16.gguf`);
    exportGguf(path.join(MODELS, fx), file, { type: "BF16" });
  });
  afterAll(async () => {
    await llama?.dispose();
  });

  it("is written as convert_hf_to_gguf.py writes it: names, keys, MXFP4 experts split from the interleaved gate_up", () => {
    const g = GgufFile.open(file);
    try {
      expect(g.string("general.architecture")).toBe("gpt-oss");
      expect(g.number("gpt-oss.expert_feed_forward_length")).toBe(64);
      expect(g.number("gpt-oss.attention.sliding_window")).toBe(8);
      expect(g.string("gpt-oss.rope.scaling.type")).toBe("yarn");
      expect(g.number("gpt-oss.rope.scaling.factor")).toBe(4);
      expect(g.number("gpt-oss.rope.scaling.original_context_length")).toBe(64);
      for (const p of ["gate", "up", "down"]) {
        const t = g.tensor(`blk.1.ffn_${p}_exps.weight`);
        expect(t.type.name).toBe("MXFP4");
        expect(t.dims).toEqual(p === "down" ? [64, 64, 8] : [64, 64, 8]);
        expect(g.tensor(`blk.1.ffn_${p}_exps.bias`).dims).toEqual([64, 8]);
      }
      expect(g.tensor("blk.0.attn_sinks.weight").dims).toEqual([4]);
      expect(g.tensor("blk.0.post_attention_norm.weight").dims).toEqual([64]);
      expect(g.tensor("blk.0.ffn_gate_inp.bias").dims).toEqual([8]);
      expect(g.tensor("blk.0.attn_output.bias").dims).toEqual([64]);
    } finally {
      g.close();
    }
  });

  it("the GGUF view gives back the Hugging Face tensors: MXFP4 blocks and scales byte for byte, every float bit for bit", () => {
    const hf = HfCheckpoint.open(path.join(MODELS, fx));
    const g = GgufCheckpoint.open(file);
    try {
      expect(g.config["model_type"]).toBe("gpt_oss");
      expect(g.config["layer_types"]).toEqual(["sliding_attention", "full_attention"]);
      expect(g.config["sliding_window"]).toBe(8);
      expect(g.config["rope_scaling"]).toMatchObject({ rope_type: "yarn", factor: 4, original_max_position_embeddings: 64, beta_fast: 32, beta_slow: 1, truncate: true });
      expect(new Set(g.tensorNames())).toEqual(new Set(hf.tensorNames()));
      let bytes = 0;
      for (const name of hf.tensorNames()) {
        const shape = hf.entry(name).shape;
        if (/_(blocks|scales)$/.test(name)) {
          for (let j = 0; j < shape[0]!; j++) {
            const a = g.readSliceBytes(name, shape, j);
            expect(Buffer.from(a).equals(Buffer.from(hf.readSliceBytes(name, shape, j))), `${name}[${j}]`).toBe(true);
            bytes += a.byteLength;
          }
        } else {
          const a = g.readFloat32(name, shape);
          const b = hf.readFloat32(name, shape);
          expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer)), name).toBe(true);
        }
      }
      expect(bytes).toBe(2 * 8 * (128 * 2 * 17 + 64 * 2 * 17));
    } finally {
      g.close();
      hf.close();
    }
  });

  it("imports as mxfp4 by default (no float touched) and equals the Hugging Face import, at mxfp4 and at --experts f32", async () => {
    // llama.cpp rounds YaRN's correction range to whole dims (transformers' truncate: true); the
    // fixture says truncate: false, so the reference is the same checkpoint with truncate: true.
    const ref = configCopy(fx, path.join(dir, "hf-truncate"), (c) => {
      (c["rope_scaling"] as Record<string, unknown>)["truncate"] = true;
    });
    const a = path.join(dir, "gguf-mx");
    const b = path.join(dir, "hf-mx");
    const r = await importModel(file, a, quiet);
    expect(r.manifest.precision.experts).toBe("mxfp4");
    const rh = await importModel(ref, b, quiet);
    expect(rh.manifest.precision.experts).toBe("mxfp4");
    // The expert stores are the same bytes.
    const store = (d: string) => fs.readdirSync(d).filter((f) => /expert/i.test(f)).sort();
    expect(store(a).length).toBeGreaterThan(0);
    for (const f of store(a)) {
      if (fs.statSync(path.join(a, f)).isFile()) expect(fs.readFileSync(path.join(a, f)).equals(fs.readFileSync(path.join(b, f))), f).toBe(true);
    }
    for (const p of PROMPTS) expect((await greedyRun(a, p, 24)).ids, p).toEqual((await greedyRun(b, p, 24)).ids);
    const af = path.join(dir, "gguf-f32");
    const bf = path.join(dir, "hf-f32");
    expect((await importModel(file, af, { ...quiet, experts: "f32" })).manifest.precision.experts).toBe("f32");
    await importModel(ref, bf, { ...quiet, experts: "f32" });
    for (const p of PROMPTS) expect((await greedyRun(af, p, 24)).ids, p).toEqual((await greedyRun(bf, p, 24)).ids);
  });

  it("with F32 experts (llama.cpp then computes in fp32): 32 greedy tokens on 3 prompts equal node-llama-cpp's", async () => {
    const f32 = path.join(dir, `${fx}-F32.gguf`);
    exportGguf(path.join(MODELS, fx), f32, { type: "F32", gptOssExperts: "F32" });
    llama ??= await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    const model = await llama.loadModel({ modelPath: f32 });
    const ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const out = path.join(dir, "gguf-f32-llama");
    // The non-MXFP4 expert path: gate_up_proj / down_proj rebuilt from ffn_{gate,up,down}_exps.
    await importModel(f32, out, { ...quiet, experts: "f32" });
    // fp32 cache: on this random tiny model a key rounded to a neighbouring half (the two engines'
    // fp32 keys differ in the last bits) is enough to flip a greedy choice.
    const moe = await loadModel(out, { threads: 1, kvCache: "f32" });
    try {
      for (const prompt of PROMPTS) {
        const ids = moe.tokenize(prompt);
        const mine: number[] = [];
        for await (const _ of moe.generate(prompt, { maxTokens: 32, stopAtEos: false, onToken: (id) => mine.push(id) }));
        const seq = ctx.getSequence();
        const theirs: number[] = [];
        for await (const t of seq.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
          theirs.push(t);
          if (theirs.length >= 32) break;
        }
        seq.dispose();
        expect(mine, prompt).toEqual(theirs);
      }
    } finally {
      await moe.dispose();
      await ctx.dispose();
      await model.dispose();
    }
  });

  it("MXFP4 file: next-token distributions close to node-llama-cpp's under teacher forcing", async () => {
    // llama.cpp's CPU MXFP4 dot product rounds the activations to Q8_0 blocks (with F32 experts it
    // computes in fp32 and the greedy tokens are identical, above); on this random tiny model that
    // rounding is enough to flip greedy choices (and to move single probabilities by up to 0.2 at
    // sharply peaked steps; measured: top-1 60/64, max 0.20), so the check is on the distributions.
    // How far it flips depends on llama.cpp's CPU code path: on a Zen 5 machine (AVX-512) top-1
    // agreed 57/64, and at each of the 7 other steps moe-run's choice was llama.cpp's runner-up
    // within 0.01-0.04 of its top (a near tie). Broken MXFP4 decoding (nibble order, scales) lands
    // near chance on both counts.
    llama ??= await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    const model = await llama.loadModel({ modelPath: file });
    const ctx = await model.createContext({ contextSize: 256, threads: 1 });
    const out = path.join(dir, "gguf-mx-llama");
    await importModel(file, out, quiet);
    const moe = await loadModel(out, { threads: 1 });
    try {
      const V = moe.dims.vocabSize;
      let agree = 0;
      let top2 = 0; // moe-run's choice is one of llama.cpp's two likeliest
      let n = 0;
      let worst = 0;
      for (const prompt of PROMPTS) {
        const ids = moe.tokenize(prompt);
        const logits = (await moe.logits(ids)).data;
        const seq = ctx.getSequence();
        const res = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true } }] as [number, { generateNext: { probabilities: true } }]));
        seq.dispose();
        for (let i = 0; i < ids.length; i++) {
          const row = logits.subarray(i * V, (i + 1) * V);
          let max = -Infinity;
          let arg = 0;
          for (let j = 0; j < V; j++) if (row[j]! > max) [max, arg] = [row[j]!, j];
          let sum = 0;
          for (let j = 0; j < V; j++) sum += Math.exp(row[j]! - max);
          const probs = res[i]!.next.probabilities!;
          for (let j = 0; j < V; j++) worst = Math.max(worst, Math.abs(Math.exp(row[j]! - max) / sum - (probs.get(j) ?? 0)));
          const [first, second] = [...probs.keys()];
          if (first === arg) agree++;
          if (first === arg || second === arg) top2++;
          n++;
        }
      }
      console.log(`gpt-oss MXFP4 vs node-llama-cpp: top-1 agreement ${agree}/${n}, in llama.cpp's top 2 ${top2}/${n}, max |p - p_llama| ${worst.toExponential(2)}`);
      expect(agree / n).toBeGreaterThanOrEqual(0.85);
      expect(top2 / n).toBeGreaterThanOrEqual(0.95);
      expect(worst).toBeLessThan(0.3);
    } finally {
      await moe.dispose();
      await ctx.dispose();
      await model.dispose();
    }
  });
});

/** 32 greedy tokens on each prompt from moe-run (model dir) and node-llama-cpp (GGUF file). */
async function againstLlamaCpp(llama: Llama, gguf: string, modelDir: string, f32Cache = false): Promise<{ mine: number[]; theirs: number[]; prompt: string }[]> {
  const model = await llama.loadModel({ modelPath: gguf });
  const cache = f32Cache ? { experimentalKvCacheKeyType: "F32" as const, experimentalKvCacheValueType: "F32" as const } : {};
  const ctx = await model.createContext({ contextSize: 256, threads: 1, ...cache });
  const moe = await loadModel(modelDir, { threads: 1 });
  const out: { mine: number[]; theirs: number[]; prompt: string }[] = [];
  try {
    for (const prompt of PROMPTS) {
      const ids = moe.tokenize(prompt);
      const mine: number[] = [];
      for await (const _ of moe.generate(prompt, { maxTokens: 32, stopAtEos: false, onToken: (id) => mine.push(id) }));
      const seq = ctx.getSequence();
      const theirs: number[] = [];
      for await (const t of seq.evaluate(ids, { temperature: 0, yieldEogToken: true })) {
        theirs.push(t);
        if (theirs.length >= 32) break;
      }
      seq.dispose();
      out.push({ mine, theirs, prompt });
    }
  } finally {
    await moe.dispose();
    await ctx.dispose();
    await model.dispose();
  }
  return out;
}

describe("glm4moe (GLM-4.5: sigmoid router with correction bias, shared expert, leading dense layer, partial rotary, QK-norm)", () => {
  const fx = "tiny-glm4-moe";
  let dir: string;
  let file: string;
  let llama: Llama | undefined;
  beforeAll(() => {
    dir = tmpDir("moe-run-gguf-glm-");
    file = path.join(dir, `${fx}-F32.gguf`);
    exportGguf(path.join(MODELS, fx), file, { type: "F32" });
  });
  afterAll(async () => {
    await llama?.dispose();
  });

  it("is written with llama.cpp's names and keys, and the GGUF view gives back every Hugging Face tensor bit for bit", () => {
    const g = GgufFile.open(file);
    try {
      expect(g.string("general.architecture")).toBe("glm4moe");
      expect(g.number("glm4moe.leading_dense_block_count")).toBe(1);
      expect(g.number("glm4moe.expert_shared_count")).toBe(1);
      expect(g.number("glm4moe.rope.dimension_count")).toBe(16);
      expect(g.number("glm4moe.expert_gating_func")).toBe(2);
      expect(g.tensor("blk.1.exp_probs_b.bias").dims).toEqual([8]);
      expect(g.tensor("blk.1.ffn_down_exps.weight").dims).toEqual([32, 64, 8]);
      expect(g.tensor("blk.0.ffn_down.weight").dims).toEqual([96, 64]);
      expect(g.tensor("blk.0.post_attention_norm.weight").dims).toEqual([64]);
    } finally {
      g.close();
    }
    const hf = HfCheckpoint.open(path.join(MODELS, fx));
    const v = GgufCheckpoint.open(file);
    try {
      expect(v.config).toMatchObject({ model_type: "glm4_moe", first_k_dense_replace: 1, n_shared_experts: 1, partial_rotary_factor: 0.5, n_group: 1, topk_group: 1, norm_topk_prob: true, routed_scaling_factor: 2.5, use_qk_norm: true, attention_bias: true });
      expect(new Set(v.tensorNames())).toEqual(new Set(hf.tensorNames()));
      for (const name of hf.tensorNames()) {
        const shape = hf.entry(name).shape;
        expect(Buffer.from(v.readFloat32(name, shape).buffer).equals(Buffer.from(hf.readFloat32(name, shape).buffer)), name).toBe(true);
      }
    } finally {
      v.close();
      hf.close();
    }
  });

  it("imports to the greedy output of the Hugging Face import (routing without expert groups, as llama.cpp)", async () => {
    // convert_hf_to_gguf.py writes no expert-group keys for GLM-4.5 and llama.cpp routes over all
    // experts; the fixture's n_group 4 / topk_group 2 is therefore compared at n_group 1.
    const ref = configCopy(fx, path.join(dir, "hf-nogroup"), (c) => {
      c["n_group"] = 1;
      c["topk_group"] = 1;
    });
    const a = path.join(dir, "gguf");
    const b = path.join(dir, "hf");
    await importModel(file, a, { ...quiet, experts: "f32" });
    await importModel(ref, b, { ...quiet, experts: "f32" });
    for (const p of PROMPTS) expect((await greedyRun(a, p, 24)).ids, p).toEqual((await greedyRun(b, p, 24)).ids);
  });

  it("32 greedy tokens on 3 prompts equal node-llama-cpp's on the same file", async () => {
    llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    const out = path.join(dir, "gguf-llama");
    await importModel(file, out, { ...quiet, experts: "f32" });
    for (const r of await againstLlamaCpp(llama, file, out)) expect(r.mine, r.prompt).toEqual(r.theirs);
  });
});

describe("granitemoe (Granite multipliers, fused gate/up experts, llama-style RoPE)", () => {
  const fx = "tiny-granitemoe";
  let dir: string;
  let file: string;
  let llama: Llama | undefined;
  beforeAll(() => {
    dir = tmpDir("moe-run-gguf-granite-");
    file = path.join(dir, `${fx}-F32.gguf`);
    exportGguf(path.join(MODELS, fx), file, { type: "F32" });
  });
  afterAll(async () => {
    await llama?.dispose();
  });

  it("is written with llama.cpp's names and keys (q/k permuted, input_linear split), and the GGUF view gives back every Hugging Face tensor bit for bit", () => {
    const g = GgufFile.open(file);
    try {
      expect(g.string("general.architecture")).toBe("granitemoe");
      expect(g.number("granitemoe.attention.scale")).toBe(0.5);
      expect(g.number("granitemoe.embedding_scale")).toBe(0.25);
      expect(g.number("granitemoe.residual_scale")).toBe(0.5);
      expect(g.number("granitemoe.logit_scale")).toBe(2.5);
      expect(g.tensor("blk.0.ffn_gate_exps.weight").dims).toEqual([64, 64, 8]);
      expect(g.tensor("blk.0.ffn_down_exps.weight").dims).toEqual([64, 64, 8]);
      expect(g.has("output.weight")).toBe(false);
    } finally {
      g.close();
    }
    const hf = HfCheckpoint.open(path.join(MODELS, fx));
    const v = GgufCheckpoint.open(file);
    try {
      expect(v.config).toMatchObject({ model_type: "granitemoe", attention_multiplier: 0.5, embedding_multiplier: 0.25, residual_multiplier: 0.5, logits_scaling: 2.5, tie_word_embeddings: true });
      expect(new Set(v.tensorNames())).toEqual(new Set(hf.tensorNames()));
      for (const name of hf.tensorNames()) {
        const shape = hf.entry(name).shape;
        expect(Buffer.from(v.readFloat32(name, shape).buffer).equals(Buffer.from(hf.readFloat32(name, shape).buffer)), name).toBe(true);
      }
    } finally {
      v.close();
      hf.close();
    }
  });

  it("imports to the greedy output of the Hugging Face import", async () => {
    const a = path.join(dir, "gguf");
    const b = path.join(dir, "hf");
    await importModel(file, a, { ...quiet, experts: "f32" });
    await importModel(path.join(MODELS, fx), b, { ...quiet, experts: "f32" });
    for (const p of PROMPTS) expect((await greedyRun(a, p, 24)).ids, p).toEqual((await greedyRun(b, p, 24)).ids);
  });

  it("32 greedy tokens on 3 prompts equal node-llama-cpp's on the same file", async () => {
    llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    const out = path.join(dir, "gguf-llama");
    await importModel(file, out, { ...quiet, experts: "f32" });
    for (const r of await againstLlamaCpp(llama, file, out)) expect(r.mine, r.prompt).toEqual(r.theirs);
  });
});

describe("phimoe (LayerNorm with biases, attention and LM-head biases, LongRoPE, sparsemixer)", () => {
  const fx = "tiny-phimoe";
  let dir: string;
  let file: string;
  beforeAll(() => {
    dir = tmpDir("moe-run-gguf-phimoe-");
    file = path.join(dir, `${fx}-F32.gguf`);
    exportGguf(path.join(MODELS, fx), file, { type: "F32" });
  });

  it("is written with llama.cpp's names and keys, and the GGUF view gives back every Hugging Face tensor bit for bit", () => {
    const g = GgufFile.open(file);
    try {
      expect(g.string("general.architecture")).toBe("phimoe");
      expect(g.tensor("rope_factors_long.weight").dims).toEqual([8]);
      expect(g.tensor("output.bias").dims).toEqual([512]);
      expect(g.tensor("blk.0.attn_norm.bias").dims).toEqual([64]);
      expect(g.number("phimoe.rope.scaling.original_context_length")).toBe(16);
      expect(g.number("phimoe.rope.scaling.attn_factor")).toBeCloseTo(Math.SQRT2, 6);
    } finally {
      g.close();
    }
    const hf = HfCheckpoint.open(path.join(MODELS, fx));
    const v = GgufCheckpoint.open(file);
    try {
      expect(v.config).toMatchObject({ model_type: "phimoe", lm_head_bias: true, original_max_position_embeddings: 16 });
      expect(new Set(v.tensorNames())).toEqual(new Set(hf.tensorNames()));
      for (const name of hf.tensorNames()) {
        const shape = hf.entry(name).shape;
        expect(Buffer.from(v.readFloat32(name, shape).buffer).equals(Buffer.from(hf.readFloat32(name, shape).buffer)), name).toBe(true);
      }
    } finally {
      v.close();
      hf.close();
    }
  });

  it("imports to the greedy output of the Hugging Face import (with the file's single LongRoPE attention factor)", async () => {
    // The converter keeps one attention factor (sqrt(1 + ln 16 / ln 16), as fp32) and fp32 rope
    // factors, not short_mscale / long_mscale, and no router_jitter_noise (sparsemixer's eps; the
    // import uses Phi-3.5-MoE's 0.01): the reference is the checkpoint with those settings.
    const ref = configCopy(fx, path.join(dir, "hf-attn-factor"), (c) => {
      c["router_jitter_noise"] = 0.01;
      const rs = c["rope_scaling"] as Record<string, unknown>;
      delete rs["short_mscale"];
      delete rs["long_mscale"];
      rs["attention_factor"] = Math.fround(Math.SQRT2);
      rs["short_factor"] = (rs["short_factor"] as number[]).map(Math.fround);
      rs["long_factor"] = (rs["long_factor"] as number[]).map(Math.fround);
    });
    const a = path.join(dir, "gguf");
    const b = path.join(dir, "hf");
    await importModel(file, a, { ...quiet, experts: "f32" });
    await importModel(ref, b, { ...quiet, experts: "f32" });
    for (const p of PROMPTS) expect((await greedyRun(a, p, 24)).ids, p).toEqual((await greedyRun(b, p, 24)).ids);
  });

  // node-llama-cpp loads this file, but its first greedy token already differs: llama.cpp's phimoe
  // routes by plain softmax top-2 (no sparsemixer) and applies LongRoPE's long or short factors by
  // context size, so it computes another model than Phi-MoE's; moe-run keeps Phi-MoE's.
  it.skip("node-llama-cpp: not compared (llama.cpp's phimoe has no sparsemixer routing; another model)", () => {});
});

/** A copy of a GGUF file with tensors dropped / added (metadata kept), for the variants llama.cpp writes. */
function retensored(src: string, dst: string, drop: (name: string) => boolean, add: GgufTensorSpec[]): void {
  const g = GgufFile.open(src);
  try {
    const tensors: GgufTensorSpec[] = [...g.tensors.values()]
      .filter((t) => !drop(t.name))
      .map((t) => ({ name: t.name, dims: t.dims, type: t.type.name as GgmlTypeName, data: () => [g.readBytes(t.name)] }));
    writeGguf(dst, [...g.metadata].filter(([k]) => k !== "general.alignment"), [...tensors, ...add], { alignment: g.alignment });
  } finally {
    g.close();
  }
}

describe("deepseek2 (DeepSeek-V2: MLA with q LoRA, group-limited routing, shared experts, leading dense layer, YaRN with mscale)", () => {
  const fx = "tiny-deepseek-v2";
  let dir: string;
  let file: string;
  let llama: Llama | undefined;
  beforeAll(() => {
    dir = tmpDir("moe-run-gguf-deepseek2-");
    file = path.join(dir, `${fx}-F32.gguf`);
    exportGguf(path.join(MODELS, fx), file, { type: "F32" });
  });
  afterAll(async () => {
    await llama?.dispose();
  });

  /** The fixture with what a deepseek2 GGUF cannot hold set as llama.cpp computes it. */
  const llamaCppView = (name: string, edit: (c: Record<string, unknown>) => void = () => {}) =>
    configCopy(fx, path.join(dir, name), (c) => {
      // Only 0.1 * mscale_all_dim is stored (yarn_log_multiplier); llama.cpp takes mscale =
      // mscale_all_dim for deepseek2 (rope attention factor 1). The fixture's mscale is 1.0.
      const rs = c["rope_scaling"] as Record<string, unknown>;
      rs["mscale"] = rs["mscale_all_dim"];
      edit(c);
    });

  it("is written as convert_hf_to_gguf.py writes it (MLA as MQA, kv_b split into attn_k_b / attn_v_b), and the GGUF view gives back every Hugging Face tensor bit for bit", () => {
    const g = GgufFile.open(file);
    try {
      const k = (s: string) => g.number(`deepseek2.${s}`);
      expect(g.string("general.architecture")).toBe("deepseek2");
      expect([k("attention.head_count"), k("attention.head_count_kv")]).toEqual([4, 1]);
      expect([k("attention.q_lora_rank"), k("attention.kv_lora_rank")]).toEqual([32, 32]);
      expect([k("attention.key_length"), k("attention.value_length"), k("attention.key_length_mla"), k("attention.value_length_mla")]).toEqual([40, 32, 24, 12]);
      expect([k("rope.dimension_count"), k("leading_dense_block_count"), k("expert_shared_count"), k("expert_group_count"), k("expert_group_used_count"), k("expert_gating_func")]).toEqual([8, 1, 2, 4, 2, 1]);
      expect(k("expert_weights_scale")).toBe(1.5);
      expect(g.metadata.has("deepseek2.expert_weights_norm")).toBe(false);
      expect(g.string("deepseek2.rope.scaling.type")).toBe("yarn");
      expect([k("rope.scaling.factor"), k("rope.scaling.original_context_length")]).toEqual([4, 64]);
      expect(k("rope.scaling.yarn_log_multiplier")).toBe(Math.fround(0.1 * 0.707));
      expect(g.tensor("blk.1.attn_q_a.weight").dims).toEqual([64, 32]);
      expect(g.tensor("blk.1.attn_q_b.weight").dims).toEqual([32, 96]);
      expect(g.tensor("blk.1.attn_kv_a_mqa.weight").dims).toEqual([64, 40]);
      expect(g.tensor("blk.1.attn_k_b.weight").dims).toEqual([16, 32, 4]);
      expect(g.tensor("blk.1.attn_v_b.weight").dims).toEqual([32, 12, 4]);
      expect(g.has("blk.1.attn_kv_b.weight")).toBe(false);
      expect(g.tensor("blk.1.ffn_down_exps.weight").dims).toEqual([32, 64, 16]);
      expect(g.tensor("blk.1.ffn_up_shexp.weight").dims).toEqual([64, 64]);
      expect(g.tensor("blk.0.ffn_down.weight").dims).toEqual([96, 64]);
    } finally {
      g.close();
    }
    // Files from before the split hold attn_kv_b as it is in the checkpoint: both views equal it.
    const fused = path.join(dir, `${fx}-kvb-F32.gguf`);
    const hf = HfCheckpoint.open(path.join(MODELS, fx));
    const kvb = (l: number): GgufTensorSpec => {
      const n = `model.layers.${l}.self_attn.kv_b_proj.weight`;
      return { name: `blk.${l}.attn_kv_b.weight`, dims: [32, 4 * 28], type: "F32", data: () => [encodeGgml(hf.readFloat32(n, hf.entry(n).shape), "F32")] };
    };
    retensored(file, fused, (n) => /attn_[kv]_b\.weight$/.test(n), [0, 1, 2].map(kvb));
    for (const f of [file, fused]) {
      const v = GgufCheckpoint.open(f);
      try {
        expect(v.config).toMatchObject({
          model_type: "deepseek_v2",
          q_lora_rank: 32,
          kv_lora_rank: 32,
          qk_nope_head_dim: 16,
          qk_rope_head_dim: 8,
          v_head_dim: 12,
          n_routed_experts: 16,
          n_shared_experts: 2,
          first_k_dense_replace: 1,
          intermediate_size: 96,
          moe_intermediate_size: 32,
          topk_method: "group_limited_greedy",
          n_group: 4,
          topk_group: 2,
          routed_scaling_factor: 1.5,
          norm_topk_prob: false,
          attention_bias: false,
          rope_scaling: { type: "yarn", factor: 4, original_max_position_embeddings: 64, mscale: 0.707, mscale_all_dim: 0.707, beta_fast: 32, beta_slow: 1, truncate: true },
        });
        expect(new Set(v.tensorNames())).toEqual(new Set(hf.tensorNames()));
        for (const name of hf.tensorNames()) {
          const shape = hf.entry(name).shape;
          expect(Buffer.from(v.readFloat32(name, shape).buffer).equals(Buffer.from(hf.readFloat32(name, shape).buffer)), `${path.basename(f)}: ${name}`).toBe(true);
        }
      } finally {
        v.close();
      }
    }
    hf.close();
  });

  it("imports to the greedy output of the Hugging Face import (mscale = mscale_all_dim, what the file can say)", async () => {
    const a = path.join(dir, "gguf");
    const b = path.join(dir, "hf");
    await importModel(file, a, { ...quiet, experts: "f32" });
    await importModel(llamaCppView("hf-mscale"), b, { ...quiet, experts: "f32" });
    for (const p of PROMPTS) expect((await greedyRun(a, p, 24)).ids, p).toEqual((await greedyRun(b, p, 24)).ids);
  });

  it("without expert-group keys: 32 greedy tokens on 3 prompts equal node-llama-cpp's on the same file (also without yarn_log_multiplier)", async () => {
    // llama.cpp scores an expert group by the sum of its best two experts (DeepSeek-V3's rule),
    // DeepSeek-V2's group_limited_greedy (which moe-run computes) by its best one, so the grouped
    // file is compared with llama.cpp on everything else: the same file without group keys, which
    // both route over all experts (and which imports as topk_method greedy). (Measured on the
    // grouped file: top-1 62/64 under teacher forcing, max |p - p_llama| 0.61.)
    // llama.cpp's KV cache is F16 by default; that rounding alone moves probabilities by up to
    // 4.5e-3 on this random model (top-1 still 64/64) and flips a near-tie in greedy decoding, so
    // llama.cpp runs with an F32 cache here (then max |p - p_llama| is 4e-6).
    const flat = path.join(dir, `${fx}-nogroup-F32.gguf`);
    rewriteGgufMetadata(file, flat, (m) => m.filter(([k]) => !k.startsWith("deepseek2.expert_group")));
    const out = path.join(dir, "gguf-nogroup");
    await importModel(flat, out, { ...quiet, experts: "f32" });
    const ref = path.join(dir, "hf-nogroup");
    await importModel(llamaCppView("hf-mscale-nogroup", (c) => (c["topk_method"] = "greedy")), ref, { ...quiet, experts: "f32" });
    for (const p of PROMPTS) expect((await greedyRun(out, p, 24)).ids, p).toEqual((await greedyRun(ref, p, 24)).ids);
    llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    for (const r of await againstLlamaCpp(llama, flat, out, true)) expect(r.mine, r.prompt).toEqual(r.theirs);
    // Without yarn_log_multiplier llama.cpp scales the rotated q / k by YaRN's 1 + 0.1 ln(factor)
    // and the softmax by its square; the import says so (attention_factor, mscale_all_dim 1).
    const noMul = path.join(dir, `${fx}-nogroup-nologmul-F32.gguf`);
    rewriteGgufMetadata(flat, noMul, (m) => m.filter(([k]) => k !== "deepseek2.rope.scaling.yarn_log_multiplier"));
    const v = GgufCheckpoint.open(noMul);
    try {
      expect(v.config["rope_scaling"]).toMatchObject({ type: "yarn", factor: 4, attention_factor: 1 + 0.1 * Math.log(4), mscale_all_dim: 1 });
    } finally {
      v.close();
    }
    const outNoMul = path.join(dir, "gguf-nogroup-nologmul");
    await importModel(noMul, outNoMul, { ...quiet, experts: "f32" });
    for (const r of await againstLlamaCpp(llama, noMul, outNoMul, true)) expect(r.mine, r.prompt).toEqual(r.theirs);
  });

  it("refuses attention biases, which llama.cpp's deepseek2 does not have (tiny-deepseek-v2-lite)", () => {
    expect(() => exportGguf(path.join(MODELS, "tiny-deepseek-v2-lite"), path.join(dir, "lite.gguf"), { type: "F32" })).toThrow(/attention biases/);
    const biased = path.join(dir, `${fx}-bias-F32.gguf`);
    retensored(file, biased, () => false, [{ name: "blk.0.attn_kv_a_mqa.bias", dims: [40], type: "F32", data: () => [encodeGgml(new Float32Array(40), "F32")] }]);
    expect(() => GgufCheckpoint.open(biased)).toThrow(/blk\.0\.attn_kv_a_mqa\.bias.*no attention biases/);
  });
});
