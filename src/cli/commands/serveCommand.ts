/**
 * `moe-run serve`: the OpenAI-compatible HTTP server (server/OpenAiServer.ts) for one model, whose
 * compute runs on a worker thread so that the HTTP thread keeps answering (/health, new requests,
 * disconnects) while it generates. SIGINT or SIGTERM closes it and exits 0.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import type { Command } from "commander";
import type { WorkerModel } from "../../engine/WorkerModel.js";
import { loadModel } from "../../model/loadModel.js";
import { InvalidOptionError, MoeRunError } from "../../errors.js";
import { OpenAiServer } from "../../server/OpenAiServer.js";
import { formatBytes, parseByteSize } from "../../util/bytes.js";
import { addModelOptions, loadOptions, type ModelCliOptions } from "../modelOptions.js";
import { parseIntOption } from "../parse.js";

interface ServeOptions extends ModelCliOptions {
  host: string;
  port: number;
  apiKey?: string;
  maxQueue: number;
  maxBody: number;
  modelId?: string;
  quiet: boolean;
}

export function registerServe(program: Command): void {
  const cmd = program
    .command("serve")
    .description("serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models, /v1/stats, /health)")
    .argument("<model-dir>", "a model directory made by `moe-run import`")
    .option("--host <address>", "address to listen on (0.0.0.0 = every interface)", "127.0.0.1")
    .option("--port <n>", "port to listen on (0 = any free port)", parsePort, 8080)
    .option("--api-key <key>", "require 'Authorization: Bearer <key>' on /v1/* (default: $MOE_RUN_API_KEY, else none)")
    .option("--max-queue <n>", "requests that may wait for the model; more get 429", parseIntOption("max-queue", 0), 16)
    .option("--max-body <size>", "largest request body", (v) => parseBodySize(v), 1 << 20)
    .option("--model-id <name>", "the model's name in the API (default: the model directory's name)")
    .option("-q, --quiet", "no line per request on stderr", false);
  addModelOptions(cmd).action(async (modelDir: string, opts: ServeOptions) => {
    const apiKey = opts.apiKey ?? (process.env.MOE_RUN_API_KEY || undefined);
    const modelId = opts.modelId ?? path.basename(path.resolve(modelDir));
    const model = await loadWorkerForCli(modelDir, opts);
    let server: OpenAiServer | undefined;
    try {
      const log = (line: string) => process.stderr.write(`[moe-run] ${line}\n`);
      server = await OpenAiServer.start(model, {
        modelId,
        host: opts.host,
        port: opts.port,
        apiKey,
        maxQueue: opts.maxQueue,
        maxBodyBytes: opts.maxBody,
        log: opts.quiet ? undefined : log,
      });
      process.stderr.write(
        `moe-run serve: ${modelId} (context ${model.contextSize} tokens) at ${server.url}/v1` +
          `${apiKey ? " (API key required)" : ""}; up to ${opts.maxQueue} requests wait; Ctrl-C stops\n`
      );
      const signal = await new Promise<NodeJS.Signals>((resolve) => {
        process.once("SIGINT", () => resolve("SIGINT"));
        process.once("SIGTERM", () => resolve("SIGTERM"));
      });
      process.stderr.write(`moe-run serve: ${signal}: closing (requests in progress are stopped)\n`);
      await server.close();
      if (opts.stats || opts.statsJson) {
        const r = await model.cacheStats();
        if (opts.statsJson) fs.writeFileSync(opts.statsJson, JSON.stringify(r, null, 2) + "\n");
        if (opts.stats) process.stderr.write(`expert cache (${r.cache.policy}): ${r.cache.hits} hits, ${r.cache.misses} misses, hit rate ${(100 * r.cache.hitRate).toFixed(1)}%\n`);
      }
    } finally {
      await server?.close();
      await model.dispose();
    }
  });
}

/**
 * loadModel for the server: compute on a worker thread (the default), so the HTTP loop answers
 * /health, queues and disconnects while a request generates. An error that is not moe-run's own
 * names the model directory and what to do.
 */
async function loadWorkerForCli(modelDir: string, opts: ModelCliOptions): Promise<WorkerModel> {
  try {
    return await loadModel(modelDir, loadOptions(opts));
  } catch (err) {
    if (err instanceof MoeRunError) throw err;
    const message = (err instanceof Error ? err.message : String(err)).split("\n")[0]!.slice(0, 300);
    throw new MoeRunError("MODEL_DIR_INVALID", `cannot load the model in ${modelDir}: ${message}; it may be damaged: check it with --verify, or re-import it`, { cause: err });
  }
}

function parsePort(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidOptionError(`--port must be a whole number from 0 to 65535, got "${value}"`);
  return n;
}

function parseBodySize(value: string): number {
  const size = parseByteSize(value, "max-body");
  if (typeof size !== "number" || size < 1024) throw new InvalidOptionError(`--max-body must be a size of at least 1KiB, like 1MiB, got "${value}"`);
  if (size > 1 << 30) throw new InvalidOptionError(`--max-body ${formatBytes(size)} is over 1 GiB; requests are JSON text`);
  return size;
}
