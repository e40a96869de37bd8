// One row of logits reduced to what a greedy choice needs, in two reads of the row and no writes:
// the first index of its maximum, the maximum, and log(sum_j exp(x_j - max)); the chosen token's
// log-softmax is then x[argmax] - max - log_sum_exp (torch.log_softmax's value to float32
// rounding). A row holding NaN or +inf, or only -inf, is reported as not finite and the caller
// reduces it exactly (torch's rules for those rows). reduce_logits is the plain C++ reference;
// reduce_logits_isa picks the AVX-512 (16 lanes) or AVX2 (8 lanes) form from the caller's Isa: the
// same argmax, sums that differ by float32 rounding only. No torch, so csrc/tests/ checks it alone.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "core/isa.h"
#include "core/vector_exp.h"

namespace janus_fast {
namespace core {

struct LogitReduction {
  int64_t argmax;     // first index of the maximum (meaningful only when finite)
  float max;          // the row's maximum
  float log_sum_exp;  // log(sum_j exp(x_j - max))
  bool finite;        // false: the row holds NaN or +inf, or only -inf
};

inline LogitReduction reduce_logits(const float* x, int64_t n) {
  const float inf = std::numeric_limits<float>::infinity();
  float max = -inf;
  int64_t argmax = 0;
  bool finite = n > 0;
  for (int64_t j = 0; j < n; ++j) {
    if (std::isnan(x[j]) || x[j] == inf) finite = false;
    if (x[j] > max) max = x[j], argmax = j;
  }
  if (!finite || max == -inf) return {argmax, max, 0.0f, false};
  double sum = 0.0;  // a long float chain would drift by ~1e-5 over a vocabulary
  for (int64_t j = 0; j < n; ++j) sum += std::exp(x[j] - max);
  return {argmax, max, static_cast<float>(std::log(sum)), true};
}

// The part of reduce_logits after the first read: the lanes' maxima and the index that first reached
// each (W of them), the tail x[j..n) past the vectors, then the sum of exp(x - max) over W-lane GCC /
// Clang vectors F (int32 lanes I) in two accumulators. Across lanes the lowest index among the maxima
// wins (each lane kept its first maximum; the tail's indices are above every lane's).
template <typename F, typename I>
JANUS_ALWAYS_INLINE LogitReduction finish_reduction(const float* x, int64_t n, int64_t j, const float* lane_max,
                                                    const int32_t* lane_index, bool finite) {
  constexpr int W = sizeof(F) / sizeof(float);
  const float inf = std::numeric_limits<float>::infinity();
  float max = -inf;
  int64_t argmax = 0;
  finite = finite && n > 0;
  for (int l = 0; l < W; ++l)
    if (lane_max[l] > max || (lane_max[l] == max && lane_max[l] != -inf && lane_index[l] < argmax))
      max = lane_max[l], argmax = lane_index[l];
  for (int64_t t = j; t < n; ++t) {
    if (std::isnan(x[t]) || x[t] == inf) finite = false;
    if (x[t] > max) max = x[t], argmax = t;
  }
  if (!finite || max == -inf) return {argmax, max, 0.0f, false};
  F sums[2] = {F{}, F{}};
  const F shift = F{} + max;
  int64_t k = 0;
  for (; k + 2 * W <= n; k += 2 * W) {
    F a, b;
    std::memcpy(&a, x + k, sizeof(a));
    std::memcpy(&b, x + k + W, sizeof(b));
    sums[0] += exp_nonpositive_lanes<F, I>(a - shift);
    sums[1] += exp_nonpositive_lanes<F, I>(b - shift);
  }
  const F lanes = sums[0] + sums[1];
  float sum = 0.0f;
  for (int l = 0; l < W; ++l) sum += lanes[l];
  for (; k < n; ++k) sum += exp_nonpositive(x[k] - max);
  return {argmax, max, std::log(sum), true};
}

typedef float FloatVec16 __attribute__((vector_size(64)));
typedef int32_t IntVec16 __attribute__((vector_size(64)));

#if JANUS_X86
// The first read in 16 lanes: per lane the running maximum (strictly greater replaces) and its
// index, and whether any value is NaN or +inf.
JANUS_AVX512 inline LogitReduction reduce_logits_avx512(const float* x, int64_t n) {
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 best = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512i best_index = _mm512_setzero_si512();
  __m512i index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  __mmask16 nonfinite = 0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512 value = _mm512_loadu_ps(x + j);
    const __mmask16 greater = _mm512_cmp_ps_mask(value, best, _CMP_GT_OQ);
    best = _mm512_mask_mov_ps(best, greater, value);
    best_index = _mm512_mask_mov_epi32(best_index, greater, index);
    nonfinite |= _mm512_cmp_ps_mask(value, value, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(value, inf, _CMP_EQ_OQ);
    index = _mm512_add_epi32(index, step);
  }
  alignas(64) float lane_max[16];
  alignas(64) int32_t lane_index[16];
  _mm512_store_ps(lane_max, best);
  _mm512_store_si512(lane_index, best_index);
  return finish_reduction<FloatVec16, IntVec16>(x, n, j, lane_max, lane_index, nonfinite == 0);
}

// The same in 8 AVX2 lanes.
JANUS_AVX2 inline LogitReduction reduce_logits_avx2(const float* x, int64_t n) {
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 best = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256i best_index = _mm256_setzero_si256();
  __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i step = _mm256_set1_epi32(8);
  __m256 nonfinite = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 value = _mm256_loadu_ps(x + j);
    const __m256 greater = _mm256_cmp_ps(value, best, _CMP_GT_OQ);
    best = _mm256_blendv_ps(best, value, greater);
    best_index = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(best_index), _mm256_castsi256_ps(index), greater));
    nonfinite = _mm256_or_ps(nonfinite, _mm256_or_ps(_mm256_cmp_ps(value, value, _CMP_UNORD_Q),
                                                     _mm256_cmp_ps(value, inf, _CMP_EQ_OQ)));
    index = _mm256_add_epi32(index, step);
  }
  alignas(32) float lane_max[8];
  alignas(32) int32_t lane_index[8];
  _mm256_store_ps(lane_max, best);
  _mm256_store_si256(reinterpret_cast<__m256i*>(lane_index), best_index);
  return finish_reduction<FloatVec, IntVec>(x, n, j, lane_max, lane_index, _mm256_movemask_ps(nonfinite) == 0);
}
#endif

inline LogitReduction reduce_logits_isa(Isa isa, const float* x, int64_t n) {
#if JANUS_X86
  if (isa >= Isa::kAvx512) return reduce_logits_avx512(x, n);
  if (isa == Isa::kAvx2) return reduce_logits_avx2(x, n);
#endif
  (void)isa;
  return reduce_logits(x, n);
}

}  // namespace core
}  // namespace janus_fast
