import * as fs from "node:fs";
import type { Command } from "commander";
import { MoeRunError } from "../../errors.js";
import { isGgufPath } from "../../formats/ggufReader.js";
import { HubError } from "../../hub/HubError.js";
import { looksLikeRepoId } from "../../hub/repoId.js";
import { importModel } from "../../importer/importModel.js";
import { ALL_EXPERT_ENCODINGS, parseEncoding, type ExpertEncoding } from "../../store/expertEncoding.js";
import { describeExpertEncodings } from "../../store/recordEncodings.js";
import { expertShape } from "../../model/manifest.js";
import { pullWithInterrupt } from "./pullCommand.js";

export function registerImport(program: Command): void {
  program
    .command("import")
    .description(
      "import a MoE checkpoint into a moe-run model directory: a Hugging Face folder (config.json, *.safetensors, tokenizer.json) " +
        "or a GGUF file (llama.cpp's format; for a split model, its -00001-of-0000N.gguf shard)"
    )
    .argument(
      "<hf-dir>",
      "folder of the Hugging Face checkpoint, a .gguf file (architectures llama with experts, qwen2moe, qwen3moe, olmoe, gpt-oss, glm4moe, granitemoe, phimoe, deepseek2), " +
        "or a hub repository id org/name[@revision] (pulled into the hub cache first)"
    )
    .argument("<model-dir>", "moe-run model directory to create")
    .option("--force", "replace <model-dir> if it is a moe-run model directory (never anything else)", false)
    .option("--no-progress", "no progress bar")
    .option(
      "--experts <precision>",
      `expert storage precision: ${ALL_EXPERT_ENCODINGS.join(", ")} (default: the checkpoint's own where moe-run stores it as is, e.g. gpt-oss's mxfp4 or a GGUF's Q8_0/Q4_1/Q5_0/Q2_K..Q6_K blocks; else f32)`,
      parseEncoding
    )
    .action(async (hfDir: string, modelDir: string, opts: { force: boolean; progress: boolean; experts?: ExpertEncoding }) => {
      const source = await resolveSource(hfDir, opts.progress);
      const result = await importModel(source, modelDir, { force: opts.force, progress: opts.progress, experts: opts.experts });
      const d = result.manifest.dims;
      process.stderr.write(
        `imported ${d.modelType}: ${d.numLayers} layers, ${d.numExperts} experts x ${d.expertFfn} (top-${d.topK}, ${describeExpertEncodings(expertShape(result.manifest))}), ` +
          `hidden ${d.hiddenSize}, vocab ${d.vocabSize} -> ${result.modelDir} in ${result.seconds.toFixed(1)} s\n`
      );
    });
}

/**
 * The checkpoint folder: `hfDir` itself when it exists; a hub repository id (org/name[@rev]) that
 * is not a folder here is pulled (or found in the hub cache) and its snapshot folder imported.
 */
async function resolveSource(hfDir: string, progress: boolean): Promise<string> {
  // A .gguf path is a file, never a repository id (a missing one is reported as missing).
  if (fs.existsSync(hfDir) || isGgufPath(hfDir) || !looksLikeRepoId(hfDir)) return hfDir;
  try {
    return (await pullWithInterrupt(hfDir, { progress })).snapshotDir;
  } catch (err) {
    // The user may have meant a folder: say both readings.
    if (err instanceof HubError) {
      throw new MoeRunError(err.code, `there is no folder ${hfDir} here, and as a Hugging Face repository id: ${err.message}`, { cause: err });
    }
    throw err;
  }
}
