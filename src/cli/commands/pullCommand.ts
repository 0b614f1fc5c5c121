/**
 * `moe-run pull <repo-id>`: downloads a model from the Hugging Face hub into the hub cache and
 * prints the snapshot directory on stdout (progress and notes go to stderr). Ctrl-C stops it;
 * the next pull resumes where it stopped.
 */
import type { Command } from "commander";
import { pullModel, type PullOptions, type PullResult } from "../../hub/pullModel.js";
import { out } from "../output.js";
import { parseIntOption } from "../parse.js";

interface PullCliOptions {
  revision?: string;
  cacheDir?: string;
  progress: boolean;
  concurrency: number;
}

/** pullModel with Ctrl-C wired to stop it cleanly (partial files are kept for resuming). */
export async function pullWithInterrupt(repo: string, options: PullOptions): Promise<PullResult> {
  const controller = new AbortController();
  const onSigint = () => {
    if (!controller.signal.aborted) controller.abort(new DOMException("interrupted", "AbortError"));
  };
  process.on("SIGINT", onSigint);
  try {
    return await pullModel(repo, { ...options, signal: controller.signal });
  } finally {
    process.off("SIGINT", onSigint);
  }
}

export function registerPull(program: Command): void {
  program
    .command("pull")
    .description("download a model (config, tokenizer, safetensors) from the Hugging Face hub into its cache; prints the snapshot folder")
    .argument("<repo-id>", "org/name, optionally org/name@revision")
    .option("--revision <rev>", "branch, tag or commit (default main)")
    .option("--cache-dir <dir>", "hub cache (default $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)")
    .option("--concurrency <n>", "files downloaded at once", parseIntOption("concurrency", 1), 4)
    .option("--no-progress", "no progress bar")
    .addHelpText(
      "after",
      "\nEnvironment: HF_TOKEN (private and gated models), HF_ENDPOINT (a mirror), HF_HUB_CACHE / HF_HOME (where files go), HF_HUB_OFFLINE=1 (cache only)."
    )
    .action(async (repo: string, opts: PullCliOptions) => {
      const result = await pullWithInterrupt(repo, {
        revision: opts.revision,
        cacheDir: opts.cacheDir,
        progress: opts.progress,
        concurrency: opts.concurrency,
      });
      out(`${result.snapshotDir}\n`);
    });
}
