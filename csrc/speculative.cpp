// Schema, input validation and the Meta (shape-only) kernel of janus_fast::speculative_accept. The
// device kernels register themselves in cpu/speculative_cpu.cpp and cuda/speculative_cuda.cu.
#include "speculative.h"

#include <torch/library.h>

namespace janus_fast {

void check_speculative_inputs(const at::Tensor& draft, const at::Tensor& draft_counts, const at::Tensor& verified,
                              const c10::optional<at::Tensor>& relaxed, int64_t eos_id) {
  TORCH_CHECK_TYPE(draft.scalar_type() == at::kLong && draft_counts.scalar_type() == at::kLong &&
                       verified.scalar_type() == at::kLong,
                   "speculative_accept: draft, draft_counts and verified must be int64, got ", draft.scalar_type(),
                   ", ", draft_counts.scalar_type(), ", ", verified.scalar_type());
  TORCH_CHECK_VALUE(draft.dim() == 2, "speculative_accept: draft must be (N, K), got ", draft.sizes());
  const int64_t rows = draft.size(0), width = draft.size(1);
  TORCH_CHECK_VALUE(draft_counts.dim() == 1 && draft_counts.size(0) == rows,
                    "speculative_accept: draft_counts must be (N,) = (", rows, ",), got ", draft_counts.sizes());
  TORCH_CHECK_VALUE(verified.dim() == 2 && verified.size(0) == rows && verified.size(1) == width + 1,
                    "speculative_accept: verified must be (N, K + 1) = (", rows, ", ", width + 1, "), got ",
                    verified.sizes());
  TORCH_CHECK_VALUE(eos_id >= 0, "speculative_accept: eos_id must be >= 0, got ", eos_id);
  bool one_device = draft_counts.device() == draft.device() && verified.device() == draft.device();
  if (relaxed.has_value()) {
    TORCH_CHECK_TYPE(relaxed->scalar_type() == at::kBool, "speculative_accept: relaxed must be bool, got ",
                     relaxed->scalar_type());
    TORCH_CHECK_VALUE(relaxed->dim() == 2 && relaxed->size(0) == rows && relaxed->size(1) == width,
                      "speculative_accept: relaxed must be (N, K) = (", rows, ", ", width, "), got ",
                      relaxed->sizes());
    one_device = one_device && relaxed->device() == draft.device();
  }
  TORCH_CHECK(one_device, "speculative_accept: all tensors must be on one device");
}

namespace {

std::tuple<at::Tensor, at::Tensor> speculative_accept_meta(const at::Tensor& draft, const at::Tensor& draft_counts,
                                                           const at::Tensor& verified,
                                                           const c10::optional<at::Tensor>& relaxed, int64_t eos_id) {
  check_speculative_inputs(draft, draft_counts, verified, relaxed, eos_id);
  return {at::empty({draft.size(0)}, draft.options()), at::empty(verified.sizes(), verified.options())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(janus_fast, m) {
  m.def(
      "speculative_accept(Tensor draft, Tensor draft_counts, Tensor verified, Tensor? relaxed, int eos_id) "
      "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(janus_fast, Meta, m) {
  m.impl("speculative_accept", &speculative_accept_meta);
}

}  // namespace janus_fast
