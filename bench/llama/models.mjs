/**
 * Scenarios of the llama.cpp comparison and the models they run: each model is written once as a
 * Hugging Face checkpoint (synthetic ones from a seed), imported by moe-run (one model directory
 * per expert precision) and converted to GGUF (F16, Q8_0). Everything lands in a work folder and
 * is reused by later runs while the inputs and the converter/importer code are unchanged.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { importModel } from "../../dist/index.js";
import { readGgufHeader } from "../../dist/formats/gguf.js";
import { convertHfToGguf } from "../../dist/formats/hfToGguf.js";
import { exportGguf, q4KMTypeFor } from "../../dist/formats/ggufExport.js";
import { expertShape } from "../../dist/model/manifest.js";
import { layerRecordLayout } from "../../dist/store/recordEncodings.js";
import { writeSyntheticCheckpoint } from "../../dist/synthetic/syntheticCheckpoint.js";
import { TextTokenizer } from "../../dist/tokenizer/TextTokenizer.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
const TOKENIZER = path.join(ROOT, "models", "tiny-mixtral");

/** The 600m shape of the design notes: 8 layers, hidden 1024, 8 experts x 2816, top-2 (~575 M params). */
export function synthShape(numExperts, seed, dtype) {
  return { vocabSize: 512, hiddenSize: 1024, numLayers: 8, numHeads: 16, numKvHeads: 4, numExperts, topK: 2, expertFfn: 2816, maxPositions: 4096, dtype, seed };
}

/**
 * Models of a scenario. `oversize` is a model larger than the memory limit it runs under.
 */
export function scenarioModels(scenario, args) {
  switch (scenario) {
    case "bundled": {
      const out = [];
      for (const name of ["tiny-mixtral", "moe-tiny-en"]) {
        const dir = path.join(ROOT, "models", name);
        const cfg = path.join(dir, "config.json");
        if (!fs.existsSync(cfg)) {
          out.push({ id: name, scenario, skipped: `models/${name} has no config.json (not trained/exported yet)` });
          continue;
        }
        const type = JSON.parse(fs.readFileSync(cfg, "utf8")).model_type;
        if (type !== "mixtral") {
          out.push({ id: name, scenario, skipped: `model_type ${type}: GGUF conversion covers mixtral only` });
          continue;
        }
        out.push({ id: name, scenario, hfDir: dir });
      }
      return out;
    }
    case "600m":
      return [{ id: "synthetic-600m", scenario, synth: synthShape(8, args.seed, args.dtype) }];
    case "oversize":
      return [{ id: `synthetic-oversize-${args.oversizeExperts}x`, scenario, synth: synthShape(args.oversizeExperts, args.seed, args.dtype) }];
    default:
      throw new Error(`unknown scenario ${scenario}; known: bundled, 600m, oversize`);
  }
}

/** A hash of the files' contents and their paths inside the checkout (another checkout of the same code: the same hash). */
function hashFiles(files) {
  const h = createHash("sha256");
  for (const f of files.sort()) if (fs.existsSync(f)) h.update(path.relative(ROOT, f)).update(fs.readFileSync(f));
  return h.digest("hex").slice(0, 16);
}

const distFiles = (...dirs) =>
  dirs.flatMap((d) => {
    const p = path.join(ROOT, "dist", d);
    if (!fs.existsSync(p)) return [];
    return fs.statSync(p).isFile() ? [p] : fs.readdirSync(p).filter((f) => f.endsWith(".js")).map((f) => path.join(p, f));
  });

const readJson = (p) => (fs.existsSync(p) ? JSON.parse(fs.readFileSync(p, "utf8")) : undefined);

function dirBytes(p) {
  if (!fs.existsSync(p)) return 0;
  const st = fs.statSync(p);
  if (st.isFile()) return st.size;
  return fs.readdirSync(p).reduce((a, f) => a + dirBytes(path.join(p, f)), 0);
}

/**
 * Materialises a model: HF checkpoint, moe-run imports (one per expert encoding), GGUF files.
 * Returns paths, sizes and dims.
 */
export async function prepareModel(m, args, log) {
  const key = createHash("sha256").update(JSON.stringify(m.synth ?? { hf: m.hfDir })).digest("hex").slice(0, 10);
  const dir = path.join(args.work, `${m.id}-${key}`);
  fs.mkdirSync(dir, { recursive: true });
  const timings = {};

  let hfDir = m.hfDir;
  if (m.synth) {
    hfDir = path.join(dir, "hf");
    const done = path.join(hfDir, ".complete");
    if (!fs.existsSync(done)) {
      log(`${m.id}: writing the synthetic HF checkpoint (${JSON.stringify(m.synth)})`);
      const t = performance.now();
      fs.rmSync(hfDir, { recursive: true, force: true });
      writeSyntheticCheckpoint(hfDir, { tokenizerFrom: TOKENIZER, ...m.synth });
      fs.writeFileSync(done, "");
      timings.hfSeconds = (performance.now() - t) / 1000;
    }
  }

  const hfHash = hashFiles(distFiles("formats/gguf.js", "formats/hfToGguf.js"));
  const q4kmHash = hashFiles(distFiles("formats/gguf.js", "formats/ggufExport.js", "formats/ggufTensorList.js", "formats/ggmlKQuants.js", "formats/ggmlQuants.js"));
  const gguf = {};
  for (const fmt of args.formats) {
    const file = path.join(dir, `model-${fmt}.gguf`);
    const marker = path.join(dir, `model-${fmt}.gguf.json`);
    const ggufHash = fmt === "Q4_K_M" ? q4kmHash : hfHash;
    if (!fs.existsSync(file) || readJson(marker)?.converter !== ggufHash) {
      log(`${m.id}: converting to GGUF ${fmt}`);
      // Q4_K_M: llama-quantize's recipe (Q6_K ffn_down/attn_v in some layers, Q4_K elsewhere).
      const r = fmt === "Q4_K_M" ? exportQ4KM(hfDir, file, m.id) : convertHfToGguf(hfDir, file, { type: fmt, name: m.id });
      fs.writeFileSync(marker, JSON.stringify({ converter: ggufHash, seconds: r.seconds }));
      timings[`gguf${fmt}Seconds`] = r.seconds;
    }
    gguf[fmt] = { path: file, bytes: fs.statSync(file).size, header: readGgufHeader(file) };
  }

  const importerHash = hashFiles(distFiles("importer", "store", "model/manifest.js", "onnx", "formats/HfCheckpoint.js", "formats/safetensors.js", "formats/GgufCheckpoint.js", "util/dtype.js"));
  const moe = {};
  for (const enc of args.moeRunExperts) {
    const out = path.join(dir, `moe-${enc}`);
    const marker = path.join(dir, `moe-${enc}.json`);
    // "gguf-<TYPE>": moe-run imports the very GGUF file node-llama-cpp runs (experts kept as the
    // file stores them where moe-run computes from that format, e.g. Q8_0 -> int8).
    const fromGguf = enc.startsWith("gguf-") ? gguf[enc.slice(5)] : undefined;
    if (enc.startsWith("gguf-") && !fromGguf) throw new Error(`--moe-run-experts ${enc} needs ${enc.slice(5)} in --formats`);
    if (!fs.existsSync(path.join(out, "manifest.json")) || readJson(marker)?.importer !== importerHash) {
      log(`${m.id}: importing into moe-run (${fromGguf ? `from ${path.basename(fromGguf.path)}` : `experts ${enc}`})`);
      const t = performance.now();
      const r = fromGguf
        ? await importModel(fromGguf.path, out, { force: true, progress: false, log: () => {} })
        : await importModel(hfDir, out, { force: true, progress: false, log: () => {}, experts: enc });
      fs.writeFileSync(marker, JSON.stringify({ importer: importerHash, seconds: r.seconds }));
      timings[`import_${enc}Seconds`] = (performance.now() - t) / 1000;
    }
    const manifest = readJson(path.join(out, "manifest.json"));
    moe[enc] = { dir: out, bytes: dirBytes(out), manifest };
  }
  const config = readJson(path.join(hfDir, "config.json"));
  return { ...m, dir, hfDir, gguf, moe, config, timings };
}

/**
 * A prompt of (up to) `n` token ids that round-trips through moe-run's tokenizer: the ids come
 * from tokenizing a text, and that same text tokenizes back to exactly these ids. Both engines
 * get these ids (node-llama-cpp as raw ids, moe-run as the text, checked in the child).
 */
export function makePrompt(hfDir, n) {
  const cfg = path.join(hfDir, "tokenizer_config.json");
  const tok = TextTokenizer.load(path.join(hfDir, "tokenizer.json"), fs.existsSync(cfg) ? cfg : null);
  const base = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated documentation files. ".repeat(Math.max(16, Math.ceil(n / 16)));
  const all = tok.encode(base);
  for (let len = Math.min(n, all.length); len > 1; len--) {
    const text = tok.decode(all.slice(0, len));
    const ids = tok.encode(text);
    if (ids.length === len && ids.every((x, i) => x === all[i])) return { text, ids };
  }
  throw new Error(`could not build a round-tripping prompt from ${hfDir}`);
}

/** Bytes one decode step reads at least: all dense weights, the LM head, top-k of E experts per layer, one embedding row. */
export function activeBytesGguf(header, config) {
  const E = config.num_local_experts;
  const K = config.num_experts_per_tok;
  // [values, bytes] per block of each ggml type id (ggml-common.h).
  const BLOCKS = { 0: [1, 4], 1: [1, 2], 30: [1, 2], 2: [32, 18], 3: [32, 20], 6: [32, 22], 7: [32, 24], 8: [32, 34], 10: [256, 84], 11: [256, 110], 12: [256, 144], 13: [256, 176], 14: [256, 210] };
  const tensorBytes = (t) => {
    const n = t.dims.reduce((a, b) => a * b, 1);
    const [k, bytes] = BLOCKS[t.type] ?? [1, NaN];
    return (n / k) * bytes;
  };
  let active = 0;
  let experts = 0;
  let total = 0;
  for (const t of header.tensors) {
    const b = tensorBytes(t);
    total += b;
    if (t.name === "token_embd.weight") active += b / t.dims[1];
    else if (t.name.includes("_exps.")) {
      active += (b * K) / E;
      experts += b;
    } else active += b;
  }
  return { activeBytes: active, expertBytesTotal: experts, totalBytes: total };
}

/** The same for a moe-run model directory, from its manifest (dense graphs in fp32, expert records as stored). */
export function activeBytesMoeRun(manifest) {
  const d = manifest.dims;
  const denseBpe = { F32: 4, F16: 2, BF16: 2 }[manifest.precision?.dense ?? "F32"] ?? 4;
  const H = d.hiddenSize;
  const attn = H * d.numHeads * d.headDim * 2 + H * d.numKvHeads * d.headDim * 2;
  const perLayerDense = (attn + 2 * H + d.numExperts * H) * denseBpe;
  const head = (d.vocabSize * H + H) * denseBpe;
  // The bytes a record's matrices take (a mixed model's records are padded to the largest layer's;
  // the kernels do not read the padding): the mean over the layers with experts.
  const shape = expertShape(manifest);
  const layers = manifest.precision.expertLayers ? manifest.experts.checksums.flatMap((row, l) => (row.length ? [l] : [])) : [0];
  const record = layers.reduce((s, l) => s + layerRecordLayout(shape, l).bytes, 0) / layers.length;
  const activeBytes = d.numLayers * (perLayerDense + d.topK * record) + head + H * denseBpe;
  const expertBytesTotal = d.numLayers * d.numExperts * record;
  return { activeBytes, expertBytesTotal, totalBytes: expertBytesTotal + d.numLayers * perLayerDense + head + d.vocabSize * H * denseBpe };
}

export function paramCounts(config) {
  const H = config.hidden_size;
  const hd = config.head_dim ?? H / config.num_attention_heads;
  const attn = H * config.num_attention_heads * hd * 2 + H * (config.num_key_value_heads ?? config.num_attention_heads) * hd * 2;
  const expert = 3 * H * config.intermediate_size;
  const layer = attn + 2 * H + config.num_local_experts * H;
  const embed = config.vocab_size * H * (config.tie_word_embeddings ? 1 : 2);
  const L = config.num_hidden_layers;
  return {
    params: L * (layer + config.num_local_experts * expert) + embed + H,
    activeParams: L * (layer + config.num_experts_per_tok * expert) + config.vocab_size * H + H,
  };
}

/** A Q4_K_M GGUF of a Mixtral checkpoint (formats/ggufExport.ts, llama-quantize's recipe). */
function exportQ4KM(hfDir, file, name) {
  const t = performance.now();
  const cfg = readJson(path.join(hfDir, "config.json"));
  exportGguf(hfDir, file, { type: "Q4_K", typeFor: q4KMTypeFor(cfg.num_hidden_layers), name });
  return { seconds: (performance.now() - t) / 1000 };
}
