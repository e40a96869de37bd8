// The k largest values of a row of logits outside a few excluded ids, without sorting the row: a beam
// search step's candidates (decoder_select.cpp). Order: larger value first, ties -> lower index (so
// k = 1 is the first index of the maximum). Rows must hold no NaN (-inf entries are ordinary values;
// while fewer than k values were seen every one is taken, so a row with fewer than k entries above
// -inf fills the rest with its -inf entries, lowest index first). top_k is the plain C++ reference;
// top_k_isa scans the row in 16 (AVX-512) or 8 (AVX2) lanes, comparing each vector with the current
// k-th value and visiting only the lanes above it: the same ids. No torch, so csrc/tests/ checks it
// alone.
#pragma once

#include <cstdint>

#include "core/isa.h"

namespace janus_fast {
namespace core {

// The running top-k of a scan in ascending index order: ids[0 .. count) by value, descending.
struct TopK {
  int64_t* ids;
  float* values;  // k entries of scratch
  int64_t k, count = 0;
  const int64_t* excluded;
  int64_t num_excluded;

  // Offer x[j]; j ascending over the scan, so an equal value never displaces an earlier index.
  void offer(float value, int64_t j) {
    if (count == k && !(value > values[k - 1])) return;
    for (int64_t e = 0; e < num_excluded; ++e)
      if (excluded[e] == j) return;
    int64_t at = count < k ? count++ : k - 1;
    for (; at > 0 && value > values[at - 1]; --at) values[at] = values[at - 1], ids[at] = ids[at - 1];
    values[at] = value;
    ids[at] = j;
  }
};

// Writes the ids of the min(k, n - excluded) largest values of x[0 .. n) outside excluded[0 ..
// num_excluded) into ids, best first; returns how many. `values`: k floats of scratch.
inline int64_t top_k(const float* x, int64_t n, int64_t k, const int64_t* excluded, int64_t num_excluded,
                     int64_t* ids, float* values) {
  TopK top{ids, values, k, 0, excluded, num_excluded};
  for (int64_t j = 0; j < n; ++j) top.offer(x[j], j);
  return top.count;
}

#if JANUS_X86
// While fewer than k are held every entry is offered; then a vector is visited only where a lane
// exceeds the k-th value (the threshold only rises, so no skipped lane could have entered).
JANUS_AVX512 inline int64_t top_k_avx512(const float* x, int64_t n, int64_t k, const int64_t* excluded,
                                         int64_t num_excluded, int64_t* ids, float* values) {
  TopK top{ids, values, k, 0, excluded, num_excluded};
  int64_t j = 0;
  for (; j < n && top.count < k; ++j) top.offer(x[j], j);
  for (; j + 16 <= n; j += 16) {
    const __m512 value = _mm512_loadu_ps(x + j);
    __mmask16 above = _mm512_cmp_ps_mask(value, _mm512_set1_ps(top.values[k - 1]), _CMP_GT_OQ);
    while (above) {
      const int lane = __builtin_ctz(above);
      above &= above - 1;
      top.offer(x[j + lane], j + lane);
    }
  }
  for (; j < n; ++j) top.offer(x[j], j);
  return top.count;
}

JANUS_AVX2 inline int64_t top_k_avx2(const float* x, int64_t n, int64_t k, const int64_t* excluded,
                                     int64_t num_excluded, int64_t* ids, float* values) {
  TopK top{ids, values, k, 0, excluded, num_excluded};
  int64_t j = 0;
  for (; j < n && top.count < k; ++j) top.offer(x[j], j);
  for (; j + 8 <= n; j += 8) {
    const __m256 value = _mm256_loadu_ps(x + j);
    int above = _mm256_movemask_ps(_mm256_cmp_ps(value, _mm256_set1_ps(top.values[k - 1]), _CMP_GT_OQ));
    while (above) {
      const int lane = __builtin_ctz(above);
      above &= above - 1;
      top.offer(x[j + lane], j + lane);
    }
  }
  for (; j < n; ++j) top.offer(x[j], j);
  return top.count;
}
#endif

inline int64_t top_k_isa(Isa isa, const float* x, int64_t n, int64_t k, const int64_t* excluded,
                         int64_t num_excluded, int64_t* ids, float* values) {
#if JANUS_X86
  if (isa >= Isa::kAvx512) return top_k_avx512(x, n, k, excluded, num_excluded, ids, values);
  if (isa == Isa::kAvx2) return top_k_avx2(x, n, k, excluded, num_excluded, ids, values);
#endif
  (void)isa;
  return top_k(x, n, k, excluded, num_excluded, ids, values);
}

}  // namespace core
}  // namespace janus_fast
