// Schema, input validation, the Meta (shape-only) kernel and the Python module of
// janus_fast::mask_predict_step. The device kernels register themselves with
// TORCH_LIBRARY_IMPL in cpu/mask_predict_cpu.cpp and cuda/mask_predict_cuda.cu.
#include "mask_predict.h"

#include <torch/extension.h>

#include <limits>

namespace janus_fast {

void check_remask_inputs(const char* op, const at::Tensor& tokens, const at::Tensor& scores,
                         const at::Tensor& lengths, int64_t iteration, int64_t num_iterations,
                         int64_t mask_id) {
  TORCH_CHECK_TYPE(tokens.scalar_type() == at::kLong, op, ": tokens must be int64, got ", tokens.scalar_type());
  TORCH_CHECK_TYPE(scores.scalar_type() == at::kFloat, op, ": scores must be float32, got ", scores.scalar_type());
  TORCH_CHECK_TYPE(lengths.scalar_type() == at::kLong, op, ": lengths must be int64, got ", lengths.scalar_type());
  TORCH_CHECK_VALUE(tokens.dim() == 2, op, ": tokens must be (N, T), got ", tokens.sizes());
  const int64_t num_rows = tokens.size(0);
  const int64_t max_length = tokens.size(1);
  TORCH_CHECK_VALUE(scores.dim() == 2 && scores.size(0) == num_rows && scores.size(1) == max_length, op,
                    ": scores must be (N, T) = (", num_rows, ", ", max_length, "), got ", scores.sizes());
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == num_rows, op, ": lengths must be (N,) = (", num_rows,
                    ",), got ", lengths.sizes());
  TORCH_CHECK(scores.device() == tokens.device() && lengths.device() == tokens.device(), op,
              ": all tensors must be on one device, got tokens on ", tokens.device(), ", scores on ", scores.device(),
              ", lengths on ", lengths.device());
  TORCH_CHECK(tokens.is_contiguous() && scores.is_contiguous() && lengths.is_contiguous(), op,
              ": tokens, scores and lengths must be contiguous");
  TORCH_CHECK_VALUE(max_length >= 2, op, ": T must be >= 2 (bos and eos), got ", max_length);
  // (T - 2) * (num_iterations - 1) must stay inside int64: the re-mask count's product
  constexpr int64_t kMaxIterations = (int64_t{1} << 31) - 1;
  TORCH_CHECK_VALUE(num_iterations >= 1 && num_iterations <= kMaxIterations, op, ": num_iterations must be in [1, ",
                    kMaxIterations, "], got ", num_iterations);
  TORCH_CHECK_VALUE(iteration >= 0 && iteration < num_iterations, op, ": iteration must be in [0, ",
                    num_iterations, "), got ", iteration);
  TORCH_CHECK_VALUE(mask_id >= 0, op, ": mask_id must be >= 0, got ", mask_id);
}

void check_mask_predict_inputs(const at::Tensor& logits, const at::Tensor& tokens,
                               const at::Tensor& scores, const at::Tensor& lengths,
                               int64_t iteration, int64_t num_iterations, int64_t mask_id) {
  TORCH_CHECK_VALUE(logits.dim() == 3, "mask_predict_step: logits must be (N, T, V), got ",
                    logits.dim(), " dims");
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16 ||
                       logits.scalar_type() == at::kHalf,
                   "mask_predict_step: logits must be float32, bfloat16 or float16, got ",
                   logits.scalar_type());
  const int64_t vocab_size = logits.size(2);
  TORCH_CHECK_VALUE(tokens.dim() == 2 && tokens.size(0) == logits.size(0) && tokens.size(1) == logits.size(1),
                    "mask_predict_step: tokens must be (N, T) = (", logits.size(0), ", ", logits.size(1),
                    "), got ", tokens.sizes());
  check_remask_inputs("mask_predict_step", tokens, scores, lengths, iteration, num_iterations, mask_id);
  TORCH_CHECK(logits.device() == tokens.device(), "mask_predict_step: all tensors must be on one device, got logits on ",
              logits.device(), ", tokens on ", tokens.device());
  TORCH_CHECK(logits.is_contiguous(), "mask_predict_step: logits, tokens, scores and lengths must be contiguous");
  TORCH_CHECK_VALUE(vocab_size >= 2 && vocab_size <= std::numeric_limits<int32_t>::max(),
                    "mask_predict_step: vocabulary size must be in [2, 2^31), got ", vocab_size);
  TORCH_CHECK_VALUE(mask_id < vocab_size, "mask_predict_step: mask_id must be in [0, ", vocab_size, "), got ",
                    mask_id);
}

void check_mask_predict_lengths(const at::Tensor& lengths, int64_t max_length, const char* op) {
  if (lengths.numel() > 0) {
    const auto [min_length, max_found] = at::aminmax(lengths);
    const int64_t lo = min_length.item<int64_t>();
    const int64_t hi = max_found.item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 2 && hi <= max_length, op, ": lengths must be in [2, T=",
                      max_length, "], got values in [", lo, ", ", hi, "]");
  }
}

namespace {

// Shape-only kernel, used by torch.compile / FakeTensor tracing.
at::Tensor mask_predict_step_meta(const at::Tensor& logits, at::Tensor& tokens,
                                  at::Tensor& scores, const at::Tensor& lengths,
                                  int64_t iteration, int64_t num_iterations, int64_t mask_id) {
  check_mask_predict_inputs(logits, tokens, scores, lengths, iteration, num_iterations, mask_id);
  return at::empty(tokens.sizes(), tokens.options().dtype(at::kBool));
}

at::Tensor mask_predict_remask_meta(at::Tensor& tokens, const at::Tensor& scores, const at::Tensor& lengths,
                                    int64_t iteration, int64_t num_iterations, int64_t mask_id) {
  check_remask_inputs("mask_predict_remask", tokens, scores, lengths, iteration, num_iterations, mask_id);
  return at::empty(tokens.sizes(), tokens.options().dtype(at::kBool));
}

}  // namespace

TORCH_LIBRARY(janus_fast, m) {
  m.def(
      "mask_predict_step(Tensor logits, Tensor(a!) tokens, Tensor(b!) scores, Tensor lengths, "
      "int iteration, int num_iterations, int mask_id) -> Tensor");
  m.def(
      "mask_predict_remask(Tensor(a!) tokens, Tensor scores, Tensor lengths, int iteration, int num_iterations, "
      "int mask_id) -> Tensor");
}

JANUS_MASK_PREDICT_KERNELS(Meta, meta)

}  // namespace janus_fast

// Importing janus_fast._C loads this library, which runs the registrations above; the ops are
// then reached through torch.ops.janus_fast.*.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "janus_fast native ops; call them through torch.ops.janus_fast";
}
