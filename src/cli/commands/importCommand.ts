import type { Command } from "commander";
import { importModel } from "../../importer/importModel.js";
import { EXPERT_ENCODINGS, parseEncoding, type ExpertEncoding } from "../../store/expertEncoding.js";

export function registerImport(program: Command): void {
  program
    .command("import")
    .description("import a Hugging Face MoE checkpoint (config.json, *.safetensors, tokenizer.json) into a moe-run model directory")
    .argument("<hf-dir>", "folder of the Hugging Face checkpoint")
    .argument("<model-dir>", "moe-run model directory to create")
    .option("--force", "replace <model-dir> if it is a moe-run model directory (never anything else)", false)
    .option("--no-progress", "no progress bar")
    .option("--experts <precision>", `expert storage precision: ${EXPERT_ENCODINGS.join(", ")}`, parseEncoding, "f32")
    .action(async (hfDir: string, modelDir: string, opts: { force: boolean; progress: boolean; experts: ExpertEncoding }) => {
      const result = await importModel(hfDir, modelDir, { force: opts.force, progress: opts.progress, experts: opts.experts });
      const d = result.manifest.dims;
      process.stderr.write(
        `imported ${d.modelType}: ${d.numLayers} layers, ${d.numExperts} experts x ${d.expertFfn} (top-${d.topK}, ${opts.experts}), ` +
          `hidden ${d.hiddenSize}, vocab ${d.vocabSize} -> ${result.modelDir} in ${result.seconds.toFixed(1)} s\n`
      );
    });
}
