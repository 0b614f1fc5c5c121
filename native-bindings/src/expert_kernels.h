// Expert kernels over the store's record formats. A record is three matrices, gate [F,H],
// up [F,H], down [H,F], each row-major in one of these encodings (blocks run along a row), and
// with expert biases (ExpertOptions::bias) then fp32 biases gate [F], up [F], down [H]:
//   F32: float[rows*cols]
//   F16: uint16 (IEEE half)[rows*cols]
//   Q8 : float scale[rows*cols/32], then int8 q[rows*cols]            x = scale * q
//   Q4 : float scale[rows*cols/32], then uint8 packed[rows*cols/2]     x = scale * (nibble - 8),
//        element 2i in the low nibble of byte i, 2i+1 in the high nibble
//   MX4: OCP MXFP4: uint8 e[rows*cols/32] (E8M0 block scales), then uint8 packed[rows*cols/2]
//        (E2M1 codes, nibble order as Q4)    x = kMx4X2[code] * 2^(e - 128)   (kMx4X2: 2 * E2M1)
//   Q4K: GGUF's Q4_K super-blocks as they are (llama.cpp block_q4_K, 144 bytes per 256 values;
//        a row is whole super-blocks, cols % 256 == 0): fp16 d, dmin; scales[12] (six-bit scale
//        sc_j and min m_j of each 32-value sub-block j); qs[128] (sub-block 2k: low nibbles of
//        qs[32k..32k+31], 2k+1: their high nibbles)      x = fp32(d*sc_j) * q - fp32(dmin*m_j)
//   Q5K: GGUF's Q5_K super-blocks (block_q5_K, 176 bytes per 256): Q4K's d, dmin, scales[12], then
//        qh[32] (bit j of qh[l]: the fifth bit of value l of sub-block j), qs[128] as Q4K's
//                                                        x = fp32(d*sc_j) * q - fp32(dmin*m_j), q in 0..31
//   Q6K: GGUF's Q6_K super-blocks (block_q6_K, 210 bytes per 256): ql[128], qh[64], int8
//        scales[16] (one per 16 values), fp16 d          x = fp32(d*sc) * (q - 32), q in 0..63
//   Q2K: GGUF's Q2_K super-blocks (block_q2_K, 84 bytes per 256): scales[16] (per 16 values: scale
//        sc in the low nibble, min m in the high one), qs[64] (2-bit levels), fp16 d, dmin
//                                                        x = fp32(d*sc) * q - fp32(dmin*m), q in 0..3
//   Q3K: GGUF's Q3_K super-blocks (block_q3_K, 110 bytes per 256): hmask[32], qs[64], scales[12]
//        (sixteen six-bit scales), fp16 d                 x = fp32(d*(sc - 32)) * q, q in -4..3
//   Q41, Q50, Q51: GGUF's 32-value blocks as they are (block_q4_1 {fp16 d, m; qs[16]} 20 bytes,
//        block_q5_0 {fp16 d; qh[4]; qs[16]} 22, block_q5_1 {fp16 d, m; qh[4]; qs[16]} 24; value j
//        in the low nibble of qs[j], j+16 in the high one; fifth bit of value j: bit j of qh)
//        Q41/Q51: x = d*q + m (q in 0..15 / 0..31); Q50: x = d*(q - 16)
//
// Arithmetic. F32/F16: fp32 multiply-adds with a fixed order per output element, so a result does
// not depend on the thread count nor on how many tokens share the call. Q8/Q4/MX4: integer dot
// products (MX4's doubled E2M1 values are integers -12..12; Q4K/Q6K per 32-value sub-block, see
// below): each token's activation row is
// quantized once per call to int8 in blocks of 32 (one fp32 scale per block, d = amax/127,
// q = round-half-even(x * (1/d))), each block's integer dot product with the weights is exact,
// scaled by w_scale*x_scale and summed in fp32 (again a fixed order per output element:
// independent of threads and of the number of tokens). Q4K sub-block j of a row against
// activation block b (d_x, q_x, s_x = sum q_x): dot(q, q_x) * (fp32(d*sc_j) * d_x), and
// s_x * (fp32(dmin*m_j) * d_x) summed apart and taken off at the end. Q6K: the exact integer
// sc_0 * dot(q - 32, q_x)[first 16] + sc_1 * dot(q - 32, q_x)[last 16], times d * d_x.
// Q2K/Q3K as Q6K (integer scales of the two 16-value halves times their integer dots, times
// d * d_x); Q2K's mins: the exact m_0 * sum(q_x)[first 16] + m_1 * sum(q_x)[last 16], times
// dmin * d_x, summed apart and taken off at the end. Q50: dot(q, q_x) - 16 s_x, times d * d_x.
// Q41/Q51: dot(q, q_x) * (d * d_x), and s_x * (m * d_x) summed apart and added at the end
// (kernels_blocks_isa.inc).
//
// The code runs at one of several instruction-set levels, chosen once per process from the CPU's
// features (the build targets baseline x86-64: no -march=native):
//   scalar : plain C++ (any CPU, any architecture)
//   avx2   : AVX2 + FMA + F16C
//   vnni   : avx2 plus AVX-VNNI or AVX512-VNNI/VL integer dot products (Q8/Q4/MX4)
// MOE_RUN_KERNEL_ISA=scalar|avx2|vnni forces a level; a level the CPU lacks is an error that
// kernel_isa_check() reports (the kernels themselves then run at the best level the CPU has, so
// a caller that does not check still never executes an instruction the CPU lacks).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moe {

enum class Enc : int { F32 = 0, F16 = 1, Q8 = 2, Q4 = 3, MX4 = 4, Q4K = 5, Q6K = 6, Q5K = 7, Q41 = 8, Q50 = 9, Q51 = 10, Q2K = 11, Q3K = 12 };
constexpr int kEncCount = 13;
constexpr int kBlock = 32;
constexpr int kQK = 256;  // values per k-quant super-block (Q2K..Q6K)
constexpr size_t kQ4KBytes = 144, kQ5KBytes = 176, kQ6KBytes = 210, kQ2KBytes = 84, kQ3KBytes = 110;
constexpr size_t kQ41Bytes = 20, kQ50Bytes = 22, kQ51Bytes = 24;
// Twice the E2M1 value of each 4-bit MXFP4 code.
constexpr int8_t kMx4X2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

size_t matrix_bytes(Enc enc, size_t rows, size_t cols);
// GGUF blocks with a kernel of their own (kernels_blocks_isa.inc): Q41, Q50, Q51, Q2K, Q3K.
inline bool enc_ggml_blocks(Enc enc) { return enc == Enc::Q41 || enc == Enc::Q50 || enc == Enc::Q51 || enc == Enc::Q2K || enc == Enc::Q3K; }
// k-quant super-blocks of 256 values (Q2K..Q6K).
inline bool enc_kquant(Enc enc) { return enc == Enc::Q4K || enc == Enc::Q5K || enc == Enc::Q6K || enc == Enc::Q2K || enc == Enc::Q3K; }
// Block-quantized encodings (all but F32 and F16): integer-dot kernels on quantized activations.
inline bool enc_quantized(Enc enc) { return enc == Enc::Q8 || enc == Enc::Q4 || enc == Enc::MX4 || enc_kquant(enc) || enc_ggml_blocks(enc); }
// The multiple a row's length must be of: 256 for Q2K..Q6K, 32 for Q8/Q4/MX4/Q41/Q50/Q51, else 1.
inline size_t enc_row_multiple(Enc enc) { return enc_kquant(enc) ? kQK : enc_quantized(enc) ? kBlock : 1; }

// y[T, rows] = x[T, cols] . W^T for one encoded matrix W [rows, cols]. Q8/Q4/MX4 need cols % 32 == 0.
void matmul_rows(Enc enc, const uint8_t* w, size_t rows, size_t cols, const float* x, size_t T, float* y, int threads);

// Several independent matmuls in one dispatch to the thread pool (the union of their rows is split
// across threads): e.g. q/k/v, or gate/up, on the same input. Each job is what matmul_rows does.
struct MatmulJob {
  Enc enc;
  const uint8_t* w;
  size_t rows, cols;
  const float* x;  // [T, cols]
  size_t T;
  float* y;  // [T, rows]
};
void matmul_rows_batch(const MatmulJob* jobs, size_t n, int threads);

// Runs fn(begin, end) over [0, n) split into up to `threads` contiguous shares, on the kernels'
// thread pool (the calling thread takes part); returns when all are done. Which share holds an
// index depends only on n and threads, not which thread runs it. threads <= 1 or n <= 1: one call
// on this thread. A matmul or parallel_for inside fn runs on fn's thread. fn must not throw.
void parallel_for(int threads, size_t n, const std::function<void(size_t, size_t)>& fn);

// What an expert computes between its matrices (src/kernels/expertActivation.ts):
//   Silu         : h = silu(g) * u
//   ClampedSwiglu: g' = min(g, limit), u' = clamp(u, -limit, limit), h = (u' + 1) * g' * sigmoid(alpha g')
// with g = gate x (+ gate bias), u = up x (+ up bias); out = down h (+ down bias).
enum class Activation : int { Silu = 0, ClampedSwiglu = 1 };
struct ExpertOptions {
  Activation act = Activation::Silu;
  float alpha = 0.f, limit = 0.f;
  bool bias = false;  // the record ends with fp32 biases gate [F], up [F], down [H]
};

// The encodings of a record's three matrices: one for all (store/expertEncoding.ts), or each its
// own where a GGUF file mixes types (Q4_K_M: Q6_K ffn_down in some layers; store/recordEncodings.ts).
struct RecordEncs {
  Enc gate, up, down;
  RecordEncs(Enc all) : gate(all), up(all), down(all) {}  // NOLINT: a plain encoding is a record's
  RecordEncs(Enc g, Enc u, Enc d) : gate(g), up(u), down(d) {}
};

// Bytes of one record: the three matrices, plus (2F + H) * 4 with biases.
size_t expert_record_bytes(const RecordEncs& enc, size_t H, size_t F, bool bias);

// out[T, H] for one expert record (default options: down( silu(gate x) * (up x) )).
void expert_forward(const RecordEncs& enc, const uint8_t* record, size_t H, size_t F, const float* x, size_t T, float* out, int threads, const ExpertOptions& o = ExpertOptions());

// One expert of a batch: its record, its tokens x [T, H] and its output out [T, H].
struct ExpertCall {
  const uint8_t* record;
  const float* x;
  size_t T;
  float* out;
};
// Several experts of one layer (same encodings and options) at once: each out is bit for bit what
// expert_forward gives that expert alone. With as many tokens each and at least one per thread,
// whole experts go to each thread (their down projections' row chunks shared with threads that
// finish first); otherwise every matrix is split by rows, the pool handed the work twice per call.
void experts_forward(const RecordEncs& enc, const ExpertCall* calls, size_t n, size_t H, size_t F, int threads, const ExpertOptions& o = ExpertOptions());

// Encodes a float matrix [rows, cols] into `dst` (matrix_bytes(enc, rows, cols) bytes). Not for
// the GGUF block encodings (Q4K.., Q41..: encoded by llama.cpp's reference quantizer in TypeScript;
// the binding refuses them).
void encode_matrix(Enc enc, const float* src, size_t rows, size_t cols, uint8_t* dst);

// The level the kernels run at ("scalar", "avx2", "vnni", "avx512").
const char* kernel_isa();
// The levels this CPU can run, slowest first.
std::vector<std::string> kernel_isas();
// False (with a message naming what the CPU has) when MOE_RUN_KERNEL_ISA asks for a level this
// CPU cannot run, or names no level. Bindings call it before computing and throw.
bool kernel_isa_check(std::string* err);

}  // namespace moe
