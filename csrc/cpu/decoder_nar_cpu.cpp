// The content-stream pass of mask-predict over packed rows (no padding), for the requested positions only:
//
//   janus_fast::decoder_nar_pass  returns their logits;
//   janus_fast::decoder_nar_fill  returns, per requested position, the argmax token and its
//                                 log-probability (mask-predict's fill) instead of logits.
//
// The last layer runs its queries, cross-attention and FFN only for the requested positions.
#include "cpu/decoder_passes.h"

#include <torch/library.h>

#include <cstring>

namespace janus_fast {
namespace cpu {

// The last decoder states (before the final norm) of the requested positions of a NAR pass (see
// decoder_passes.h).
PassStates run_nar_rows(const DecoderWeights& d, const Architecture& arch, float scale, const Memories& memory,
                        const int64_t* token_ids, const int64_t* position_ids, const PackedLayout& layout,
                        const std::vector<int64_t>& decoder_row, const int64_t* out_pos, int64_t num_out) {
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  const int64_t packed = static_cast<int64_t>(layout.row_of.size());
  const int64_t max_row = layout.max_row;
  const int64_t* offsets = layout.offsets.data();
  const std::vector<int64_t>& row_of = layout.row_of;
  if (num_out == 0) return {d, nullptr, 0};

  const int64_t dim = d.dim, cap = std::max(packed, num_out);  // rows of the per-row buffers
  const PassScratch s = pass_scratch(packed, cap, packed, dim, d.ffn);
  float *x = s.x, *h = s.h, *q = s.q, *a = s.a, *kv = s.kv, *f = s.f;
  thread_local std::vector<float> xo_buffer;
  float* xo = scratch(xo_buffer, num_out * dim);
  for (int64_t p = 0; p < packed; ++p) embed(d, token_ids[p], position_ids[p], scale, x + p * dim);
  std::vector<int64_t> memory_rows(packed), out_rows(num_out);
  for (int64_t p = 0; p < packed; ++p) memory_rows[p] = decoder_row[row_of[p]];
  for (int64_t i = 0; i < num_out; ++i) out_rows[i] = decoder_row[row_of[out_pos[i]]];

  for (int64_t l = 0; l < num_layers; ++l) {
    const DecoderLayerWeights& layer = d.layers[l];
    const SelfAttentionWeights& attention = layer.self_attention;
    const bool last = l == num_layers - 1;
    const float* in = sublayer_input(arch, x, packed, dim, attention.norm, h);
    linear(in, packed, dim, attention.kv, kv, 2 * dim);
    // the last layer continues with the requested positions only
    float* xs = x;
    const float* hs = in;
    int64_t n = packed;
    const int64_t* query_packed = nullptr;  // query row i -> packed position (last layer)
    if (last) {  // gather x and LN1(x) of the requested positions (into xo and a; a is free until attention)
      for (int64_t i = 0; i < num_out; ++i) {
        std::memcpy(xo + i * dim, x + out_pos[i] * dim, dim * sizeof(float));
        std::memcpy(a + i * dim, in + out_pos[i] * dim, dim * sizeof(float));
      }
      xs = xo;
      hs = a;
      n = num_out;
      query_packed = out_pos;
    }
    linear(hs, n, dim, attention.q, q, dim);
    attention_rows(q, dim, n, d, a, dim, max_row,
                   [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                       int64_t& vs, int64_t& count) {
                     const int64_t r = row_of[query_packed ? query_packed[row] : row];
                     keys = kv + offsets[r] * 2 * dim + head * d.head_dim;
                     values = keys + dim;
                     ks = vs = 2 * dim;
                     count = offsets[r + 1] - offsets[r];
                   });
    linear(a, n, dim, attention.out, xs, dim, /*accumulate=*/true);
    finish_sublayer(arch, xs, n, dim, attention.norm);
    cross_and_ffn(arch, xs, n, layer, d, memory.layers[l], last ? out_rows : memory_rows, memory, h, q, a, f);
  }
  return {d, xo, num_out};
}

namespace {

// The checks and arguments of the NAR pass of the ops below, then run_nar_rows.
PassStates nar_states(at::TensorList weights, int64_t num_heads, bool post_norm, bool relu, double embed_scale,
                     const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& row_offsets,
                     at::TensorList memory_keys, at::TensorList memory_values, const at::Tensor& memory_lengths,
                     const at::Tensor& output_positions, const std::optional<at::Tensor>& memory_rows) {
  const DecoderWeights d = parse_decoder_weights(weights, num_heads);
  for (const at::Tensor* t : {&tokens, &positions, &row_offsets, &output_positions})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->scalar_type() == at::kLong && t->device().is_cpu(),
                      "decoder_nar_pass: tokens, positions, row_offsets and output_positions must be 1-D int64 "
                      "CPU tensors");
  const int64_t packed = tokens.size(0);
  TORCH_CHECK_VALUE(positions.size(0) == packed, "decoder_nar_pass: ", packed, " tokens but ", positions.size(0),
                    " positions");
  const PackedLayout layout = packed_layout(row_offsets, packed, "decoder_nar_pass");
  const at::Tensor tokens_c = tokens.contiguous();
  const at::Tensor positions_c = positions.contiguous(), outputs_c = output_positions.contiguous();
  const int64_t num_out = output_positions.size(0);
  const int64_t* out_pos = outputs_c.data_ptr<int64_t>();
  for (int64_t i = 0; i < num_out; ++i)
    TORCH_CHECK_VALUE(out_pos[i] >= 0 && out_pos[i] < packed, "decoder_nar_pass: output position ", out_pos[i],
                      " outside [0, ", packed, ")");
  const Memories memory =
      checked_memories(memory_keys, memory_values, memory_lengths, memory_rows, layout.num_rows, d, "decoder_nar_pass");
  std::vector<int64_t> decoder_row(layout.num_rows);
  for (int64_t r = 0; r < layout.num_rows; ++r) decoder_row[r] = r;
  return run_nar_rows(d, Architecture{post_norm, relu}, static_cast<float>(embed_scale), memory,
                      tokens_c.data_ptr<int64_t>(), positions_c.data_ptr<int64_t>(), layout, decoder_row, out_pos,
                      num_out);
}

at::Tensor decoder_nar_pass(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                            const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& row_offsets,
                            at::TensorList memory_keys, at::TensorList memory_values, const at::Tensor& memory_lengths,
                            const at::Tensor& output_positions, const std::optional<at::Tensor>& memory_rows) {
  const PassStates s = nar_states(weights, num_heads, post_norm, relu, embed_scale, tokens, positions, row_offsets,
                                 memory_keys, memory_values, memory_lengths, output_positions, memory_rows);
  if (s.rows == 0) return at::empty({0, s.d.vocab}, at::TensorOptions().dtype(at::kFloat));
  return vocabulary_logits(s.d, s.states, s.rows);
}

// decoder_nar_pass followed by the fill of mask-predict (select_tokens without `exclude_id`, or over
// the whole vocabulary for -1: fairseq's fill), as janus_fast.ops.mask_predict_step's step 1.
std::tuple<at::Tensor, at::Tensor> decoder_nar_fill(at::TensorList weights, int64_t num_heads, double embed_scale,
                                                    bool post_norm, bool relu, const at::Tensor& tokens,
                                                    const at::Tensor& positions, const at::Tensor& row_offsets,
                                                    at::TensorList memory_keys, at::TensorList memory_values,
                                                    const at::Tensor& memory_lengths,
                                                    const at::Tensor& output_positions, int64_t exclude_id,
                                                    const std::optional<at::Tensor>& memory_rows) {
  const PassStates s = nar_states(weights, num_heads, post_norm, relu, embed_scale, tokens, positions, row_offsets,
                                 memory_keys, memory_values, memory_lengths, output_positions, memory_rows);
  TORCH_CHECK_VALUE(exclude_id >= -1 && exclude_id < s.d.vocab, "decoder_nar_fill: exclude_id ", exclude_id,
                    " outside [-1, ", s.d.vocab, ")");
  const std::vector<int64_t> excluded = exclude_id >= 0 ? std::vector<int64_t>{exclude_id} : std::vector<int64_t>{};
  return select_tokens(s.d, s.states, s.rows, excluded, nullptr);
}

}  // namespace

TORCH_LIBRARY_IMPL(janus_fast, CPU, m) { JANUS_DECODER_NAR_OPS(JANUS_CPU_KERNEL) }

}  // namespace cpu
}  // namespace janus_fast
