/**
 * Runs native kernel cases in a process of its own, so that the parent can set MOE_RUN_KERNEL_ISA
 * (read once per process) per kernel level. Used by test/kernels.test.ts.
 *
 *   node test/kernel-isa-child.mjs <dir>
 * reads <dir>/cases.json ([{ kind: "expert"|"matmul", enc, H, F | rows, cols, T, threads,
 * w: [offset, bytes], x: [offset, bytes] }]) and <dir>/in.bin, writes <dir>/out.bin (the outputs,
 * float32, one after the other) and prints { isa, outputs: [[offset, floats]] } as JSON.
 * With <dir> = "--errors" it instead calls the kernels and prints the error codes they throw.
 */
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const addon = createRequire(import.meta.url)(path.join(root, "native-bindings", "build", "Release", "moe_native.node"));

function codeOf(fn) {
  try {
    fn();
    return null;
  } catch (err) {
    return { code: err.code ?? null, message: err.message };
  }
}

if (process.argv[2] === "--errors") {
  const H = 32;
  const F = 32;
  const record = new Uint8Array(3 * H * F * 4);
  const forward = codeOf(() => addon.expertForward(0, record, H, F, new Float32Array(H), 1, new Float32Array(H), 1));
  const isa = codeOf(() => addon.kernelIsa());
  // The rest of the addon still works.
  const dst = new Uint8Array(H * 4);
  addon.encodeMatrix(0, new Float32Array(H).fill(1), 1, H, dst);
  process.stdout.write(JSON.stringify({ forward, isa, isas: addon.kernelIsas(), encodeOk: dst[3] === 0x3f }) + "\n");
  process.exit(0);
}

const dir = process.argv[2];
const cases = JSON.parse(fs.readFileSync(path.join(dir, "cases.json"), "utf8"));
const input = fs.readFileSync(path.join(dir, "in.bin"));
const view = ([offset, bytes]) => new Uint8Array(input.buffer, input.byteOffset + offset, bytes);
const floats = (range) => {
  const u8 = view(range);
  return new Float32Array(u8.buffer.slice(u8.byteOffset, u8.byteOffset + u8.byteLength));
};
const outputs = [];
const chunks = [];
let at = 0;
for (const c of cases) {
  const x = floats(c.x);
  const w = view(c.w);
  let y;
  if (c.kind === "expert") {
    y = new Float32Array(c.T * c.H);
    addon.expertForward(c.enc, w, c.H, c.F, x, c.T, y, c.threads);
  } else {
    y = new Float32Array(c.T * c.rows);
    addon.matmul(c.enc, w, c.rows, c.cols, x, c.T, y, c.threads);
  }
  outputs.push([at, y.length]);
  chunks.push(Buffer.from(y.buffer));
  at += y.byteLength;
}
fs.writeFileSync(path.join(dir, "out.bin"), Buffer.concat(chunks));
process.stdout.write(JSON.stringify({ isa: addon.kernelIsa(), outputs }) + "\n");
