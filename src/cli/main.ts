/** The `moe-run` command line (started by cli.ts). Model output goes to stdout; progress, timings and errors to stderr. */
import { Command, CommanderError } from "commander";
import { MoeRunError } from "../errors.js";
import { VERSION } from "../version.js";
import { registerChat } from "./commands/chatCommand.js";
import { registerImport } from "./commands/importCommand.js";
import { registerPerplexity } from "./commands/perplexityCommand.js";
import { registerRun } from "./commands/runCommand.js";
import { registerServe } from "./commands/serveCommand.js";
import { registerSimulate } from "./commands/simulateCommand.js";
import { registerProfile } from "./commands/profileCommand.js";
import { registerPull } from "./commands/pullCommand.js";
import { registerPlan } from "./commands/planCommand.js";
import { registerReport } from "./commands/reportCommand.js";
import { outputFailure, outputSignal, StdoutClosed } from "./output.js";
import { describeUnexpected } from "./errorText.js";

/** Runs the command line in process.argv; resolves to the exit status. */
export async function main(): Promise<number> {
  const program = new Command();
  program.name("moe-run").description("run Mixture-of-Experts language models in less memory than the model").version(VERSION);
  program.exitOverride();
  registerPull(program);
  registerImport(program);
  registerRun(program);
  registerChat(program);
  registerServe(program);
  registerPerplexity(program);
  registerSimulate(program);
  registerProfile(program);
  registerPlan(program);
  registerReport(program);

  let status = 0;
  try {
    await program.parseAsync(process.argv);
  } catch (err) {
    status = report(err);
  }
  // A write that failed after the command's last line surfaces as an 'error' event a tick later.
  await new Promise((r) => setImmediate(r));
  const failure = outputFailure();
  if (failure && status === 0) {
    process.stderr.write(`moe-run: error: ${failure.message}\n`);
    status = 1;
  }
  return status;
}

function report(err: unknown): number {
  if (err instanceof CommanderError) return err.exitCode;
  // The reader of stdout went away (`| head`): end quietly.
  if (err instanceof StdoutClosed || (outputSignal.aborted && outputSignal.reason instanceof StdoutClosed && isAbort(err))) return 0;
  if (err instanceof MoeRunError) {
    process.stderr.write(`moe-run: error: ${oneLine(err.message)}\n`);
    return 1;
  }
  if (isAbort(err)) {
    process.stderr.write("moe-run: interrupted\n");
    return 130;
  }
  process.stderr.write(`moe-run: error: ${describeUnexpected(err)}\n`);
  if (process.env.MOE_RUN_DEBUG) process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  return 1;
}

function isAbort(err: unknown): boolean {
  return (err instanceof DOMException || err instanceof Error) && err.name === "AbortError";
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, "; ");
}
