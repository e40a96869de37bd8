// The small per-row operations of a decoder layer, on float32 rows: layer norm and the attention of
// one query row to a short list of keys. Each has a plain C++ version (layer_norm, attend_one: the
// reference, and the fallback) and AVX-512 / AVX2 versions picked by the caller's Isa (layer_norm_isa,
// attend): vector partial sums instead of one scalar chain, so results differ from the plain
// versions by float32 rounding only. Plain C++17 + intrinsics (no torch) so that csrc/tests/ can
// check them alone; the passes in csrc/cpu/ (decoder_ar_cpu.cpp, decoder_nar_cpu.cpp, encoder_cpu.cpp) string them together.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/isa.h"
#include "core/vector_exp.h"

namespace janus_fast {
namespace core {

// y[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta for `rows` rows of `dim` floats
// (biased variance, as torch.nn.LayerNorm). x and y may be the same.
inline void layer_norm(const float* x, int64_t ldx, int64_t rows, int64_t dim, const float* gamma,
                       const float* beta, float eps, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * ldx;
    float* out = y + r * ldy;
    float mean = 0.0f;
    for (int64_t i = 0; i < dim; ++i) mean += in[i];
    mean /= static_cast<float>(dim);
    float var = 0.0f;
    for (int64_t i = 0; i < dim; ++i) {
      const float centred = in[i] - mean;
      var += centred * centred;
    }
    const float inv_std = 1.0f / std::sqrt(var / static_cast<float>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) out[i] = (in[i] - mean) * inv_std * gamma[i] + beta[i];
  }
}

// One head of one query row: out = softmax(q . k_j * scale) v over keys j < num_keys, where key j
// starts at keys + j * key_stride and value j at values + j * value_stride (head_dim floats each).
// `scores` holds num_keys floats of scratch. num_keys == 0 gives zeros (as the reference decoders
// give a row that sees no key).
inline void attend_one(const float* q, const float* keys, int64_t key_stride, const float* values,
                       int64_t value_stride, int64_t num_keys, int64_t head_dim, float scale, float* scores,
                       float* out) {
  for (int64_t i = 0; i < head_dim; ++i) out[i] = 0.0f;
  if (num_keys <= 0) return;
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < num_keys; ++j) {
    const float* k = keys + j * key_stride;
    float dot = 0.0f;
    for (int64_t i = 0; i < head_dim; ++i) dot += q[i] * k[i];
    scores[j] = dot * scale;
    max_score = scores[j] > max_score ? scores[j] : max_score;
  }
  float total = 0.0f;
  for (int64_t j = 0; j < num_keys; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    total += scores[j];
  }
  const float inv_total = 1.0f / total;
  for (int64_t j = 0; j < num_keys; ++j) {
    const float p = scores[j] * inv_total;
    const float* v = values + j * value_stride;
    for (int64_t i = 0; i < head_dim; ++i) out[i] += p * v[i];
  }
}

// scores[j] = exp(scores[j] - max_score) for j < n (every score <= max_score), 8 at a time;
// returns their sum. Compiled for the vector width of the function it is inlined into.
JANUS_ALWAYS_INLINE float softmax_numerators(float* scores, int64_t n, float max_score) {
  FloatVec sums = FloatVec{};
  const FloatVec shift = splat(max_score);
  int64_t j = 0;
  for (; j + kWidth <= n; j += kWidth) {
    FloatVec value;
    std::memcpy(&value, scores + j, sizeof(value));
    value = exp_nonpositive(value - shift);
    std::memcpy(scores + j, &value, sizeof(value));
    sums += value;
  }
  float total = 0.0f;
  for (int l = 0; l < kWidth; ++l) total += sums[l];
  for (; j < n; ++j) {
    scores[j] = exp_nonpositive(scores[j] - max_score);
    total += scores[j];
  }
  return total;
}

#if JANUS_X86
JANUS_AVX512 inline float sum16(__m512 v) { return _mm512_reduce_add_ps(v); }

JANUS_AVX2 inline float sum8(__m256 v) {
  const __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
}

// attend_one with head_dim = 16 * NV: the query row and the output row live in NV registers; each
// key's dot product is NV fused multiply-adds and one horizontal sum.
template <int NV>
JANUS_AVX512 void attend_one_avx512(const float* q, const float* keys, int64_t key_stride, const float* values,
                                    int64_t value_stride, int64_t num_keys, float scale, float* scores,
                                    float* out) {
  __m512 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
  if (num_keys > 0) {
    __m512 qv[NV];
    for (int v = 0; v < NV; ++v) qv[v] = _mm512_loadu_ps(q + 16 * v);
    float max_score = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < num_keys; ++j) {
      const float* k = keys + j * key_stride;
      __m512 dot = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
      for (int v = 1; v < NV; ++v) dot = _mm512_fmadd_ps(qv[v], _mm512_loadu_ps(k + 16 * v), dot);
      scores[j] = sum16(dot) * scale;
      max_score = scores[j] > max_score ? scores[j] : max_score;
    }
    const float inv_total = 1.0f / softmax_numerators(scores, num_keys, max_score);
    for (int64_t j = 0; j < num_keys; ++j) {
      const __m512 p = _mm512_set1_ps(scores[j] * inv_total);
      const float* value = values + j * value_stride;
      for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(p, _mm512_loadu_ps(value + 16 * v), acc[v]);
    }
  }
  for (int v = 0; v < NV; ++v) _mm512_storeu_ps(out + 16 * v, acc[v]);
}

// The same with head_dim = 8 * NV in AVX2 registers.
template <int NV>
JANUS_AVX2 void attend_one_avx2(const float* q, const float* keys, int64_t key_stride, const float* values,
                                int64_t value_stride, int64_t num_keys, float scale, float* scores, float* out) {
  __m256 acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_setzero_ps();
  if (num_keys > 0) {
    float max_score = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < num_keys; ++j) {
      const float* k = keys + j * key_stride;
      __m256 dot = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(k));
      for (int v = 1; v < NV; ++v) dot = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * v), _mm256_loadu_ps(k + 8 * v), dot);
      scores[j] = sum8(dot) * scale;
      max_score = scores[j] > max_score ? scores[j] : max_score;
    }
    const float inv_total = 1.0f / softmax_numerators(scores, num_keys, max_score);
    for (int64_t j = 0; j < num_keys; ++j) {
      const __m256 p = _mm256_set1_ps(scores[j] * inv_total);
      const float* value = values + j * value_stride;
      for (int v = 0; v < NV; ++v) acc[v] = _mm256_fmadd_ps(p, _mm256_loadu_ps(value + 8 * v), acc[v]);
    }
  }
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + 8 * v, acc[v]);
}

// layer_norm for dim a multiple of 16: the mean and the variance as 16-lane partial sums.
JANUS_AVX512 inline void layer_norm_avx512(const float* x, int64_t ldx, int64_t rows, int64_t dim,
                                           const float* gamma, const float* beta, float eps, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * ldx;
    float* out = y + r * ldy;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) sum = _mm512_add_ps(sum, _mm512_loadu_ps(in + i));
    const __m512 mean = _mm512_set1_ps(sum16(sum) / static_cast<float>(dim));
    __m512 squares = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
      const __m512 centred = _mm512_sub_ps(_mm512_loadu_ps(in + i), mean);
      squares = _mm512_fmadd_ps(centred, centred, squares);
    }
    const __m512 inv_std = _mm512_set1_ps(1.0f / std::sqrt(sum16(squares) / static_cast<float>(dim) + eps));
    for (int64_t i = 0; i < dim; i += 16) {
      const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(in + i), mean), inv_std);
      _mm512_storeu_ps(out + i, _mm512_fmadd_ps(normed, _mm512_loadu_ps(gamma + i), _mm512_loadu_ps(beta + i)));
    }
  }
}

// layer_norm for dim a multiple of 8, in AVX2 registers.
JANUS_AVX2 inline void layer_norm_avx2(const float* x, int64_t ldx, int64_t rows, int64_t dim, const float* gamma,
                                       const float* beta, float eps, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * ldx;
    float* out = y + r * ldy;
    __m256 sum = _mm256_setzero_ps();
    for (int64_t i = 0; i < dim; i += 8) sum = _mm256_add_ps(sum, _mm256_loadu_ps(in + i));
    const __m256 mean = _mm256_set1_ps(sum8(sum) / static_cast<float>(dim));
    __m256 squares = _mm256_setzero_ps();
    for (int64_t i = 0; i < dim; i += 8) {
      const __m256 centred = _mm256_sub_ps(_mm256_loadu_ps(in + i), mean);
      squares = _mm256_fmadd_ps(centred, centred, squares);
    }
    const __m256 inv_std = _mm256_set1_ps(1.0f / std::sqrt(sum8(squares) / static_cast<float>(dim) + eps));
    for (int64_t i = 0; i < dim; i += 8) {
      const __m256 normed = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(in + i), mean), inv_std);
      _mm256_storeu_ps(out + i, _mm256_fmadd_ps(normed, _mm256_loadu_ps(gamma + i), _mm256_loadu_ps(beta + i)));
    }
  }
}
#endif  // JANUS_X86

// attend_one on the widest path `isa` allows for this head_dim (16, 32, 48, 64, 96 or 128 for
// AVX-512; 8, 16, 32, 48 or 64 for AVX2; any other runs the plain version).
inline void attend(Isa isa, const float* q, const float* keys, int64_t key_stride, const float* values,
                   int64_t value_stride, int64_t num_keys, int64_t head_dim, float scale, float* scores,
                   float* out) {
#if JANUS_X86
  if (isa >= Isa::kAvx512 && head_dim % 16 == 0) {
    switch (head_dim / 16) {
      case 1: return attend_one_avx512<1>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 2: return attend_one_avx512<2>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 3: return attend_one_avx512<3>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 4: return attend_one_avx512<4>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 6: return attend_one_avx512<6>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 8: return attend_one_avx512<8>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      default: break;
    }
  }
  if (isa >= Isa::kAvx2 && head_dim % 8 == 0) {
    switch (head_dim / 8) {
      case 1: return attend_one_avx2<1>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 2: return attend_one_avx2<2>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 4: return attend_one_avx2<4>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 6: return attend_one_avx2<6>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      case 8: return attend_one_avx2<8>(q, keys, key_stride, values, value_stride, num_keys, scale, scores, out);
      default: break;
    }
  }
#endif
  (void)isa;
  attend_one(q, keys, key_stride, values, value_stride, num_keys, head_dim, scale, scores, out);
}

// layer_norm on the widest path `isa` allows for this dim.
inline void layer_norm_isa(Isa isa, const float* x, int64_t ldx, int64_t rows, int64_t dim, const float* gamma,
                           const float* beta, float eps, float* y, int64_t ldy) {
#if JANUS_X86
  if (isa >= Isa::kAvx512 && dim % 16 == 0) return layer_norm_avx512(x, ldx, rows, dim, gamma, beta, eps, y, ldy);
  if (isa >= Isa::kAvx2 && dim % 8 == 0) return layer_norm_avx2(x, ldx, rows, dim, gamma, beta, eps, y, ldy);
#endif
  (void)isa;
  layer_norm(x, ldx, rows, dim, gamma, beta, eps, y, ldy);
}

}  // namespace core
}  // namespace janus_fast
