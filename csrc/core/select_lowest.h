// Core logic of the mask-predict step that does not depend on torch: the re-masking schedule,
// the (score, position) order used to pick the tokens to re-mask, and the online
// max / log-sum-exp / argmax state of one vocabulary reduction.
//
// Everything here is plain C++17 so that csrc/tests/test_select_lowest.cpp can test it without
// Python or libtorch (CMakeLists.txt, ctest). The functions marked JANUS_HOST_DEVICE are also
// compiled into the CUDA kernels (csrc/cuda/mask_predict_cuda.cu), so CPU and CUDA share them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <climits>
#include <vector>

#if defined(__CUDACC__)
#define JANUS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define JANUS_HOST_DEVICE inline
#endif

namespace janus_fast {
namespace core {

// Number of real tokens to re-mask after iteration `iteration` of `num_iterations` for a sentence
// of `length` tokens counting bos and eos: floor((length - 2) * (T - 1 - t) / T). Zero on the
// last iteration. Integer arithmetic only.
JANUS_HOST_DEVICE int64_t num_to_remask(int64_t length, int64_t iteration, int64_t num_iterations) {
  return (length - 2) * (num_iterations - 1 - iteration) / num_iterations;
}

// Strict total order on (score, position): lower score first, NaN after every number (as
// torch.sort does), equal scores (and NaN with NaN) by lower position first. -0.0 == 0.0.
JANUS_HOST_DEVICE bool score_position_less(float score_a, int64_t position_a, float score_b,
                                           int64_t position_b) {
  const bool a_nan = score_a != score_a;
  const bool b_nan = score_b != score_b;
  if (a_nan != b_nan) return b_nan;  // a number is less than NaN
  if (!a_nan && score_a != score_b) return score_a < score_b;
  return position_a < position_b;
}

// Among positions [begin, end) pick the `count` with the lowest scores under
// score_position_less and call mark(position) for each of them (in no particular order).
// `order` is scratch space reused across calls to avoid allocations. O(end - begin).
template <typename Mark>
void select_lowest(const float* scores, int64_t begin, int64_t end, int64_t count,
                   std::vector<int64_t>& order, Mark mark) {
  const int64_t size = end - begin;
  if (count <= 0 || size <= 0) return;
  if (count > size) count = size;
  order.resize(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) order[static_cast<size_t>(i)] = begin + i;
  auto less = [scores](int64_t a, int64_t b) {
    return score_position_less(scores[a], a, scores[b], b);
  };
  if (count < size) {
    std::nth_element(order.begin(), order.begin() + (count - 1), order.end(), less);
  }
  for (int64_t i = 0; i < count; ++i) mark(order[static_cast<size_t>(i)]);
}

// Running state of one reduction over a vocabulary row: max and sum of exp(x - max) for the
// log-sum-exp, and the argmax (ties -> lowest index). Two states over disjoint parts of the row
// merge into the state of their union, so the reduction can be split across SIMD lanes or threads.
struct OnlineSoftmaxState {
  float max_value;   // running max of the logits (for the log-sum-exp), -inf if none seen
  float sum_exp;     // sum of exp(x - max_value)
  float best_value;  // running argmax value over the candidate tokens
  int64_t best_index;  // its index, or kNoIndex if no candidate was greater than -inf
  int64_t nan_index;   // the lowest candidate index holding NaN, or kNoIndex
  int32_t poisoned;    // 1 once a NaN or +inf logit was seen (mask token included)
};

// Plain constants rather than std::numeric_limits so that device code can use them too.
constexpr int64_t kNoIndex = INT64_MAX;
constexpr float kNegativeInfinity = -HUGE_VALF;
constexpr float kPositiveInfinity = HUGE_VALF;

JANUS_HOST_DEVICE OnlineSoftmaxState empty_state() {
  return OnlineSoftmaxState{kNegativeInfinity, 0.0f, kNegativeInfinity, kNoIndex, kNoIndex, 0};
}

// Rescale `sum_exp` accumulated relative to `from_max` so that it is relative to `to_max`
// (to_max >= from_max). A sum accumulated under max -inf is zero.
JANUS_HOST_DEVICE float rescale_sum(float sum_exp, float from_max, float to_max) {
  if (from_max == to_max) return sum_exp;  // also covers -inf == -inf
  return sum_exp * ::expf(from_max - to_max);
}

JANUS_HOST_DEVICE OnlineSoftmaxState merge_states(const OnlineSoftmaxState& a,
                                                  const OnlineSoftmaxState& b) {
  OnlineSoftmaxState out;
  out.max_value = a.max_value > b.max_value ? a.max_value : b.max_value;
  out.sum_exp =
      rescale_sum(a.sum_exp, a.max_value, out.max_value) +
      rescale_sum(b.sum_exp, b.max_value, out.max_value);
  const bool take_b = b.best_value > a.best_value ||
                      (b.best_value == a.best_value && b.best_index < a.best_index);
  out.best_value = take_b ? b.best_value : a.best_value;
  out.best_index = take_b ? b.best_index : a.best_index;
  out.nan_index = a.nan_index < b.nan_index ? a.nan_index : b.nan_index;
  out.poisoned = a.poisoned | b.poisoned;
  return out;
}

// Add one logit at `index`; `candidate` is false for the mask token, which counts in the
// log-sum-exp but can never be the argmax. NaN and +inf poison the row (see token_log_prob); a
// NaN candidate is remembered as the argmax, as torch.argmax treats NaN as the largest value.
JANUS_HOST_DEVICE void add_logit(OnlineSoftmaxState& state, float value, int64_t index,
                                 bool candidate) {
  if (value != value) {
    state.poisoned = 1;
    if (candidate && index < state.nan_index) state.nan_index = index;
    return;
  }
  if (value == kPositiveInfinity) state.poisoned = 1;
  if (value > state.max_value) {
    state.sum_exp = rescale_sum(state.sum_exp, state.max_value, value) + 1.0f;
    state.max_value = value;
  } else if (value != kNegativeInfinity || state.max_value != value) {
    state.sum_exp += ::expf(value - state.max_value);
  }
  if (candidate && (value > state.best_value ||
                    (value == state.best_value && index < state.best_index))) {
    state.best_value = value;
    state.best_index = index;
  }
}

// Index of the chosen token, as torch.argmax over the candidates: the first NaN if there is one,
// else the first maximum; when every candidate logit is -inf, the lowest index that is not the
// mask token.
JANUS_HOST_DEVICE int64_t chosen_token(const OnlineSoftmaxState& state, int64_t mask_id) {
  if (state.nan_index != kNoIndex) return state.nan_index;
  if (state.best_index != kNoIndex) return state.best_index;
  return mask_id == 0 ? 1 : 0;
}

// log-softmax over the whole row of the chosen token whose logit is `value`, as torch computes
// it: NaN for a row holding NaN or +inf, or made only of -inf; else (value - max) - log(sum_exp).
// The order matters: max + log(sum_exp) first would round to the ulp of the largest logit (4e-6 at
// a logit of 40) and make ties of scores that torch tells apart.
JANUS_HOST_DEVICE float token_log_prob(const OnlineSoftmaxState& state, float value) {
  if (state.poisoned) return ::nanf("");
  return (value - state.max_value) - ::logf(state.sum_exp);
}

}  // namespace core
}  // namespace janus_fast
