// CUDA kernel of janus_fast::speculative_accept: one thread per sentence running
// core::accept_drafted, the same code as the CPU kernel (cpu/speculative_cpu.cpp).
//
// What was run: compiled and linked with nvcc on the development machine (no GPU) by
// .ci/cuda_build_check.sh; python_tests/test_speculative.py compares it with the reference when a
// GPU is present.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "core/speculative_accept.h"
#include "speculative.h"

namespace janus_fast {
namespace {

constexpr int kAcceptThreads = 128;

__global__ void accept_kernel(const int64_t* draft, const int64_t* counts, const int64_t* verified,
                              const bool* relaxed, int64_t rows, int64_t width, int64_t eos_id, int64_t* kept,
                              int64_t* tokens, int* bad_count) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  int64_t* out = tokens + r * (width + 1);
  const int64_t count = counts[r];
  if (count < 0 || count > width) {  // reported after the launch; the row is left as -1
    atomicExch(bad_count, 1);
    kept[r] = 0;
    for (int64_t i = 0; i <= width; ++i) out[i] = -1;
    return;
  }
  kept[r] = core::accept_drafted(draft + r * width, verified + r * (width + 1), relaxed ? relaxed + r * width : nullptr,
                                 count, eos_id, out);
  for (int64_t i = count + 1; i <= width; ++i) out[i] = -1;
}

std::tuple<at::Tensor, at::Tensor> speculative_accept_cuda(const at::Tensor& draft, const at::Tensor& draft_counts,
                                                           const at::Tensor& verified,
                                                           const c10::optional<at::Tensor>& relaxed,
                                                           int64_t eos_id) {
  check_speculative_inputs(draft, draft_counts, verified, relaxed, eos_id);
  const c10::cuda::CUDAGuard guard(draft.device());
  const at::Tensor draft_c = draft.contiguous(), counts_c = draft_counts.contiguous();
  const at::Tensor verified_c = verified.contiguous();
  const at::Tensor relaxed_c = relaxed.has_value() ? relaxed->contiguous() : at::Tensor();
  const int64_t rows = draft.size(0), width = draft.size(1);
  at::Tensor kept = at::empty({rows}, draft.options());
  at::Tensor tokens = at::empty({rows, width + 1}, draft.options());
  if (rows == 0) return {kept, tokens};
  at::Tensor bad = at::zeros({1}, draft.options().dtype(at::kInt));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((rows + kAcceptThreads - 1) / kAcceptThreads);
  accept_kernel<<<blocks, kAcceptThreads, 0, stream>>>(
      draft_c.data_ptr<int64_t>(), counts_c.data_ptr<int64_t>(), verified_c.data_ptr<int64_t>(),
      relaxed_c.defined() ? relaxed_c.data_ptr<bool>() : nullptr, rows, width, eos_id, kept.data_ptr<int64_t>(),
      tokens.data_ptr<int64_t>(), bad.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK_VALUE(bad.item<int>() == 0, "speculative_accept: a draft count is outside [0, ", width, "]");
  return {kept, tokens};
}

}  // namespace

TORCH_LIBRARY_IMPL(janus_fast, CUDA, m) {
  m.impl("speculative_accept", &speculative_accept_cuda);
}

}  // namespace janus_fast
