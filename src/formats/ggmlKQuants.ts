/**
 * The 256-element super-block ("k-quant") ggml types, written from llama.cpp's published
 * definitions (ggml-common.h block layouts; ggml-quants.c quantize_row_q{2..6}_K_ref, the scale
 * searches make_qx_quants, make_q3_quants, make_qkx2_quants, and the dequantizers). Every C float
 * operation is one Math.fround here, so the bytes equal llama.cpp's reference quantizer's.
 *
 * Layouts (bytes): Q2_K scales[16] qs[64] d dmin (84); Q3_K hmask[32] qs[64] scales[12] d (110);
 * Q4_K d dmin scales[12] qs[128] (144); Q5_K d dmin scales[12] qh[32] qs[128] (176);
 * Q6_K ql[128] qh[64] scales[16] (int8) d (210). d and dmin are fp16.
 */
import { half, nearestInt, putHalf } from "./ggmlFloat.js";
import { makeQ3Quants, makeQkx2Quants, makeQxQuants } from "./ggmlScaleSearch.js";

const f = Math.fround;
const QK = 256;
const GROUP_MAX_EPS = f(1e-15);
const int8 = (v: number) => (v << 24) >> 24;

/** The 6-bit scale and min of sub-block j from the 12 packed bytes of Q4_K / Q5_K. */
function scaleMinK4(j: number, q: Uint8Array, o: number): [number, number] {
  if (j < 4) return [q[o + j]! & 63, q[o + j + 4]! & 63];
  return [(q[o + j + 4]! & 0xf) | ((q[o + j - 4]! >> 6) << 4), (q[o + j + 4]! >> 4) | ((q[o + j]! >> 6) << 4)];
}

/** Packs 8 six-bit scales and mins into 12 bytes (the inverse of scaleMinK4). */
function packScaleMinK4(ls: Uint8Array, lm: Uint8Array, out: Uint8Array, o: number): void {
  for (let j = 0; j < 12; j++) out[o + j] = 0;
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      out[o + j] = ls[j]!;
      out[o + j + 4] = lm[j]!;
    } else {
      out[o + j + 4] = (ls[j]! & 0xf) | ((lm[j]! & 0xf) << 4);
      out[o + j - 4] |= (ls[j]! >> 4) << 6;
      out[o + j] |= (lm[j]! >> 4) << 6;
    }
  }
}

/** Low 2 bits of 256 levels, 4 per byte: byte j/4+l of each 128 holds l, l+32, l+64, l+96. */
function pack2Bits(L: Uint8Array | Int8Array, out: Uint8Array, o: number): void {
  for (let j = 0; j < QK; j += 128) {
    for (let l = 0; l < 32; l++) {
      out[o + j / 4 + l] = (L[j + l]! | (L[j + l + 32]! << 2) | (L[j + l + 64]! << 4) | (L[j + l + 96]! << 6)) & 0xff;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Q2_K: 16 sub-blocks of 16, 2-bit levels, 4-bit scale and min per sub-block.

export function quantizeQ2_K(x: Float32Array): Uint8Array {
  const nb = x.length / QK;
  const out = new Uint8Array(nb * 84);
  const L = new Uint8Array(QK);
  const Laux = new Uint8Array(16);
  const weights = new Float32Array(16);
  const mins = new Float32Array(16);
  const scales = new Float32Array(16);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK;
    const o = i * 84;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 16; j++) {
      for (let l = 0; l < 16; l++) weights[l] = Math.abs(x[xb + 16 * j + l]!);
      [scales[j], mins[j]] = makeQkx2Quants(16, 3, x, xb + 16 * j, weights, L, 16 * j, Laux, -0.5, f(0.1), 15, true);
      if (scales[j]! > maxScale) maxScale = scales[j]!;
      if (mins[j]! > maxMin) maxMin = mins[j]!;
    }
    let d = 0;
    let dmin = 0;
    if (maxScale > 0) {
      const iscale = f(15 / maxScale);
      for (let j = 0; j < 16; j++) out[o + j] = nearestInt(f(iscale * scales[j]!)) & 0xff;
      d = putHalf(out, o + 80, f(maxScale / 15));
    } else {
      d = putHalf(out, o + 80, 0);
    }
    if (maxMin > 0) {
      const iscale = f(15 / maxMin);
      for (let j = 0; j < 16; j++) out[o + j] |= (nearestInt(f(iscale * mins[j]!)) << 4) & 0xff;
      dmin = putHalf(out, o + 82, f(maxMin / 15));
    } else {
      dmin = putHalf(out, o + 82, 0);
    }
    for (let j = 0; j < 16; j++) {
      const dj = f(d * (out[o + j]! & 0xf));
      if (!dj) continue;
      const dm = f(dmin * (out[o + j]! >> 4));
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = Math.max(0, Math.min(3, nearestInt(f(f(x[xb + 16 * j + ii]! + dm) / dj))));
    }
    pack2Bits(L, out, o + 16);
  }
  return out;
}

export function dequantizeQ2_K(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  let y = 0;
  for (let i = 0; i < n / QK; i++) {
    const o = i * 84;
    const d = half(b, o + 80);
    const min = half(b, o + 82);
    let q = o + 16;
    let is = 0;
    for (let k = 0; k < QK; k += 128) {
      for (let shift = 0; shift < 8; shift += 2) {
        for (let h = 0; h < 2; h++) {
          const sc = b[o + is++]!;
          const dl = f(d * (sc & 0xf));
          const ml = f(min * (sc >> 4));
          for (let l = 0; l < 16; l++) out[y++] = f(dl * ((b[q + 16 * h + l]! >> shift) & 3)) - ml;
        }
      }
      q += 32;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Q3_K: 16 sub-blocks of 16, 3-bit levels (2 low bits + a high-bit mask), 6-bit signed scales.

/** The 6-bit scale of sub-block j (0..63, 32 = zero) from the 12 packed bytes of Q3_K. */
function q3Scale(b: Uint8Array, o: number, j: number): number {
  const low = j < 8 ? b[o + j]! & 0xf : b[o + j - 8]! >> 4;
  return low | (((b[o + 8 + (j % 4)]! >> (2 * (j >> 2))) & 3) << 4);
}

export function quantizeQ3_K(x: Float32Array): Uint8Array {
  const nb = x.length / QK;
  const out = new Uint8Array(nb * 110);
  const L = new Int8Array(QK);
  const scales = new Float32Array(16);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK;
    const o = i * 110;
    const so = o + 96; // scales[12]
    let maxScale = 0;
    let amax = 0;
    for (let j = 0; j < 16; j++) {
      scales[j] = makeQ3Quants(16, 4, x, xb + 16 * j, L, 16 * j);
      const s = Math.abs(scales[j]!);
      if (s > amax) {
        amax = s;
        maxScale = scales[j]!;
      }
    }
    let d: number;
    if (maxScale) {
      const iscale = f(-32 / maxScale);
      for (let j = 0; j < 16; j++) {
        let l = int8(nearestInt(f(iscale * scales[j]!)));
        l = Math.max(-32, Math.min(31, l)) + 32;
        if (j < 8) out[so + j] = l & 0xf;
        else out[so + j - 8] |= (l & 0xf) << 4;
        l >>= 4;
        out[so + 8 + (j % 4)] |= l << (2 * (j >> 2));
      }
      d = putHalf(out, o + 108, f(1 / iscale));
    } else {
      d = putHalf(out, o + 108, 0);
    }
    for (let j = 0; j < 16; j++) {
      const dj = f(d * (q3Scale(out, so, j) - 32));
      if (!dj) continue;
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = Math.max(-4, Math.min(3, nearestInt(f(x[xb + 16 * j + ii]! / dj)))) + 4;
    }
    // hmask: bit k of byte m is the high bit of level m + 32k.
    let m = 0;
    let hm = 1;
    for (let j = 0; j < QK; j++) {
      if (L[j]! > 3) {
        out[o + m] |= hm;
        L[j] = L[j]! - 4;
      }
      if (++m === 32) {
        m = 0;
        hm <<= 1;
      }
    }
    pack2Bits(L, out, o + 32);
  }
  return out;
}

export function dequantizeQ3_K(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  let y = 0;
  for (let i = 0; i < n / QK; i++) {
    const o = i * 110;
    const d = half(b, o + 108);
    let q = o + 32;
    let m = 1;
    let is = 0;
    for (let k = 0; k < QK; k += 128) {
      for (let shift = 0; shift < 8; shift += 2) {
        for (let h = 0; h < 2; h++) {
          const dl = f(d * (q3Scale(b, o + 96, is++) - 32));
          for (let l = 0; l < 16; l++) {
            const idx = 16 * h + l;
            out[y++] = dl * (((b[q + idx]! >> shift) & 3) - (b[o + idx]! & m ? 0 : 4));
          }
        }
        m <<= 1;
      }
      q += 32;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Q4_K and Q5_K: 8 sub-blocks of 32, 4- or 5-bit levels, 6-bit scale and min per sub-block.

function quantizeK45(x: Float32Array, bits: 4 | 5): Uint8Array {
  const blockBytes = bits === 4 ? 144 : 176;
  const nmax = bits === 4 ? 15 : 31;
  const nb = x.length / QK;
  const out = new Uint8Array(nb * blockBytes);
  const L = new Uint8Array(QK);
  const Laux = new Uint8Array(32);
  const weights = new Float32Array(32);
  const mins = new Float32Array(8);
  const scales = new Float32Array(8);
  const ls = new Uint8Array(8);
  const lm = new Uint8Array(8);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK;
    const o = i * blockBytes;
    let maxScale = 0;
    let maxMin = 0;
    for (let j = 0; j < 8; j++) {
      let sumX2 = 0;
      for (let l = 0; l < 32; l++) sumX2 = f(sumX2 + f(x[xb + 32 * j + l]! * x[xb + 32 * j + l]!));
      const avX = f(Math.sqrt(f(sumX2 / 32)));
      for (let l = 0; l < 32; l++) weights[l] = f(avX + Math.abs(x[xb + 32 * j + l]!));
      [scales[j], mins[j]] =
        bits === 4
          ? makeQkx2Quants(32, 15, x, xb + 32 * j, weights, L, 32 * j, Laux, -1, f(0.1), 20, false)
          : makeQkx2Quants(32, 31, x, xb + 32 * j, weights, L, 32 * j, Laux, -0.5, f(0.1), 15, false);
      if (scales[j]! > maxScale) maxScale = scales[j]!;
      if (mins[j]! > maxMin) maxMin = mins[j]!;
    }
    const invScale = maxScale > 0 ? f(63 / maxScale) : 0;
    const invMin = maxMin > 0 ? f(63 / maxMin) : 0;
    for (let j = 0; j < 8; j++) {
      ls[j] = Math.min(63, nearestInt(f(invScale * scales[j]!)) & 0xff);
      lm[j] = Math.min(63, nearestInt(f(invMin * mins[j]!)) & 0xff);
    }
    packScaleMinK4(ls, lm, out, o + 4);
    const d = putHalf(out, o, f(maxScale / 63));
    const dmin = putHalf(out, o + 2, f(maxMin / 63));
    for (let j = 0; j < 8; j++) {
      const [sc, m] = scaleMinK4(j, out, o + 4);
      const dj = f(d * sc);
      if (!dj) continue;
      const dm = f(dmin * m);
      for (let ii = 0; ii < 32; ii++) L[32 * j + ii] = Math.max(0, Math.min(nmax, nearestInt(f(f(x[xb + 32 * j + ii]! + dm) / dj))));
    }
    if (bits === 4) {
      for (let j = 0, q = o + 16; j < QK; j += 64, q += 32) {
        for (let l = 0; l < 32; l++) out[q + l] = L[j + l]! | (L[j + l + 32]! << 4);
      }
    } else {
      const qh = o + 16;
      let ql = o + 48;
      let m1 = 1;
      let m2 = 2;
      for (let k = 0; k < QK; k += 64) {
        for (let j = 0; j < 32; j++) {
          let l1 = L[k + j]!;
          if (l1 > 15) {
            l1 -= 16;
            out[qh + j] |= m1;
          }
          let l2 = L[k + j + 32]!;
          if (l2 > 15) {
            l2 -= 16;
            out[qh + j] |= m2;
          }
          out[ql + j] = l1 | (l2 << 4);
        }
        m1 <<= 2;
        m2 <<= 2;
        ql += 32;
      }
    }
  }
  return out;
}

export const quantizeQ4_K = (x: Float32Array) => quantizeK45(x, 4);
export const quantizeQ5_K = (x: Float32Array) => quantizeK45(x, 5);

export function dequantizeQ4_K(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  let y = 0;
  for (let i = 0; i < n / QK; i++) {
    const o = i * 144;
    const d = half(b, o);
    const min = half(b, o + 2);
    let q = o + 16;
    for (let is = 0; is < 8; is += 2, q += 32) {
      const [sc1, m1] = scaleMinK4(is, b, o + 4);
      const [sc2, m2] = scaleMinK4(is + 1, b, o + 4);
      const d1 = f(d * sc1);
      const mm1 = f(min * m1);
      const d2 = f(d * sc2);
      const mm2 = f(min * m2);
      for (let l = 0; l < 32; l++) out[y++] = f(d1 * (b[q + l]! & 0xf)) - mm1;
      for (let l = 0; l < 32; l++) out[y++] = f(d2 * (b[q + l]! >> 4)) - mm2;
    }
  }
  return out;
}

export function dequantizeQ5_K(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  let y = 0;
  for (let i = 0; i < n / QK; i++) {
    const o = i * 176;
    const d = half(b, o);
    const min = half(b, o + 2);
    const qh = o + 16;
    let ql = o + 48;
    let u1 = 1;
    let u2 = 2;
    for (let is = 0; is < 8; is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
      const [sc1, m1] = scaleMinK4(is, b, o + 4);
      const [sc2, m2] = scaleMinK4(is + 1, b, o + 4);
      const d1 = f(d * sc1);
      const mm1 = f(min * m1);
      const d2 = f(d * sc2);
      const mm2 = f(min * m2);
      for (let l = 0; l < 32; l++) out[y++] = f(d1 * ((b[ql + l]! & 0xf) + (b[qh + l]! & u1 ? 16 : 0))) - mm1;
      for (let l = 0; l < 32; l++) out[y++] = f(d2 * ((b[ql + l]! >> 4) + (b[qh + l]! & u2 ? 16 : 0))) - mm2;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Q6_K: 16 sub-blocks of 16, 6-bit levels (4 low bits + 2 high bits), int8 scales.

export function quantizeQ6_K(x: Float32Array): Uint8Array {
  const nb = x.length / QK;
  const out = new Uint8Array(nb * 210);
  const L = new Int8Array(QK);
  const scales = new Float32Array(16);
  for (let i = 0; i < nb; i++) {
    const xb = i * QK;
    const o = i * 210;
    let maxScale = 0;
    let maxAbsScale = 0;
    for (let ib = 0; ib < 16; ib++) {
      const scale = makeQxQuants(16, 32, x, xb + 16 * ib, L, 16 * ib, 1);
      scales[ib] = scale;
      const a = Math.abs(scale);
      if (a > maxAbsScale) {
        maxAbsScale = a;
        maxScale = scale;
      }
    }
    if (maxAbsScale < GROUP_MAX_EPS) continue; // the block stays all zero bytes (d = 0)
    const iscale = f(-128 / maxScale);
    const d = putHalf(out, o + 208, f(1 / iscale));
    const so = o + 192;
    for (let ib = 0; ib < 16; ib++) out[so + ib] = Math.min(127, nearestInt(f(iscale * scales[ib]!))) & 0xff;
    for (let j = 0; j < 16; j++) {
      const dj = f(d * int8(out[so + j]!));
      if (!dj) continue;
      for (let ii = 0; ii < 16; ii++) L[16 * j + ii] = Math.max(-32, Math.min(31, nearestInt(f(x[xb + 16 * j + ii]! / dj)))) + 32;
    }
    for (let j = 0, ql = o, qh = o + 128; j < QK; j += 128, ql += 64, qh += 32) {
      for (let l = 0; l < 32; l++) {
        const a = L[j + l]!;
        const b = L[j + l + 32]!;
        const c = L[j + l + 64]!;
        const e = L[j + l + 96]!;
        out[ql + l] = (a & 0xf) | ((c & 0xf) << 4);
        out[ql + l + 32] = (b & 0xf) | ((e & 0xf) << 4);
        out[qh + l] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
      }
    }
  }
  return out;
}

export function dequantizeQ6_K(b: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n / QK; i++) {
    const o = i * 210;
    const d = half(b, o + 208);
    for (let k = 0, ql = o, qh = o + 128, sc = o + 192, y = i * QK; k < QK; k += 128, ql += 64, qh += 32, sc += 8, y += 128) {
      const s = [0, 1, 2, 3, 4, 5, 6, 7].map((j) => f(d * int8(b[sc + j]!)));
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = b[qh + l]!;
        const q1 = ((b[ql + l]! & 0xf) | ((h & 3) << 4)) - 32;
        const q2 = ((b[ql + l + 32]! & 0xf) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((b[ql + l]! >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((b[ql + l + 32]! >> 4) | (((h >> 6) & 3) << 4)) - 32;
        out[y + l] = s[is]! * q1;
        out[y + l + 32] = s[is + 2]! * q2;
        out[y + l + 64] = s[is + 4]! * q3;
        out[y + l + 96] = s[is + 6]! * q4;
      }
    }
  }
  return out;
}
