/** safetensors reading/writing and the fp16/bf16 conversions the importer relies on. */
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { SafetensorsFile, writeSafetensors } from "../src/formats/safetensors.js";
import { decodeToFloat32, encodeFromFloat32, floatToHalf, halfToFloat } from "../src/util/dtype.js";
import { tmpDir } from "./helpers.js";

describe("dtype conversions", () => {
  it("f16 round-trips every finite half value exactly", () => {
    for (let h = 0; h < 0x10000; h++) {
      const exp = (h >> 10) & 0x1f;
      if (exp === 0x1f) continue; // inf/nan
      expect(floatToHalf(halfToFloat(h))).toBe(h === 0x8000 ? 0x8000 : h);
    }
  });

  it("f16 and bf16 encodings round to nearest, ties to even", () => {
    expect(floatToHalf(1 + 2 ** -11)).toBe(0x3c00); // tie -> even (1.0)
    expect(floatToHalf(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie -> even (1 + 2^-9)
    expect(floatToHalf(65520)).toBe(0x7c00); // overflows to inf
    const bf = decodeToFloat32(encodeFromFloat32(Float32Array.of(1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5), "BF16"), "BF16");
    expect(Array.from(bf)).toEqual([1, 1 + 2 ** -6, -2.5]);
  });

  it("writes and reads back f32, f16 and bf16 tensors", () => {
    const file = path.join(tmpDir(), "t.safetensors");
    const a = Float32Array.from({ length: 12 }, (_, i) => (i - 6) / 4);
    writeSafetensors(
      file,
      [
        { name: "a32", dtype: "F32", shape: [3, 4] },
        { name: "a16", dtype: "F16", shape: [12] },
        { name: "abf", dtype: "BF16", shape: [2, 6] },
      ],
      (e) => encodeFromFloat32(a, e.dtype)
    );
    const st = SafetensorsFile.open(file);
    try {
      for (const name of ["a32", "a16", "abf"]) expect(Array.from(st.readFloat32(name))).toEqual(Array.from(a));
      expect(st.entry("abf").shape).toEqual([2, 6]);
    } finally {
      st.close();
    }
  });
});
