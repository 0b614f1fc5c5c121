/**
 * Several experts of a layer in one native call (expertsForward / ExpertKernel.forwardMany): each
 * output must be bit for bit what expertForward gives that expert alone, whichever way the call
 * shares the work (whole experts per thread when their token counts match, their down
 * projections' row chunks taken by whichever thread is free; rows of every matrix otherwise), with
 * biases and the clamped activation too; bad arguments are clear errors.
 */
import { describe, expect, it } from "vitest";
import { gptOssActivation, nativeExpertSpec } from "../src/kernels/expertActivation.js";
import { createExpertKernel } from "../src/kernels/expertKernels.js";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import { encodeExpertRecord, encodingCode, type ExpertEncoding } from "../src/store/expertEncoding.js";
import { rand } from "./helpers.js";

const addon = loadNativeAddon().addon;
// Whole 256-value super-blocks (q4_k) and enough work per call for the pool to take part.
const H = 256;
const F = 512;

function record(enc: ExpertEncoding, seed: number, bias: boolean): Uint8Array {
  const w = { gate: rand(F * H, seed, 0.2), up: rand(F * H, seed + 1, 0.2), down: rand(H * F, seed + 2, 0.15) };
  return encodeExpertRecord(enc, H, F, w, bias ? { gate: rand(F, seed + 3, 3), up: rand(F, seed + 4, 3), down: rand(H, seed + 5, 0.5) } : undefined);
}

const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));

describe.skipIf(!addon)("several experts in one call", () => {
  // Token counts per expert: equal (decode's 1, a prefill's 5: whole experts per thread, the
  // leftover split) and unequal (every matrix split by rows).
  // Four decode experts at 2 threads: two whole experts per thread, each down projection shared.
  const shapes = [[1], [1, 1], [1, 1, 1], [1, 1, 1, 1], [5, 5], [5, 5, 5], [1, 4, 2], [3, 1]];

  for (const enc of ["f16", "int8", "int4", "q4_k"] as ExpertEncoding[])
    for (const bias of [false, true])
      it(`${enc}${bias ? " with biases and the clamped activation" : ""}: every output is the expert's alone, at 1, 2 and 3 threads`, () => {
        const spec = bias ? nativeExpertSpec(gptOssActivation(), true) : undefined;
        const code = encodingCode(enc);
        const records = [0, 1, 2, 3].map((k) => record(enc, 10 + 7 * k, bias));
        for (const Ts of shapes) {
          const xs = Ts.map((T, k) => rand(T * H, 50 + k, 1));
          const alone = Ts.map((T, k) => {
            const y = new Float32Array(T * H);
            addon!.expertForward(code, records[k]!, H, F, xs[k]!, T, y, 1, spec);
            return y;
          });
          for (const threads of [1, 2, 3]) {
            const outs = Ts.map((T) => new Float32Array(T * H).fill(Number.NaN));
            addon!.expertsForward(code, records.slice(0, Ts.length), H, F, xs, Ts, outs, threads, spec);
            Ts.forEach((_, k) => expect(same(outs[k]!, alone[k]!), `tokens ${Ts.join(",")}, expert ${k}, ${threads} threads`).toBe(true));
            // Not trivially equal: the experts differ, and nothing was left unwritten.
            expect(outs.every((o) => o.every(Number.isFinite))).toBe(true);
            if (Ts.length > 1 && Ts[0] === Ts[1]) expect(same(outs[0]!, outs[1]!)).toBe(false);
          }
        }
      });

  it("experts given the same x (a decode step's token) share it and still match one by one", () => {
    const code = encodingCode("int8");
    const records = [0, 1].map((k) => record("int8", 30 + 7 * k, false));
    const x = rand(H, 77, 1);
    const outs = [new Float32Array(H), new Float32Array(H)];
    addon!.expertsForward(code, records, H, F, [x, x], [1, 1], outs, 2);
    records.forEach((r, k) => {
      const y = new Float32Array(H);
      addon!.expertForward(code, r, H, F, x, 1, y, 2);
      expect(same(outs[k]!, y)).toBe(true);
    });
  });

  it("the native ExpertKernel's forwardMany equals its forward", async () => {
    const kernel = await createExpertKernel("native", { encoding: "f16", hiddenSize: H, expertFfn: F, threads: 2 });
    try {
      expect(kernel.forwardMany).toBeTypeOf("function");
      const records = [0, 1].map((k) => record("f16", 40 + 7 * k, false));
      const xs = [rand(H, 1, 1), rand(H, 2, 1)];
      const outs = [new Float32Array(H), new Float32Array(H)];
      kernel.forwardMany!(records, xs, [1, 1], outs, 0);
      for (const k of [0, 1]) {
        const y = new Float32Array(H);
        await kernel.forward(records[k]!, xs[k]!, 1, y, 0);
        expect(same(outs[k]!, y)).toBe(true);
      }
    } finally {
      await kernel.dispose();
    }
  });

  it("arrays of different lengths, a short record or a short output are errors, not crashes", () => {
    const code = encodingCode("int8");
    const r = record("int8", 60, false);
    const x = rand(H, 3, 1);
    const y = new Float32Array(H);
    expect(() => addon!.expertsForward(code, [r, r], H, F, [x], [1, 1], [y, y], 2)).toThrow(/arrays of one length/);
    expect(() => addon!.expertsForward(code, [r.subarray(1)], H, F, [x], [1], [y], 2)).toThrow(/buffer sizes/);
    expect(() => addon!.expertsForward(code, [r], H, F, [x], [2], [y], 2)).toThrow(/buffer sizes/);
    expect(() => addon!.expertsForward(code, [r], H, F, [x], [1], [y], 2, new Float64Array(3))).toThrow(/spec/);
    // Nothing at all is a call with no work.
    expect(() => addon!.expertsForward(code, [], H, F, [], [], [], 2)).not.toThrow();
  });
});
