// Core logic of janus_fast::speculative_accept that does not depend on torch: which drafted tokens
// a speculative decoding round keeps.
//
// Plain C++17 (tested without Python or libtorch by csrc/tests/test_speculative_accept.cpp);
// JANUS_HOST_DEVICE functions are also compiled into the CUDA kernel (cuda/speculative_cuda.cu).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define JANUS_SPEC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JANUS_SPEC_HOST_DEVICE inline
#endif

namespace janus_fast {
namespace core {

// One sentence's round. draft[0..count) are the drafted tokens after the accepted prefix;
// verified[0..count] the AR choice at each of those positions and the one after them (verified[i]
// given the prefix and draft[0..i)); relaxed (may be null) marks drafted tokens accepted although
// they differ from verified. The kept tokens are the drafted ones up to the first that is neither
// equal to its verified token nor relaxed, then the verified token there (or verified[count] when
// every drafted token is kept), cut after the first eos. Writes them to out[0..n) and -1 to
// out[n..count], and returns n in [1, count + 1]. With no relaxed tokens the kept tokens are
// verified[0..n): exactly what AR greedy would choose one step at a time.
JANUS_SPEC_HOST_DEVICE int64_t accept_drafted(const int64_t* draft, const int64_t* verified, const bool* relaxed,
                                              int64_t count, int64_t eos_id, int64_t* out) {
  int64_t n = 0;
  for (;;) {
    const bool drafted = n < count && (draft[n] == verified[n] || (relaxed != nullptr && relaxed[n]));
    out[n] = drafted ? draft[n] : verified[n];
    ++n;
    if (!drafted || out[n - 1] == eos_id) break;
  }
  for (int64_t i = n; i <= count; ++i) out[i] = -1;
  return n;
}

}  // namespace core
}  // namespace janus_fast
