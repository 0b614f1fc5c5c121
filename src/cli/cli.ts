#!/usr/bin/env node
/**
 * The `moe-run` executable. Only Node's own modules are loaded before the command line is looked
 * at: a large one is handed to a fresh process first (relaunch.ts), because onnxruntime crashes
 * in a process whose argv is large.
 */
import { relaunchIfArgvLarge } from "./relaunch.js";
import { installOutputGuards } from "./output.js";

installOutputGuards();
const relaunched = await relaunchIfArgvLarge();
if (relaunched !== undefined) {
  process.exitCode = relaunched;
} else {
  const { main } = await import("./main.js");
  process.exitCode = await main();
}
