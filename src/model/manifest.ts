/**
 * manifest.json: what a moe-run model directory holds. It is written last, and the directory is
 * renamed into place only after it, so a directory with a valid manifest is complete.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import type { ModelDims } from "../architectures/ModelDims.js";
import { MoeRunError } from "../errors.js";
import type { ExpertEncoding } from "../store/expertEncoding.js";

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
  precision: { dense: "F32"; experts: ExpertEncoding };
  graphs: { embed: string; layers: string[]; head: string; expert: string };
  experts: { store: string; recordBytes: number; checksums: string[][] };
  /** Routers [L, E, H] and post-attention norms [L, H], fp32, for cross-layer gate predictors. */
  predictor: { file: string };
  tokenizer: { json: string; config: string | null };
  /** Every file but the LMDB store (covered by per-expert checksums): size and sha256. */
  files: Record<string, { bytes: number; sha256: string }>;
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
    manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8")) as ModelManifest;
  } catch (cause) {
    throw new MoeRunError("MODEL_DIR_INVALID", `${manifestPath} is corrupt; re-import the model`, { cause });
  }
  if (manifest.format !== "moe-run-model" || manifest.formatVersion !== FORMAT_VERSION) {
    throw new MoeRunError(
      "MODEL_DIR_INVALID",
      `${modelDir} has model format ${manifest.format} v${manifest.formatVersion}; this moe-run reads v${FORMAT_VERSION}. Re-import the model.`
    );
  }
  for (const [rel, info] of Object.entries(manifest.files)) {
    const p = path.join(modelDir, rel);
    if (!fs.existsSync(p)) throw new MoeRunError("MODEL_DIR_INCOMPLETE", `${modelDir} lacks ${rel}; re-import the model`);
    const size = fs.statSync(p).size;
    if (size !== info.bytes) throw new MoeRunError("MODEL_DIR_INCOMPLETE", `${rel} in ${modelDir} has ${size} bytes, expected ${info.bytes}; re-import the model`);
    if (options.verify && sha256File(p) !== info.sha256) {
      throw new MoeRunError("MODEL_DIR_INVALID", `${rel} in ${modelDir} fails its checksum; re-import the model`);
    }
  }
  if (!fs.existsSync(path.join(modelDir, manifest.experts.store))) {
    throw new MoeRunError("MODEL_DIR_INCOMPLETE", `${modelDir} lacks its expert store ${manifest.experts.store}; re-import the model`);
  }
  return manifest;
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
