/**
 * Models the cache benches run on, imported into a work directory that later runs reuse:
 *   - the trained model (models/moe-tiny-en) when its checkpoint is complete, else a bundled tiny
 *     fixture (models/tiny-qwen3-moe), with the reason recorded;
 *   - a synthetic Mixtral-shaped model whose expert store is large (>= 2 GB by default).
 * Import needs dist/ (npx tsc -p tsconfig.json).
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { importModel, readManifest } from "../../dist/index.js";
import { writeSyntheticCheckpoint } from "../../dist/synthetic/syntheticCheckpoint.js";
import { recordBytes } from "../../dist/store/expertEncoding.js";
import { ROOT } from "./common.mjs";

/** A usable imported model directory (manifest present) or undefined. */
function existingModel(dir) {
  try {
    readManifest(dir);
    return dir;
  } catch {
    return undefined;
  }
}

function storeBytes(dir) {
  const m = readManifest(dir);
  const p = path.join(dir, m.experts.store);
  const st = fs.statSync(p);
  // LMDB keeps its data in data.mdb inside a directory, or in the file itself (noSubdir).
  if (st.isDirectory()) return fs.readdirSync(p).reduce((a, f) => a + fs.statSync(path.join(p, f)).size, 0);
  return st.size;
}

/** The store's data file (what the page cache holds). */
export function storeFiles(dir) {
  const m = readManifest(dir);
  const p = path.join(dir, m.experts.store);
  const st = fs.statSync(p);
  if (st.isDirectory()) return fs.readdirSync(p).map((f) => path.join(p, f));
  return [p];
}

function describe(name, dir, extra) {
  const m = readManifest(dir);
  const d = m.dims;
  const record = recordBytes(m.precision.experts, d.hiddenSize, d.expertFfn);
  return {
    name,
    dir,
    modelType: d.modelType,
    layers: d.numLayers,
    experts: d.numExperts,
    topK: d.topK,
    hidden: d.hiddenSize,
    expertFfn: d.expertFfn,
    encoding: m.precision.experts,
    recordBytes: record,
    expertBytes: record * d.numExperts * d.numLayers,
    storeBytes: storeBytes(dir),
    ...extra,
  };
}

/**
 * The trained model if its checkpoint is complete (config.json and weights), else the fallback.
 * The import is keyed by the checkpoint files' sizes and mtimes, so a retrained model is re-imported.
 */
export async function trainedModel(work, { name = "moe-tiny-en", fallback = "tiny-qwen3-moe", log }) {
  const hf = path.join(ROOT, "models", name);
  const complete = fs.existsSync(path.join(hf, "config.json")) && fs.readdirSync(hf).some((f) => f.endsWith(".safetensors"));
  let src = hf;
  let note;
  if (!complete) {
    src = path.join(ROOT, "models", fallback);
    note = `models/${name} has no complete checkpoint yet (config.json + *.safetensors); used models/${fallback} instead`;
    log?.(note);
  }
  const files = fs.readdirSync(src).filter((f) => f === "config.json" || f.endsWith(".safetensors") || f.startsWith("tokenizer"));
  const h = crypto.createHash("sha256");
  for (const f of files.sort()) {
    const st = fs.statSync(path.join(src, f));
    h.update(`${f}:${st.size}:${st.mtimeMs}\n`);
  }
  const dir = path.join(work, `${path.basename(src)}-f32-${h.digest("hex").slice(0, 10)}`);
  if (!existingModel(dir)) {
    log?.(`importing ${path.relative(ROOT, src)} -> ${dir}`);
    await importModel(src, dir, { progress: false, force: true, experts: "f32", log });
  }
  return describe(path.basename(src), dir, { source: path.relative(ROOT, src), note });
}

/** Synthetic shapes: Mixtral routing (8 experts, top-2) by default. */
export function parseShape(text) {
  const m = /^(\d+)L-(\d+)H-(\d+)F-(\d+)E-top(\d+)$/.exec(text);
  if (!m) throw new Error(`--synthetic-shape must look like 24L-1024H-3584F-8E-top2, got "${text}"`);
  const [layers, hidden, ffn, experts, topK] = m.slice(1).map(Number);
  return { layers, hidden, ffn, experts, topK };
}

/**
 * A synthetic Mixtral-shaped model under `work`, imported with `encoding` experts; made once and
 * reused (the Hugging Face checkpoint is deleted after import unless keepHf).
 */
export async function syntheticModel(work, { shape, encoding, keepHf = false, log }) {
  const s = parseShape(shape);
  const name = `synthetic-${shape}-${encoding}`;
  const dir = path.join(work, name);
  if (existingModel(dir)) return describe(name, dir, { synthetic: true, reused: true });
  const hf = path.join(work, `synthetic-${shape}-hf`);
  const t0 = performance.now();
  const expertBytes = recordBytes(encoding, s.hidden, s.ffn) * s.experts * s.layers;
  if (!fs.existsSync(path.join(hf, "model.safetensors"))) {
    log?.(`writing synthetic checkpoint ${shape} (BF16, ${(expertBytes / 1e9).toFixed(2)} GB of ${encoding} expert bytes after import) -> ${hf}`);
    fs.rmSync(hf, { recursive: true, force: true });
    writeSyntheticCheckpoint(hf, {
      tokenizerFrom: path.join(ROOT, "models", "tiny-mixtral"),
      vocabSize: 512,
      hiddenSize: s.hidden,
      numLayers: s.layers,
      numHeads: Math.max(1, s.hidden / 128),
      numKvHeads: Math.max(1, s.hidden / 512),
      numExperts: s.experts,
      topK: s.topK,
      expertFfn: s.ffn,
      maxPositions: 1024,
      dtype: "BF16",
      seed: 1,
    });
  }
  const t1 = performance.now();
  log?.(`importing (--experts ${encoding}) -> ${dir}`);
  await importModel(hf, dir, { progress: false, force: true, experts: encoding, log });
  const t2 = performance.now();
  if (!keepHf) fs.rmSync(hf, { recursive: true, force: true });
  log?.(`synthetic model ready: checkpoint ${((t1 - t0) / 1000).toFixed(0)} s, import ${((t2 - t1) / 1000).toFixed(0)} s`);
  return describe(name, dir, { synthetic: true, reused: false, writeSeconds: (t1 - t0) / 1000, importSeconds: (t2 - t1) / 1000 });
}
