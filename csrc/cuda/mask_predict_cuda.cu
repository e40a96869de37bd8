// CUDA kernels of janus_fast::mask_predict_step, same logic as cpu/mask_predict_cpu.cpp through
// core/select_lowest.h.
//
// Step 1 (fill): one block per vocabulary row, i.e. per (sentence, position) pair; blocks of
// positions that are not masked real positions return at once. Each thread reduces a strided
// slice of the V logits into a core::OnlineSoftmaxState (online max / sum of exp / argmax), the
// states are merged with warp shuffles, then across warps through shared memory.
// Step 2 (re-mask): one block per sentence. Each real position counts how many real positions
// come before it in the (score, position) order (core::score_position_less), reading the scores in
// shared-memory tiles; positions whose rank is below n are re-masked.
//
// What was run: on the development machine (no GPU) this file is compiled with nvcc 13.0 for
// sm_80 / sm_90 and the built extension is imported with a CUDA build of torch, checking that the
// CUDA kernel is registered (.ci/cuda_build_check.sh). The kernels themselves have NOT been
// executed there; python_tests/test_mask_predict_step.py compares them with the reference when
// a GPU is present (tests marked for CUDA).
#include "mask_predict.h"

// c10/cuda only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS / cuSPARSE headers).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/select_lowest.h"

namespace janus_fast {
namespace {

constexpr int kFillThreads = 256;
constexpr int kRemaskThreads = 256;
constexpr int kScoreTile = 1024;
constexpr int kWarpSize = 32;

__device__ __forceinline__ core::OnlineSoftmaxState shuffle_down(
    const core::OnlineSoftmaxState& state, int offset) {
  core::OnlineSoftmaxState other;
  other.max_value = __shfl_down_sync(0xffffffffu, state.max_value, offset);
  other.sum_exp = __shfl_down_sync(0xffffffffu, state.sum_exp, offset);
  other.best_value = __shfl_down_sync(0xffffffffu, state.best_value, offset);
  other.best_index = __shfl_down_sync(0xffffffffu, state.best_index, offset);
  other.nan_index = __shfl_down_sync(0xffffffffu, state.nan_index, offset);
  other.poisoned = __shfl_down_sync(0xffffffffu, state.poisoned, offset);
  return other;
}

__device__ __forceinline__ core::OnlineSoftmaxState warp_reduce(core::OnlineSoftmaxState state) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    state = core::merge_states(state, shuffle_down(state, offset));
  }
  return state;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kFillThreads)
    fill_masked_kernel(const scalar_t* __restrict__ logits, int64_t* __restrict__ tokens,
                       float* __restrict__ scores, const int64_t* __restrict__ lengths,
                       int64_t max_length, int64_t vocab_size, int64_t mask_id) {
  const int64_t item = blockIdx.x;
  const int64_t position = item % max_length;
  const int64_t length = lengths[item / max_length];
  if (position < 1 || position > length - 2 || tokens[item] != mask_id) return;  // block-uniform

  const scalar_t* row = logits + item * vocab_size;
  core::OnlineSoftmaxState state = core::empty_state();
  for (int64_t index = threadIdx.x; index < vocab_size; index += blockDim.x) {
    core::add_logit(state, static_cast<float>(row[index]), index, index != mask_id);
  }
  state = warp_reduce(state);

  __shared__ core::OnlineSoftmaxState warp_states[kFillThreads / kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) warp_states[warp] = state;
  __syncthreads();
  if (warp != 0) return;
  const int num_warps = blockDim.x / kWarpSize;
  state = lane < num_warps ? warp_states[lane] : core::empty_state();
  state = warp_reduce(state);
  if (lane == 0) {
    const int64_t token = core::chosen_token(state, mask_id);
    tokens[item] = token;
    scores[item] = core::token_log_prob(state, static_cast<float>(row[token]));
  }
}

__global__ void __launch_bounds__(kRemaskThreads)
    remask_kernel(const float* __restrict__ scores, int64_t* __restrict__ tokens,
                  bool* __restrict__ remasked, const int64_t* __restrict__ lengths,
                  int64_t max_length, int64_t iteration, int64_t num_iterations,
                  int64_t mask_id) {
  __shared__ float tile[kScoreTile];
  const int64_t row = blockIdx.x;
  int64_t length = lengths[row];
  length = length < 2 ? 2 : (length > max_length ? max_length : length);  // checked on host
  const int64_t count = core::num_to_remask(length, iteration, num_iterations);
  if (count <= 0) return;  // block-uniform
  const int64_t last_real = length - 2;
  const float* row_scores = scores + row * max_length;

  // Loop bounds depend only on the row, so every thread reaches every __syncthreads().
  for (int64_t base = 1; base <= last_real; base += blockDim.x) {
    const int64_t position = base + threadIdx.x;
    const bool active = position <= last_real;
    const float score = active ? row_scores[position] : 0.0f;
    int64_t rank = 0;
    for (int64_t tile_start = 1; tile_start <= last_real; tile_start += kScoreTile) {
      const int64_t tile_size =
          last_real - tile_start + 1 < kScoreTile ? last_real - tile_start + 1 : kScoreTile;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < tile_size; i += blockDim.x) {
        tile[i] = row_scores[tile_start + i];
      }
      __syncthreads();
      if (active) {
        for (int64_t i = 0; i < tile_size; ++i) {
          rank += core::score_position_less(tile[i], tile_start + i, score, position);
        }
      }
    }
    if (active && rank < count) {
      tokens[row * max_length + position] = mask_id;
      remasked[row * max_length + position] = true;
    }
  }
}

// One block per row: re-mask the row's lowest-scoring real tokens.
void launch_remask(at::Tensor& tokens, const at::Tensor& scores, const at::Tensor& lengths, at::Tensor& remasked,
                   int64_t iteration, int64_t num_iterations, int64_t mask_id, cudaStream_t stream) {
  remask_kernel<<<static_cast<unsigned>(tokens.size(0)), kRemaskThreads, 0, stream>>>(
      scores.data_ptr<float>(), tokens.data_ptr<int64_t>(), remasked.data_ptr<bool>(),
      lengths.data_ptr<int64_t>(), tokens.size(1), iteration, num_iterations, mask_id);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor mask_predict_step_cuda(const at::Tensor& logits, at::Tensor& tokens,
                                  at::Tensor& scores, const at::Tensor& lengths,
                                  int64_t iteration, int64_t num_iterations, int64_t mask_id) {
  check_mask_predict_inputs(logits, tokens, scores, lengths, iteration, num_iterations, mask_id);
  TORCH_CHECK(logits.is_cuda(), "mask_predict_step_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard device_guard(logits.device());
  const int64_t num_rows = logits.size(0);
  const int64_t max_length = logits.size(1);
  const int64_t vocab_size = logits.size(2);
  check_mask_predict_lengths(lengths, max_length);
  auto remasked = at::zeros({num_rows, max_length}, tokens.options().dtype(at::kBool));
  if (num_rows == 0) return remasked;
  TORCH_CHECK(num_rows * max_length <= INT32_MAX, "mask_predict_step_cuda: N * T too large");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const auto fill = [&](auto* typed_logits) {
    fill_masked_kernel<<<static_cast<unsigned>(num_rows * max_length), kFillThreads, 0, stream>>>(
        typed_logits, tokens.data_ptr<int64_t>(), scores.data_ptr<float>(),
        lengths.data_ptr<int64_t>(), max_length, vocab_size, mask_id);
  };
  switch (logits.scalar_type()) {
    case at::kFloat:
      fill(logits.data_ptr<float>());
      break;
    case at::kBFloat16:
      fill(logits.data_ptr<at::BFloat16>());
      break;
    default:
      fill(logits.data_ptr<at::Half>());
      break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  launch_remask(tokens, scores, lengths, remasked, iteration, num_iterations, mask_id, stream);
  return remasked;
}

at::Tensor mask_predict_remask_cuda(at::Tensor& tokens, const at::Tensor& scores, const at::Tensor& lengths,
                                    int64_t iteration, int64_t num_iterations, int64_t mask_id) {
  check_remask_inputs("mask_predict_remask", tokens, scores, lengths, iteration, num_iterations, mask_id);
  TORCH_CHECK(tokens.is_cuda(), "mask_predict_remask_cuda: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard device_guard(tokens.device());
  const int64_t num_rows = tokens.size(0);
  check_mask_predict_lengths(lengths, tokens.size(1), "mask_predict_remask");
  auto remasked = at::zeros(tokens.sizes(), tokens.options().dtype(at::kBool));
  if (num_rows == 0) return remasked;
  TORCH_CHECK(num_rows * tokens.size(1) <= INT32_MAX, "mask_predict_remask_cuda: N * T too large");
  launch_remask(tokens, scores, lengths, remasked, iteration, num_iterations, mask_id,
                c10::cuda::getCurrentCUDAStream());
  return remasked;
}

}  // namespace

JANUS_MASK_PREDICT_KERNELS(CUDA, cuda)

}  // namespace janus_fast
