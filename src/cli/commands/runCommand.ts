import * as fs from "node:fs";
import type { Command } from "commander";
import { InvalidOptionError } from "../../errors.js";
import { loadModel } from "../../model/MoeModel.js";
import { addModelOptions, loadOptions, reportStats, type ModelCliOptions } from "../modelOptions.js";
import { parseFloatOption, parseIntOption } from "../parse.js";

interface RunOptions extends ModelCliOptions {
  prompt?: string;
  promptFile?: string;
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed?: number;
  chat: boolean;
}

export function registerRun(program: Command): void {
  const cmd = program
    .command("run")
    .description("generate text; the text streams to stdout, timings go to stderr")
    .argument("<model-dir>", "a model directory made by `moe-run import`")
    .option("-p, --prompt <text>", "prompt text")
    .option("--prompt-file <file>", "read the prompt from a file")
    .option("-n, --max-tokens <n>", "most tokens to generate", parseIntOption("max-tokens"), 128)
    .option("-t, --temperature <t>", "sampling temperature; 0 = greedy", parseFloatOption("temperature", 0), 0)
    .option("--top-k <k>", "sample from the k most likely tokens; 0 = all", parseIntOption("top-k"), 0)
    .option("--top-p <p>", "nucleus sampling probability mass", parseFloatOption("top-p", 0, 1), 1)
    .option("--seed <s>", "sampling seed", parseIntOption("seed"))
    .option("--chat", "apply the model's chat template to the prompt", false);
  addModelOptions(cmd).action(async (modelDir: string, opts: RunOptions) => {
      const prompt = opts.promptFile !== undefined ? fs.readFileSync(opts.promptFile, "utf8") : opts.prompt;
      if (prompt === undefined) throw new InvalidOptionError("give a prompt with --prompt <text> or --prompt-file <file>");
      const model = await loadModel(modelDir, loadOptions(opts));
      const controller = new AbortController();
      const onSigint = () => controller.abort(new DOMException("interrupted", "AbortError"));
      process.once("SIGINT", onSigint);
      let generation: unknown;
      try {
        const run = model.generate(prompt, {
          maxTokens: opts.maxTokens,
          temperature: opts.temperature,
          topK: opts.topK,
          topP: opts.topP,
          seed: opts.seed,
          chat: opts.chat,
          signal: controller.signal,
          onStats: (s) => {
            generation = s;
            process.stderr.write(
              `\n[moe-run] prompt ${s.promptTokens} tok, prefill ${s.prefillTokensPerSecond.toFixed(1)} tok/s; ` +
                `generated ${s.generatedTokens} tok, decode ${s.decodeTokensPerSecond.toFixed(1)} tok/s; stop: ${s.finishReason}\n`
            );
          },
        });
        for await (const piece of run) process.stdout.write(piece);
        process.stdout.write("\n");
        reportStats(model, opts, { generation });
      } finally {
        process.off("SIGINT", onSigint);
        await model.dispose();
      }
    });
}
