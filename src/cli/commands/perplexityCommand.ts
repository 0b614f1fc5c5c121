import type { Command } from "commander";
import { addModelOptions, loadModelForCli, loadOptions, reportStats, type ModelCliOptions } from "../modelOptions.js";
import { out } from "../output.js";
import { readPromptFile } from "../promptInput.js";
import { parseIntOption } from "../parse.js";

export function registerPerplexity(program: Command): void {
  const cmd = program
    .command("perplexity")
    .description("perplexity of a text file (windows of --window predictions, each from an empty cache)")
    .argument("<model-dir>", "a model directory made by `moe-run import`")
    .argument("<file>", "UTF-8 text file (- = stdin)")
    .option("--window <n>", "predictions per window (default: min(256, context))", parseIntOption("window", 1))
    .option("--json", "print the result as JSON", false);
  addModelOptions(cmd).action(async (modelDir: string, file: string, opts: ModelCliOptions & { window?: number; json: boolean }) => {
      const text = await readPromptFile(file, "text file");
      const model = await loadModelForCli(modelDir, loadOptions(opts));
      try {
        const t0 = performance.now();
        const r = await model.perplexity(text, { window: opts.window });
        const secs = (performance.now() - t0) / 1000;
        if (opts.json) out(JSON.stringify({ ...r, seconds: secs }) + "\n");
        else out(`perplexity ${r.perplexity.toFixed(4)} over ${r.tokens} tokens (mean nll ${(r.nll / r.tokens).toFixed(4)} nats, ${(r.tokens / secs).toFixed(0)} tok/s)\n`);
        reportStats(model, opts, { perplexity: r });
      } finally {
        await model.dispose();
      }
    });
}
