/**
 * `moe-run import`: Hugging Face checkpoint -> moe-run model directory.
 *
 * Everything is written into `<model-dir>.importing` and renamed into place only after the
 * manifest is durable, so `<model-dir>` is either complete or absent. A leftover staging directory
 * (killed import, full disk) is detected on the next import and redone from scratch. One import at
 * a time per target: `<model-dir>.import-lock` (importLock.ts); a second one stops with a message.
 * What may be replaced or removed is decided in importTarget.ts; every checkpoint file is read
 * only after it is checked to be a regular file of a plausible size (formats/sourceFiles.ts).
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { COMMON_NAMES, type ArchitectureSpec } from "../architectures/architectures.js";
import type { WeightFolds } from "../architectures/familyFeatures.js";
import { isMoeLayer, modelFeatures, moeLayers } from "../architectures/ModelDims.js";
import { readModelDims } from "../architectures/readModelDims.js";
import type { ModelDims } from "../architectures/ModelDims.js";
import { MoeRunError, TokenizerMissingError, UnsupportedConfigError } from "../errors.js";
import { ggufTokenizerFiles, openImportCheckpoint } from "../formats/GgufCheckpoint.js";
import type { HfCheckpoint } from "../formats/HfCheckpoint.js";
import { MAX_SMALL_JSON_BYTES, MAX_TOKENIZER_BYTES, readSourceJson } from "../formats/sourceFiles.js";
import { FORMAT_VERSION, IMPORTING_SUFFIX, sha256File, writeManifest, type DenseBlocks, type ModelManifest } from "../model/manifest.js";
import { checkEncodable, type ExpertEncoding } from "../store/expertEncoding.js";
import { checkRecordEncodings, encodingsOf, type ExpertRecordShape } from "../store/recordEncodings.js";
import { ExpertStore, expertChecksum, expertRecordBytes } from "../store/ExpertStore.js";
import { Progress } from "../util/progress.js";
import { VERSION } from "../version.js";
import { DenseBlocksWriter, type DenseMatrix } from "./DenseBlocksWriter.js";
import { ImportLock } from "./importLock.js";
import {
  REPLACED_INFIX,
  checkReplaceable,
  clearStaging,
  diskFullError,
  existsError,
  freeBytes,
  isDiskFull,
  recoverReplaced,
  writeError,
} from "./importTarget.js";
import { mlaShapes, readMlaWeights } from "./mlaWeights.js";
import { buildEmbeddingGraph, buildExpertGraph, buildHeadGraph, buildLayerGraph, type LayerWeights } from "./modelGraphs.js";

export interface ImportOptions {
  /** Replace an existing model directory. Default false: refuse. */
  force?: boolean;
  /** Show a progress bar on stderr. Default true. */
  progress?: boolean;
  /** Where log lines go. Default: stderr. */
  log?: (line: string) => void;
  /** Expert storage precision. Default "f32" (lossless for f32/f16/bf16 checkpoints). */
  experts?: ExpertEncoding;
}

export interface ImportResult {
  modelDir: string;
  manifest: ModelManifest;
  seconds: number;
}

const STORE_NAME = "experts.mdb";

export async function importModel(hfDir: string, modelDir: string, options: ImportOptions = {}): Promise<ImportResult> {
  const started = performance.now();
  const log = options.log ?? ((line: string) => process.stderr.write(line + "\n"));
  const target = path.resolve(modelDir);
  if (target === path.parse(target).root) {
    throw new MoeRunError("UNSAFE_TARGET", `refusing to import into ${modelDir}: it is the root directory`);
  }
  // Refused before anything is created; checked again with the lock held.
  if (lstatOrNull(target) && !options.force) throw existsError(target, modelDir);

  const parent = path.dirname(target);
  let createdParent: string | undefined;
  let lock: ImportLock;
  let real: string;
  try {
    createdParent = fs.mkdirSync(parent, { recursive: true });
    // The lock and every rename work on the resolved parent, so "a/../b/m" and a linked parent
    // take the same lock as "b/m".
    real = path.join(fs.realpathSync(parent), path.basename(target));
    lock = ImportLock.acquire(real, modelDir);
  } catch (err) {
    removeCreatedParents(createdParent, parent);
    throw writeError(err, modelDir);
  }
  let ok = false;
  try {
    const result = await importLocked(hfDir, modelDir, real, lock, options, log);
    ok = true;
    return { ...result, modelDir: target, seconds: (performance.now() - started) / 1000 };
  } catch (err) {
    throw writeError(err, modelDir);
  } finally {
    try {
      lock.release();
    } finally {
      if (!ok) removeCreatedParents(createdParent, parent);
    }
  }
}

/** The import proper, with the lock of `target` (absolute, resolved parent) held. */
async function importLocked(
  hfDir: string,
  shown: string,
  target: string,
  lock: ImportLock,
  options: ImportOptions,
  log: (line: string) => void
): Promise<{ manifest: ModelManifest }> {
  const staging = target + IMPORTING_SUFFIX;
  recoverReplaced(target, log);
  if (lstatOrNull(target)) {
    if (!options.force) throw existsError(target, shown);
    checkReplaceable(target, shown, hfDir);
  }

  // A Hugging Face folder, or a .gguf file (the first shard of a split one) seen as one.
  const ckpt = openImportCheckpoint(hfDir);
  try {
    const { spec, dims, folds } = readModelDims(ckpt.config);
    // Experts the checkpoint stores in moe-run's encodings (gpt-oss's MXFP4, a GGUF file's blocks,
    // per layer where the file mixes types) import as they are.
    const stored = options.experts === undefined ? spec.names.experts.storedEncoding?.(ckpt, (l) => (rest) => COMMON_NAMES.layer(l, rest), dims) : undefined;
    const records: ExpertRecordShape = {
      hiddenSize: dims.hiddenSize,
      expertFfn: dims.expertFfn,
      encoding: options.experts ?? stored?.encoding ?? "f32",
      layerEncodings: stored?.layerEncodings,
      expertBias: modelFeatures(dims).expertBias,
    };
    if (options.experts === undefined && stored === undefined && spec.names.experts.storedEncoding && hfDir.endsWith(".gguf")) {
      // Expert types without an exact record form (IQ*, BF16), or experts of one layer in several
      // types: decoded to f32. Say so, since f32 is several times the file.
      const types = new Set<string>();
      for (const t of ckpt.tensorNames()) if (/\.experts\./.test(t)) types.add(ckpt.entry(t).dtype);
      log(`moe-run import: the experts' types (${[...types].sort().join(", ")}) are not all block types moe-run computes from as they are, so the experts are imported as f32 (exact, larger than the file). --experts <encoding> re-quantizes them instead (e.g. q6_k or int8).`);
    }
    if (records.layerEncodings) records.layerEncodings.forEach((e, l) => checkRecordEncodings(e, dims.hiddenSize, dims.expertFfn, `layer ${l}'s experts`));
    else checkEncodable(records.encoding, dims.hiddenSize, dims.expertFfn);
    const tokenizer = ggufTokenizerFiles(ckpt) ?? readTokenizer(hfDir);
    const shapes = expectedShapes(spec, dims, ckpt);
    for (const [name, shape] of shapes) ckpt.checkShape(name, shape);

    clearStaging(staging, shown, log);
    try {
      fs.mkdirSync(path.join(staging, "graphs"), { recursive: true });
      // Experts kept as the file stores them: its dense matrices too (DenseBlocksWriter), so the
      // native layers compute what llama.cpp computes. Experts re-encoded: dense at their width.
      const manifest = await writeModel(ckpt, spec, dims, folds, records, shapes, staging, tokenizer, options.progress ?? true, stored !== undefined);
      writeManifest(staging, manifest);
      fsyncDir(staging);
      if (!lock.stillHeld()) {
        throw new MoeRunError(
          "IMPORT_IN_PROGRESS",
          `the import lock ${lock.file} was taken by another import into ${shown} while this one ran; nothing was published`
        );
      }
      if (lstatOrNull(target)) {
        if (!options.force) throw existsError(target, shown);
        checkReplaceable(target, shown, hfDir); // still the model directory that was checked
      }
      publish(staging, target);
      return { manifest };
    } catch (err) {
      // Free space as the failure left it, before the partial import is removed.
      const free = freeBytes(path.dirname(target));
      fs.rmSync(staging, { recursive: true, force: true });
      if (isDiskFull(err, free, 2 * expertRecordBytes(records))) {
        throw diskFullError(shown, estimateImportBytes(ckpt), err);
      }
      throw err;
    }
  } finally {
    ckpt.close();
  }
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return null;
    throw err;
  }
}

/** Removes the folders mkdir -p made for the target's parent, if they are still empty. */
function removeCreatedParents(created: string | undefined, parent: string): void {
  if (!created) return;
  for (let dir = parent; dir.length >= created.length; dir = path.dirname(dir)) {
    try {
      fs.rmdirSync(dir);
    } catch {
      return;
    }
    if (dir === created) return;
  }
}

/** Rough size of an f32 import of the checkpoint (fp32 is the largest precision). */
function estimateImportBytes(ckpt: HfCheckpoint): number {
  let n = 0;
  for (const name of ckpt.tensorNames()) n += ckpt.entry(name).shape.reduce((a, b) => a * b, 1) * 4;
  return n;
}

/** Every tensor the import reads, with the shape config.json implies. */
function expectedShapes(spec: ArchitectureSpec, d: ModelDims, ckpt: HfCheckpoint): Map<string, number[]> {
  const { hiddenSize: H, headDim: hd, numHeads: Hq, numKvHeads: Hkv, sharedExpertFfn: Fs } = d;
  const f = modelFeatures(d);
  const names = spec.names;
  const m = new Map<string, number[]>();
  m.set(COMMON_NAMES.embed, [d.vocabSize, H]);
  m.set(COMMON_NAMES.finalNorm, [H]);
  if (names.normBias) m.set(names.normBias.final, [H]);
  if (!d.tieEmbeddings || ckpt.has(COMMON_NAMES.lmHead)) m.set(COMMON_NAMES.lmHead, [d.vocabSize, H]);
  if (f.lmHeadBias && names.lmHeadBias) m.set(names.lmHeadBias, [d.vocabSize]);
  for (let l = 0; l < d.numLayers; l++) {
    const n = (rest: string) => COMMON_NAMES.layer(l, rest);
    m.set(n(COMMON_NAMES.inputNorm), [H]);
    m.set(n(COMMON_NAMES.postAttnNorm), [H]);
    if (names.normBias) {
      m.set(n(names.normBias.input), [H]);
      m.set(n(names.normBias.postAttn), [H]);
    }
    if (f.oBias && names.oBias) m.set(n(names.oBias), [H]);
    if (f.sinks && names.sinks) m.set(n(names.sinks), [Hq]);
    if (f.mla) {
      for (const [name, shape] of mlaShapes(d, ckpt, n)) m.set(name, shape);
    } else {
      m.set(n(`${COMMON_NAMES.q}.weight`), [Hq * hd, H]);
      m.set(n(`${COMMON_NAMES.k}.weight`), [Hkv * hd, H]);
      m.set(n(`${COMMON_NAMES.v}.weight`), [Hkv * hd, H]);
      m.set(n(`${COMMON_NAMES.o}.weight`), [H, Hq * hd]);
    }
    if (d.qkvBias) {
      m.set(n(`${COMMON_NAMES.q}.bias`), [Hq * hd]);
      m.set(n(`${COMMON_NAMES.k}.bias`), [Hkv * hd]);
      m.set(n(`${COMMON_NAMES.v}.bias`), [Hkv * hd]);
    }
    if (d.qkNorm !== "none") {
      m.set(n(COMMON_NAMES.qNorm), d.qkNorm === "head" ? [hd] : [Hq * hd]);
      m.set(n(COMMON_NAMES.kNorm), d.qkNorm === "head" ? [hd] : [Hkv * hd]);
    }
    if (!isMoeLayer(d, l)) {
      // A dense layer: one MLP of denseFfn, no router, no experts.
      const mlp = names.denseMlp;
      if (!mlp) throw new UnsupportedConfigError(`model_type "${d.modelType}" has no dense-MLP tensor names, but layer ${l} is dense`);
      m.set(n(mlp("gate")), [f.denseFfn, H]);
      m.set(n(mlp("up")), [f.denseFfn, H]);
      m.set(n(mlp("down")), [H, f.denseFfn]);
      continue;
    }
    m.set(n(names.router), [d.numExperts, H]);
    if (f.routerBias && names.routerBias) m.set(n(names.routerBias), [d.numExperts]);
    if (f.grouped.correctionBias && names.routerCorrectionBias) m.set(n(names.routerCorrectionBias), [d.numExperts]);
    for (const [name, shape] of names.experts.shapes(n, d)) m.set(name, shape);
    for (const [name, shape] of names.experts.storedShapes?.(ckpt, n, d) ?? []) m.set(name, shape);
    if (names.shared && Fs > 0) {
      m.set(n(names.shared.expert("gate")), [Fs, H]);
      m.set(n(names.shared.expert("up")), [Fs, H]);
      m.set(n(names.shared.expert("down")), [H, Fs]);
      if (f.sharedGate && names.shared.gate) m.set(n(names.shared.gate), [1, H]);
    }
  }
  return m;
}

interface TokenizerFiles {
  json: Buffer;
  config: Buffer | null;
}

/**
 * tokenizer.json and tokenizer_config.json, read once (regular files of bounded size, valid JSON);
 * the bytes read are what the model directory gets.
 */
function readTokenizer(hfDir: string): TokenizerFiles {
  const json = path.join(hfDir, "tokenizer.json");
  if (!lstatOrNull(json)) {
    throw new TokenizerMissingError(`${hfDir} has no tokenizer.json; moe-run needs the Hugging Face fast-tokenizer file beside the weights`);
  }
  const tokenizer = readSourceJson(json, "tokenizer.json", MAX_TOKENIZER_BYTES).bytes;
  const configPath = path.join(hfDir, "tokenizer_config.json");
  const config = lstatOrNull(configPath) ? readSourceJson(configPath, "tokenizer_config.json", MAX_SMALL_JSON_BYTES).bytes : null;
  return { json: tokenizer, config };
}

async function writeModel(
  ckpt: HfCheckpoint,
  spec: ArchitectureSpec,
  d: ModelDims,
  folds: WeightFolds,
  layout: ExpertRecordShape,
  shapes: Map<string, number[]>,
  dir: string,
  tokenizer: TokenizerFiles,
  showProgress: boolean,
  keepDenseBlocks: boolean
): Promise<ModelManifest> {
  const read = (name: string) => ckpt.readFloat32(name, shapes.get(name)!);
  const written: string[] = [];
  const save = (g: { save(p: string): string[] }, rel: string) => {
    written.push(...g.save(path.join(dir, rel)).map((p) => path.relative(dir, p)));
    return rel;
  };
  const progress = new Progress("import", d.numLayers + 2, process.stderr, showProgress);

  const opt = (name: string | undefined) => (name !== undefined && shapes.has(name) ? read(name) : undefined);
  const scaled = (w: Float32Array | undefined, factor: number) => (w && factor !== 1 ? w.map((v) => v * factor) : w);
  const embedW = read(COMMON_NAMES.embed);
  const embed = save(buildEmbeddingGraph(d, scaled(embedW, folds.embedding)!), "graphs/embed.onnx");
  // The LM head's own tensor, or the embedding where the model ties them.
  const lmHeadName = shapes.has(COMMON_NAMES.lmHead) ? COMMON_NAMES.lmHead : COMMON_NAMES.embed;
  const lmHead = lmHeadName === COMMON_NAMES.lmHead ? read(lmHeadName) : embedW;
  const headWeights = {
    norm: read(COMMON_NAMES.finalNorm),
    normBias: opt(spec.names.normBias?.final),
    lmHead: scaled(lmHead, folds.logits)!,
    lmHeadBias: scaled(opt(spec.names.lmHeadBias), folds.logits),
  };
  const head = save(buildHeadGraph(d, headWeights), "graphs/head.onnx");
  const features = modelFeatures(d);
  const expert = save(buildExpertGraph(d, { activation: features.expertActivation, expertBias: features.expertBias }), "graphs/expert.onnx");
  progress.tick(1, "embedding, head");

  const store = ExpertStore.create(path.join(dir, STORE_NAME), layout);
  // A GGUF file's dense matrices, also kept as stored for the native dense layers.
  const denseBlocks = keepDenseBlocks ? DenseBlocksWriter.open(ckpt, dir) : undefined;
  let denseBlocksEntry: DenseBlocks | undefined;
  const checksums: string[][] = [];
  const layers: string[] = [];
  // predictor.bin: every layer's router [E, H] then every post-attention norm [H] (fp32), so
  // cross-layer gate predictors can apply upcoming routers without running their graphs.
  const routers = new Float32Array(d.numLayers * d.numExperts * d.hiddenSize);
  const postNorms = new Float32Array(d.numLayers * d.hiddenSize);
  try {
    for (let l = 0; l < d.numLayers; l++) {
      const n = (rest: string) => COMMON_NAMES.layer(l, rest);
      const at = (rest: string | undefined) => (rest === undefined ? undefined : n(rest));
      const names = spec.names;
      const mla = features.mla;
      const w: LayerWeights = {
        inputNorm: read(n(COMMON_NAMES.inputNorm)),
        inputNormBias: opt(at(names.normBias?.input)),
        q: mla ? undefined : read(n(`${COMMON_NAMES.q}.weight`)),
        k: mla ? undefined : read(n(`${COMMON_NAMES.k}.weight`)),
        v: mla ? undefined : read(n(`${COMMON_NAMES.v}.weight`)),
        mla: mla ? readMlaWeights(d, n, read, opt) : undefined,
        o: scaled(read(n(`${COMMON_NAMES.o}.weight`)), folds.attnOut)!,
        oBias: scaled(opt(at(names.oBias)), folds.attnOut),
        sinks: opt(at(names.sinks)),
        qBias: opt(n(`${COMMON_NAMES.q}.bias`)),
        kBias: opt(n(`${COMMON_NAMES.k}.bias`)),
        vBias: opt(n(`${COMMON_NAMES.v}.bias`)),
        qNorm: opt(n(COMMON_NAMES.qNorm)),
        kNorm: opt(n(COMMON_NAMES.kNorm)),
        postAttnNorm: read(n(COMMON_NAMES.postAttnNorm)),
        postAttnNormBias: opt(at(names.normBias?.postAttn)),
      };
      const moe = isMoeLayer(d, l);
      if (moe) {
        w.router = read(n(names.router));
        w.routerBias = opt(at(names.routerBias));
        w.routerCorrectionBias = opt(at(names.routerCorrectionBias));
        const shared = names.shared;
        if (shared && d.sharedExpertFfn > 0) {
          w.shared = { gate: read(n(shared.expert("gate"))), up: read(n(shared.expert("up"))), down: read(n(shared.expert("down"))), gateProj: opt(at(shared.gate)) };
        }
        routers.set(w.router, l * d.numExperts * d.hiddenSize);
      } else {
        // The dense MLP takes the shared expert's place, ungated; predictor.bin keeps a zero router.
        const mlp = names.denseMlp!;
        w.shared = { gate: read(n(mlp("gate"))), up: read(n(mlp("up"))), down: read(n(mlp("down"))) };
      }
      postNorms.set(w.postAttnNorm, l * d.hiddenSize);
      layers.push(save(buildLayerGraph(d, l, w), `graphs/layer_${String(l).padStart(3, "0")}.onnx`));
      denseBlocks?.addLayer(l, mla ? [] : denseMatrices(spec, d, l, moe, folds));

      const layerSums: string[] = [];
      for (let j = 0; moe && j < d.numExperts; j++) {
        const experts = spec.names.experts;
        const record = experts.rawRecord?.(ckpt, n, j, d, encodingsOf(layout, l)) ?? ExpertStore.pack(layout, experts.read(ckpt, n, j, d), l);
        layerSums.push(expertChecksum(record));
        store.put(l, j, record);
      }
      checksums.push(layerSums);
      progress.tick(1, `layer ${l + 1}/${d.numLayers}`);
      // Let the event loop run between layers (timers, signals, other work of a library user).
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    if (denseBlocks && folds.logits === 1) denseBlocks.setLmHead(lmHeadName, [d.vocabSize, d.hiddenSize]);
    denseBlocksEntry = denseBlocks?.finish();
    if (denseBlocksEntry) written.push(denseBlocksEntry.file);
  } finally {
    denseBlocks?.close();
    store.close();
  }

  const predictorFile = "predictor.bin";
  const pfd = fs.openSync(path.join(dir, predictorFile), "w");
  fs.writeSync(pfd, new Uint8Array(routers.buffer));
  fs.writeSync(pfd, new Uint8Array(postNorms.buffer));
  fs.closeSync(pfd);
  written.push(predictorFile);
  fs.writeFileSync(path.join(dir, "tokenizer.json"), tokenizer.json, { flag: "wx" });
  written.push("tokenizer.json");
  if (tokenizer.config) {
    fs.writeFileSync(path.join(dir, "tokenizer_config.json"), tokenizer.config, { flag: "wx" });
    written.push("tokenizer_config.json");
  }
  const files: ModelManifest["files"] = {};
  for (const rel of written) {
    const p = path.join(dir, rel);
    files[rel] = { bytes: fs.statSync(p).size, sha256: sha256File(p) };
  }
  progress.tick(1, "checksums");
  progress.finish(`${d.numLayers} layers, ${moeLayers(d).length * d.numExperts} experts`);
  return {
    format: "moe-run-model",
    formatVersion: FORMAT_VERSION,
    createdBy: `moe-run ${VERSION}`,
    source: { dir: path.resolve(ckpt.dir), dtypes: ckpt.dtypes(), modelType: d.modelType },
    dims: d,
    precision: { dense: "F32", experts: layout.encoding, ...(layout.layerEncodings ? { expertLayers: [...layout.layerEncodings] } : {}) },
    graphs: { embed, layers, head, expert },
    experts: { store: STORE_NAME, recordBytes: expertRecordBytes(layout), checksums },
    predictor: { file: predictorFile },
    tokenizer: { json: "tokenizer.json", config: tokenizer.config ? "tokenizer_config.json" : null },
    files,
    ...(denseBlocksEntry ? { denseBlocks: denseBlocksEntry } : {}),
  };
}

/**
 * The matrices of layer `l` the native dense layers may take as a GGUF file stores them: q, k, v,
 * o (unless the family folds a scale into o) and the shared expert or dense MLP.
 */
function denseMatrices(spec: ArchitectureSpec, d: ModelDims, l: number, moe: boolean, folds: WeightFolds): DenseMatrix[] {
  const n = (rest: string) => COMMON_NAMES.layer(l, rest);
  const { hiddenSize: H, numHeads: Hq, numKvHeads: Hkv, headDim: hd } = d;
  const out: DenseMatrix[] = [
    { section: "q_proj", tensor: n(`${COMMON_NAMES.q}.weight`), shape: [Hq * hd, H] },
    { section: "k_proj", tensor: n(`${COMMON_NAMES.k}.weight`), shape: [Hkv * hd, H] },
    { section: "v_proj", tensor: n(`${COMMON_NAMES.v}.weight`), shape: [Hkv * hd, H] },
  ];
  if (folds.attnOut === 1) out.push({ section: "o_proj", tensor: n(`${COMMON_NAMES.o}.weight`), shape: [H, Hq * hd] });
  const mlp = moe ? (d.sharedExpertFfn > 0 ? spec.names.shared?.expert : undefined) : spec.names.denseMlp;
  const F = moe ? d.sharedExpertFfn : modelFeatures(d).denseFfn;
  if (mlp && F > 0) {
    out.push({ section: "shared_gate", tensor: n(mlp("gate")), shape: [F, H] });
    out.push({ section: "shared_up", tensor: n(mlp("up")), shape: [F, H] });
    out.push({ section: "shared_down", tensor: n(mlp("down")), shape: [H, F] });
  }
  return out;
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Moves the finished staging directory into place; an existing target (--force, checked to be a
 * moe-run model) is moved aside first and removed only after. An importer killed between the two
 * renames leaves `<target>.replaced-<pid>`, which the next import puts back (recoverReplaced).
 */
function publish(staging: string, target: string): void {
  if (!lstatOrNull(target)) {
    fs.renameSync(staging, target);
    fsyncDir(path.dirname(target));
    return;
  }
  const old = `${target}${REPLACED_INFIX}${process.pid}`;
  fs.renameSync(target, old);
  fs.renameSync(staging, target);
  fsyncDir(path.dirname(target));
  fs.rmSync(old, { recursive: true, force: true });
}
