/**
 * A Hugging Face checkpoint directory: config.json, one or more *.safetensors (sharded ones listed
 * in model.safetensors.index.json), tokenizer.json and tokenizer_config.json.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointCorruptError, CheckpointMissingError, ShapeMismatchError } from "../errors.js";
import { SafetensorsFile, type SafetensorsEntry } from "./safetensors.js";
import { isSameOrInside, readSourceJson, sourceReadError } from "./sourceFiles.js";

export type HfConfig = Record<string, unknown>;

export class HfCheckpoint {
  readonly dir: string;
  readonly config: HfConfig;
  /** Tensor name -> the open file holding it. */
  private readonly tensorFiles: Map<string, SafetensorsFile>;
  private readonly files: SafetensorsFile[];

  private constructor(dir: string, config: HfConfig, files: SafetensorsFile[], tensorFiles: Map<string, SafetensorsFile>) {
    this.dir = dir;
    this.config = config;
    this.files = files;
    this.tensorFiles = tensorFiles;
  }

  static open(dir: string): HfCheckpoint {
    let dirStat: fs.Stats | undefined;
    try {
      dirStat = fs.statSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT" && (err as NodeJS.ErrnoException).code !== "ENOTDIR") throw sourceReadError(dir, "the checkpoint folder", err);
    }
    if (!dirStat?.isDirectory()) {
      throw new CheckpointMissingError(`${dir} is not a directory; pass the folder that holds config.json and *.safetensors`);
    }
    const config = readJson(path.join(dir, "config.json"), "config.json");
    if (config === null || typeof config !== "object" || Array.isArray(config)) {
      throw new CheckpointCorruptError(`${path.join(dir, "config.json")} is not a JSON object`);
    }
    const indexPath = path.join(dir, "model.safetensors.index.json");
    let shardNames: string[];
    let weightMap: Record<string, string> | undefined;
    if (fs.existsSync(indexPath)) {
      const index = readJson(indexPath, "model.safetensors.index.json") as { weight_map?: Record<string, unknown> } | null;
      if (!index || typeof index.weight_map !== "object" || index.weight_map === null || Array.isArray(index.weight_map)) {
        throw new CheckpointCorruptError(`${indexPath} has no weight_map`);
      }
      for (const shard of new Set(Object.values(index.weight_map))) checkShardName(dir, shard);
      weightMap = index.weight_map as Record<string, string>;
      shardNames = [...new Set(Object.values(weightMap))].sort();
    } else {
      try {
        shardNames = fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors")).sort();
      } catch (err) {
        throw sourceReadError(dir, "the checkpoint folder", err);
      }
    }
    if (shardNames.length === 0) {
      throw new CheckpointMissingError(`${dir} has no *.safetensors weights (moe-run imports safetensors checkpoints)`);
    }
    const files: SafetensorsFile[] = [];
    const tensorFiles = new Map<string, SafetensorsFile>();
    try {
      for (const name of shardNames) {
        const p = path.join(dir, name);
        if (!fs.existsSync(p)) {
          throw new CheckpointMissingError(`shard ${name} listed in model.safetensors.index.json is missing from ${dir}`);
        }
        const file = SafetensorsFile.open(p);
        files.push(file);
        for (const tensor of file.entries.keys()) {
          if (weightMap && weightMap[tensor] !== undefined && weightMap[tensor] !== name) {
            throw new CheckpointCorruptError(`tensor "${tensor}" is in ${name} but the index says ${weightMap[tensor]}`);
          }
          tensorFiles.set(tensor, file);
        }
      }
      if (weightMap) {
        for (const [tensor, shard] of Object.entries(weightMap)) {
          if (!tensorFiles.has(tensor)) throw new CheckpointCorruptError(`tensor "${tensor}" is listed for ${shard} but that file lacks it`);
        }
      }
    } catch (err) {
      for (const f of files) f.close();
      throw err;
    }
    return new HfCheckpoint(dir, config as HfConfig, files, tensorFiles);
  }

  has(name: string): boolean {
    return this.tensorFiles.has(name);
  }

  entry(name: string): SafetensorsEntry {
    return this.file(name).entry(name);
  }

  /** Throws ShapeMismatchError (naming the file) unless the tensor has the shape the config implies. */
  checkShape(name: string, expectedShape: readonly number[]): void {
    const file = this.file(name);
    const entry = file.entry(name);
    if (entry.shape.length !== expectedShape.length || entry.shape.some((d, i) => d !== expectedShape[i])) {
      throw new ShapeMismatchError(name, expectedShape, entry.shape, path.basename(file.path));
    }
  }

  /**
   * Reads a tensor as fp32 after checking its shape; a NaN or infinite value is refused, naming the
   * tensor (such weights only make the model print nothing or NaN later).
   */
  readFloat32(name: string, expectedShape: readonly number[]): Float32Array {
    this.checkShape(name, expectedShape);
    return this.checkFinite(name, this.file(name).readFloat32(name));
  }

  /**
   * Reads sub-tensor `index` along the first dimension of a fused tensor (one expert of [E, ...])
   * as fp32, after checking the whole tensor's shape; refuses non-finite values like readFloat32.
   */
  readFloat32Slice(name: string, expectedShape: readonly number[], index: number): Float32Array {
    this.checkShape(name, expectedShape);
    return this.checkFinite(name, this.file(name).readSliceFloat32(name, index));
  }

  /** Raw stored bytes of sub-tensor `index` along the first dimension (quantized blocks). */
  readSliceBytes(name: string, expectedShape: readonly number[], index: number): Uint8Array {
    this.checkShape(name, expectedShape);
    return this.file(name).readSliceBytes(name, index);
  }

  private checkFinite(name: string, values: Float32Array): Float32Array {
    const file = this.file(name);
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      if (v - v !== 0) {
        throw new CheckpointCorruptError(
          `tensor "${name}" in ${path.basename(file.path)} holds ${Number.isNaN(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf"} (element ${i}); ` +
            `moe-run does not import non-finite weights: the checkpoint is damaged or was saved after training diverged`
        );
      }
    }
    return values;
  }

  /** The distinct dtypes of the stored tensors, for the manifest. */
  dtypes(): string[] {
    const set = new Set<string>();
    for (const f of this.files) for (const e of f.entries.values()) set.add(e.dtype);
    return [...set].sort();
  }

  tensorNames(): string[] {
    return [...this.tensorFiles.keys()];
  }

  close(): void {
    for (const f of this.files) f.close();
  }

  private file(name: string): SafetensorsFile {
    const file = this.tensorFiles.get(name);
    if (!file) throw new CheckpointMissingError(`the checkpoint in ${this.dir} has no tensor "${name}"`);
    return file;
  }
}

function readJson(p: string, what: string): unknown {
  return readSourceJson(p, what).value;
}

/**
 * A shard named by model.safetensors.index.json must be a .safetensors file inside the checkpoint
 * folder: a plain relative name without "..", whose folder (after symbolic links) is the checkpoint
 * folder or below it. The file itself may be a symbolic link (the Hugging Face cache links
 * snapshots to blobs), but it is opened only as a regular file.
 */
function checkShardName(dir: string, shard: unknown): void {
  const shown = typeof shard === "string" ? JSON.stringify(shard.length > 200 ? `${shard.slice(0, 200)}...` : shard) : String(shard);
  const refuse = (why: string) =>
    new CheckpointCorruptError(`model.safetensors.index.json in ${dir} names the shard ${shown}, ${why}; refusing to read it`);
  if (typeof shard !== "string" || shard === "") throw refuse("which is not a file name");
  if (shard.includes("\0") || path.isAbsolute(shard) || shard.split(/[\\/]/).includes("..")) throw refuse("which lies outside the checkpoint folder");
  if (!shard.endsWith(".safetensors")) throw refuse("which is not a .safetensors file");
  let realDir: string;
  let realParent: string;
  try {
    realDir = fs.realpathSync(dir);
    realParent = fs.realpathSync(path.dirname(path.join(dir, shard)));
  } catch {
    return; // its folder does not exist: reported below as a missing shard
  }
  if (!isSameOrInside(realParent, realDir)) throw refuse("which lies outside the checkpoint folder");
}
