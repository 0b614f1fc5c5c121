/**
 * manifest.json: what a moe-run model directory holds. It is written last, and the directory is
 * renamed into place only after it, so a directory with a valid manifest is complete.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { isMoeLayer, modelFeatures, type ModelDims } from "../architectures/ModelDims.js";
import { MoeRunError } from "../errors.js";
import { readGraph } from "../onnx/graphFile.js";
import { ALL_EXPERT_ENCODINGS, checkEncodable, matrixBytes, type ExpertEncoding, type RecordEncodings } from "../store/expertEncoding.js";
import { checkRecordEncodings, largestRecordBytes, type ExpertRecordShape } from "../store/recordEncodings.js";

export const MANIFEST_FILE = "manifest.json";
export const FORMAT_VERSION = 1;
/** Suffix of the staging directory an import writes into before it is renamed into place. */
export const IMPORTING_SUFFIX = ".importing";

export interface ModelManifest {
  format: "moe-run-model";
  formatVersion: number;
  createdBy: string;
  source: { dir: string; dtypes: string[]; modelType: string };
  dims: ModelDims;
  /**
   * experts: every expert matrix's encoding, unless expertLayers (a GGUF file that mixed expert
   * types, one entry per layer) gives each layer's gate, up and down (store/recordEncodings.ts).
   */
  precision: { dense: "F32"; experts: ExpertEncoding; expertLayers?: RecordEncodings[] };
  graphs: { embed: string; layers: string[]; head: string; expert: string };
  /** recordBytes: of every record, or where layers differ in encoding, the largest (each layer's own: store/recordEncodings.ts). */
  experts: { store: string; recordBytes: number; checksums: string[][] };
  /** Routers [L, E, H] and post-attention norms [L, H], fp32, for cross-layer gate predictors. */
  predictor: { file: string };
  tokenizer: { json: string; config: string | null };
  /** Every file but the LMDB store (covered by per-expert checksums): size and sha256. */
  files: Record<string, { bytes: number; sha256: string }>;
  /** Dense matrices kept as a GGUF file stored them (importer/DenseBlocksWriter.ts); absent otherwise. */
  denseBlocks?: DenseBlocks;
}

/** One dense matrix [rows, cols] in `encoding`, at `offset` (bytes) of the dense blocks file. */
export interface DenseBlock {
  encoding: ExpertEncoding;
  rows: number;
  cols: number;
  offset: number;
  bytes: number;
}

/** Where the native dense layers read kept matrices: per layer, by section name (NativeDenseLayers). */
export interface DenseBlocks {
  file: string;
  layers: Record<string, DenseBlock>[];
  lmHead?: DenseBlock;
}

/** The sections a dense block may stand for. */
export const DENSE_BLOCK_SECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "shared_gate", "shared_up", "shared_down"] as const;

/** The byte form of the model's expert records (the store's layout). */
export function expertShape(m: ModelManifest): ExpertRecordShape {
  const d = m.dims;
  return { hiddenSize: d.hiddenSize, expertFfn: d.expertFfn, encoding: m.precision.experts, layerEncodings: m.precision.expertLayers, expertBias: modelFeatures(d).expertBias };
}

export function sha256File(p: string): string {
  const hash = createHash("sha256");
  const fd = fs.openSync(p, "r");
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    let n: number;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) hash.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest("hex");
}

/**
 * Reads and checks a model directory's manifest. With `verify`, every file's sha256 is checked;
 * otherwise sizes only (cheap, and catches truncation).
 */
export function readManifest(modelDir: string, options: { verify?: boolean } = {}): ModelManifest {
  const manifestPath = path.join(modelDir, MANIFEST_FILE);
  let dirStat: fs.Stats | undefined;
  try {
    dirStat = fs.statSync(modelDir);
  } catch {
    dirStat = undefined;
  }
  if (!dirStat && !fs.existsSync(modelDir + IMPORTING_SUFFIX)) {
    throw new MoeRunError("MODEL_DIR_INVALID", `${modelDir} does not exist; create a model directory with \`moe-run import <hf-dir> ${modelDir}\``);
  }
  if (dirStat && !dirStat.isDirectory()) {
    throw new MoeRunError("MODEL_DIR_INVALID", `${modelDir} is a file, not a model directory; give the directory made by \`moe-run import\``);
  }
  if (!fs.existsSync(manifestPath)) {
    if (fs.existsSync(modelDir + IMPORTING_SUFFIX) || (fs.existsSync(modelDir) && fs.readdirSync(modelDir).length > 0)) {
      throw new MoeRunError(
        "MODEL_DIR_INCOMPLETE",
        `${modelDir} is not a complete moe-run model (no ${MANIFEST_FILE}; an import may have been interrupted). ` +
          `Run \`moe-run import <hf-dir> ${modelDir}\` again.`
      );
    }
    throw new MoeRunError("MODEL_DIR_INVALID", `${modelDir} is not a moe-run model directory; create one with \`moe-run import <hf-dir> ${modelDir}\``);
  }
  let manifest: ModelManifest;
  try {
    if (fs.statSync(manifestPath).size > MAX_MANIFEST_BYTES) throw new Error("too large");
    manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8")) as ModelManifest;
  } catch (cause) {
    throw new MoeRunError("MODEL_DIR_INVALID", `${manifestPath} is corrupt; re-import the model`, { cause });
  }
  if (manifest === null || typeof manifest !== "object" || Array.isArray(manifest)) {
    throw new MoeRunError("MODEL_DIR_INVALID", `${manifestPath} is corrupt; re-import the model`);
  }
  if (manifest.format !== "moe-run-model" || manifest.formatVersion !== FORMAT_VERSION) {
    throw new MoeRunError(
      "MODEL_DIR_INVALID",
      `${modelDir} has model format ${manifest.format} v${manifest.formatVersion}; this moe-run reads v${FORMAT_VERSION}. Re-import the model.`
    );
  }
  checkManifestShape(modelDir, manifest);
  for (const [rel, info] of Object.entries(manifest.files)) {
    const p = path.join(modelDir, rel);
    if (!fs.existsSync(p)) throw new MoeRunError("MODEL_DIR_INCOMPLETE", `${modelDir} lacks ${rel}; re-import the model`);
    const st = fs.statSync(p);
    if (!st.isFile()) throw new MoeRunError("MODEL_DIR_INVALID", `${rel} in ${modelDir} is not a file; re-import the model`);
    const size = st.size;
    if (size !== info.bytes) throw new MoeRunError("MODEL_DIR_INCOMPLETE", `${rel} in ${modelDir} has ${size} bytes, expected ${info.bytes}; re-import the model`);
    if (options.verify && sha256File(p) !== info.sha256) {
      throw new MoeRunError("MODEL_DIR_INVALID", `${rel} in ${modelDir} fails its checksum; re-import the model`);
    }
  }
  if (!fs.existsSync(path.join(modelDir, manifest.experts.store))) {
    throw new MoeRunError("MODEL_DIR_INCOMPLETE", `${modelDir} lacks its expert store ${manifest.experts.store}; re-import the model`);
  }
  if (!fs.statSync(path.join(modelDir, manifest.experts.store)).isFile()) {
    throw new MoeRunError("MODEL_DIR_INVALID", `the expert store ${manifest.experts.store} in ${modelDir} is not a file; re-import the model`);
  }
  checkFilesAgreeWithDims(modelDir, manifest);
  return manifest;
}

/** A manifest is JSON, a few KB per layer; anything much larger is not one. */
const MAX_MANIFEST_BYTES = 64 * 1024 * 1024;

function invalid(modelDir: string, what: string): MoeRunError {
  return new MoeRunError("MODEL_DIR_INVALID", `${path.join(modelDir, MANIFEST_FILE)} is invalid: ${what}; re-import the model`);
}

function isWhole(v: unknown, min: number): v is number {
  return typeof v === "number" && Number.isInteger(v) && v >= min;
}

/**
 * A relative path inside the model directory: not absolute, no "..", no empty or odd parts. A
 * manifest must not make moe-run read (or serve) files elsewhere, e.g. "../other/experts.mdb" or
 * "/etc/passwd".
 */
export function isInsideModelDir(rel: unknown): rel is string {
  if (typeof rel !== "string" || rel === "" || rel.includes("\0") || rel.includes("\\")) return false;
  if (path.isAbsolute(rel) || path.posix.isAbsolute(rel) || path.win32.isAbsolute(rel)) return false;
  const parts = rel.split("/");
  return parts.every((p) => p !== "" && p !== "." && p !== "..");
}

/** Types, ranges and paths of the manifest's fields, before any file is opened through them. */
function checkManifestShape(modelDir: string, m: ModelManifest): void {
  const d = m.dims as ModelDims | undefined;
  if (!d || typeof d !== "object") throw invalid(modelDir, "it has no dims");
  const whole: [keyof ModelDims, number][] = [
    ["vocabSize", 1], ["hiddenSize", 1], ["numLayers", 1], ["numHeads", 1], ["numKvHeads", 1], ["headDim", 2],
    ["numExperts", 1], ["topK", 1], ["expertFfn", 1], ["sharedExpertFfn", 0], ["maxPositions", 2],
  ];
  for (const [key, min] of whole) {
    if (!isWhole(d[key], min)) throw invalid(modelDir, `dims.${key} must be a whole number >= ${min}, got ${JSON.stringify(d[key])}`);
  }
  if (d.topK > d.numExperts) throw invalid(modelDir, `dims.topK ${d.topK} must be between 1 and dims.numExperts ${d.numExperts}`);
  if (d.numHeads % d.numKvHeads !== 0) throw invalid(modelDir, `dims.numHeads ${d.numHeads} is not a multiple of dims.numKvHeads ${d.numKvHeads}`);
  if (d.headDim % 2 !== 0) throw invalid(modelDir, `dims.headDim ${d.headDim} must be even`);
  for (const key of ["rmsNormEps", "ropeTheta"] as const) {
    if (typeof d[key] !== "number" || !Number.isFinite(d[key]) || d[key] <= 0) throw invalid(modelDir, `dims.${key} must be a positive number, got ${JSON.stringify(d[key])}`);
  }
  if (!Array.isArray(d.eosTokenIds) || !d.eosTokenIds.every((id) => isWhole(id, 0) && id < d.vocabSize)) {
    throw invalid(modelDir, `dims.eosTokenIds must be token ids below the vocabulary size ${d.vocabSize}, got ${JSON.stringify(d.eosTokenIds)}`);
  }
  if (d.bosTokenId !== undefined && d.bosTokenId !== null && !(isWhole(d.bosTokenId, 0) && d.bosTokenId < d.vocabSize)) {
    throw invalid(modelDir, `dims.bosTokenId must be a token id below the vocabulary size ${d.vocabSize}, got ${JSON.stringify(d.bosTokenId)}`);
  }
  if (!["none", "head", "full"].includes(d.qkNorm)) throw invalid(modelDir, `dims.qkNorm must be none, head or full, got ${JSON.stringify(d.qkNorm)}`);
  const encodings: readonly string[] = ALL_EXPERT_ENCODINGS;
  if (!m.precision || !encodings.includes(m.precision.experts)) {
    throw invalid(modelDir, `precision.experts must be one of ${encodings.join(", ")}, got ${JSON.stringify(m.precision?.experts)}`);
  }

  const g = m.graphs;
  if (!g || typeof g !== "object" || !Array.isArray(g.layers)) throw invalid(modelDir, "it has no graphs");
  if (!m.experts || typeof m.experts !== "object") throw invalid(modelDir, "it has no experts");
  if (!m.tokenizer || typeof m.tokenizer !== "object") throw invalid(modelDir, "it has no tokenizer");
  if (!m.predictor || typeof m.predictor !== "object") throw invalid(modelDir, "it has no predictor");
  if (!m.files || typeof m.files !== "object" || Array.isArray(m.files)) throw invalid(modelDir, "it has no file list");
  const paths: [string, unknown][] = [
    ["graphs.embed", g.embed],
    ["graphs.head", g.head],
    ["graphs.expert", g.expert],
    ...g.layers.map((p, i): [string, unknown] => [`graphs.layers[${i}]`, p]),
    ["experts.store", m.experts.store],
    ["predictor.file", m.predictor.file],
    ["tokenizer.json", m.tokenizer.json],
    ...(m.tokenizer.config === null ? [] : [["tokenizer.config", m.tokenizer.config] as [string, unknown]]),
    ...(m.denseBlocks === undefined ? [] : [["denseBlocks.file", (m.denseBlocks as DenseBlocks | null)?.file] as [string, unknown]]),
  ];
  for (const [field, rel] of paths) {
    if (!isInsideModelDir(rel)) throw invalid(modelDir, `${field} ${JSON.stringify(rel)} is not a path inside the model directory`);
  }
  for (const [rel, info] of Object.entries(m.files)) {
    if (!isInsideModelDir(rel)) throw invalid(modelDir, `the file ${JSON.stringify(rel)} is not a path inside the model directory`);
    if (!info || !isWhole(info.bytes, 0) || typeof info.sha256 !== "string") throw invalid(modelDir, `the entry of ${rel} has no size and checksum`);
  }
  // Every file moe-run reads is size-checked (and checksummed with --verify) through `files`;
  // the store has per-expert checksums instead.
  for (const [field, rel] of paths) {
    if (field !== "experts.store" && !((rel as string) in m.files)) throw invalid(modelDir, `${field} ${rel} is not among its files`);
  }

  if (g.layers.length !== d.numLayers) {
    throw invalid(modelDir, `dims.numLayers is ${d.numLayers} but it lists ${g.layers.length} layer graphs`);
  }
  const sums = m.experts.checksums;
  // Dense layers (features.denseLayers) have no experts: an empty row.
  if (!Array.isArray(sums) || sums.length !== d.numLayers || !sums.every((row, l) => Array.isArray(row) && row.length === (isMoeLayer(d, l) ? d.numExperts : 0))) {
    throw invalid(modelDir, `its expert checksums are not ${d.numLayers} layers x ${d.numExperts} experts (dims.numLayers x dims.numExperts, none in dense layers)`);
  }
  const layers = m.precision.expertLayers;
  if (layers !== undefined) {
    if (!Array.isArray(layers) || layers.length !== d.numLayers) throw invalid(modelDir, `precision.expertLayers must list dims.numLayers (${d.numLayers}) layers' encodings`);
    layers.forEach((e, l) => {
      try {
        checkRecordEncodings(e, d.hiddenSize, d.expertFfn, `precision.expertLayers[${l}]`);
      } catch (err) {
        throw invalid(modelDir, (err as Error).message);
      }
    });
  }
  const record = largestRecordBytes(expertShape(m));
  if (m.experts.recordBytes !== record) {
    throw invalid(modelDir, `experts.recordBytes is ${m.experts.recordBytes} but ${m.precision.experts} experts of dims.hiddenSize ${d.hiddenSize} x dims.expertFfn ${d.expertFfn} take ${record}`);
  }
  if (m.denseBlocks !== undefined) checkDenseBlocks(modelDir, m.denseBlocks, d.numLayers, m.files[m.denseBlocks.file]!.bytes);
}

/** Each kept dense matrix: a known section and encoding, its size that of [rows, cols], inside the file. */
function checkDenseBlocks(modelDir: string, b: DenseBlocks, numLayers: number, fileBytes: number): void {
  if (!Array.isArray(b.layers) || b.layers.length !== numLayers) throw invalid(modelDir, `denseBlocks.layers must list dims.numLayers (${numLayers}) layers`);
  const check = (e: DenseBlock, where: string) => {
    if (!e || typeof e !== "object" || !(ALL_EXPERT_ENCODINGS as readonly string[]).includes(e.encoding) || !isWhole(e.rows, 1) || !isWhole(e.cols, 1) || !isWhole(e.offset, 0)) {
      throw invalid(modelDir, `${where} must give an encoding, rows, cols and offset`);
    }
    let want: number;
    try {
      checkEncodable(e.encoding, e.cols, e.cols);
      want = matrixBytes(e.encoding, e.rows, e.cols);
    } catch {
      throw invalid(modelDir, `${where}: rows of ${e.cols} values cannot be ${e.encoding}`);
    }
    if (e.bytes !== want) throw invalid(modelDir, `${where} has ${e.bytes} bytes, but [${e.rows}, ${e.cols}] in ${e.encoding} take ${want}`);
    if (e.offset + e.bytes > fileBytes) throw invalid(modelDir, `${where} lies outside ${b.file}`);
  };
  b.layers.forEach((layer, l) => {
    if (!layer || typeof layer !== "object" || Array.isArray(layer)) throw invalid(modelDir, `denseBlocks.layers[${l}] is not an object`);
    for (const [section, e] of Object.entries(layer)) {
      if (!(DENSE_BLOCK_SECTIONS as readonly string[]).includes(section)) throw invalid(modelDir, `denseBlocks.layers[${l}] names an unknown section ${JSON.stringify(section)}`);
      check(e, `denseBlocks.layers[${l}].${section}`);
    }
  });
  if (b.lmHead !== undefined) check(b.lmHead, "denseBlocks.lmHead");
}

/**
 * The dimensions the manifest states against the files: every graph must parse, its weights
 * must have the shapes the dims imply and lie inside its own data file (listed in the
 * manifest), and the predictor file must hold L x (E + 1) x H floats. A manifest edited to other
 * numbers (topK, numLayers, vocabSize, ...) is refused here instead of running wrong.
 */
function checkFilesAgreeWithDims(modelDir: string, m: ModelManifest): void {
  const d = m.dims;
  const { hiddenSize: H, vocabSize: V, numHeads: Hq, numKvHeads: Hkv, headDim: hd, numExperts: E } = d;
  const disagree = (rel: string, what: string) =>
    new MoeRunError("MODEL_DIR_INVALID", `${rel} in ${modelDir} disagrees with manifest.json: ${what}; re-import the model`);
  const check = (rel: string, required: Record<string, number[]>, optional: Record<string, number[]> = {}) => {
    const { inits } = readGraph(modelDir, rel);
    const dataRel = `${rel}.data`;
    for (const [name, want] of Object.entries({ ...required, ...optional })) {
      const t = inits.get(name);
      if (!t) {
        if (name in required) throw disagree(rel, `it has no weight ${name}`);
        continue;
      }
      if (t.dims.length !== want.length || t.dims.some((n, i) => n !== want[i])) {
        throw disagree(rel, `weight ${name} is [${t.dims.join(", ")}] but the dims imply [${want.join(", ")}]`);
      }
    }
    for (const [name, t] of inits) {
      if (!t.external) continue;
      const { location, offset, length } = t.external;
      const info = m.files[dataRel];
      if (path.posix.join(path.posix.dirname(rel), location) !== dataRel || !info) {
        throw disagree(rel, `weight ${name} is read from ${JSON.stringify(location)}, not from its own data file`);
      }
      if (!isWhole(offset, 0) || !isWhole(length, 0) || offset + length > info.bytes) {
        throw disagree(rel, `weight ${name} lies outside ${dataRel}`);
      }
    }
  };
  check(m.graphs.embed, { embed_tokens: [V, H] });
  check(m.graphs.head, { norm: [H], lm_head: [V, H] }, { norm_bias: [H], lm_head_bias: [V] });
  const biases: Record<string, number[]> = d.qkvBias ? { q_bias: [Hq * hd], k_bias: [Hkv * hd], v_bias: [Hkv * hd] } : {};
  const qkNorm: Record<string, number[]> = d.qkNorm === "head" ? { q_norm: [hd], k_norm: [hd] } : d.qkNorm === "full" ? { q_norm: [Hq * hd], k_norm: [Hkv * hd] } : {};
  const f = modelFeatures(d);
  const blocks = m.denseBlocks;
  const mlp = (F: number): Record<string, number[]> => (F > 0 ? { shared_gate: [F, H], shared_up: [F, H], shared_down: [H, F], shared_expert_gate: [1, H] } : {});
  for (const [l, rel] of m.graphs.layers.entries()) {
    // A dense layer holds its MLP in the shared-expert slots and has no router.
    const moe = isMoeLayer(d, l);
    const shared = mlp(moe ? d.sharedExpertFfn : f.denseFfn);
    const m = f.mla;
    const attention: Record<string, number[]> = m
      ? {
          mla_q_b: [Hq * (m.nopeDim + m.ropeDim), m.qLoraRank || H],
          mla_kv_a: [m.kvLoraRank + m.ropeDim, H],
          mla_kv_a_norm: [m.kvLoraRank],
          mla_uk: [Hq, m.nopeDim, m.kvLoraRank],
          mla_uv: [Hq, m.vDim, m.kvLoraRank],
          o_proj: [H, Hq * m.vDim],
          ...(m.qLoraRank ? { mla_q_a: [m.qLoraRank, H], mla_q_a_norm: [m.qLoraRank] } : {}),
        }
      : { q_proj: [Hq * hd, H], k_proj: [Hkv * hd, H], v_proj: [Hkv * hd, H], o_proj: [H, Hq * hd] };
    for (const [section, e] of Object.entries(blocks?.layers[l] ?? {})) {
      const want = attention[section] ?? shared[section];
      if (!want || want[0] !== e.rows || want[1] !== e.cols) {
        throw disagree(blocks!.file, `layer ${l}'s ${section} is [${e.rows}, ${e.cols}] but the dims imply ${want ? `[${want.join(", ")}]` : "no such matrix"}`);
      }
    }
    check(
      rel,
      { input_norm: [H], ...attention, post_attention_norm: [H], ...(moe ? { router: [E, H] } : {}), ...qkNorm },
      {
        rotate_half: [hd, hd],
        ...biases,
        ...shared,
        input_norm_bias: [H],
        post_attention_norm_bias: [H],
        o_bias: [H],
        router_bias: [E],
        router_correction_bias: [E],
        sinks: [Hkv, Hq / Hkv, 1, 1],
      }
    );
  }
  const lmHead = m.denseBlocks?.lmHead;
  if (lmHead && (lmHead.rows !== V || lmHead.cols !== H)) throw disagree(m.denseBlocks!.file, `its LM head is [${lmHead.rows}, ${lmHead.cols}] but the dims imply [${V}, ${H}]`);
  const expert = readGraph(modelDir, m.graphs.expert);
  const shapes = expert.inputs.map((s) => s.join(","));
  if (!shapes.includes(`${d.expertFfn},${H}`) || !shapes.includes(`${H},${d.expertFfn}`)) {
    throw disagree(m.graphs.expert, `its expert weights are not [${d.expertFfn}, ${H}] and [${H}, ${d.expertFfn}] (dims.expertFfn x dims.hiddenSize)`);
  }
  const predictorBytes = 4 * d.numLayers * H * (E + 1);
  const predictor = m.files[m.predictor.file]!;
  if (predictor.bytes !== predictorBytes) {
    throw disagree(m.predictor.file, `it has ${predictor.bytes} bytes but ${d.numLayers} layers of ${E} experts x ${H} take ${predictorBytes}`);
  }
}

/** Writes the manifest durably: to a temporary name, fsync, then rename. */
export function writeManifest(dir: string, manifest: ModelManifest): void {
  const tmp = path.join(dir, `${MANIFEST_FILE}.tmp`);
  const fd = fs.openSync(tmp, "w");
  try {
    fs.writeSync(fd, JSON.stringify(manifest, null, 1));
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, path.join(dir, MANIFEST_FILE));
}
