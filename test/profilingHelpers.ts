/** Shared by the profiling tests (profile, plan, report): the CLI they run must be built. */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { expect } from "vitest";
import { ROOT } from "./helpers.js";

/** The CLI runs from dist/: rebuild when it is older than the sources these tests exercise. */
export function ensureBuilt(): void {
  const built = path.join(ROOT, "dist", "profiling", "reportHtml.js");
  const dirs = ["src/profiling", "src/cli/commands", "src/predict"].map((d) => path.join(ROOT, d));
  const newest = Math.max(...dirs.flatMap((d) => fs.readdirSync(d).map((f) => fs.statSync(path.join(d, f)).mtimeMs)));
  if (!fs.existsSync(built) || fs.statSync(built).mtimeMs < newest) {
    spawnSync(process.execPath, [path.join(ROOT, "node_modules", "typescript", "bin", "tsc"), "-p", path.join(ROOT, "tsconfig.json")], { stdio: "ignore" });
  }
  expect(fs.statSync(built).mtimeMs, "dist/ is older than src/: `npx tsc -p tsconfig.json` failed").toBeGreaterThanOrEqual(newest);
}
