import type { Command } from "commander";
import { InvalidOptionError } from "../../errors.js";
import type { GenerationStats } from "../../model/MoeModel.js";
import { addModelOptions, loadModelForCli, loadOptions, reportStats, type ModelCliOptions } from "../modelOptions.js";
import { out, outputSignal, StdoutClosed } from "../output.js";
import { readPromptFile } from "../promptInput.js";
import { addSamplingOptions, samplingFrom, type SamplingCliOptions } from "../samplingOptions.js";

interface RunOptions extends ModelCliOptions, SamplingCliOptions {
  prompt?: string;
  promptFile?: string;
  chat: boolean;
}

export function registerRun(program: Command): void {
  const cmd = program
    .command("run")
    .description("generate text; the text streams to stdout, timings go to stderr")
    .argument("<model-dir>", "a model directory made by `moe-run import`")
    .option("-p, --prompt <text>", "prompt text")
    .option("--prompt-file <file>", "read the prompt from a file (- = stdin)");
  addSamplingOptions(cmd, { maxTokens: 128 }).option("--chat", "apply the model's chat template to the prompt", false);
  addModelOptions(cmd).action(async (modelDir: string, opts: RunOptions) => {
      const prompt = opts.promptFile !== undefined ? await readPromptFile(opts.promptFile) : opts.prompt;
      if (prompt === undefined) throw new InvalidOptionError("give a prompt with --prompt <text> or --prompt-file <file> (- = stdin)");
      const model = await loadModelForCli(modelDir, loadOptions(opts));
      const controller = new AbortController();
      // One Ctrl-C stops generation cleanly; a repeated one (a terminal's Ctrl-C also reaches a
      // relaunching parent, which passes it on) changes nothing.
      const onSigint = () => {
        if (!controller.signal.aborted) controller.abort(new DOMException("interrupted", "AbortError"));
      };
      process.on("SIGINT", onSigint);
      let generation: GenerationStats | undefined;
      // The timings line, once generation ends (also on Ctrl-C), not after an error or a closed stdout.
      const printStats = () => {
        const s = generation;
        if (!s || outputSignal.aborted) return;
        process.stderr.write(
          `\n[moe-run] prompt ${s.promptTokens} tok, prefill ${s.prefillTokensPerSecond.toFixed(1)} tok/s; ` +
            `generated ${s.generatedTokens} tok, decode ${s.decodeTokensPerSecond.toFixed(1)} tok/s; stop: ${s.finishReason}\n`
        );
      };
      try {
        const run = model.generate(prompt, {
          ...samplingFrom(opts),
          chat: opts.chat,
          // Also stop when stdout's reader has gone (`| head`) or stdout cannot be written.
          signal: AbortSignal.any([controller.signal, outputSignal]),
          onStats: (s) => {
            generation = s;
          },
        });
        try {
          for await (const piece of run) out(piece);
        } catch (err) {
          // Generation stopped because of stdout: its reader went away (`| head`): stop quietly;
          // it cannot be written (`> /dev/full`): report that, not the abort.
          if (controller.signal.aborted) printStats(); // Ctrl-C: the run so far
          if (!outputSignal.aborted || controller.signal.aborted) throw err;
          if (!(outputSignal.reason instanceof StdoutClosed)) throw outputSignal.reason;
        }
        out("\n");
        printStats();
        reportStats(model, opts, { generation });
      } finally {
        await model.dispose();
        process.off("SIGINT", onSigint);
      }
    });
}
