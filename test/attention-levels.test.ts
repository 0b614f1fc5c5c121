/**
 * One dense layer (attention with grouped heads, sinks, a sliding window, fp32 and half caches,
 * head sizes 16, 48 and 64) run at every kernel instruction-set level this CPU has, each in its
 * own process, against the plain C++ level on the same inputs (llama.cpp's test-backend-ops idea):
 * the SIMD attention kernels (avx2's 8 lanes, avx512's 16 with its 16-value tails) must give the
 * plain loops' numbers to fp32 rounding. Model-level checks (logits against onnxruntime, greedy
 * tokens against Hugging Face) use the fixtures' head sizes; these shapes reach the other paths.
 */
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { loadNativeAddon } from "../src/kernels/nativeAddon.js";
import { ROOT } from "./helpers.js";

const addon = loadNativeAddon().addon;

interface Case {
  name: string;
  H: number;
  Hq: number;
  Hkv: number;
  hd: number;
  past: number;
  T: number;
  window: number;
  sinks: boolean;
  kvF16: boolean;
}

const CASES: Case[] = [
  { name: "hd 48, 3 heads per KV head, sinks, half cache", H: 96, Hq: 6, Hkv: 2, hd: 48, past: 37, T: 1, window: 0, sinks: true, kvF16: true },
  { name: "hd 64, 4 heads per KV head, fp32 cache, 3 tokens", H: 128, Hq: 8, Hkv: 2, hd: 64, past: 70, T: 3, window: 0, sinks: false, kvF16: false },
  { name: "hd 16, one head per KV head, window 20, half cache", H: 64, Hq: 2, Hkv: 2, hd: 16, past: 50, T: 1, window: 20, sinks: false, kvF16: true },
  { name: "hd 32, 5 heads per KV head, sinks, fp32 cache, 2 tokens", H: 64, Hq: 5, Hkv: 1, hd: 32, past: 133, T: 2, window: 0, sinks: true, kvF16: false },
];

// The child: builds the case's layer from a fixed seed, runs denseLayer once, prints attnOut.
const CHILD = `
import { createRequire } from "node:module";
const addon = createRequire(import.meta.url)(${JSON.stringify(path.join(ROOT, "native-bindings", "build", "Release", "moe_native.node"))});
const c = JSON.parse(process.argv[1]);
let s = 12345;
const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
const f = (n, scale) => Float32Array.from({ length: n }, () => rnd() * scale);
const { H, Hq, Hkv, hd, past, T } = c;
const E = 4, cap = past + T + 3;
const parts = [], sections = new Float64Array(30 * 3).fill(-1);
let at = 0;
const put = (i, a) => { sections.set([at, a.byteLength, 0], 3 * i); parts.push(a); at += a.byteLength; };
put(0, f(H, 1).map((v) => 1 + 0.1 * v));           // input norm
put(1, f(Hq * hd * H, 0.2));                         // q
put(2, f(Hkv * hd * H, 0.2));                        // k
put(3, f(Hkv * hd * H, 0.2));                        // v
put(4, f(H * Hq * hd, 0.2));                         // o
put(10, f(H, 1).map((v) => 1 + 0.1 * v));          // post norm
put(11, f(E * H, 0.2));                              // router
if (c.sinks) put(18, f(Hq, 2));                      // sink logits
const blob = new Uint8Array(at);
let o = 0;
for (const p of parts) { blob.set(new Uint8Array(p.buffer), o); o += p.byteLength; }
const spec = new Float64Array([H, Hq, Hkv, hd, E, 0, 1e-5, 0, 0, 1 / Math.sqrt(hd), hd, c.window, 0, 0, 0, 0, 0, c.kvF16 ? 1 : 0]);
// Cached keys and values: halves with exponents 12..16 (|v| in [2^-3, 4)), or fp32.
const half = () => ((rnd() < 0 ? 0x8000 : 0) | ((12 + Math.floor((rnd() + 1) * 2.5)) << 10) | Math.floor((rnd() + 1) * 511.5));
const kv = () => (c.kvF16 ? Uint16Array.from({ length: Hkv * cap * hd }, half) : f(Hkv * cap * hd, 1.5));
const kvK = kv(), kvV = kv();
const ang = f(T * hd, 3);
const cos = ang.map(Math.cos), sin = ang.map(Math.sin);
const hidden = f(T * H, 1e-3);
const attnOut = new Float32Array(T * H), moeIn = new Float32Array(T * H), logits = new Float32Array(T * E);
addon.denseLayer(spec, blob, sections, hidden, T, past, cos, sin, kvK, kvV, cap, attnOut, moeIn, logits, null, 2);
process.stdout.write(JSON.stringify({ isa: addon.kernelIsa(), out: Array.from(attnOut) }));
`;

function runAt(isa: string, c: Case): number[] {
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", CHILD, JSON.stringify(c)], { env: { ...process.env, MOE_RUN_KERNEL_ISA: isa }, encoding: "utf8", maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`MOE_RUN_KERNEL_ISA=${isa}: exit ${r.status ?? r.signal}\n${r.stderr}`);
  const res = JSON.parse(r.stdout) as { isa: string; out: number[] };
  expect(res.isa).toBe(isa);
  return res.out;
}

describe.skipIf(!addon)("attention at every kernel level against the plain C++ level", () => {
  const isas = addon?.kernelIsas() ?? [];
  for (const c of CASES)
    it(c.name, () => {
      const want = runAt("scalar", c);
      const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
      expect(scale).toBeGreaterThan(1e-2); // attention's output, not the tiny residual
      expect(want.every(Number.isFinite)).toBe(true);
      for (const isa of isas.filter((l) => l !== "scalar")) {
        const got = runAt(isa, c);
        expect(got.length).toBe(want.length);
        let worst = 0;
        for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - want[i]!));
        expect(worst / scale, `${isa}: ${c.name}`).toBeLessThan(1e-5);
      }
    });
});
