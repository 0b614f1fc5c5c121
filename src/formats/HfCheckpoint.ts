/**
 * A Hugging Face checkpoint directory: config.json, one or more *.safetensors (sharded ones listed
 * in model.safetensors.index.json), tokenizer.json and tokenizer_config.json.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { CheckpointCorruptError, CheckpointMissingError, ShapeMismatchError } from "../errors.js";
import { SafetensorsFile, type SafetensorsEntry } from "./safetensors.js";

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
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
      throw new CheckpointMissingError(`${dir} is not a directory; pass the folder that holds config.json and *.safetensors`);
    }
    const config = readJson(path.join(dir, "config.json"), "config.json") as HfConfig;
    const indexPath = path.join(dir, "model.safetensors.index.json");
    let shardNames: string[];
    let weightMap: Record<string, string> | undefined;
    if (fs.existsSync(indexPath)) {
      const index = readJson(indexPath, "model.safetensors.index.json") as { weight_map?: Record<string, string> };
      if (!index.weight_map || typeof index.weight_map !== "object") {
        throw new CheckpointCorruptError(`${indexPath} has no weight_map`);
      }
      weightMap = index.weight_map;
      shardNames = [...new Set(Object.values(weightMap))].sort();
    } else {
      shardNames = fs.readdirSync(dir).filter((f) => f.endsWith(".safetensors")).sort();
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
    return new HfCheckpoint(dir, config, files, tensorFiles);
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

  /** Reads a tensor as fp32 after checking its shape. */
  readFloat32(name: string, expectedShape: readonly number[]): Float32Array {
    this.checkShape(name, expectedShape);
    return this.file(name).readFloat32(name);
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
  if (!fs.existsSync(p)) throw new CheckpointMissingError(`${what} is missing: expected ${p}`);
  try {
    return JSON.parse(fs.readFileSync(p, "utf8"));
  } catch (cause) {
    throw new CheckpointCorruptError(`${p} is not valid JSON`, { cause });
  }
}
