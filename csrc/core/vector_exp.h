// exp over 8 float32 lanes for arguments <= 0 (a value minus a running max: softmax, log-sum-exp),
// written with GCC / Clang vector extensions, so that it compiles to whatever the calling function
// targets (SSE, AVX2, AVX-512) and inlines there. Used by the mask-predict fill
// (cpu/mask_predict_cpu.cpp) and the attention of the native passes (core/decoder_math.h).
#pragma once

#include <cstdint>

// The helpers are always inlined, so the ABI of passing vectors does not matter.
#pragma GCC diagnostic ignored "-Wpsabi"

#define JANUS_ALWAYS_INLINE inline __attribute__((always_inline))

namespace janus_fast {
namespace core {

constexpr int kWidth = 8;
typedef float FloatVec __attribute__((vector_size(4 * kWidth)));
typedef int32_t IntVec __attribute__((vector_size(4 * kWidth)));

JANUS_ALWAYS_INLINE FloatVec splat(float value) { return FloatVec{} + value; }

JANUS_ALWAYS_INLINE FloatVec select(IntVec mask, FloatVec if_true, FloatVec if_false) {
  return (FloatVec)(((IntVec)if_true & mask) | ((IntVec)if_false & ~mask));
}

// exp(x) for x <= 0 on any width of GCC / Clang float vector F (int32 lanes I): Cody-Waite range
// reduction and the Cephes degree-5 polynomial (about 1 ulp); exactly 0 below -87.3 (so exp(-inf)
// = 0), NaN stays NaN.
template <typename F, typename I>
JANUS_ALWAYS_INLINE F exp_nonpositive_lanes(F x) {
  const F shifter = F{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const F shifted = x * 1.44269504088896341f + shifter;
  const F n = shifted - shifter;
  const I n_int = (I)shifted - (I)shifter;
  F r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = F{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const F result = p * (F)((n_int + 127) << 23);
  const I underflow = x < -87.3f;
  return (F)((I)result & ~underflow);
}

// The 8-lane form used by the attention and the mask-predict fill.
JANUS_ALWAYS_INLINE FloatVec exp_nonpositive(FloatVec x) { return exp_nonpositive_lanes<FloatVec, IntVec>(x); }

JANUS_ALWAYS_INLINE float exp_nonpositive(float x) { return exp_nonpositive(splat(x))[0]; }

}  // namespace core
}  // namespace janus_fast
