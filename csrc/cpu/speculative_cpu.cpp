// CPU kernel of janus_fast::speculative_accept: core::accept_drafted per sentence.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "core/speculative_accept.h"
#include "speculative.h"

namespace janus_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> speculative_accept_cpu(const at::Tensor& draft, const at::Tensor& draft_counts,
                                                          const at::Tensor& verified,
                                                          const c10::optional<at::Tensor>& relaxed, int64_t eos_id) {
  check_speculative_inputs(draft, draft_counts, verified, relaxed, eos_id);
  const at::Tensor draft_c = draft.contiguous(), counts_c = draft_counts.contiguous();
  const at::Tensor verified_c = verified.contiguous();
  const at::Tensor relaxed_c = relaxed.has_value() ? relaxed->contiguous() : at::Tensor();
  const int64_t rows = draft.size(0), width = draft.size(1);
  const int64_t* counts = counts_c.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_VALUE(counts[r] >= 0 && counts[r] <= width, "speculative_accept: draft count ", counts[r],
                      " outside [0, ", width, "]");
  at::Tensor kept = at::empty({rows}, draft.options());
  at::Tensor tokens = at::empty({rows, width + 1}, draft.options());
  const int64_t* draft_data = draft_c.data_ptr<int64_t>();
  const int64_t* verified_data = verified_c.data_ptr<int64_t>();
  const bool* relaxed_data = relaxed_c.defined() ? relaxed_c.data_ptr<bool>() : nullptr;
  int64_t* kept_data = kept.data_ptr<int64_t>();
  int64_t* token_data = tokens.data_ptr<int64_t>();
  at::parallel_for(0, rows, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t* out = token_data + r * (width + 1);
      kept_data[r] = core::accept_drafted(draft_data + r * width, verified_data + r * (width + 1),
                                          relaxed_data ? relaxed_data + r * width : nullptr, counts[r], eos_id, out);
      for (int64_t i = counts[r] + 1; i <= width; ++i) out[i] = -1;
    }
  });
  return {kept, tokens};
}

}  // namespace

TORCH_LIBRARY_IMPL(janus_fast, CPU, m) {
  m.impl("speculative_accept", &speculative_accept_cpu);
}

}  // namespace janus_fast
