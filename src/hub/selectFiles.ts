/**
 * Which files of a hub repository a moe-run import needs: the configuration and tokenizer files,
 * and the safetensors weights (the shards the index lists, when there is one). Other weight
 * formats (.bin, .pt, .gguf, ONNX) and everything in subfolders are left on the hub.
 */
import { CheckpointMissingError, TokenizerMissingError } from "../errors.js";
import type { RemoteFile } from "./HubClient.js";

export const INDEX_FILE = "model.safetensors.index.json";
const REQUIRED = ["config.json", "tokenizer.json"];
const OPTIONAL = ["tokenizer_config.json", "generation_config.json", "special_tokens_map.json", INDEX_FILE];

/** The small files: required ones checked to be there (with a message that says what is missing). */
export function selectMetadataFiles(repoId: string, files: readonly RemoteFile[]): RemoteFile[] {
  const byName = new Map(files.map((f) => [f.path, f]));
  if (!byName.has("config.json")) {
    throw new CheckpointMissingError(`${repoId} has no config.json at its top level; it is not a transformers model repository moe-run can import`);
  }
  if (!byName.has("tokenizer.json")) {
    throw new TokenizerMissingError(`${repoId} has no tokenizer.json (the fast-tokenizer file moe-run needs); it cannot be imported`);
  }
  return [...REQUIRED, ...OPTIONAL].flatMap((n) => (byName.has(n) ? [byName.get(n)!] : []));
}

/**
 * The weights: the shards `weightMap` (the index's weight_map) names, or every top-level
 * *.safetensors file where there is no index. No safetensors at all is refused, naming what is there.
 */
export function selectWeightFiles(repoId: string, files: readonly RemoteFile[], weightMap: Record<string, unknown> | undefined): RemoteFile[] {
  const byName = new Map(files.map((f) => [f.path, f]));
  if (weightMap) {
    const shards = [...new Set(Object.values(weightMap))];
    const picked: RemoteFile[] = [];
    for (const shard of shards) {
      if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\") || !shard.endsWith(".safetensors")) {
        throw new CheckpointMissingError(`${repoId}'s ${INDEX_FILE} names the shard ${JSON.stringify(shard)}, which is not a .safetensors file at the top of the repository`);
      }
      const f = byName.get(shard);
      if (!f) throw new CheckpointMissingError(`${repoId}'s ${INDEX_FILE} lists the shard ${shard}, which the repository does not have`);
      picked.push(f);
    }
    if (picked.length === 0) throw new CheckpointMissingError(`${repoId}'s ${INDEX_FILE} lists no shards`);
    return picked.sort((a, b) => a.path.localeCompare(b.path));
  }
  const weights = files.filter((f) => !f.path.includes("/") && f.path.endsWith(".safetensors"));
  if (weights.length === 0) {
    const others = files.filter((f) => /\.(bin|pt|pth|gguf|onnx|h5|msgpack|ckpt)$/.test(f.path)).map((f) => f.path);
    throw new CheckpointMissingError(
      `${repoId} has no *.safetensors weights (moe-run imports safetensors checkpoints)` +
        (others.length ? `; it has ${others.slice(0, 3).join(", ")}${others.length > 3 ? ", ..." : ""}: look for a safetensors version of the model` : "")
    );
  }
  return weights.sort((a, b) => a.path.localeCompare(b.path));
}
