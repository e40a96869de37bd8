// CPU kernels of janus_fast::mask_predict_step and janus_fast::mask_predict_remask (its step 2).
//
// Step 1 (fill) runs at::parallel_for over the N*T (row, position) pairs; each masked real
// position reads its V logits once (reduce_row): blocks of kBlock logits converted to fp32 on
// load, the block max, then the sum of exp(x - running max) in 8-lane vectors (GCC / Clang vector
// extensions, one exp per logit, the running max a scalar so the sums are rescaled only when it
// grows); the argmax is recovered from the block that set the max. The hot functions are compiled
// twice (x86-64-v3 = AVX2/FMA, and baseline x86-64) and picked at load time (target_clones).
// Step 2 (re-mask) runs at::parallel_for over rows with core::select_lowest.
#include "mask_predict.h"

#include <ATen/Parallel.h>

#include <cstring>
#include <limits>
#include <vector>

#include "core/select_lowest.h"
#include "core/vector_exp.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define JANUS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define JANUS_CPU_CLONES
#endif

namespace janus_fast {
namespace {

// GCC / Clang vector extensions (core/vector_exp.h): 8 fp32 lanes, one AVX2 register in the
// x86-64-v3 clone, two SSE registers in the baseline one. They keep the per-lane state in registers.
using core::exp_nonpositive;
using core::FloatVec;
using core::IntVec;
using core::kWidth;
using core::select;
using core::splat;
typedef uint32_t UintVec __attribute__((vector_size(4 * kWidth)));
typedef uint16_t Uint16Vec __attribute__((vector_size(2 * kWidth)));

constexpr int kBlock = 128;  // logits per block: 8 steps of two vectors

JANUS_ALWAYS_INLINE float load_float(const float* ptr) { return *ptr; }

JANUS_ALWAYS_INLINE float load_float(const at::BFloat16* ptr) { return static_cast<float>(*ptr); }

JANUS_ALWAYS_INLINE float load_float(const at::Half* ptr) { return static_cast<float>(*ptr); }

JANUS_ALWAYS_INLINE FloatVec load_vec(const float* ptr) {
  FloatVec value;
  std::memcpy(&value, ptr, sizeof(value));
  return value;
}

JANUS_ALWAYS_INLINE FloatVec load_vec(const at::BFloat16* ptr) {
  Uint16Vec bits;
  std::memcpy(&bits, ptr, sizeof(bits));
  return (FloatVec)(__builtin_convertvector(bits, UintVec) << 16);
}

// IEEE half -> float without branches (the method of the FP16 library, as c10::Half does it).
JANUS_ALWAYS_INLINE FloatVec load_vec(const at::Half* ptr) {
  Uint16Vec bits;
  std::memcpy(&bits, ptr, sizeof(bits));
  const UintVec w = __builtin_convertvector(bits, UintVec) << 16;
  const UintVec sign = w & 0x80000000u;
  const UintVec two_w = w + w;
  const FloatVec normalized = (FloatVec)((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const FloatVec denormalized = (FloatVec)((two_w >> 17) | (126u << 23)) - 0.5f;
  const IntVec is_denormal = (IntVec)(two_w < (1u << 27));
  return (FloatVec)(sign | (UintVec)select(is_denormal, denormalized, normalized));
}

JANUS_ALWAYS_INLINE float horizontal_max(FloatVec value) {
  float result = value[0];
  for (int l = 1; l < kWidth; ++l) result = value[l] > result ? value[l] : result;
  return result;
}

// Converts logits [start, start + count) of a row to fp32. Full blocks of fp32 logits are read
// in place; other blocks are converted into `buffer`, a partial block padded with -inf.
JANUS_ALWAYS_INLINE const float* load_block(const float* row, int32_t start, int32_t count,
                                            float* buffer) {
  if (count == kBlock) return row + start;
  for (int i = 0; i < count; ++i) buffer[i] = row[start + i];
  for (int i = count; i < kBlock; ++i) buffer[i] = -std::numeric_limits<float>::infinity();
  return buffer;
}

template <typename scalar_t>
JANUS_ALWAYS_INLINE const float* load_block(const scalar_t* row, int32_t start, int32_t count,
                                            float* buffer) {
  if (count == kBlock) {
    for (int i = 0; i < kBlock; i += kWidth) {
      const FloatVec value = load_vec(row + start + i);
      std::memcpy(buffer + i, &value, sizeof(value));
    }
    return buffer;
  }
  for (int i = 0; i < count; ++i) buffer[i] = load_float(row + start + i);
  for (int i = count; i < kBlock; ++i) buffer[i] = -std::numeric_limits<float>::infinity();
  return buffer;
}

// Reduces one vocabulary row: online max / sum of exp over all V logits, argmax over v != mask_id.
// Runs over the two segments [0, mask_id) and (mask_id, V) in blocks of kBlock logits converted
// to fp32 on load. Per block: the block max (vectorised), then the sum of exp(x - running max)
// per lane, one exp per logit; the lane sums are rescaled only when the running max grows. The
// argmax is the first block whose max beats every earlier block (ties -> earlier block), rescanned
// once at the end for the first index holding that max. The mask token's logit joins the
// log-sum-exp last. Two vectors per quantity hide the latency of the accumulations.
template <typename scalar_t>
JANUS_ALWAYS_INLINE core::OnlineSoftmaxState reduce_row(const scalar_t* row, int32_t vocab_size,
                                                        int32_t mask_id) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  float running_max = neg_inf;  // over the candidates seen, which is every logit but the mask
  int32_t best_block = -1;      // start of the block holding the first maximum
  FloatVec sum_exp[2] = {FloatVec{}, FloatVec{}};

  IntVec nonfinite = IntVec{};  // lanes that saw NaN or +inf: the row is then reduced exactly
  const FloatVec pos_inf = splat(std::numeric_limits<float>::infinity());
  alignas(64) float buffer[kBlock];
  const int32_t segments[2][2] = {{0, mask_id}, {mask_id + 1, vocab_size}};
  for (const auto& segment : segments) {
    for (int32_t start = segment[0]; start < segment[1]; start += kBlock) {
      const int32_t count = segment[1] - start < kBlock ? segment[1] - start : kBlock;
      const float* block = load_block(row, start, count, buffer);

      FloatVec block_max[2] = {splat(neg_inf), splat(neg_inf)};
      for (int i = 0; i < kBlock; i += 2 * kWidth) {
        for (int half = 0; half < 2; ++half) {
          const FloatVec value = load_vec(block + i + half * kWidth);
          block_max[half] = select(value > block_max[half], value, block_max[half]);
          nonfinite |= (value != value) | (value == pos_inf);
        }
      }
      const float new_max = horizontal_max(
          select(block_max[0] > block_max[1], block_max[0], block_max[1]));
      if (new_max > running_max) {
        if (running_max != neg_inf) {
          const float scale = exp_nonpositive(running_max - new_max);
          sum_exp[0] *= scale;
          sum_exp[1] *= scale;
        }
        running_max = new_max;
        best_block = start;
      }
      if (running_max == neg_inf) continue;  // every logit so far is -inf: adds nothing
      const FloatVec shift = splat(running_max);
      for (int i = 0; i < kBlock; i += 2 * kWidth) {
        sum_exp[0] += exp_nonpositive(load_vec(block + i) - shift);
        sum_exp[1] += exp_nonpositive(load_vec(block + i + kWidth) - shift);
      }
    }
  }

  core::OnlineSoftmaxState state = core::empty_state();
  bool any_nonfinite = false;
  for (int l = 0; l < kWidth; ++l) any_nonfinite |= nonfinite[l] != 0;
  if (any_nonfinite) {  // rare: one scalar pass with torch's NaN / +inf semantics (core::add_logit)
    for (int32_t index = 0; index < vocab_size; ++index) {
      core::add_logit(state, load_float(row + index), index, index != mask_id);
    }
    return state;
  }
  state.max_value = running_max;
  state.sum_exp = 0.0f;
  for (int l = 0; l < kWidth; ++l) state.sum_exp += sum_exp[0][l] + sum_exp[1][l];
  if (best_block >= 0) {  // else every candidate is -inf (or NaN): core::chosen_token decides
    const int32_t block_end = best_block + kBlock < vocab_size ? best_block + kBlock : vocab_size;
    for (int32_t index = best_block; index < block_end; ++index) {
      if (index != mask_id && load_float(row + index) == running_max) {
        state.best_value = running_max;
        state.best_index = index;
        break;
      }
    }
  }
  core::add_logit(state, load_float(row + mask_id), mask_id, /*candidate=*/false);
  return state;
}

// Fills the masked real positions among (row, position) pairs [begin, end) of the flattened
// (N, T) grid: token = argmax over v != mask_id, score = its log-softmax over all V.
template <typename scalar_t>
JANUS_ALWAYS_INLINE void fill_masked_impl(const scalar_t* logits, int64_t* tokens, float* scores,
                                          const int64_t* lengths, int64_t max_length,
                                          int64_t vocab_size, int64_t mask_id, int64_t begin,
                                          int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    const int64_t row_index = item / max_length;
    const int64_t position = item % max_length;
    if (position < 1 || position > lengths[row_index] - 2 || tokens[item] != mask_id) continue;
    const scalar_t* row = logits + item * vocab_size;
    const core::OnlineSoftmaxState state = reduce_row(
        row, static_cast<int32_t>(vocab_size), static_cast<int32_t>(mask_id));
    const int64_t token = core::chosen_token(state, mask_id);
    tokens[item] = token;
    scores[item] = core::token_log_prob(state, load_float(row + token));
  }
}

// One non-template entry point per dtype, so that target_clones applies to plain functions.
#define JANUS_DEFINE_FILL(NAME, SCALAR)                                                          \
  JANUS_CPU_CLONES void NAME(const SCALAR* logits, int64_t* tokens, float* scores,              \
                             const int64_t* lengths, int64_t max_length, int64_t vocab_size,    \
                             int64_t mask_id, int64_t begin, int64_t end) {                     \
    fill_masked_impl(logits, tokens, scores, lengths, max_length, vocab_size, mask_id, begin,   \
                     end);                                                                      \
  }
JANUS_DEFINE_FILL(fill_masked_float, float)
JANUS_DEFINE_FILL(fill_masked_bfloat16, at::BFloat16)
JANUS_DEFINE_FILL(fill_masked_half, at::Half)
#undef JANUS_DEFINE_FILL

// Step 2: re-mask the lowest-scoring real positions 1 .. length - 2 of each row (mask_predict_step's
// second step, and mask_predict_remask itself).
void remask_rows(int64_t* token_data, const float* score_data, const int64_t* length_data, bool* remasked_data,
                 int64_t num_rows, int64_t max_length, int64_t iteration, int64_t num_iterations, int64_t mask_id) {
  const int64_t row_grain = std::max<int64_t>(1, 4096 / max_length);
  at::parallel_for(0, num_rows, row_grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order;
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t length = length_data[row_index];
      const int64_t count = core::num_to_remask(length, iteration, num_iterations);
      const int64_t offset = row_index * max_length;
      core::select_lowest(score_data + offset, 1, length - 1, count, order,
                          [&](int64_t position) {
                            token_data[offset + position] = mask_id;
                            remasked_data[offset + position] = true;
                          });
    }
  });
}

at::Tensor mask_predict_step_cpu(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& scores,
                                 const at::Tensor& lengths, int64_t iteration,
                                 int64_t num_iterations, int64_t mask_id) {
  check_mask_predict_inputs(logits, tokens, scores, lengths, iteration, num_iterations, mask_id);
  TORCH_CHECK(logits.device().is_cpu(), "mask_predict_step_cpu: tensors must be on the CPU");
  const int64_t num_rows = logits.size(0);
  const int64_t max_length = logits.size(1);
  check_mask_predict_lengths(lengths, max_length);
  const int64_t vocab_size = logits.size(2);
  auto remasked = at::zeros({num_rows, max_length}, tokens.options().dtype(at::kBool));
  if (num_rows == 0) return remasked;

  int64_t* token_data = tokens.data_ptr<int64_t>();
  float* score_data = scores.data_ptr<float>();
  const int64_t* length_data = lengths.data_ptr<int64_t>();

  // Step 1: fill. At least 256k logits (~0.1 ms) per task, so that small inputs stay on one
  // thread and do not pay for waking (or waiting for) the others.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 18) / vocab_size);
  at::parallel_for(0, num_rows * max_length, grain, [&](int64_t begin, int64_t end) {
    switch (logits.scalar_type()) {
      case at::kFloat:
        fill_masked_float(logits.data_ptr<float>(), token_data, score_data, length_data,
                          max_length, vocab_size, mask_id, begin, end);
        break;
      case at::kBFloat16:
        fill_masked_bfloat16(logits.data_ptr<at::BFloat16>(), token_data, score_data,
                             length_data, max_length, vocab_size, mask_id, begin, end);
        break;
      default:
        fill_masked_half(logits.data_ptr<at::Half>(), token_data, score_data, length_data,
                         max_length, vocab_size, mask_id, begin, end);
        break;
    }
  });

  remask_rows(token_data, score_data, length_data, remasked.data_ptr<bool>(), num_rows, max_length, iteration,
              num_iterations, mask_id);
  return remasked;
}

at::Tensor mask_predict_remask_cpu(at::Tensor& tokens, const at::Tensor& scores, const at::Tensor& lengths,
                                   int64_t iteration, int64_t num_iterations, int64_t mask_id) {
  check_remask_inputs("mask_predict_remask", tokens, scores, lengths, iteration, num_iterations, mask_id);
  TORCH_CHECK(tokens.device().is_cpu(), "mask_predict_remask_cpu: tensors must be on the CPU");
  const int64_t num_rows = tokens.size(0);
  const int64_t max_length = tokens.size(1);
  check_mask_predict_lengths(lengths, max_length, "mask_predict_remask");
  auto remasked = at::zeros({num_rows, max_length}, tokens.options().dtype(at::kBool));
  if (num_rows == 0) return remasked;
  remask_rows(tokens.data_ptr<int64_t>(), scores.data_ptr<float>(), lengths.data_ptr<int64_t>(),
              remasked.data_ptr<bool>(), num_rows, max_length, iteration, num_iterations, mask_id);
  return remasked;
}

}  // namespace

JANUS_MASK_PREDICT_KERNELS(CPU, cpu)

}  // namespace janus_fast
