// SwiGLU expert kernels over the store's record formats. A record is three matrices, gate [F,H],
// up [F,H], down [H,F], each row-major in one of these encodings (blocks run along a row):
//   F32: float[rows*cols]
//   F16: uint16 (IEEE half)[rows*cols]
//   Q8 : float scale[rows*cols/32], then int8 q[rows*cols]            x = scale * q
//   Q4 : float scale[rows*cols/32], then uint8 packed[rows*cols/2]     x = scale * (nibble - 8),
//        element 2i in the low nibble of byte i, 2i+1 in the high nibble
#pragma once
#include <cstddef>
#include <cstdint>

namespace moe {

enum class Enc : int { F32 = 0, F16 = 1, Q8 = 2, Q4 = 3 };
constexpr int kBlock = 32;

size_t matrix_bytes(Enc enc, size_t rows, size_t cols);

// y[T, rows] = x[T, cols] . W^T for one encoded matrix W [rows, cols].
void matmul_rows(Enc enc, const uint8_t* w, size_t rows, size_t cols, const float* x, size_t T, float* y, int threads);

// out[T, H] = down( silu(gate x) * (up x) ) for one expert record.
void expert_forward(Enc enc, const uint8_t* record, size_t H, size_t F, const float* x, size_t T, float* out, int threads);

// Encodes a float matrix [rows, cols] into `dst` (matrix_bytes(enc, rows, cols) bytes).
void encode_matrix(Enc enc, const float* src, size_t rows, size_t cols, uint8_t* dst);

}  // namespace moe
