// janus_fast::mask_predict_step: one mask-predict iteration (fill masked positions with their
// argmax token and its log-probability, then re-mask the lowest-scoring real tokens), and
// janus_fast::mask_predict_remask: the re-mask alone (for passes that fill the positions themselves).
// The schema is registered in mask_predict.cpp; the CPU kernel is in cpu/mask_predict_cpu.cpp,
// the CUDA kernels in cuda/mask_predict_cuda.cu, the torch-free core logic in core/.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>

namespace janus_fast {

// Validates shapes, dtypes, devices, contiguity and the scalar arguments. Throws c10 errors
// (TypeError / ValueError / RuntimeError in Python) instead of touching memory out of bounds.
void check_mask_predict_inputs(const at::Tensor& logits, const at::Tensor& tokens,
                               const at::Tensor& scores, const at::Tensor& lengths,
                               int64_t iteration, int64_t num_iterations, int64_t mask_id);

// The same checks of the re-mask's tokens (N, T), scores (N, T), lengths (N,) and scalars, with
// `op` naming the op in the messages.
void check_remask_inputs(const char* op, const at::Tensor& tokens, const at::Tensor& scores,
                         const at::Tensor& lengths, int64_t iteration, int64_t num_iterations,
                         int64_t mask_id);

// Reads `lengths` (N,) to check 2 <= lengths <= T (a device synchronisation for CUDA tensors).
void check_mask_predict_lengths(const at::Tensor& lengths, int64_t max_length,
                                const char* op = "mask_predict_step");

}  // namespace janus_fast

// Registers both ops' kernels for one dispatch key KEY (Meta in mask_predict.cpp, CPU in
// cpu/mask_predict_cpu.cpp, CUDA in cuda/mask_predict_cuda.cu): mask_predict_step_<suffix> and
// mask_predict_remask_<suffix>, declared in the file that uses it (inside namespace janus_fast).
#define JANUS_MASK_PREDICT_KERNELS(KEY, suffix)                   \
  TORCH_LIBRARY_IMPL(janus_fast, KEY, m) {                        \
    m.impl("mask_predict_step", &mask_predict_step_##suffix);     \
    m.impl("mask_predict_remask", &mask_predict_remask_##suffix); \
  }
