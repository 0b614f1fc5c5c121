/**
 * Every expert kernel against the JS reference on the same inputs (llama.cpp's test-backend-ops
 * idea), for every storage encoding; and the encodings' error against fp32.
 */
import { describe, expect, it } from "vitest";
import { createExpertKernel, type ExpertKernelName } from "../src/kernels/expertKernels.js";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import { EXPERT_ENCODINGS, decodeMatrix, encodeMatrix, encodeMatrixJs, matrixBytes, type ExpertEncoding } from "../src/store/expertEncoding.js";
import { ExpertStore } from "../src/store/ExpertStore.js";
import { maxRelErr, rand } from "./helpers.js";

const H = 96;
const F = 160;

const weights = { gate: rand(F * H, 1, 0.2), up: rand(F * H, 2, 0.2), down: rand(H * F, 3, 0.15) };

async function runKernel(name: ExpertKernelName, enc: ExpertEncoding, tokens: number, threads = 2): Promise<Float32Array> {
  const kernel = await createExpertKernel(name, { encoding: enc, hiddenSize: H, expertFfn: F, threads });
  try {
    const record = ExpertStore.pack({ hiddenSize: H, expertFfn: F, encoding: enc }, weights);
    const resident = await kernel.prepare(record);
    const out = new Float32Array(tokens * H);
    await kernel.forward(resident, rand(tokens * H, 9, 1), tokens, out);
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
      expect(maxRelErr(await runKernel("native", enc, tokens), ref)).toBeLessThan(1e-5);
      expect(maxRelErr(await runKernel("native", enc, tokens, 1), ref)).toBeLessThan(1e-5);
      expect(maxRelErr(await runKernel("onnx", enc, tokens), ref)).toBeLessThan(1e-5);
    });
  }

  it("encoding error against fp32 is what the precision allows", async () => {
    const exact = await runKernel("js", "f32", 4);
    const got = await runKernel("js", enc, 4);
    const bound = { f32: 0, f16: 2e-3, int8: 2e-2, int4: 0.2 }[enc];
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
    const step = { f32: 0, f16: 0.3 * 2 ** -11, int8: 0.3 / 127 / 2, int4: 0.3 / 8 }[enc];
    expect(worst).toBeLessThanOrEqual(step * 1.0001);
  }
});
