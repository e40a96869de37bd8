// Matrix products for the decoder passes of the CPU engine (csrc/cpu/decoder_*.cpp, encoder_cpu.cpp), written for
// the shapes of incremental and mask-predict decoding: few rows (1-4 at batch 1) against weights
// that sit in cache, where a general GEMM spends its time on packing and dispatch.
//
//   y[m][n] = sum_k x[m][k] * w[k][n] * scale[n] + bias[n]     for m < M, n_begin <= n < n_end
//   (or y[m][n] += the same with GemmWeight::accumulate: the residual connection)
//
// w is stored in panels of kPanel = 64 output columns: element (k, n) sits at
// ((n / 64) * K + k) * 64 + n % 64 (N padded with zero columns to a multiple of 64), so one panel
// (K x 64) is a contiguous stream; as float32, bfloat16 (upper 16 bits of a float32) or int8 (with
// a float32 scale per output column n). Every weight is widened to float32 before the
// multiply-add, so only the storage differs; except in two layouts made for a dot-product
// instruction: kBFloat16Pairs (AVX-512 BF16) and kInt8Quads (AVX-512 VNNI, int8 x uint8 products
// summed in int32, x quantized per row). The loop keeps an MR x 64 (or x 32) block of y in
// registers and streams a panel once per block of MR rows; the vector width is chosen at run time
// from what the CPU reports (AVX-512, AVX2 + FMA, or plain C++). Where the CPU has AMX (Isa::kAmx)
// the two dot-product layouts also run on its tiles (16 rows x 16 columns per tile product), as
// they are stored: bf16 pairs for every row count, int8 quads from kAmxInt8MinRows rows on.
//
// Plain C++17 + intrinsics behind target attributes: no torch, so csrc/tests/ can test it alone.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/isa.h"

namespace janus_fast {
namespace core {

// kBFloat16Pairs: bfloat16 weights laid out for the AVX-512 BF16 dot product: within a panel,
// row kp (of ceil(K / 2)) holds for each of the 64 columns the pair (w[2kp][n], w[2kp + 1][n]);
// x is rounded to bfloat16 as well and products accumulate in float32.
// kInt8Quads: int8 weights (per-column scale) laid out for the AVX-512 VNNI dot product: within a
// panel, row kq (of ceil(K / 4)) holds for each of the 64 columns the four weights w[4kq .. 4kq + 3][n];
// `scale` holds 2N floats: the N column scales, then the N column sums of the int8 weights. Each row
// of x is quantized to uint8 (quantize_row_u8) and products accumulate in int32.
enum class WeightType : int { kFloat32 = 0, kBFloat16 = 1, kInt8 = 2, kBFloat16Pairs = 3, kInt8Quads = 4 };

constexpr int64_t kPanel = 64;

inline int64_t num_panels(int64_t n) { return (n + kPanel - 1) / kPanel; }

struct GemmWeight {
  const void* data = nullptr;    // num_panels(N) panels of [K][64]
  WeightType type = WeightType::kFloat32;
  const float* scale = nullptr;  // [N] for kInt8, [2N] for kInt8Quads (scales, column sums), else nullptr
  const float* bias = nullptr;   // [N] or nullptr
  bool accumulate = false;       // add to y (a residual) instead of overwriting it
  int64_t k = 0;
  int64_t n = 0;
};

inline float widen(const float* w, int64_t i) { return w[i]; }
inline float widen(const uint16_t* w, int64_t i) {
  const uint32_t bits = static_cast<uint32_t>(w[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
inline float widen(const int8_t* w, int64_t i) { return static_cast<float>(w[i]); }

// float32 -> bfloat16 bits, rounding to nearest even (as torch's conversion); NaN stays NaN.
inline uint16_t to_bfloat16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float from_bfloat16(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

// kBFloat16Pairs in plain C++: x rounded to bfloat16, products summed in float32.
inline void gemm_pairs_scalar(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight, float* y,
                              int64_t ldy, int64_t n_begin, int64_t n_end) {
  const uint16_t* w = static_cast<const uint16_t*>(weight.data);
  const int64_t pairs = (weight.k + 1) / 2;
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      const uint16_t* column = w + (n / kPanel) * pairs * kPanel * 2 + (n % kPanel) * 2;
      float acc = 0.0f;
      for (int64_t k = 0; k < weight.k; ++k)
        acc += from_bfloat16(to_bfloat16(x[m * ldx + k])) * from_bfloat16(column[(k / 2) * kPanel * 2 + (k & 1)]);
      if (weight.bias != nullptr) acc += weight.bias[n];
      y[m * ldy + n] = weight.accumulate ? y[m * ldy + n] + acc : acc;
    }
  }
}

// One row of x (K floats) as uint8: x[k] ~ offset + step * q[k] with q in [0, 255], step = (max - min)
// / 255 and offset = min over the row (a constant row: step 0, q 0), q rounded to nearest even;
// packed four per uint32 (q[4i] in the low byte), zero past K. Every ISA's int8 product quantizes
// through this function or one that gives the same q (quantize_row_u8_avx512).
struct RowQuantization {
  float step, offset;
};

inline RowQuantization quantize_row_u8(const float* x, int64_t k, uint32_t* q) {
  float lo = x[0], hi = x[0];
  for (int64_t i = 1; i < k; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  const float inverse = hi > lo ? 255.0f / (hi - lo) : 0.0f;
  const int64_t quads = (k + 3) / 4;
  for (int64_t i = 0; i < quads; ++i) {
    uint32_t packed = 0;
    for (int64_t j = 0; j < 4 && 4 * i + j < k; ++j) {
      const float level = std::nearbyint((x[4 * i + j] - lo) * inverse);
      const uint32_t value = static_cast<uint32_t>(std::min(255.0f, std::max(0.0f, level)));
      packed |= value << (8 * j);
    }
    q[i] = packed;
  }
  return {hi > lo ? (hi - lo) / 255.0f : 0.0f, lo};
}

// y = scale[n] * (step * dot + offset * column_sum[n]) + bias[n] (+ y): the int8 product's epilogue
// for one output, dot = sum_k q[k] w[k][n] (int32).
inline float int8_output(int32_t dot, RowQuantization row, const GemmWeight& weight, int64_t n) {
  const float value = row.step * static_cast<float>(dot) + row.offset * weight.scale[weight.n + n];
  return value * weight.scale[n] + (weight.bias != nullptr ? weight.bias[n] : 0.0f);
}

// kInt8Quads in plain C++.
inline void gemm_quads_scalar(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight, float* y,
                              int64_t ldy, int64_t n_begin, int64_t n_end) {
  const int8_t* w = static_cast<const int8_t*>(weight.data);
  const int64_t quads = (weight.k + 3) / 4;
  std::vector<uint32_t> q(quads);
  for (int64_t m = 0; m < rows; ++m) {
    const RowQuantization row = quantize_row_u8(x + m * ldx, weight.k, q.data());
    for (int64_t n = n_begin; n < n_end; ++n) {
      const int8_t* column = w + (n / kPanel) * quads * kPanel * 4 + (n % kPanel) * 4;
      int32_t dot = 0;
      for (int64_t i = 0; i < quads; ++i)
        for (int j = 0; j < 4; ++j)
          dot += static_cast<int32_t>((q[i] >> (8 * j)) & 0xffu) * column[i * kPanel * 4 + j];
      const float value = int8_output(dot, row, weight, n);
      y[m * ldy + n] = weight.accumulate ? y[m * ldy + n] + value : value;
    }
  }
}

// Columns [n_begin, n_end) in plain C++ (the fallback, and the tail the vector kernels leave).
template <typename W>
void gemm_columns_scalar(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight,
                         float* y, int64_t ldy, int64_t n_begin, int64_t n_end) {
  const W* w = static_cast<const W*>(weight.data);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t n = n_begin; n < n_end; ++n) {
      float acc = 0.0f;
      const int64_t panel = (n / kPanel) * weight.k * kPanel + n % kPanel;
      for (int64_t k = 0; k < weight.k; ++k) acc += x[m * ldx + k] * widen(w, panel + k * kPanel);
      if (weight.scale != nullptr) acc *= weight.scale[n];
      if (weight.bias != nullptr) acc += weight.bias[n];
      y[m * ldy + n] = weight.accumulate ? y[m * ldy + n] + acc : acc;
    }
  }
}

#if JANUS_X86
JANUS_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
JANUS_AVX512 inline __m512 load16(const uint16_t* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
JANUS_AVX512 inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// One MR x 64 block of y: 4 * MR accumulators of 16 floats.
template <int MR, typename W>
JANUS_AVX512 inline void gemm_block_avx512(const float* x, int64_t ldx, const W* w, const GemmWeight& weight,
                                           float* y, int64_t ldy, int64_t n0) {
  __m512 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
  const W* column = w + (n0 / kPanel) * weight.k * kPanel;  // n0 is a panel start
  for (int64_t k = 0; k < weight.k; ++k, column += kPanel) {
    const __m512 w0 = load16(column), w1 = load16(column + 16);
    const __m512 w2 = load16(column + 32), w3 = load16(column + 48);
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_set1_ps(x[m * ldx + k]);
      acc[m][0] = _mm512_fmadd_ps(xv, w0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(xv, w1, acc[m][1]);
      acc[m][2] = _mm512_fmadd_ps(xv, w2, acc[m][2]);
      acc[m][3] = _mm512_fmadd_ps(xv, w3, acc[m][3]);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + 16 * j;
    const __m512 scale = weight.scale ? _mm512_loadu_ps(weight.scale + n) : _mm512_set1_ps(1.0f);
    const __m512 bias = weight.bias ? _mm512_loadu_ps(weight.bias + n) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      const __m512 base = weight.accumulate ? _mm512_add_ps(_mm512_loadu_ps(y + m * ldy + n), bias) : bias;
      _mm512_storeu_ps(y + m * ldy + n, _mm512_fmadd_ps(acc[m][j], scale, base));
    }
  }
}

template <typename W>
JANUS_AVX512 void gemm_avx512(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight, float* y,
                              int64_t ldy, int64_t n_begin, int64_t n_end) {
  const W* w = static_cast<const W*>(weight.data);
  int64_t n0 = n_begin;
  for (; n0 + 64 <= n_end; n0 += 64) {
    int64_t m0 = 0;
    for (; m0 + 4 <= rows; m0 += 4) gemm_block_avx512<4>(x + m0 * ldx, ldx, w, weight, y + m0 * ldy, ldy, n0);
    const float* xr = x + m0 * ldx;
    float* yr = y + m0 * ldy;
    switch (rows - m0) {
      case 3: gemm_block_avx512<3>(xr, ldx, w, weight, yr, ldy, n0); break;
      case 2: gemm_block_avx512<2>(xr, ldx, w, weight, yr, ldy, n0); break;
      case 1: gemm_block_avx512<1>(xr, ldx, w, weight, yr, ldy, n0); break;
      default: break;
    }
  }
  if (n0 < n_end) gemm_columns_scalar<W>(rows, x, ldx, weight, y, ldy, n0, n_end);
}

// The first `valid` of the 64 outputs from column n0 of one row of a bf16-pairs product (its four
// vectors of float32 sums): y = sum + bias, or sum + (y + bias) with weight.accumulate. Both
// kernels of the layout (AVX-512 BF16 and AMX) store through it.
JANUS_AVX512 inline void store_pairs_row(const __m512 sums[4], const GemmWeight& weight, float* y_row, int64_t n0,
                                         int64_t valid) {
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + 16 * j, count = std::min<int64_t>(16, valid - 16 * j);
    if (count <= 0) break;
    const __mmask16 mask = static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1u);
    const __m512 bias = weight.bias ? _mm512_maskz_loadu_ps(mask, weight.bias + n) : _mm512_setzero_ps();
    const __m512 base = weight.accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y_row + n), bias) : bias;
    _mm512_mask_storeu_ps(y_row + n, mask, _mm512_add_ps(sums[j], base));
  }
}

// One MR x 64 block of y from bfloat16 pairs: xp holds each row of x as ceil(K/2) bfloat16 pairs
// (one uint32 each); `valid` of the 64 columns are stored (the last panel may be partial).
template <int MR>
JANUS_AVX512_BF16 inline void gemm_block_bf16_pairs(const uint32_t* xp, int64_t pairs, const uint16_t* panel,
                                                    const GemmWeight& weight, float* y, int64_t ldy, int64_t n0,
                                                    int64_t valid) {
  __m512 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
  const uint16_t* row = panel;
  for (int64_t kp = 0; kp < pairs; ++kp, row += 2 * kPanel) {
    const __m512i w0 = _mm512_loadu_si512(row), w1 = _mm512_loadu_si512(row + 32);
    const __m512i w2 = _mm512_loadu_si512(row + 64), w3 = _mm512_loadu_si512(row + 96);
    for (int m = 0; m < MR; ++m) {
      const __m512i xv = _mm512_set1_epi32(static_cast<int>(xp[m * pairs + kp]));
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)xv, (__m512bh)w0);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], (__m512bh)xv, (__m512bh)w1);
      acc[m][2] = _mm512_dpbf16_ps(acc[m][2], (__m512bh)xv, (__m512bh)w2);
      acc[m][3] = _mm512_dpbf16_ps(acc[m][3], (__m512bh)xv, (__m512bh)w3);
    }
  }
  for (int m = 0; m < MR; ++m) store_pairs_row(acc[m], weight, y + m * ldy, n0, valid);
}

JANUS_AVX512_BF16 inline void gemm_bf16_pairs(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight,
                                              float* y, int64_t ldy, int64_t n_begin, int64_t n_end) {
  const int64_t pairs = (weight.k + 1) / 2;
  constexpr int64_t kRowsPerBlock = 6;
  thread_local std::vector<uint32_t> buffer;  // any K: a stack array would cap it
  if (static_cast<int64_t>(buffer.size()) < kRowsPerBlock * pairs) buffer.resize(kRowsPerBlock * pairs);
  uint32_t* xp = buffer.data();
  const uint16_t* w = static_cast<const uint16_t*>(weight.data);
  for (int64_t m0 = 0; m0 < rows; m0 += kRowsPerBlock) {
    const int64_t block = std::min(kRowsPerBlock, rows - m0);
    for (int64_t m = 0; m < block; ++m) {
      const float* xr = x + (m0 + m) * ldx;
      for (int64_t kp = 0; kp < pairs; ++kp) {
        const uint32_t lo = to_bfloat16(xr[2 * kp]);
        const uint32_t hi = 2 * kp + 1 < weight.k ? to_bfloat16(xr[2 * kp + 1]) : 0u;
        xp[m * pairs + kp] = lo | (hi << 16);
      }
    }
    float* yr = y + m0 * ldy;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kPanel) {
      const uint16_t* panel = w + (n0 / kPanel) * pairs * kPanel * 2;
      const int64_t valid = std::min(kPanel, n_end - n0);
      switch (block) {
        case 6: gemm_block_bf16_pairs<6>(xp, pairs, panel, weight, yr, ldy, n0, valid); break;
        case 5: gemm_block_bf16_pairs<5>(xp, pairs, panel, weight, yr, ldy, n0, valid); break;
        case 4: gemm_block_bf16_pairs<4>(xp, pairs, panel, weight, yr, ldy, n0, valid); break;
        case 3: gemm_block_bf16_pairs<3>(xp, pairs, panel, weight, yr, ldy, n0, valid); break;
        case 2: gemm_block_bf16_pairs<2>(xp, pairs, panel, weight, yr, ldy, n0, valid); break;
        default: gemm_block_bf16_pairs<1>(xp, pairs, panel, weight, yr, ldy, n0, valid); break;
      }
    }
  }
}

// quantize_row_u8 in 16 lanes: the same min, max and rounding (vcvtps2dq rounds to nearest even), so
// the same q.
JANUS_AVX512 inline RowQuantization quantize_row_u8_avx512(const float* x, int64_t k, uint32_t* q) {
  __m512 lo = _mm512_set1_ps(x[0]), hi = lo;
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo = _mm512_min_ps(lo, v);
    hi = _mm512_max_ps(hi, v);
  }
  alignas(64) float lanes_lo[16], lanes_hi[16];
  _mm512_store_ps(lanes_lo, lo);
  _mm512_store_ps(lanes_hi, hi);
  float low = lanes_lo[0], high = lanes_hi[0];
  for (int l = 1; l < 16; ++l) low = std::min(low, lanes_lo[l]), high = std::max(high, lanes_hi[l]);
  for (int64_t t = i; t < k; ++t) low = std::min(low, x[t]), high = std::max(high, x[t]);
  const float inverse = high > low ? 255.0f / (high - low) : 0.0f;
  const __m512 shift = _mm512_set1_ps(low), scale = _mm512_set1_ps(inverse);
  const __m512i zero = _mm512_setzero_si512();
  uint8_t* bytes = reinterpret_cast<uint8_t*>(q);
  i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512i level = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), shift), scale));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bytes + i), _mm512_cvtusepi32_epi8(_mm512_max_epi32(level, zero)));
  }
  for (; i < (k + 3) / 4 * 4; ++i) {
    const float level = i < k ? std::nearbyint((x[i] - low) * inverse) : 0.0f;
    bytes[i] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, level)));
  }
  return {high > low ? (high - low) / 255.0f : 0.0f, low};
}

// acc += the sums of four uint8 (x) x int8 (w) products per int32 lane (vpdpbusd). Inline assembly:
// GCC 12 spills every accumulator of the intrinsic's MR x 4 register block to the stack per step.
JANUS_AVX512_VNNI inline __m512i dot_u8_s8(__m512i acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
  return acc;
}

// The first `valid` of the 64 outputs from column n0 of one row of an int8-quads product (its four
// vectors of int32 dot products): int8_output's operations in its order, 16 columns at a time. Both
// kernels of the layout (AVX-512 VNNI and AMX) store through it, so equal dot products give equal y.
JANUS_AVX512 inline void store_quads_row(const __m512i dots[4], RowQuantization row, const GemmWeight& weight,
                                         float* y_row, int64_t n0, int64_t valid) {
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + 16 * j, count = std::min<int64_t>(16, valid - 16 * j);
    if (count <= 0) break;
    const __mmask16 mask = static_cast<__mmask16>(count >= 16 ? 0xffff : (1u << count) - 1u);
    const __m512 scale = _mm512_maskz_loadu_ps(mask, weight.scale + n);
    const __m512 sums = _mm512_maskz_loadu_ps(mask, weight.scale + weight.n + n);
    const __m512 bias = weight.bias ? _mm512_maskz_loadu_ps(mask, weight.bias + n) : _mm512_setzero_ps();
    const __m512 dot = _mm512_cvtepi32_ps(dots[j]);
    const __m512 value = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(row.step), dot),
                                       _mm512_mul_ps(_mm512_set1_ps(row.offset), sums));
    __m512 out = _mm512_add_ps(_mm512_mul_ps(value, scale), bias);
    if (weight.accumulate) out = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, y_row + n), out);
    _mm512_mask_storeu_ps(y_row + n, mask, out);
  }
}

// One MR x 64 block of y from int8 quads: xq holds each row of x as ceil(K/4) uint8 quads.
template <int MR>
JANUS_AVX512_VNNI inline void gemm_block_int8_quads(const uint32_t* xq, int64_t quads, const int8_t* panel,
                                                    const RowQuantization* rows, const GemmWeight& weight, float* y,
                                                    int64_t ldy, int64_t n0, int64_t valid) {
  __m512i acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_si512();
  const int8_t* row = panel;
  for (int64_t kq = 0; kq < quads; ++kq, row += 4 * kPanel) {
    const __m512i w0 = _mm512_loadu_si512(row), w1 = _mm512_loadu_si512(row + 64);
    const __m512i w2 = _mm512_loadu_si512(row + 128), w3 = _mm512_loadu_si512(row + 192);
    for (int m = 0; m < MR; ++m) {
      const __m512i xv = _mm512_set1_epi32(static_cast<int>(xq[m * quads + kq]));
      acc[m][0] = dot_u8_s8(acc[m][0], xv, w0);
      acc[m][1] = dot_u8_s8(acc[m][1], xv, w1);
      acc[m][2] = dot_u8_s8(acc[m][2], xv, w2);
      acc[m][3] = dot_u8_s8(acc[m][3], xv, w3);
    }
  }
  for (int m = 0; m < MR; ++m) store_quads_row(acc[m], rows[m], weight, y + m * ldy, n0, valid);
}

JANUS_AVX512_VNNI inline void gemm_int8_quads(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight,
                                              float* y, int64_t ldy, int64_t n_begin, int64_t n_end) {
  const int64_t quads = (weight.k + 3) / 4;
  constexpr int64_t kRowsPerBlock = 6;
  thread_local std::vector<uint32_t> buffer;  // any K: a stack array would cap it
  if (static_cast<int64_t>(buffer.size()) < kRowsPerBlock * quads) buffer.resize(kRowsPerBlock * quads);
  uint32_t* xq = buffer.data();
  RowQuantization quantization[kRowsPerBlock];
  const int8_t* w = static_cast<const int8_t*>(weight.data);
  for (int64_t m0 = 0; m0 < rows; m0 += kRowsPerBlock) {
    const int64_t block = std::min(kRowsPerBlock, rows - m0);
    for (int64_t m = 0; m < block; ++m)
      quantization[m] = quantize_row_u8_avx512(x + (m0 + m) * ldx, weight.k, xq + m * quads);
    float* yr = y + m0 * ldy;
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kPanel) {
      const int8_t* panel = w + (n0 / kPanel) * quads * kPanel * 4;
      const int64_t valid = std::min(kPanel, n_end - n0);
      const RowQuantization* q = quantization;
      switch (block) {
        case 6: gemm_block_int8_quads<6>(xq, quads, panel, q, weight, yr, ldy, n0, valid); break;
        case 5: gemm_block_int8_quads<5>(xq, quads, panel, q, weight, yr, ldy, n0, valid); break;
        case 4: gemm_block_int8_quads<4>(xq, quads, panel, q, weight, yr, ldy, n0, valid); break;
        case 3: gemm_block_int8_quads<3>(xq, quads, panel, q, weight, yr, ldy, n0, valid); break;
        case 2: gemm_block_int8_quads<2>(xq, quads, panel, q, weight, yr, ldy, n0, valid); break;
        default: gemm_block_int8_quads<1>(xq, quads, panel, q, weight, yr, ldy, n0, valid); break;
      }
    }
  }
}

// AMX tiles (Isa::kAmx): x in blocks of 16 rows (the last padded with zero rows, computed and not
// stored) against one 64-column panel at a time, as four 16-column output tiles (0-3) summed over K
// in steps of 64 bytes of x per row (32 bf16 / 64 uint8: tile 4) times 16 rows of the panel (tiles
// 5-7, loaded with the panel's row stride of 256 bytes: the bf16-pairs and int8-quads layouts are the
// B operands of the tile products as stored). Every block of a chunk of up to kAmxChunkRows rows is
// multiplied with a panel before the next panel is read, so the weights, which at batch 1 come from
// L3 or memory, are streamed once per chunk, not once per block. One tile configuration per call,
// released at the end.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

constexpr int64_t kTileRows = 16;
constexpr int64_t kTileBytes = 64;
constexpr int64_t kPanelRowBytes = kPanel * 4;  // one row of a pairs (2 x bf16) or quads (4 x int8) panel
constexpr int64_t kAmxChunkRows = 8 * kTileRows;

JANUS_AMX inline void load_tile_config() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.rows[t] = kTileRows, config.bytes_per_row[t] = kTileBytes;
  _tile_loadconfig(&config);
}

// Whether a product of this inner size runs on the tiles: K must fill whole 64-byte tile rows.
inline bool amx_pairs_fit(int64_t k) { return k % 32 == 0; }
inline bool amx_quads_fit(int64_t k) { return k % 64 == 0; }

// The four 16 x 16 output tiles of a 16-row block of x (`a`: 16 rows of `row_bytes`, 64 bytes of x
// per tile step) times one panel, stored to out[16][64] (float32 or int32: `Int8` picks the product).
// Output tile C += tile 4 (x) times tile B: uint8 x int8 quads summed in int32, or bf16 pairs in
// float32 (a macro: the intrinsics take tile numbers as literals).
#define JANUS_TILE_PRODUCT(C, B) \
  do {                           \
    if constexpr (Int8)          \
      _tile_dpbusd(C, 4, B);     \
    else                         \
      _tile_dpbf16ps(C, 4, B);   \
  } while (0)

template <bool Int8>
JANUS_AMX inline void amx_block(const uint8_t* a, int64_t row_bytes, const uint8_t* panel, void* out) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t offset = 0; offset < row_bytes; offset += kTileBytes) {
    _tile_loadd(4, a + offset, row_bytes);
    const uint8_t* b = panel + (offset / 4) * kPanelRowBytes;  // 16 panel rows per 64 bytes of x
    _tile_loadd(5, b, kPanelRowBytes);
    JANUS_TILE_PRODUCT(0, 5);
    _tile_loadd(6, b + kTileBytes, kPanelRowBytes);
    JANUS_TILE_PRODUCT(1, 6);
    _tile_loadd(7, b + 2 * kTileBytes, kPanelRowBytes);
    JANUS_TILE_PRODUCT(2, 7);
    _tile_loadd(5, b + 3 * kTileBytes, kPanelRowBytes);
    JANUS_TILE_PRODUCT(3, 5);
  }
  uint8_t* o = static_cast<uint8_t*>(out);
  _tile_stored(0, o, kPanelRowBytes);
  _tile_stored(1, o + kTileBytes, kPanelRowBytes);
  _tile_stored(2, o + 2 * kTileBytes, kPanelRowBytes);
  _tile_stored(3, o + 3 * kTileBytes, kPanelRowBytes);
}
#undef JANUS_TILE_PRODUCT

// kBFloat16Pairs (Int8 false: tdpbf16ps) or kInt8Quads (Int8 true: tdpbusd) on AMX tiles.
// bf16: the float32 sums are not summed in the same order as gemm_bf16_pairs's, so a weight that fits
// the tiles takes this kernel for every number of rows: each row's y depends on that row of x alone,
// as the exactness of speculative decoding needs. int8: the int32 dot products are exact whatever
// their order and the stores are store_quads_row's, so y is bit for bit gemm_int8_quads's.
template <bool Int8>
JANUS_AMX inline void gemm_amx(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight, float* y,
                               int64_t ldy, int64_t n_begin, int64_t n_end) {
  const int64_t words = weight.k / (Int8 ? 4 : 2);  // uint32 per row of x: bf16 pairs or uint8 quads
  thread_local std::vector<uint32_t> buffer;
  if (static_cast<int64_t>(buffer.size()) < kAmxChunkRows * words) buffer.resize(kAmxChunkRows * words);
  uint32_t* packed = buffer.data();
  RowQuantization quantization[kAmxChunkRows];
  alignas(64) uint32_t out[kTileRows][kPanel];  // float32 or int32 sums
  const uint8_t* w = static_cast<const uint8_t*>(weight.data);
  const int64_t panel_bytes = words * kPanelRowBytes;
  load_tile_config();
  for (int64_t c0 = 0; c0 < rows; c0 += kAmxChunkRows) {
    const int64_t chunk = std::min(kAmxChunkRows, rows - c0);
    const int64_t padded = (chunk + kTileRows - 1) / kTileRows * kTileRows;
    for (int64_t m = 0; m < chunk; ++m) {
      const float* xr = x + (c0 + m) * ldx;
      uint32_t* row = packed + m * words;
      if constexpr (Int8) {
        quantization[m] = quantize_row_u8_avx512(xr, weight.k, row);
      } else {
        for (int64_t kp = 0; kp < words; ++kp)
          row[kp] = to_bfloat16(xr[2 * kp]) | (static_cast<uint32_t>(to_bfloat16(xr[2 * kp + 1])) << 16);
      }
    }
    std::fill(packed + chunk * words, packed + padded * words, 0u);
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kPanel) {
      const uint8_t* panel = w + (n0 / kPanel) * panel_bytes;
      const int64_t valid = std::min(kPanel, n_end - n0);
      for (int64_t m0 = 0; m0 < chunk; m0 += kTileRows) {
        amx_block<Int8>(reinterpret_cast<const uint8_t*>(packed + m0 * words), words * 4, panel, out);
        for (int64_t m = 0; m < std::min(kTileRows, chunk - m0); ++m) {
          float* y_row = y + (c0 + m0 + m) * ldy;
          if constexpr (Int8) {
            const __m512i sums[4] = {_mm512_load_si512(out[m]), _mm512_load_si512(out[m] + 16),
                                     _mm512_load_si512(out[m] + 32), _mm512_load_si512(out[m] + 48)};
            store_quads_row(sums, quantization[m0 + m], weight, y_row, n0, valid);
          } else {
            const float* f = reinterpret_cast<const float*>(out[m]);
            const __m512 sums[4] = {_mm512_load_ps(f), _mm512_load_ps(f + 16), _mm512_load_ps(f + 32),
                                    _mm512_load_ps(f + 48)};
            store_pairs_row(sums, weight, y_row, n0, valid);
          }
        }
      }
    }
  }
  _tile_release();
}

JANUS_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
JANUS_AVX2 inline __m256 load8(const uint16_t* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
JANUS_AVX2 inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

// One MR x 32 block of y: 4 * MR accumulators of 8 floats (8 of the 16 registers at MR = 2).
template <int MR, typename W>
JANUS_AVX2 inline void gemm_block_avx2(const float* x, int64_t ldx, const W* w, const GemmWeight& weight,
                                       float* y, int64_t ldy, int64_t n0) {
  __m256 acc[MR][4];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < 4; ++j) acc[m][j] = _mm256_setzero_ps();
  const W* column = w + (n0 / kPanel) * weight.k * kPanel + n0 % kPanel;  // a half panel
  for (int64_t k = 0; k < weight.k; ++k, column += kPanel) {
    const __m256 w0 = load8(column), w1 = load8(column + 8), w2 = load8(column + 16), w3 = load8(column + 24);
    for (int m = 0; m < MR; ++m) {
      const __m256 xv = _mm256_set1_ps(x[m * ldx + k]);
      acc[m][0] = _mm256_fmadd_ps(xv, w0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(xv, w1, acc[m][1]);
      acc[m][2] = _mm256_fmadd_ps(xv, w2, acc[m][2]);
      acc[m][3] = _mm256_fmadd_ps(xv, w3, acc[m][3]);
    }
  }
  for (int j = 0; j < 4; ++j) {
    const int64_t n = n0 + 8 * j;
    const __m256 scale = weight.scale ? _mm256_loadu_ps(weight.scale + n) : _mm256_set1_ps(1.0f);
    const __m256 bias = weight.bias ? _mm256_loadu_ps(weight.bias + n) : _mm256_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      const __m256 base = weight.accumulate ? _mm256_add_ps(_mm256_loadu_ps(y + m * ldy + n), bias) : bias;
      _mm256_storeu_ps(y + m * ldy + n, _mm256_fmadd_ps(acc[m][j], scale, base));
    }
  }
}

template <typename W>
JANUS_AVX2 void gemm_avx2(int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight, float* y,
                          int64_t ldy, int64_t n_begin, int64_t n_end) {
  const W* w = static_cast<const W*>(weight.data);
  int64_t n0 = n_begin;
  for (; n0 + 32 <= n_end; n0 += 32) {
    int64_t m0 = 0;
    for (; m0 + 2 <= rows; m0 += 2) gemm_block_avx2<2>(x + m0 * ldx, ldx, w, weight, y + m0 * ldy, ldy, n0);
    if (m0 < rows) gemm_block_avx2<1>(x + m0 * ldx, ldx, w, weight, y + m0 * ldy, ldy, n0);
  }
  if (n0 < n_end) gemm_columns_scalar<W>(rows, x, ldx, weight, y, ldy, n0, n_end);
}
#endif  // JANUS_X86

// y = x w (see the top of this file) for columns [n_begin, n_end) of the first `rows` rows.
template <typename W>
void gemm_columns(Isa isa, int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight, float* y,
                  int64_t ldy, int64_t n_begin, int64_t n_end) {
#if JANUS_X86
  if (isa >= Isa::kAvx512) return gemm_avx512<W>(rows, x, ldx, weight, y, ldy, n_begin, n_end);
  if (isa == Isa::kAvx2) return gemm_avx2<W>(rows, x, ldx, weight, y, ldy, n_begin, n_end);
#endif
  (void)isa;
  gemm_columns_scalar<W>(rows, x, ldx, weight, y, ldy, n_begin, n_end);
}

// int8 products of at least this many rows run on the AMX tiles where they fit (fewer rows: AVX-512
// VNNI is as fast or faster, measured with weights streamed from L3 as in a decoder pass; both give
// the same y).
constexpr int64_t kAmxInt8MinRows = 7;

inline void gemm(Isa isa, int64_t rows, const float* x, int64_t ldx, const GemmWeight& weight, float* y,
                 int64_t ldy, int64_t n_begin, int64_t n_end) {
  switch (weight.type) {
    case WeightType::kBFloat16Pairs:
#if JANUS_X86
      if (isa == Isa::kAmx && amx_pairs_fit(weight.k))
        return gemm_amx<false>(rows, x, ldx, weight, y, ldy, n_begin, n_end);
      if (isa >= Isa::kAvx512Bf16) return gemm_bf16_pairs(rows, x, ldx, weight, y, ldy, n_begin, n_end);
#endif
      return gemm_pairs_scalar(rows, x, ldx, weight, y, ldy, n_begin, n_end);
    case WeightType::kInt8Quads:
#if JANUS_X86
      if (isa == Isa::kAmx && amx_quads_fit(weight.k) && rows >= kAmxInt8MinRows)
        return gemm_amx<true>(rows, x, ldx, weight, y, ldy, n_begin, n_end);
      if (isa >= Isa::kAvx512 && has_avx512_vnni())
        return gemm_int8_quads(rows, x, ldx, weight, y, ldy, n_begin, n_end);
#endif
      return gemm_quads_scalar(rows, x, ldx, weight, y, ldy, n_begin, n_end);
    case WeightType::kBFloat16:
      return gemm_columns<uint16_t>(isa, rows, x, ldx, weight, y, ldy, n_begin, n_end);
    case WeightType::kInt8:
      return gemm_columns<int8_t>(isa, rows, x, ldx, weight, y, ldy, n_begin, n_end);
    default:
      return gemm_columns<float>(isa, rows, x, ldx, weight, y, ldy, n_begin, n_end);
  }
}

}  // namespace core
}  // namespace janus_fast
