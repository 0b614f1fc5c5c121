/**
 * The ggml block codecs (src/formats/ggmlQuants.ts, ggmlKQuants.ts): hand-derived blocks, round-trip
 * error bounds, and byte-for-byte equality with llama.cpp itself. The pinned node-llama-cpp ships
 * llama.cpp's libggml-base and libllama; a small C program compiled here calls their reference
 * quantizer (ggml_quantize_chunk, what llama-quantize runs), their dequantizers, and
 * llama_model_quantize on a GGUF file this project wrote. Those checks need a C compiler and the
 * linux-x64 build of node-llama-cpp; elsewhere they are skipped, with the reason in their title.
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { GgmlType, dequantize, fp32ToBf16, fp32ToFp16, ggmlTypeInfo, nearestInt, quantize, type GgmlTypeName } from "../src/formats/ggmlQuants.js";
import { exportGguf } from "../src/formats/ggufExport.js";
import { GgufFile } from "../src/formats/ggufReader.js";
import { writeSyntheticCheckpoint } from "../src/synthetic/syntheticCheckpoint.js";
import { MODELS, ROOT, rand, tmpDir } from "./helpers.js";

const T = GgmlType;
const f16 = (bytes: number[]) => bytes; // readability: little-endian fp16 bytes
const le16 = (h: number) => [h & 0xff, h >> 8];

/** Normal-ish values (Box-Muller over a fixed LCG), like trained weights. */
function gaussian(n: number, seed: number, scale: number): Float32Array {
  const u = rand(2 * n, seed, 1);
  return Float32Array.from({ length: n }, (_, i) => {
    const a = (u[2 * i]! + 1) / 2 + 1e-9;
    const b = (u[2 * i + 1]! + 1) / 2;
    return Math.sqrt(-2 * Math.log(a)) * Math.cos(2 * Math.PI * b) * scale;
  });
}

describe("fp16, bf16 and nearest_int as ggml rounds them", () => {
  it("fp16: round to nearest even, subnormals, overflow to inf, quiet NaN", () => {
    expect(fp32ToFp16(1)).toBe(0x3c00);
    expect(fp32ToFp16(-2)).toBe(0xc000);
    expect(fp32ToFp16(65504)).toBe(0x7bff);
    expect(fp32ToFp16(65520)).toBe(0x7c00); // halfway to 65536: even is the infinity
    expect(fp32ToFp16(2 ** -24)).toBe(0x0001);
    expect(fp32ToFp16(2 ** -25)).toBe(0x0000); // tie between 0 and the smallest subnormal: 0
    expect(fp32ToFp16(3 * 2 ** -25)).toBe(0x0002);
    expect(fp32ToFp16(1 + 2 ** -11)).toBe(0x3c00); // tie: even mantissa
    expect(fp32ToFp16(1 + 3 * 2 ** -11)).toBe(0x3c02);
    expect(fp32ToFp16(NaN)).toBe(0x7e00);
    expect(fp32ToFp16(-Infinity)).toBe(0xfc00);
  });

  it("bf16: round to nearest even, NaN stays NaN", () => {
    expect(fp32ToBf16(1)).toBe(0x3f80);
    expect(fp32ToBf16(1 + 2 ** -8)).toBe(0x3f80);
    expect(fp32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(fp32ToBf16(-0.5)).toBe(0xbf00);
    expect(fp32ToBf16(NaN) & 0x7fc0).toBe(0x7fc0);
  });

  it("nearest_int rounds half to even", () => {
    expect([0.5, 1.5, 2.5, -0.5, -1.5, 2.4999, -2.5001, 7].map((v) => nearestInt(v) + 0)).toEqual([0, 2, 2, 0, -2, 2, -3, 7]);
  });
});

describe("hand-derived blocks", () => {
  it("Q4_0: d = max/-8 with the sign of the largest magnitude, q = x/d + 8 clamped to 15", () => {
    const x = new Float32Array(32);
    for (let j = 0; j < 16; j++) {
      x[j] = j - 8;
      x[16 + j] = 7 - j;
    }
    // max magnitude 8 at x[0] = -8: d = 1, q = x + 8
    const b = quantize(T.Q4_0, x);
    expect([...b]).toEqual([...f16(le16(0x3c00)), ...Array.from({ length: 16 }, (_, j) => j | ((15 - j) << 4))]);
    expect(dequantize(T.Q4_0, b, 32)).toEqual(x);
    // A positive largest value gives a negative d: 8 -> q 0 -> (0 - 8) * -1.
    const y = new Float32Array(32);
    y[0] = 8;
    y[1] = -7;
    const c = quantize(T.Q4_0, y);
    expect([...c.subarray(0, 4)]).toEqual([0x00, 0xbc, 0 | (8 << 4), 15 | (8 << 4)]);
    expect([...dequantize(T.Q4_0, c, 32).subarray(0, 3)]).toEqual([8, -7, -0]); // (8 - 8) * -1 is -0, as in C
  });

  it("Q4_1 and Q5_1: d = (max - min) / (2^bits - 1), m = min", () => {
    const x = Float32Array.from({ length: 32 }, (_, j) => 100 + (j % 16));
    const b = quantize(T.Q4_1, x);
    expect([...b.subarray(0, 4)]).toEqual([...le16(0x3c00), ...le16(0x5640)]); // d = 1, m = 100
    expect([...b.subarray(4)]).toEqual(Array.from({ length: 16 }, (_, j) => j | (j << 4)));
    expect(dequantize(T.Q4_1, b, 32)).toEqual(x);
    const y = Float32Array.from({ length: 32 }, (_, j) => j);
    const c = quantize(T.Q5_1, y);
    // d 1, m 0, qh: value j has bit j; values 16..31 have their fifth bit
    expect([...c.subarray(0, 8)]).toEqual([...le16(0x3c00), 0, 0, 0x00, 0x00, 0xff, 0xff]);
    expect([...c.subarray(8)]).toEqual(Array.from({ length: 16 }, (_, j) => j | (j << 4)));
    expect(dequantize(T.Q5_1, c, 32)).toEqual(y);
  });

  it("Q5_0: d = max/-16, fifth bits in a little-endian u32", () => {
    const x = Float32Array.from({ length: 32 }, (_, j) => j - 16); // max magnitude 16 at x[0] = -16: d = 1
    const b = quantize(T.Q5_0, x);
    expect([...b.subarray(0, 6)]).toEqual([...le16(0x3c00), 0x00, 0x00, 0xff, 0xff]);
    expect([...b.subarray(6)]).toEqual(Array.from({ length: 16 }, (_, j) => j | (j << 4)));
    expect(dequantize(T.Q5_0, b, 32)).toEqual(x);
  });

  it("Q8_0: d = amax/127, q rounded half away from zero", () => {
    const x = new Float32Array(32);
    [127, -127, 0.5, -0.5, 1.5, -1.5, 2.4999, -2.5001, 3, 0].forEach((v, i) => (x[i] = v));
    const b = quantize(T.Q8_0, x);
    expect([...b.subarray(0, 2)]).toEqual(le16(0x3c00));
    expect([...new Int8Array(b.buffer, 2, 10)]).toEqual([127, -127, 1, -1, 2, -2, 2, -3, 3, 0]);
  });

  it("Q4_K: 6-bit scales and mins packed in 12 bytes, y = d*sc*q - dmin*m", () => {
    const blk = new Uint8Array(144);
    blk.set(le16(0x3c00), 0); // d = 1
    blk.set(le16(0x3800), 2); // dmin = 0.5
    // sub-block j: scale j+1, min 2j, except sub-block 7: scale 63, min 33 (uses the high bits)
    const sc = [1, 2, 3, 4, 5, 6, 7, 63];
    const mn = [0, 2, 4, 6, 8, 10, 12, 33];
    const s = blk.subarray(4, 16);
    for (let j = 0; j < 4; j++) {
      s[j] = sc[j]!;
      s[j + 4] = mn[j]!;
    }
    for (let j = 4; j < 8; j++) {
      s[j + 4] = (sc[j]! & 15) | ((mn[j]! & 15) << 4);
      s[j - 4] |= (sc[j]! >> 4) << 6;
      s[j] |= (mn[j]! >> 4) << 6;
    }
    expect([...s]).toEqual([1, 2, 3, 4 | 0xc0, 0, 2, 4, 6 | 0x80, 0x85, 0xa6, 0xc7, 0x1f]);
    // qs: byte 32k + l holds sub-block 2k (low nibble) and 2k+1 (high nibble) value l
    for (let i = 0; i < 128; i++) blk[16 + i] = (i % 16) | ((15 - (i % 16)) << 4);
    const y = dequantize(T.Q4_K, blk, 256);
    expect(y[0]).toBe(0); // 1*0 - 0.5*0
    expect(y[5]).toBe(5);
    expect(y[32]).toBe(2 * 15 - 1); // sub-block 1, high nibble 15
    expect(y[64 + 3]).toBe(3 * 3 - 2); // sub-block 2
    expect(y[224]).toBe(63 * 15 - 16.5); // sub-block 7
    expect(y[255]).toBe(63 * 0 - 16.5);
  });

  it("Q5_K: as Q4_K with a fifth bit per value in qh", () => {
    const blk = new Uint8Array(176);
    blk.set(le16(0x3c00), 0);
    blk.set(le16(0x0000), 2);
    for (let j = 0; j < 4; j++) blk[4 + j] = 1; // sub-blocks 0..3 scale 1 (4..7: 0)
    blk[16 + 0] = 0b00000101; // value 0 of sub-blocks 0 and 2 gets +16
    blk[48 + 0] = 0x73; // low nibbles: sub-block 0 value 0 = 3, sub-block 1 value 0 = 7
    const y = dequantize(T.Q5_K, blk, 256);
    expect([y[0], y[32], y[64], y[1]]).toEqual([19, 7, 16, 0]);
  });

  it("Q6_K: int8 scales per 16 values, 4 low bits in ql, 2 high bits in qh, q - 32", () => {
    const blk = new Uint8Array(210);
    blk.fill(0x21, 0, 128); // low nibble 1, high nibble 2
    blk.fill(0b11100100, 128, 192); // high bits 0, 1, 2, 3 for the four 32-value groups
    const scales = [1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8];
    scales.forEach((v, i) => (blk[192 + i] = v & 0xff));
    blk.set(le16(0x3400), 208); // d = 0.25
    const y = dequantize(T.Q6_K, blk, 256);
    // groups: q = 1-32 = -31, 17-32 = -15, 34-32 = 2, 50-32 = 18; scale index 8n + l/16 + 2g
    expect(y[0]).toBe(0.25 * 1 * -31);
    expect(y[16]).toBe(0.25 * -1 * -31);
    expect(y[32]).toBe(0.25 * 2 * -15);
    expect(y[64]).toBe(0.25 * 3 * 2);
    expect(y[96]).toBe(0.25 * 4 * 18);
    expect(y[128]).toBe(0.25 * 5 * -31);
    expect(y[255]).toBe(0.25 * -8 * 18);
  });

  it("Q2_K: 4-bit scale and min per 16 values, 2-bit levels", () => {
    const blk = new Uint8Array(84);
    for (let k = 0; k < 16; k++) blk[k] = (k & 15) | (1 << 4); // scale k, min 1
    blk.fill(0xe4, 16, 80); // levels 0, 1, 2, 3 for shifts 0, 2, 4, 6
    blk.set(le16(0x3c00), 80); // d = 1
    blk.set(le16(0x4000), 82); // dmin = 2
    const y = dequantize(T.Q2_K, blk, 256);
    expect([y[0], y[16], y[32], y[48], y[96], y[240]]).toEqual([-2, -2, 0, 1, 16, 43]);
  });

  it("Q3_K: 6-bit signed scales, 2 low bits plus an inverted high bit", () => {
    const blk = new Uint8Array(110);
    blk.fill(0xff, 0, 32); // hmask set: no -4
    blk[1] &= ~2; // value 32 + 1 (shift group 1) loses its high bit: level - 4
    blk.fill(0xe4, 32, 96);
    for (let j = 0; j < 8; j++) blk[96 + j] = j | ((8 + j) << 4); // scale j + 32 for every j
    blk.fill(0xaa, 104, 108);
    blk.set(le16(0x3800), 108); // d = 0.5
    const y = dequantize(T.Q3_K, blk, 256);
    expect([y[0], y[32], y[33], y[112], y[240]]).toEqual([0, 1, 0.5 * 2 * (1 - 4), 10.5, 22.5]);
  });
});

describe("round trips", () => {
  const x = gaussian(256 * 64, 11, 0.02);
  // Largest error per block relative to the block's largest magnitude, and relative RMS error.
  const bounds: [GgmlTypeName, number, number][] = [
    ["Q8_0", 0.5 / 127 + 1 / 2048, 0.007],
    ["Q5_1", 1 / 31 + 1 / 512, 0.045],
    ["Q5_0", 1 / 16 + 1 / 512, 0.05],
    ["Q4_1", 1 / 15 + 1 / 512, 0.09],
    ["Q4_0", 1 / 8 + 1 / 512, 0.1],
    ["Q6_K", 0.02, 0.022],
    ["Q5_K", 0.05, 0.045],
    ["Q4_K", 0.095, 0.09],
    ["Q3_K", 0.25, 0.19],
    ["Q2_K", 0.5, 0.37],
  ];
  it.each(bounds)("%s stays within its error bounds", (name, worstBound, rmsBound) => {
    const t = ggmlTypeInfo(T[name])!;
    const bytes = quantize(t.id, x);
    expect(bytes.byteLength).toBe((x.length / t.blockSize) * t.typeSize);
    const y = dequantize(t.id, bytes, x.length);
    let se = 0;
    let sx = 0;
    let worst = 0;
    for (let b = 0; b < x.length; b += t.blockSize) {
      let amax = 0;
      for (let i = b; i < b + t.blockSize; i++) amax = Math.max(amax, Math.abs(x[i]!));
      for (let i = b; i < b + t.blockSize; i++) {
        worst = Math.max(worst, Math.abs(x[i]! - y[i]!) / amax);
        se += (x[i]! - y[i]!) ** 2;
        sx += x[i]! ** 2;
      }
    }
    expect(worst).toBeLessThan(worstBound);
    expect(Math.sqrt(se / sx)).toBeLessThan(rmsBound);
  });

  it("F16 and BF16 keep 11 and 8 significant bits; zero blocks stay zero in every type", () => {
    for (const [t, bits] of [[T.F16, 11], [T.BF16, 8]] as const) {
      const y = dequantize(t, quantize(t, x), x.length);
      for (let i = 0; i < x.length; i++) expect(Math.abs(y[i]! - x[i]!)).toBeLessThanOrEqual(Math.max(Math.abs(x[i]!) * 2 ** -bits, 2 ** -25));
    }
    const zeros = new Float32Array(256);
    for (const name of ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"] as const) {
      expect([...dequantize(T[name], quantize(T[name], zeros), 256)].every((v) => v === 0), name).toBe(true);
    }
  });

  it("refuses partial blocks and unknown types with a message", () => {
    expect(() => quantize(T.Q4_K, new Float32Array(128))).toThrow(/Q4_K holds whole blocks of 256 values/);
    expect(() => dequantize(77, new Uint8Array(4), 1)).toThrow(/unknown ggml tensor type id 77/);
    expect(() => dequantize(T.IQ2_XXS, new Uint8Array(66), 256)).toThrow(/IQ2_XXS cannot be decoded/);
    expect(() => dequantize(T.Q8_0, new Uint8Array(33), 32)).toThrow(/need 34 bytes/);
  });
});

// ---------------------------------------------------------------------------------------------
// Against llama.cpp's own code (the libraries node-llama-cpp ships)

const BINS = path.join(ROOT, "node_modules", "@node-llama-cpp", "linux-x64", "bins", "linux-x64");
const GGML_BASE = path.join(BINS, "libggml-base.so");
const LIBLLAMA = fs.existsSync(BINS) ? fs.readdirSync(BINS).find((f) => /^libllama\.(v[\d.]+\.)?so$/.test(f)) : undefined;
const HAVE_CC = spawnSync("cc", ["--version"]).status === 0;
const NATIVE = process.platform === "linux" && process.arch === "x64" && HAVE_CC && fs.existsSync(GGML_BASE);
const skipNote = NATIVE ? "" : " (skipped: needs linux-x64, a C compiler and node-llama-cpp's prebuilt libggml-base)";

/** Reads stdin to a buffer in C. */
const C_READ_ALL = `
static unsigned char * read_all(size_t * n) {
  size_t cap = 1 << 20; unsigned char * b = malloc(cap); *n = 0; size_t r;
  while ((r = fread(b + *n, 1, cap - *n, stdin)) > 0) { *n += r; if (*n == cap) { cap *= 2; b = realloc(b, cap); } }
  return b;
}`;

/**
 * ggml's reference quantizer and dequantizers, looked up by name in libggml-base:
 *   codec q <type> <rows> <n_per_row>        floats on stdin -> ggml_quantize_chunk bytes on stdout
 *   codec d <symbol> <n>                     blocks on stdin -> dequantize_row_<x> floats on stdout
 */
const CODEC_C = `
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
${C_READ_ALL}
typedef size_t (*quantize_chunk)(int, const float *, void *, int64_t, int64_t, int64_t, const float *);
typedef void (*dequantize_row)(const void *, float *, int64_t);
int main(int argc, char ** argv) {
  void * lib = dlopen(argv[1], RTLD_NOW);
  if (!lib) { fprintf(stderr, "%s\\n", dlerror()); return 2; }
  size_t n; unsigned char * in = read_all(&n);
  if (argv[2][0] == 'q') {
    int64_t rows = atoll(argv[4]), per_row = atoll(argv[5]);
    quantize_chunk q = (quantize_chunk) dlsym(lib, "ggml_quantize_chunk");
    void * out = malloc(rows * per_row * 4 + 64);
    size_t bytes = q(atoi(argv[3]), (const float *) in, out, 0, rows, per_row, NULL);
    fwrite(out, 1, bytes, stdout);
  } else {
    dequantize_row d = (dequantize_row) dlsym(lib, argv[3]);
    if (!d) { fprintf(stderr, "no %s\\n", argv[3]); return 3; }
    int64_t k = atoll(argv[4]);
    float * out = malloc(k * 4);
    d(in, out, k);
    fwrite(out, 4, k, stdout);
  }
  return 0;
}`;

/** llama_model_quantize (llama-quantize) with the params struct of the pinned llama.cpp (include/llama.h). */
const QUANTIZE_C = `
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
typedef struct {
  int32_t nthread; int32_t ftype; int32_t output_tensor_type; int32_t token_embedding_type;
  bool allow_requantize; bool quantize_output_tensor; bool only_copy; bool pure; bool keep_split; bool dry_run;
  const void * imatrix; const void * kv_overrides; const void * tt_overrides; const int32_t * prune_layers; size_t max_buf_size;
} quantize_params;
extern quantize_params llama_model_quantize_default_params(void);
extern uint32_t llama_model_quantize(const char *, const char *, const quantize_params *);
extern void llama_backend_init(void);
extern void llama_log_set(void (*)(int, const char *, void *), void *);
static void quiet(int level, const char * text, void * user) { (void) level; (void) text; (void) user; }
int main(int argc, char ** argv) {
  llama_log_set(quiet, NULL);
  llama_backend_init();
  quantize_params p = llama_model_quantize_default_params();
  p.nthread = 1;
  p.ftype = atoi(argv[3]);
  return llama_model_quantize(argv[1], argv[2], &p) == 0 ? 0 : 1;
}`;

function compile(dir: string, name: string, source: string, libs: string[]): string {
  const src = path.join(dir, `${name}.c`);
  const exe = path.join(dir, name);
  fs.writeFileSync(src, source);
  execFileSync("cc", ["-O1", "-o", exe, src, ...libs, `-Wl,-rpath,${BINS}`, "-ldl"], { stdio: "pipe" });
  return exe;
}

const DEQUANT_SYMBOL: Partial<Record<GgmlTypeName, string>> = {
  Q4_0: "dequantize_row_q4_0",
  Q4_1: "dequantize_row_q4_1",
  Q5_0: "dequantize_row_q5_0",
  Q5_1: "dequantize_row_q5_1",
  Q8_0: "dequantize_row_q8_0",
  Q2_K: "dequantize_row_q2_K",
  Q3_K: "dequantize_row_q3_K",
  Q4_K: "dequantize_row_q4_K",
  Q5_K: "dequantize_row_q5_K",
  Q6_K: "dequantize_row_q6_K",
};
/** Byte offsets of the fp16 scale fields in each block (kept finite in random blocks). */
const HALF_FIELDS: Partial<Record<GgmlTypeName, number[]>> = {
  Q4_0: [0], Q4_1: [0, 2], Q5_0: [0], Q5_1: [0, 2], Q8_0: [0], Q2_K: [80, 82], Q3_K: [108], Q4_K: [0, 2], Q5_K: [0, 2], Q6_K: [208],
};

describe.skipIf(!NATIVE)(`byte equality with llama.cpp's ggml${skipNote}`, () => {
  const dir = NATIVE ? tmpDir("moe-run-ggml-") : "";
  const codec = NATIVE ? compile(dir, "codec", CODEC_C, []) : "";
  const data: [string, Float32Array][] = [
    ["uniform", rand(256 * 32, 5, 1)],
    ["normal", gaussian(256 * 32, 6, 0.02)],
    ["heavy tails and zero blocks", Float32Array.from(gaussian(256 * 32, 7, 0.01), (v, i) => (i < 256 || i % 3 === 0 ? 0 : i % 97 === 0 ? v * 300 : v))],
    ["offset", Float32Array.from(rand(256 * 32, 8, 1), (v) => v + 0.7)],
  ];

  const types: GgmlTypeName[] = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"];
  it.each(types)("%s: quantize equals ggml_quantize_chunk, bit for bit", (name) => {
    for (const [what, x] of data) {
      const ref = execFileSync(codec, [GGML_BASE, "q", String(T[name]), "32", "256"], { input: Buffer.from(x.buffer) });
      const mine = quantize(T[name], x);
      expect(Buffer.from(mine).equals(ref), `${name} on ${what} data`).toBe(true);
    }
  });

  it.each(Object.keys(DEQUANT_SYMBOL) as GgmlTypeName[])("%s: dequantize equals ggml's on random blocks, bit for bit", (name) => {
    const t = ggmlTypeInfo(T[name])!;
    const n = 256 * 16;
    const blocks = new Uint8Array((n / t.blockSize) * t.typeSize);
    const r = rand(blocks.length, 40 + t.id, 1);
    for (let i = 0; i < blocks.length; i++) blocks[i] = Math.floor((r[i]! + 1) * 128) & 0xff;
    // finite fp16 scales: clear the top exponent bit
    for (let o = 0; o < blocks.length; o += t.typeSize) for (const h of HALF_FIELDS[name]!) blocks[o + h + 1] = blocks[o + h + 1]! & 0xbf;
    const ref = execFileSync(codec, [GGML_BASE, "d", DEQUANT_SYMBOL[name]!, String(n)], { input: Buffer.from(blocks) });
    const mine = dequantize(t.id, blocks, n);
    expect(Buffer.from(mine.buffer).equals(ref)).toBe(true);
  });
});

describe.skipIf(!NATIVE || !LIBLLAMA)(`the GGUF writer's tensors equal llama-quantize's${skipNote}`, () => {
  it("quantizing this project's F32 GGUF with llama.cpp gives exactly the bytes of our codecs, for every ftype", () => {
    const dir = tmpDir("moe-run-llq-");
    const quantizer = compile(dir, "quantize", QUANTIZE_C, [path.join(BINS, LIBLLAMA!)]);
    const hf = path.join(dir, "hf");
    // Rows of 256: the k-quants apply everywhere (the bundled models' rows are not multiples of 256).
    writeSyntheticCheckpoint(hf, { tokenizerFrom: path.join(MODELS, "tiny-mixtral"), vocabSize: 512, hiddenSize: 256, numLayers: 1, numHeads: 4, numKvHeads: 2, numExperts: 4, topK: 2, expertFfn: 256, dtype: "F32", seed: 3 });
    const f32 = path.join(dir, "m-f32.gguf");
    exportGguf(hf, f32, { type: "F32" });
    const src = GgufFile.open(f32);
    try {
      const seen = new Set<string>();
      // llama_ftype: F16 1, Q8_0 7, Q4_0 2, Q4_1 3, Q5_0 8, Q5_1 9, Q2_K 10, Q3_K_M 12, Q4_K_M 15, Q5_K_M 17, Q6_K 18
      for (const ftype of [1, 7, 2, 3, 8, 9, 10, 12, 15, 17, 18]) {
        const out = path.join(dir, `m-${ftype}.gguf`);
        execFileSync(quantizer, [f32, out, String(ftype)], { stdio: "pipe" });
        const q = GgufFile.open(out);
        try {
          for (const t of q.tensors.values()) {
            seen.add(t.type.name);
            const mine = quantize(t.type.id, src.readFloat32(t.name));
            expect(Buffer.from(mine).equals(Buffer.from(q.readBytes(t.name))), `${t.name} as ${t.type.name} (ftype ${ftype})`).toBe(true);
          }
        } finally {
          q.close();
        }
        fs.rmSync(out);
      }
      expect([...seen].sort()).toEqual(["F16", "F32", "Q2_K", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0"]);
    } finally {
      src.close();
    }
  });
});
