/**
 * The tensor list a GGUF exporter builds from a Hugging Face checkpoint: each tensor's GGUF name,
 * dims and type, with its data read lazily (when the writer reaches it) so a model never has to be
 * in memory at once. Shared by ggufExport.ts and the per-architecture exporters.
 */
import { CheckpointCorruptError } from "../errors.js";
import { encodeGgml, type GgmlTypeName, type GgufTensorSpec } from "./gguf.js";
import type { HfCheckpoint } from "./HfCheckpoint.js";

export interface GgufTensorList {
  /** GGUF name -> the type it is written in. */
  types: Map<string, GgmlTypeName>;
  tensors: GgufTensorSpec[];
  /** A reader of HF tensor `name` as fp32, after checking it exists with `shape`. */
  read(name: string, shape: number[]): () => Float32Array;
  /** An fp32 tensor (norms, biases, routers). */
  f32(name: string, dims: number[], get: () => Float32Array): void;
  /** A matrix or a stack of them: `parts` are row-major blocks written one after another, in `type` (default: typeOf). */
  matrix(name: string, dims: number[], parts: (() => Float32Array)[], type?: GgmlTypeName): void;
}

export function ggufTensorList(ckpt: HfCheckpoint, hfDir: string, typeOf: (name: string, dims: number[]) => GgmlTypeName): GgufTensorList {
  const types = new Map<string, GgmlTypeName>();
  const tensors: GgufTensorSpec[] = [];
  return {
    types,
    tensors,
    read(name, shape) {
      if (!ckpt.has(name)) throw new CheckpointCorruptError(`the checkpoint in ${hfDir} has no tensor "${name}"`);
      ckpt.checkShape(name, shape);
      return () => ckpt.readFloat32(name, shape);
    },
    f32(name, dims, get) {
      types.set(name, "F32");
      tensors.push({ name, dims, type: "F32", data: () => [encodeGgml(get(), "F32")] });
    },
    matrix(name, dims, parts, type = typeOf(name, dims)) {
      types.set(name, type);
      tensors.push({ name, dims, type, data: function* () { for (const p of parts) yield encodeGgml(p(), type); } });
    },
  };
}
