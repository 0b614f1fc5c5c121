/**
 * Every expert kernel against the JS reference on the same inputs (llama.cpp's test-backend-ops
 * idea), for every storage encoding; the encodings' error against fp32; MXFP4's format and its
 * lossless import from gpt-oss tensors; expert activations (gpt-oss's clamped SwiGLU) and biases.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { activate, gptOssActivation, nativeExpertSpec, SILU, type ExpertActivation } from "../src/kernels/expertActivation.js";
import { createExpertKernel, type ExpertKernelName } from "../src/kernels/expertKernels.js";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import {
  BLOCK,
  EXPERT_ENCODINGS as ALL_ENCODINGS,
  MXFP4_X2,
  isKQuant,
  decodeMatrix,
  encodeExpertRecord,
  encodeMatrix,
  encodeMatrixJs,
  encodingCode,
  expertRecordLayout,
  matrixBytes,
  readExpertBiases,
  recordBytes,
  type ExpertEncoding,
} from "../src/store/expertEncoding.js";
import { ExpertStore } from "../src/store/ExpertStore.js";
import { ROOT, matmulRef, maxRelErr, rand, tmpDir } from "./helpers.js";

/**
 * The encodings these suites run at their sizes (H = 96, not whole 256-value super-blocks): the
 * k-quants (q4_k, q6_k) are checked at sizes that fit them in test/expert-formats.test.ts.
 */
const EXPERT_ENCODINGS = ALL_ENCODINGS.filter((e: ExpertEncoding) => !isKQuant(e));

const H = 96;
const F = 160;
/** Native int8/int4 vs fp32 math on the same weights: what quantizing the activations (Q8_0) costs. */
const QUANT_ACT_BOUND = 2e-2;

const weights = { gate: rand(F * H, 1, 0.2), up: rand(F * H, 2, 0.2), down: rand(H * F, 3, 0.15) };

async function runKernel(name: ExpertKernelName, enc: ExpertEncoding, tokens: number, threads = 2): Promise<Float32Array> {
  const kernel = await createExpertKernel(name, { encoding: enc, hiddenSize: H, expertFfn: F, threads });
  try {
    const record = ExpertStore.pack({ hiddenSize: H, expertFfn: F, encoding: enc }, weights);
    const resident = await kernel.prepare(record, 0);
    const out = new Float32Array(tokens * H);
    await kernel.forward(resident, rand(tokens * H, 9, 1), tokens, out, 0);
    kernel.free(resident);
    return out;
  } finally {
    await kernel.dispose();
  }
}

it("the native kernels are built on this machine", () => {
  expect(loadNativeAddon().reason).toBe("loaded");
});

describe.each(EXPERT_ENCODINGS)("expert kernels, %s weights", (enc) => {
  for (const tokens of [1, 3, 17]) {
    it(`native and onnx match the JS reference (${tokens} tokens)`, async () => {
      const ref = await runKernel("js", enc, tokens);
      // int8/int4: the native kernels quantize the activations too (integer dot products; see the
      // kernel-level tests below for their exact check), which costs about 1% here.
      const nativeBound = quantized(enc) ? QUANT_ACT_BOUND : 1e-5;
      expect(maxRelErr(await runKernel("native", enc, tokens), ref)).toBeLessThan(nativeBound);
      expect(maxRelErr(await runKernel("native", enc, tokens, 1), ref)).toBeLessThan(nativeBound);
      expect(maxRelErr(await runKernel("onnx", enc, tokens), ref)).toBeLessThan(1e-5);
    });
  }

  it("encoding error against fp32 is what the precision allows", async () => {
    const exact = await runKernel("js", "f32", 4);
    const got = await runKernel("js", enc, 4);
    const bound = { f32: 0, f16: 2e-3, int8: 2e-2, int4: 0.2, mxfp4: 0.3 }[enc];
    expect(maxRelErr(got, exact)).toBeLessThanOrEqual(bound);
    if (enc !== "f32") expect(maxRelErr(got, exact)).toBeGreaterThan(0);
  });
});

it("native and JS encoders produce the same bytes, and decode inverts within a step", () => {
  const m = rand(F * H, 5, 0.3);
  for (const enc of EXPERT_ENCODINGS) {
    const native = encodeMatrix(enc, m, F, H);
    const js = new Uint8Array(matrixBytes(enc, F, H));
    encodeMatrixJs(enc, m, F, H, js);
    expect(Buffer.from(native).equals(Buffer.from(js))).toBe(true);
    const back = decodeMatrix(enc, native, F, H);
    let worst = 0;
    for (let i = 0; i < m.length; i++) worst = Math.max(worst, Math.abs(back[i]! - m[i]!));
    // Half a step; int4 maps the largest magnitude to -8, so +max clamps to 7: a whole step.
    // mxfp4: the block scale s <= amax / 4; steps up to 2s (4 to 6), and 6s to amax < 8s saturates.
    const step = { f32: 0, f16: 0.3 * 2 ** -11, int8: 0.3 / 127 / 2, int4: 0.3 / 8, mxfp4: 0.3 / 2 }[enc];
    expect(worst).toBeLessThanOrEqual(step * 1.0001);
  }
});

// ---- kernel instruction-set levels ----------------------------------------------------------------
// Each level this CPU runs (MOE_RUN_KERNEL_ISA, read once per process, so one child process each)
// against plain JS references: fp64 math on the decoded weights, and for int8/int4 matmuls also an
// emulation of the integer-dot arithmetic (activations quantized like Q8_0, exact integer block
// dot products, scaled), which the kernels must match up to fp32 summation order.

const CHILD = path.join(ROOT, "test", "kernel-isa-child.mjs");

interface IsaCase {
  kind: "expert" | "matmul";
  enc: ExpertEncoding;
  /** expert: H, F; matmul: rows, cols. */
  a: number;
  b: number;
  T: number;
  threads: number;
  w: Uint8Array;
  x: Float32Array;
  /** expert only: nativeExpertSpec (activation, biases); run by SPEC_CHILD. */
  spec?: number[];
}

/**
 * Like test/kernel-isa-child.mjs for expert cases, passing each case's activation/bias spec to
 * expertForward (written to the case folder and run when a case has a spec).
 */
const SPEC_CHILD = `
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
const addon = createRequire(import.meta.url)(${JSON.stringify(path.join(ROOT, "native-bindings", "build", "Release", "moe_native.node"))});
const dir = process.argv[2];
const cases = JSON.parse(fs.readFileSync(path.join(dir, "cases.json"), "utf8"));
const input = fs.readFileSync(path.join(dir, "in.bin"));
const floats = ([o, n]) => new Float32Array(input.buffer.slice(input.byteOffset + o, input.byteOffset + o + n));
const bytes = ([o, n]) => new Uint8Array(input.buffer, input.byteOffset + o, n);
const outputs = [];
const chunks = [];
let at = 0;
for (const c of cases) {
  const y = new Float32Array(c.T * c.H);
  addon.expertForward(c.enc, bytes(c.w), c.H, c.F, floats(c.x), c.T, y, c.threads, c.spec ? Float64Array.from(c.spec) : undefined);
  outputs.push([at, y.length]);
  chunks.push(Buffer.from(y.buffer));
  at += y.byteLength;
}
fs.writeFileSync(path.join(dir, "out.bin"), Buffer.concat(chunks));
process.stdout.write(JSON.stringify({ isa: addon.kernelIsa(), outputs }) + "\\n");
`;

function runIsaCases(isa: string, cases: IsaCase[]): { isa: string; outputs: Float32Array[] } {
  const dir = tmpDir("moe-run-isa-");
  try {
    const parts: Buffer[] = [];
    let at = 0;
    const put = (u8: Uint8Array) => {
      parts.push(Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength));
      at += u8.byteLength;
      return [at - u8.byteLength, u8.byteLength];
    };
    const meta = cases.map((c) => ({
      kind: c.kind,
      enc: encodingCode(c.enc),
      ...(c.kind === "expert" ? { H: c.a, F: c.b } : { rows: c.a, cols: c.b }),
      T: c.T,
      threads: c.threads,
      w: put(c.w),
      x: put(new Uint8Array(c.x.buffer, c.x.byteOffset, c.x.byteLength)),
      spec: c.spec,
    }));
    fs.writeFileSync(path.join(dir, "in.bin"), Buffer.concat(parts));
    fs.writeFileSync(path.join(dir, "cases.json"), JSON.stringify(meta));
    let child = CHILD;
    if (cases.some((c) => c.spec)) {
      child = path.join(dir, "spec-child.mjs");
      fs.writeFileSync(child, SPEC_CHILD);
    }
    const r = spawnSync(process.execPath, [child, dir], { env: { ...process.env, MOE_RUN_KERNEL_ISA: isa }, encoding: "utf8", timeout: 120_000 });
    if (r.status !== 0) throw new Error(`MOE_RUN_KERNEL_ISA=${isa}: child exited with ${r.status ?? r.signal}\n${r.stderr}`);
    const res = JSON.parse(r.stdout) as { isa: string; outputs: [number, number][] };
    const out = fs.readFileSync(path.join(dir, "out.bin"));
    const outputs = res.outputs.map(([o, n]) => new Float32Array(out.buffer.slice(out.byteOffset + o, out.byteOffset + o + 4 * n)));
    return { isa: res.isa, outputs };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The expert in fp64 on the decoded weights; with `bias` the record carries biases. */
function expertRef(enc: ExpertEncoding, record: Uint8Array, Hs: number, Fs: number, x: Float32Array, T: number, act: ExpertActivation = SILU, bias = false): Float64Array {
  const { g, u } = preActivations(enc, record, Hs, Fs, x, T, bias);
  const l = expertRecordLayout(enc, Hs, Fs, bias);
  const h = g.map((v, i) => activate(act, v, u[i]!));
  const y = matmulRef(decodeMatrix(enc, record.subarray(l.down[0], l.down[0] + l.down[1]), Hs, Fs), Hs, Fs, h, T);
  if (bias) {
    const b = readExpertBiases(record, enc, Hs, Fs).down;
    for (let i = 0; i < y.length; i++) y[i] = y[i]! + b[i % Hs]!;
  }
  return y;
}

/** gate x (+ bias) and up x (+ bias), [T, F] each, fp64. */
function preActivations(enc: ExpertEncoding, record: Uint8Array, Hs: number, Fs: number, x: Float32Array, T: number, bias: boolean) {
  const l = expertRecordLayout(enc, Hs, Fs, bias);
  const part = ([at, n]: [number, number]) => record.subarray(at, at + n);
  const g = matmulRef(decodeMatrix(enc, part(l.gate), Fs, Hs), Fs, Hs, x, T);
  const u = matmulRef(decodeMatrix(enc, part(l.up), Fs, Hs), Fs, Hs, x, T);
  if (bias) {
    const b = readExpertBiases(record, enc, Hs, Fs);
    for (let i = 0; i < g.length; i++) {
      g[i] = g[i]! + b.gate[i % Fs]!;
      u[i] = u[i]! + b.up[i % Fs]!;
    }
  }
  return { g, u };
}

function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The kernels' arithmetic for int8/int4/mxfp4 weights, emulated: Q8_0 activations, integer block
 * dots (mxfp4: doubled E2M1 values, scale 2^(e-128)).
 */
function intDotRef(enc: "int8" | "int4" | "mxfp4", w: Uint8Array, rows: number, cols: number, x: Float32Array, T: number): Float64Array {
  const n = rows * cols;
  const view = new DataView(w.buffer, w.byteOffset, w.byteLength);
  const mx = enc === "mxfp4";
  const base = (n / BLOCK) * (mx ? 1 : 4);
  const nib = (i: number) => (i & 1 ? w[base + (i >> 1)]! >> 4 : w[base + (i >> 1)]! & 15);
  const wq = (i: number) => (enc === "int8" ? (w[base + i]! << 24) >> 24 : mx ? MXFP4_X2[nib(i)]! : nib(i) - 8);
  const wScale = (blk: number) => (mx ? 2 ** (w[blk]! - 128) : view.getFloat32(4 * blk, true));
  const y = new Float64Array(T * rows);
  for (let t = 0; t < T; t++) {
    const q = new Int32Array(cols);
    const d = new Float32Array(cols / BLOCK);
    for (let b = 0; b < cols / BLOCK; b++) {
      let amax = 0;
      for (let i = 0; i < BLOCK; i++) amax = Math.max(amax, Math.abs(x[t * cols + b * BLOCK + i]!));
      d[b] = Math.fround(amax / 127);
      const id = d[b] ? Math.fround(1 / d[b]!) : 0;
      for (let i = 0; i < BLOCK; i++) q[b * BLOCK + i] = roundHalfEven(Math.min(127, Math.max(-127, Math.fround(x[t * cols + b * BLOCK + i]! * id))));
    }
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let b = 0; b < cols / BLOCK; b++) {
        let dot = 0;
        for (let i = 0; i < BLOCK; i++) dot += wq(r * cols + b * BLOCK + i) * q[b * BLOCK + i]!;
        s += Math.fround(wScale(r * (cols / BLOCK) + b) * d[b]!) * dot;
      }
      y[t * rows + r] = s;
    }
  }
  return y;
}

/** max |a - ref| / max |ref|. */
function relErr(a: Float32Array, ref: Float64Array): number {
  let err = 0;
  let mag = 0;
  for (let i = 0; i < ref.length; i++) {
    err = Math.max(err, Math.abs(a[i]! - ref[i]!));
    mag = Math.max(mag, Math.abs(ref[i]!));
  }
  return err / (mag || 1);
}

/** Block-quantized encodings: integer-dot native kernels (activations quantized too). */
function quantized(enc: ExpertEncoding): enc is "int8" | "int4" | "mxfp4" {
  return enc === "int8" || enc === "int4" || enc === "mxfp4";
}
const ISA_TOKENS = [1, 3, 5, 17];
/** Odd sizes: int8/int4/mxfp4 need multiples of 32 (3 and 5 blocks here); f32/f16 take any. */
const expertSize = (enc: ExpertEncoding) => (quantized(enc) ? [96, 160] : [37, 53]);
/** [rows, cols, weight scale]: 1e-4 makes f16 weights partly subnormal (and some are set to zero). */
const matmulSizes = (enc: ExpertEncoding) => (quantized(enc) ? [[160, 96, 0.3], [7, 64, 0.3]] : [[53, 37, 0.3], [5, 3, 0.3], [9, 40, 1e-4]]);
/** Big enough that the kernels split the work across threads. */
const bigSize = (enc: ExpertEncoding) => (quantized(enc) ? [544, 2080] : [515, 2051]);

function expertCase(enc: ExpertEncoding, [Hs, Fs]: number[], T: number, threads: number, seed: number): IsaCase {
  const w = { gate: rand(Fs! * Hs!, seed, 0.2), up: rand(Fs! * Hs!, seed + 1, 0.2), down: rand(Hs! * Fs!, seed + 2, 0.15) };
  return { kind: "expert", enc, a: Hs!, b: Fs!, T, threads, w: ExpertStore.pack({ hiddenSize: Hs!, expertFfn: Fs!, encoding: enc }, w), x: rand(T * Hs!, seed + 3, 1) };
}

describe("kernel instruction-set levels", () => {
  const addon = loadNativeAddon().addon;
  const isas = addon?.kernelIsas() ?? [];

  // Built once, run at every level: [name, case] pairs.
  const cases: { name: string; c: IsaCase }[] = [];
  for (const enc of EXPERT_ENCODINGS) {
    for (const T of ISA_TOKENS) cases.push({ name: `${enc} expert T=${T}`, c: expertCase(enc, expertSize(enc), T, 2, 11) });
    // Pre-activations past ±87: SiLU's exponential past where it under- and overflows.
    const wide = expertCase(enc, expertSize(enc), 5, 2, 13);
    cases.push({ name: `${enc} expert wide T=5`, c: { ...wide, x: wide.x.map((v) => v * 120) } });
    const first = cases.find((e) => e.name === `${enc} expert T=17`)!.c;
    cases.push({ name: `${enc} expert first token alone`, c: { ...first, T: 1, x: first.x.slice(0, first.a) } });
    for (const [rows, cols, scale] of matmulSizes(enc))
      for (const T of ISA_TOKENS) {
        const m = rand(rows! * cols!, rows! + cols!, scale!);
        if (scale! < 1e-3) m.fill(0, 0, 7);
        cases.push({ name: `${enc} matmul ${rows}x${cols} T=${T}`, c: { kind: "matmul", enc, a: rows!, b: cols!, T, threads: 2, w: encodeMatrix(enc, m, rows!, cols!), x: rand(T * cols!, 7 + T, 1) } });
      }
    for (const T of [1, 5])
      for (const threads of [1, 2]) cases.push({ name: `${enc} big expert T=${T} threads=${threads}`, c: expertCase(enc, bigSize(enc), T, threads, 21) });
  }
  const byName = (results: Float32Array[], name: string) => results[cases.findIndex((e) => e.name === name)]!;
  // Each level's child process runs once, for its describe block and the cross-level comparison.
  const runs = new Map<string, { isa: string; outputs: Float32Array[] }>();
  const resultsAt = (isa: string) => {
    if (!runs.has(isa)) runs.set(isa, runIsaCases(isa, cases.map((e) => e.c)));
    return runs.get(isa)!;
  };

  it("this CPU runs the scalar level and the level in use", () => {
    expect(isas[0]).toBe("scalar");
    expect(isas).toContain(addon!.kernelIsa());
  });

  describe.each(isas)("MOE_RUN_KERNEL_ISA=%s", (isa) => {
    let res: { isa: string; outputs: Float32Array[] };
    beforeAll(() => {
      res = resultsAt(isa);
    }, 300_000);

    it("runs at that level", () => {
      expect(res.isa).toBe(isa);
    });

    for (const enc of EXPERT_ENCODINGS) {
      it(`${enc}: expertForward matches the fp64 reference (${ISA_TOKENS.join(", ")} tokens)`, () => {
        for (const T of ISA_TOKENS) {
          const c = cases.find((e) => e.name === `${enc} expert T=${T}`)!.c;
          const ref = expertRef(enc, c.w, c.a, c.b, c.x, T);
          expect(relErr(byName(res.outputs, `${enc} expert T=${T}`), ref), `T=${T}`).toBeLessThan(quantized(enc) ? QUANT_ACT_BOUND : 1e-5);
        }
        const c = cases.find((e) => e.name === `${enc} expert wide T=5`)!.c;
        const { g } = preActivations(enc, c.w, c.a, c.b, c.x, 5, false);
        expect(Math.min(...g), "gate below -87").toBeLessThan(-87);
        expect(Math.max(...g), "gate above 87").toBeGreaterThan(87);
        expect(relErr(byName(res.outputs, `${enc} expert wide T=5`), expertRef(enc, c.w, c.a, c.b, c.x, 5)), "wide").toBeLessThan(quantized(enc) ? QUANT_ACT_BOUND : 1e-5);
      });

      it(`${enc}: matmul matches the fp64 reference${quantized(enc) ? " and exactly the integer-dot emulation" : ""}`, () => {
        for (const [rows, cols] of matmulSizes(enc))
          for (const T of ISA_TOKENS) {
            const name = `${enc} matmul ${rows}x${cols} T=${T}`;
            const c = cases.find((e) => e.name === name)!.c;
            const got = byName(res.outputs, name);
            const ref = matmulRef(decodeMatrix(enc, c.w, rows!, cols!), rows!, cols!, c.x, T);
            expect(relErr(got, ref), name).toBeLessThan(quantized(enc) ? QUANT_ACT_BOUND : 1e-5);
            if (quantized(enc)) expect(relErr(got, intDotRef(enc, c.w, rows!, cols!, c.x, T)), `${name} (emulation)`).toBeLessThan(1e-5);
          }
      });

      it(`${enc}: identical bits at 1 and 2 threads, and for a token alone or among 17`, () => {
        for (const T of [1, 5]) {
          const one = byName(res.outputs, `${enc} big expert T=${T} threads=1`);
          const two = byName(res.outputs, `${enc} big expert T=${T} threads=2`);
          expect(Buffer.from(two.buffer).equals(Buffer.from(one.buffer)), `T=${T}`).toBe(true);
          const c = cases.find((e) => e.name === `${enc} big expert T=${T} threads=1`)!.c;
          expect(relErr(one, expertRef(enc, c.w, c.a, c.b, c.x, T))).toBeLessThan(quantized(enc) ? QUANT_ACT_BOUND : 1e-5);
        }
        const alone = byName(res.outputs, `${enc} expert first token alone`);
        const among = byName(res.outputs, `${enc} expert T=17`).subarray(0, alone.length);
        expect(Buffer.from(alone.buffer).equals(Buffer.from(among.slice().buffer))).toBe(true);
      });
    }
  });

  // The avx512 level's Q8 tiles hold two blocks per 512-bit vector but add the same products in the
  // same order as the vnni level's 256-bit ones: a lane or scale mix-up shows as a changed bit.
  it.runIf(isas.includes("vnni") && isas.includes("avx512"))("int8: the avx512 level gives the vnni level's bits (odd block counts, 1-17 tokens, 1-2 threads)", () => {
    const [vnni, avx512] = ["vnni", "avx512"].map((isa) => resultsAt(isa).outputs);
    const int8 = cases.filter((e) => e.c.enc === "int8");
    expect(int8.length).toBeGreaterThan(0);
    for (const e of int8) expect(Buffer.from(byName(avx512!, e.name).buffer).equals(Buffer.from(byName(vnni!, e.name).buffer)), e.name).toBe(true);
  }, 300_000);

  it("a level this CPU cannot run is a KERNEL_ISA_UNSUPPORTED error naming what it has (no crash)", () => {
    const missing = ["avx2", "vnni", "avx512"].filter((l) => !isas.includes(l));
    for (const level of [...missing, "avx9000"]) {
      const r = spawnSync(process.execPath, [CHILD, "--errors"], { env: { ...process.env, MOE_RUN_KERNEL_ISA: level }, encoding: "utf8", timeout: 60_000 });
      expect(r.signal, level).toBeNull();
      expect(r.status, `${level}: ${r.stderr}`).toBe(0);
      const out = JSON.parse(r.stdout) as { forward: { code: string; message: string }; isa: { code: string }; isas: string[]; encodeOk: boolean };
      expect(out.forward.code, level).toBe("KERNEL_ISA_UNSUPPORTED");
      expect(out.isa.code, level).toBe("KERNEL_ISA_UNSUPPORTED");
      expect(out.forward.message).toContain(`MOE_RUN_KERNEL_ISA=${level}`);
      expect(out.forward.message).toContain(isas.join(", "));
      expect(out.isas).toEqual(isas);
      expect(out.encodeOk).toBe(true);
    }
  });
});

// ---- activations and biases -----------------------------------------------------------------------

/** gpt-oss's activation at its real constants; inputs and biases large enough to hit both clamps. */
const CLAMPED = gptOssActivation();
const ACT_X_SCALE = 4;

function biasedRecord(enc: ExpertEncoding, Hs: number, Fs: number, seed: number): Uint8Array {
  const w = { gate: rand(Fs * Hs, seed, 0.2), up: rand(Fs * Hs, seed + 1, 0.2), down: rand(Hs * Fs, seed + 2, 0.15) };
  return encodeExpertRecord(enc, Hs, Fs, w, { gate: rand(Fs, seed + 3, 3), up: rand(Fs, seed + 4, 3), down: rand(Hs, seed + 5, 0.5) });
}

async function runActKernel(name: ExpertKernelName, enc: ExpertEncoding, act: ExpertActivation, record: Uint8Array, x: Float32Array, tokens: number, threads = 2): Promise<Float32Array> {
  const kernel = await createExpertKernel(name, { encoding: enc, hiddenSize: H, expertFfn: F, threads, activation: act, expertBias: true });
  try {
    if (name !== "onnx") expect(kernel.residentBytes).toBe(record.byteLength);
    const resident = await kernel.prepare(record, 0);
    const out = new Float32Array(tokens * H);
    await kernel.forward(resident, x, tokens, out, 0);
    kernel.free(resident);
    return out;
  } finally {
    await kernel.dispose();
  }
}

describe("expert activations and biases", () => {
  it("the plain expert is what it always was: records without biases unchanged, an explicit silu spec gives identical bits", () => {
    const addon = loadNativeAddon().addon!;
    for (const enc of EXPERT_ENCODINGS) {
      const plain = ExpertStore.pack({ hiddenSize: H, expertFfn: F, encoding: enc }, weights);
      expect(Buffer.from(encodeExpertRecord(enc, H, F, weights)).equals(Buffer.from(plain))).toBe(true);
      expect(recordBytes(enc, H, F)).toBe(2 * matrixBytes(enc, F, H) + matrixBytes(enc, H, F));
      expect(recordBytes(enc, H, F, true)).toBe(recordBytes(enc, H, F) + 4 * (2 * F + H));
      const x = rand(3 * H, 9, 1);
      const a = new Float32Array(3 * H);
      const b = new Float32Array(3 * H);
      addon.expertForward(encodingCode(enc), plain, H, F, x, 3, a, 2);
      addon.expertForward(encodingCode(enc), plain, H, F, x, 3, b, 2, nativeExpertSpec(SILU, false));
      expect(Buffer.from(a.buffer).equals(Buffer.from(b.buffer)), enc).toBe(true);
      // With the bias flag the record must carry the biases (sizes are checked).
      expect(() => addon.expertForward(encodingCode(enc), plain, H, F, x, 3, b, 2, nativeExpertSpec(CLAMPED, true))).toThrow(/buffer sizes/);
    }
  });

  it("biases follow the matrices as fp32 gate [F], up [F], down [H]", () => {
    const rec = biasedRecord("f16", H, F, 40);
    const l = expertRecordLayout("f16", H, F, true);
    expect(l.gateBias).toEqual([3 * F * H * 2, 4 * F]);
    expect(l.downBias).toEqual([3 * F * H * 2 + 8 * F, 4 * H]);
    const view = new DataView(rec.buffer, rec.byteOffset);
    expect(view.getFloat32(l.upBias![0] + 4, true)).toBe(rand(F, 44, 3)[1]);
  });

  describe.each(EXPERT_ENCODINGS)("%s weights", (enc) => {
    it("native (1 and 2 threads), onnx and JS agree on gpt-oss's clamped SwiGLU with biases, with values beyond both clamps", async () => {
      const record = biasedRecord(enc, H, F, 50);
      for (const tokens of [1, 5]) {
        const x = rand(tokens * H, 60 + tokens, ACT_X_SCALE);
        const { g, u } = preActivations(enc, record, H, F, x, tokens, true);
        if (tokens === 5) {
          expect(g.filter((v) => v > 7).length, "gate above the limit").toBeGreaterThan(0);
          expect(u.filter((v) => v > 7).length, "up above the limit").toBeGreaterThan(0);
          expect(u.filter((v) => v < -7).length, "up below -limit").toBeGreaterThan(0);
          expect(g.filter((v) => Math.abs(v) < 7).length, "unclamped values too").toBeGreaterThan(g.length / 4);
        }
        const ref = await runActKernel("js", enc, CLAMPED, record, x, tokens);
        expect(relErr(ref, expertRef(enc, record, H, F, x, tokens, CLAMPED, true)), "js vs fp64").toBeLessThan(1e-5);
        const bound = quantized(enc) ? QUANT_ACT_BOUND : 1e-5;
        expect(maxRelErr(await runActKernel("native", enc, CLAMPED, record, x, tokens), ref), `native T=${tokens}`).toBeLessThan(bound);
        expect(maxRelErr(await runActKernel("native", enc, CLAMPED, record, x, tokens, 1), ref), `native 1 thread T=${tokens}`).toBeLessThan(bound);
        expect(maxRelErr(await runActKernel("onnx", enc, CLAMPED, record, x, tokens), ref), `onnx T=${tokens}`).toBeLessThan(1e-5);
      }
    });

    it("silu with biases agrees too", async () => {
      const record = biasedRecord(enc, H, F, 70);
      const x = rand(3 * H, 71, 1);
      const ref = await runActKernel("js", enc, SILU, record, x, 3);
      expect(relErr(ref, expertRef(enc, record, H, F, x, 3, SILU, true))).toBeLessThan(1e-5);
      expect(maxRelErr(await runActKernel("native", enc, SILU, record, x, 3), ref)).toBeLessThan(quantized(enc) ? QUANT_ACT_BOUND : 1e-5);
      expect(maxRelErr(await runActKernel("onnx", enc, SILU, record, x, 3), ref)).toBeLessThan(1e-5);
    });
  });

  describe("at every kernel instruction-set level", () => {
    const isas = loadNativeAddon().addon?.kernelIsas() ?? [];
    const spec = Array.from(nativeExpertSpec(CLAMPED, true));
    const cases: { name: string; c: IsaCase }[] = [];
    for (const enc of EXPERT_ENCODINGS) {
      const [Hs, Fs] = expertSize(enc);
      for (const T of [1, 5]) {
        const w = biasedRecord(enc, Hs!, Fs!, 80);
        cases.push({ name: `${enc} T=${T}`, c: { kind: "expert", enc, a: Hs!, b: Fs!, T, threads: 2, w, x: rand(T * Hs!, 81 + T, ACT_X_SCALE), spec } });
      }
      const [BH, BF] = bigSize(enc);
      const bw = biasedRecord(enc, BH!, BF!, 90);
      const bx = rand(5 * BH!, 91, ACT_X_SCALE);
      for (const threads of [1, 2]) cases.push({ name: `${enc} big threads=${threads}`, c: { kind: "expert", enc, a: BH!, b: BF!, T: 5, threads, w: bw, x: bx, spec } });
    }

    describe.each(isas)("MOE_RUN_KERNEL_ISA=%s", (isa) => {
      let res: { isa: string; outputs: Float32Array[] };
      beforeAll(() => {
        res = runIsaCases(isa, cases.map((e) => e.c));
      }, 300_000);

      it("clamped SwiGLU with biases matches the fp64 reference, and is the same at 1 and 2 threads", () => {
        expect(res.isa).toBe(isa);
        cases.forEach(({ name, c }, i) => {
          const ref = expertRef(c.enc, c.w, c.a, c.b, c.x, c.T, CLAMPED, true);
          expect(relErr(res.outputs[i]!, ref), name).toBeLessThan(quantized(c.enc) ? QUANT_ACT_BOUND : 1e-5);
        });
        for (const enc of EXPERT_ENCODINGS) {
          const one = res.outputs[cases.findIndex((e) => e.name === `${enc} big threads=1`)]!;
          const two = res.outputs[cases.findIndex((e) => e.name === `${enc} big threads=2`)]!;
          expect(Buffer.from(one.buffer).equals(Buffer.from(two.buffer)), enc).toBe(true);
        }
      });
    });
  });
});
