#!/usr/bin/env node
/** The `moe-run` command line. Model output goes to stdout; progress, timings and errors to stderr. */
import { Command, CommanderError } from "commander";
import { MoeRunError } from "../errors.js";
import { VERSION } from "../version.js";
import { registerImport } from "./commands/importCommand.js";
import { registerPerplexity } from "./commands/perplexityCommand.js";
import { registerRun } from "./commands/runCommand.js";
import { registerSimulate } from "./commands/simulateCommand.js";
import { registerProfile } from "./commands/profileCommand.js";
import { registerPlan } from "./commands/planCommand.js";
import { registerReport } from "./commands/reportCommand.js";

const program = new Command();
program.name("moe-run").description("run Mixture-of-Experts language models in less memory than the model").version(VERSION);
program.exitOverride();
registerImport(program);
registerRun(program);
registerPerplexity(program);
registerSimulate(program);
registerProfile(program);
registerPlan(program);
registerReport(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.exitCode;
  } else if (err instanceof MoeRunError) {
    process.stderr.write(`moe-run: error: ${err.message}\n`);
    process.exitCode = 1;
  } else if (err instanceof DOMException && err.name === "AbortError") {
    process.stderr.write("moe-run: interrupted\n");
    process.exitCode = 130;
  } else {
    process.stderr.write(`moe-run: unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  }
}
