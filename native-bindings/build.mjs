#!/usr/bin/env node
// Builds the native kernels (npm runs this on install). A machine without a C++ toolchain still
// gets a working moe-run: the runtime falls back to onnxruntime/JS kernels and says so.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const candidates = [
  process.env.npm_config_node_gyp,
  path.join(path.dirname(process.execPath), "..", "lib", "node_modules", "npm", "node_modules", "node-gyp", "bin", "node-gyp.js"),
].filter(Boolean);
const gyp = candidates.find((p) => fs.existsSync(p));
if (!gyp) {
  console.warn("moe-run: node-gyp not found; native kernels not built (moe-run will use its fallback kernels)");
  process.exit(0);
}
const args = [gyp, "rebuild", "--loglevel=warn"];
if (!process.env.npm_config_nodedir && fs.existsSync("/usr/include/node/node_api.h")) args.push("--nodedir=/usr");
const r = spawnSync(process.execPath, args, { cwd: here, stdio: ["ignore", "ignore", "inherit"] });
if (r.status !== 0) {
  console.warn("moe-run: building native kernels failed; moe-run will use its fallback kernels (slower; host budget not enforceable)");
} else {
  console.warn("moe-run: native kernels built");
}
