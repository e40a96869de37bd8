// janus_fast::speculative_accept: per sentence, the drafted tokens a speculative decoding round keeps
// (core/speculative_accept.h). The schema, checks and Meta kernel are in speculative.cpp, the CPU
// kernel in cpu/speculative_cpu.cpp, the CUDA kernel in cuda/speculative_cuda.cu.
#pragma once

#include <ATen/ATen.h>

namespace janus_fast {

// Validates shapes, dtypes and devices of speculative_accept's inputs (draft (N, K) int64,
// draft_counts (N,) int64, verified (N, K + 1) int64, relaxed undefined or (N, K) bool, eos_id >= 0).
void check_speculative_inputs(const at::Tensor& draft, const at::Tensor& draft_counts, const at::Tensor& verified,
                              const c10::optional<at::Tensor>& relaxed, int64_t eos_id);

}  // namespace janus_fast
