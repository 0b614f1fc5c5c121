/**
 * `moe-run import`: Hugging Face checkpoint -> moe-run model directory.
 *
 * Everything is written into `<model-dir>.importing` and renamed into place only after the
 * manifest is durable, so `<model-dir>` is either complete or absent. A leftover staging directory
 * (killed import, full disk) is detected on the next import and redone from scratch.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { COMMON_NAMES, readModelDims, type ArchitectureSpec } from "../architectures/architectures.js";
import type { ModelDims } from "../architectures/ModelDims.js";
import { MoeRunError, TokenizerMissingError } from "../errors.js";
import { HfCheckpoint } from "../formats/HfCheckpoint.js";
import { FORMAT_VERSION, IMPORTING_SUFFIX, sha256File, writeManifest, type ModelManifest } from "../model/manifest.js";
import { checkEncodable, type ExpertEncoding } from "../store/expertEncoding.js";
import { ExpertStore, expertChecksum, expertRecordBytes } from "../store/ExpertStore.js";
import { formatBytes } from "../util/bytes.js";
import { Progress } from "../util/progress.js";
import { VERSION } from "../version.js";
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
  const staging = target + IMPORTING_SUFFIX;
  if (fs.existsSync(target) && !options.force) {
    throw new MoeRunError("MODEL_DIR_EXISTS", `${modelDir} already exists; pass --force to replace it`);
  }

  const ckpt = HfCheckpoint.open(hfDir);
  try {
    const { spec, dims } = readModelDims(ckpt.config);
    const encoding = options.experts ?? "f32";
    checkEncodable(encoding, dims.hiddenSize, dims.expertFfn);
    const tokenizerFiles = findTokenizer(hfDir);
    const shapes = expectedShapes(spec, dims, ckpt);
    for (const [name, shape] of shapes) ckpt.checkShape(name, shape);

    if (fs.existsSync(staging)) {
      log(`found an interrupted import in ${staging}; removing it and importing again`);
      fs.rmSync(staging, { recursive: true, force: true });
    }
    fs.mkdirSync(path.join(staging, "graphs"), { recursive: true });
    try {
      const manifest = await writeModel(ckpt, spec, dims, encoding, shapes, staging, tokenizerFiles, options.progress ?? true);
      writeManifest(staging, manifest);
      fsyncDir(staging);
      publish(staging, target);
      return { modelDir: target, manifest, seconds: (performance.now() - started) / 1000 };
    } catch (err) {
      fs.rmSync(staging, { recursive: true, force: true });
      if (isDiskFull(err, path.dirname(target))) {
        throw new MoeRunError(
          "DISK_FULL",
          `no space left on the device while importing into ${modelDir}; the partial import was removed. ` +
            `Free about ${formatBytes(estimateImportBytes(ckpt))} there or import into another directory.`,
          { cause: err }
        );
      }
      throw err;
    }
  } finally {
    ckpt.close();
  }
}

/**
 * Whether a failed write means the disk is full: ENOSPC itself, or (LMDB reports a failed commit
 * as EIO) almost no space left where the import was writing.
 */
function isDiskFull(err: unknown, dir: string): boolean {
  if ((err as NodeJS.ErrnoException).code === "ENOSPC" || /MDB_MAP_FULL|No space left/i.test(String((err as Error)?.message))) return true;
  try {
    const fsStat = fs.statfsSync(dir);
    return fsStat.bavail * fsStat.bsize < 4 * 1024 * 1024;
  } catch {
    return false;
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
  const { hiddenSize: H, headDim: hd, numHeads: Hq, numKvHeads: Hkv, expertFfn: F, sharedExpertFfn: Fs } = d;
  const m = new Map<string, number[]>();
  m.set(COMMON_NAMES.embed, [d.vocabSize, H]);
  m.set(COMMON_NAMES.finalNorm, [H]);
  if (!d.tieEmbeddings || ckpt.has(COMMON_NAMES.lmHead)) m.set(COMMON_NAMES.lmHead, [d.vocabSize, H]);
  for (let l = 0; l < d.numLayers; l++) {
    const n = (rest: string) => COMMON_NAMES.layer(l, rest);
    m.set(n(COMMON_NAMES.inputNorm), [H]);
    m.set(n(COMMON_NAMES.postAttnNorm), [H]);
    m.set(n(`${COMMON_NAMES.q}.weight`), [Hq * hd, H]);
    m.set(n(`${COMMON_NAMES.k}.weight`), [Hkv * hd, H]);
    m.set(n(`${COMMON_NAMES.v}.weight`), [Hkv * hd, H]);
    m.set(n(`${COMMON_NAMES.o}.weight`), [H, Hq * hd]);
    if (d.qkvBias) {
      m.set(n(`${COMMON_NAMES.q}.bias`), [Hq * hd]);
      m.set(n(`${COMMON_NAMES.k}.bias`), [Hkv * hd]);
      m.set(n(`${COMMON_NAMES.v}.bias`), [Hkv * hd]);
    }
    if (d.qkNorm !== "none") {
      m.set(n(COMMON_NAMES.qNorm), d.qkNorm === "head" ? [hd] : [Hq * hd]);
      m.set(n(COMMON_NAMES.kNorm), d.qkNorm === "head" ? [hd] : [Hkv * hd]);
    }
    m.set(n(spec.names.router), [d.numExperts, H]);
    for (let j = 0; j < d.numExperts; j++) {
      m.set(n(spec.names.expert(j, "gate")), [F, H]);
      m.set(n(spec.names.expert(j, "up")), [F, H]);
      m.set(n(spec.names.expert(j, "down")), [H, F]);
    }
    if (spec.names.shared && Fs > 0) {
      m.set(n(spec.names.shared.expert("gate")), [Fs, H]);
      m.set(n(spec.names.shared.expert("up")), [Fs, H]);
      m.set(n(spec.names.shared.expert("down")), [H, Fs]);
      m.set(n(spec.names.shared.gate), [1, H]);
    }
  }
  return m;
}

function findTokenizer(hfDir: string): { json: string; config: string | null } {
  const json = path.join(hfDir, "tokenizer.json");
  if (!fs.existsSync(json)) {
    throw new TokenizerMissingError(`${hfDir} has no tokenizer.json; moe-run needs the Hugging Face fast-tokenizer file beside the weights`);
  }
  try {
    JSON.parse(fs.readFileSync(json, "utf8"));
  } catch (cause) {
    throw new MoeRunError("CHECKPOINT_CORRUPT", `${json} is not valid JSON`, { cause });
  }
  const config = path.join(hfDir, "tokenizer_config.json");
  return { json, config: fs.existsSync(config) ? config : null };
}

async function writeModel(
  ckpt: HfCheckpoint,
  spec: ArchitectureSpec,
  d: ModelDims,
  encoding: ExpertEncoding,
  shapes: Map<string, number[]>,
  dir: string,
  tokenizer: { json: string; config: string | null },
  showProgress: boolean
): Promise<ModelManifest> {
  const read = (name: string) => ckpt.readFloat32(name, shapes.get(name)!);
  const written: string[] = [];
  const save = (g: { save(p: string): string[] }, rel: string) => {
    written.push(...g.save(path.join(dir, rel)).map((p) => path.relative(dir, p)));
    return rel;
  };
  const progress = new Progress("import", d.numLayers + 2, process.stderr, showProgress);

  const embedW = read(COMMON_NAMES.embed);
  const embed = save(buildEmbeddingGraph(d, embedW), "graphs/embed.onnx");
  const lmHead = shapes.has(COMMON_NAMES.lmHead) ? read(COMMON_NAMES.lmHead) : embedW;
  const head = save(buildHeadGraph(d, read(COMMON_NAMES.finalNorm), lmHead), "graphs/head.onnx");
  const expert = save(buildExpertGraph(d), "graphs/expert.onnx");
  progress.tick(1, "embedding, head");

  const layout = { hiddenSize: d.hiddenSize, expertFfn: d.expertFfn, encoding };
  const store = ExpertStore.create(path.join(dir, STORE_NAME), layout);
  const checksums: string[][] = [];
  const layers: string[] = [];
  // predictor.bin: every layer's router [E, H] then every post-attention norm [H] (fp32), so
  // cross-layer gate predictors can apply upcoming routers without running their graphs.
  const routers = new Float32Array(d.numLayers * d.numExperts * d.hiddenSize);
  const postNorms = new Float32Array(d.numLayers * d.hiddenSize);
  try {
    for (let l = 0; l < d.numLayers; l++) {
      const n = (rest: string) => COMMON_NAMES.layer(l, rest);
      const opt = (name: string) => (shapes.has(name) ? read(name) : undefined);
      const w: LayerWeights = {
        inputNorm: read(n(COMMON_NAMES.inputNorm)),
        q: read(n(`${COMMON_NAMES.q}.weight`)),
        k: read(n(`${COMMON_NAMES.k}.weight`)),
        v: read(n(`${COMMON_NAMES.v}.weight`)),
        o: read(n(`${COMMON_NAMES.o}.weight`)),
        qBias: opt(n(`${COMMON_NAMES.q}.bias`)),
        kBias: opt(n(`${COMMON_NAMES.k}.bias`)),
        vBias: opt(n(`${COMMON_NAMES.v}.bias`)),
        qNorm: opt(n(COMMON_NAMES.qNorm)),
        kNorm: opt(n(COMMON_NAMES.kNorm)),
        postAttnNorm: read(n(COMMON_NAMES.postAttnNorm)),
        router: read(n(spec.names.router)),
      };
      const shared = spec.names.shared;
      if (shared && d.sharedExpertFfn > 0) {
        w.shared = {
          gate: read(n(shared.expert("gate"))),
          up: read(n(shared.expert("up"))),
          down: read(n(shared.expert("down"))),
          gateProj: read(n(shared.gate)),
        };
      }
      routers.set(w.router, l * d.numExperts * d.hiddenSize);
      postNorms.set(w.postAttnNorm, l * d.hiddenSize);
      layers.push(save(buildLayerGraph(d, l, w), `graphs/layer_${String(l).padStart(3, "0")}.onnx`));

      const layerSums: string[] = [];
      for (let j = 0; j < d.numExperts; j++) {
        const record = ExpertStore.pack(layout, {
          gate: read(n(spec.names.expert(j, "gate"))),
          up: read(n(spec.names.expert(j, "up"))),
          down: read(n(spec.names.expert(j, "down"))),
        });
        layerSums.push(expertChecksum(record));
        store.put(l, j, record);
      }
      checksums.push(layerSums);
      progress.tick(1, `layer ${l + 1}/${d.numLayers}`);
    }
  } finally {
    store.close();
  }

  const predictorFile = "predictor.bin";
  const pfd = fs.openSync(path.join(dir, predictorFile), "w");
  fs.writeSync(pfd, new Uint8Array(routers.buffer));
  fs.writeSync(pfd, new Uint8Array(postNorms.buffer));
  fs.closeSync(pfd);
  written.push(predictorFile);
  fs.copyFileSync(tokenizer.json, path.join(dir, "tokenizer.json"));
  written.push("tokenizer.json");
  if (tokenizer.config) {
    fs.copyFileSync(tokenizer.config, path.join(dir, "tokenizer_config.json"));
    written.push("tokenizer_config.json");
  }
  const files: ModelManifest["files"] = {};
  for (const rel of written) {
    const p = path.join(dir, rel);
    files[rel] = { bytes: fs.statSync(p).size, sha256: sha256File(p) };
  }
  progress.tick(1, "checksums");
  progress.finish(`${d.numLayers} layers, ${d.numLayers * d.numExperts} experts`);
  return {
    format: "moe-run-model",
    formatVersion: FORMAT_VERSION,
    createdBy: `moe-run ${VERSION}`,
    source: { dir: path.resolve(ckpt.dir), dtypes: ckpt.dtypes(), modelType: d.modelType },
    dims: d,
    precision: { dense: "F32", experts: encoding },
    graphs: { embed, layers, head, expert },
    experts: { store: STORE_NAME, recordBytes: expertRecordBytes(layout), checksums },
    predictor: { file: predictorFile },
    tokenizer: { json: "tokenizer.json", config: tokenizer.config ? "tokenizer_config.json" : null },
    files,
  };
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, "r");
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Moves the finished staging directory into place; an existing target (--force) goes only after. */
function publish(staging: string, target: string): void {
  if (!fs.existsSync(target)) {
    fs.renameSync(staging, target);
    return;
  }
  const old = `${target}.replaced-${process.pid}`;
  fs.renameSync(target, old);
  fs.renameSync(staging, target);
  fs.rmSync(old, { recursive: true, force: true });
}
