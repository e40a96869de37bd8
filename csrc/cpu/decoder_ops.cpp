// Whole encoder and decoder passes of the CPU engine in one call each, with no per-op dispatch: the
// schemas and Meta (shape-only) kernels of
//
//   janus_fast::decoder_ar_step   one incremental AR step (content token + query stream) for B rows,
//                                 appending to the key/value caches, returning (B, V) logits;
//   janus_fast::decoder_ar_greedy the same step returning greedy search's token per row and its
//                                 log-probability instead of logits;
//   janus_fast::decoder_ar_greedy_search  AR greedy search to its end in one call: that step for every
//                                 step, each sentence until its eos or its length limit;
//   janus_fast::decoder_speculative_search  speculative decoding (NAR drafts, exact AR verification) to
//                                 its end in one call;
//   janus_fast::decoder_ar_topk   the same step returning each row's k most likely tokens and their
//                                 log-probabilities instead of logits: a beam search step;
//   janus_fast::decoder_ar_extend several new tokens per sentence appended to its caches, with the
//                                 greedy choice after each: the verification of speculative decoding;
//   janus_fast::decoder_nar_pass  the content-stream pass of mask-predict over packed rows
//                                 (no padding), returning the logits of the requested positions only;
//   janus_fast::decoder_nar_fill  the same pass returning, per requested position, the argmax token
//                                 and its log-probability (mask-predict's fill) instead of logits;
//   janus_fast::decoder_ar_score  a teacher-forced AR pass of both streams over packed rows,
//                                 returning each given next token's log-probability;
//   janus_fast::encoder_forward   the encoder over the real source positions and the decoder's
//                                 cross-attention keys/values, computed once per batch;
//   janus_fast::decoder_isa       the instruction set the passes' matrix products use.
//
// The decoder ops read the encoder memory (cross-attention keys/values, one entry per sentence) of
// their rows; `memory_rows` (rows,) int64, where given, maps each row to its entry, so that a
// sentence's length candidates or beams share one copy (absent: one entry per row).
//
// The CPU kernels register themselves in decoder_ar_cpu.cpp, decoder_nar_cpu.cpp and encoder_cpu.cpp,
// built from decoder_passes.h and decoder_weights.h. The weights come as one flat list prepared by
// janus_fast/native/weights.py (its dataclasses give the order; decoder_weights.h mirrors them); the
// reference is the PyTorch model, and the tests compare the two.
#include "cpu/decoder_passes.h"

#include <torch/library.h>

#include <string>
#include <optional>
#include <tuple>
#include <vector>

namespace janus_fast {
namespace {

std::string decoder_isa() { return core::isa_name(cpu::active_isa()); }

// The Meta kernels check what the output shapes depend on (the lengths of the lists, the ranks of the
// tensors sized from) and return empty meta tensors of the CPU kernels' shapes and dtypes.

// The vocabulary size of a decoder weight list, after checking the list's length and the number of
// memory tensors (and caches, where given) against its layers.
int64_t meta_vocab(at::TensorList weights, at::TensorList memory_keys, at::TensorList memory_values,
                   at::TensorList cache_keys, at::TensorList cache_values, bool caches, const char* op) {
  const int64_t layers = cpu::decoder_layer_count(weights);
  TORCH_CHECK_VALUE(static_cast<int64_t>(memory_keys.size()) == layers &&
                        static_cast<int64_t>(memory_values.size()) == layers,
                    op, ": one memory tensor per layer (", layers, ") expected");
  TORCH_CHECK_VALUE(!caches || (static_cast<int64_t>(cache_keys.size()) == layers &&
                                static_cast<int64_t>(cache_values.size()) == layers),
                    op, ": one cache tensor per layer (", layers, ") expected");
  TORCH_CHECK_VALUE(weights[0].dim() == 2, op, ": embed_tokens must be 2-D, got ", weights[0].sizes());
  return weights[0].size(0);
}

int64_t meta_length(const at::Tensor& t, const char* op, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", what, " must be 1-D, got ", t.sizes());
  return t.size(0);
}

// Always on the meta device: the dispatcher sends a call here when any of its tensors is a meta one,
// and one mixing meta and CPU tensors must not get CPU tensors of uninitialised memory back (probe 28).
at::Tensor meta_empty(at::IntArrayRef sizes, const at::Tensor& like, at::ScalarType type) {
  return at::empty(sizes, like.options().dtype(type).device(at::kMeta));
}

at::Tensor decoder_ar_step_meta(at::TensorList weights, int64_t, double, bool, bool, int64_t, int64_t, bool,
                                const at::Tensor& tokens, int64_t, at::TensorList memory_keys,
                                at::TensorList memory_values, const at::Tensor&, at::TensorList cache_keys,
                                at::TensorList cache_values, const std::optional<at::Tensor>&) {
  const char* op = "decoder_ar_step";
  const int64_t vocab = meta_vocab(weights, memory_keys, memory_values, cache_keys, cache_values, true, op);
  return meta_empty({meta_length(tokens, op, "tokens"), vocab}, tokens, at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> decoder_ar_greedy_meta(
    at::TensorList weights, int64_t, double, bool, bool, int64_t, int64_t, bool, const at::Tensor& tokens, int64_t,
    at::TensorList memory_keys, at::TensorList memory_values, const at::Tensor&, at::TensorList cache_keys,
    at::TensorList cache_values, const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&) {
  const char* op = "decoder_ar_greedy";
  meta_vocab(weights, memory_keys, memory_values, cache_keys, cache_values, true, op);
  const int64_t rows = meta_length(tokens, op, "tokens");
  return {meta_empty({rows}, tokens, at::kLong), meta_empty({rows}, tokens, at::kFloat)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> decoder_ar_greedy_search_meta(
    at::TensorList weights, int64_t, double, bool, bool, int64_t, int64_t, bool, at::TensorList memory_keys,
    at::TensorList memory_values, const at::Tensor&, const at::Tensor& limits, int64_t max_steps, const at::Tensor&,
    int64_t, int64_t, int64_t, const std::optional<at::Tensor>&) {
  const char* op = "decoder_ar_greedy_search";
  meta_vocab(weights, memory_keys, memory_values, {}, {}, false, op);
  TORCH_CHECK_VALUE(max_steps >= 0, op, ": max_steps must be >= 0, got ", max_steps);
  const int64_t rows = meta_length(limits, op, "limits");
  return {meta_empty({rows, max_steps}, limits, at::kLong), meta_empty({rows}, limits, at::kFloat),
          meta_empty({rows}, limits, at::kLong)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decoder_speculative_search_meta(
    at::TensorList weights, int64_t, double, bool, bool, int64_t, int64_t, at::TensorList memory_keys,
    at::TensorList memory_values, const at::Tensor&, const at::Tensor& limits, const at::Tensor&, int64_t max_steps,
    const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t, const std::optional<at::Tensor>&) {
  const char* op = "decoder_speculative_search";
  meta_vocab(weights, memory_keys, memory_values, {}, {}, false, op);
  TORCH_CHECK_VALUE(max_steps >= 0, op, ": max_steps must be >= 0, got ", max_steps);
  const int64_t rows = meta_length(limits, op, "limits");
  return {meta_empty({rows, max_steps}, limits, at::kLong), meta_empty({rows}, limits, at::kFloat),
          meta_empty({rows}, limits, at::kLong), meta_empty({rows}, limits, at::kLong)};
}

std::tuple<at::Tensor, at::Tensor> decoder_ar_topk_meta(
    at::TensorList weights, int64_t, double, bool, bool, int64_t, int64_t, bool, const at::Tensor& tokens, int64_t,
    at::TensorList memory_keys, at::TensorList memory_values, const at::Tensor&, at::TensorList cache_keys,
    at::TensorList cache_values, const at::Tensor&, const at::Tensor&, int64_t, int64_t k, bool,
    const std::optional<at::Tensor>&) {
  const char* op = "decoder_ar_topk";
  const int64_t vocab = meta_vocab(weights, memory_keys, memory_values, cache_keys, cache_values, true, op);
  TORCH_CHECK_VALUE(k >= 1, op, ": k must be >= 1, got ", k);
  const int64_t rows = meta_length(tokens, op, "tokens"), width = std::min(k, vocab);
  return {meta_empty({rows, width}, tokens, at::kLong), meta_empty({rows, width}, tokens, at::kFloat)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decoder_ar_extend_meta(
    at::TensorList weights, int64_t, double, bool, bool, int64_t, int64_t, bool, const at::Tensor& tokens,
    const at::Tensor&, const at::Tensor&, at::TensorList memory_keys, at::TensorList memory_values,
    const at::Tensor&, at::TensorList cache_keys, at::TensorList cache_values, const at::Tensor&, const at::Tensor&,
    int64_t, const at::Tensor& candidates, const std::optional<at::Tensor>&) {
  const char* op = "decoder_ar_extend";
  meta_vocab(weights, memory_keys, memory_values, cache_keys, cache_values, true, op);
  const int64_t count = meta_length(tokens, op, "tokens");
  const int64_t ranked = candidates.numel() > 0 ? count : 0;
  TORCH_CHECK_VALUE(candidates.dim() == 1 && (ranked == 0 || candidates.size(0) == count), op,
                    ": candidates must be int64, empty or (", count, ",), got ", candidates.sizes());
  return {meta_empty({count}, tokens, at::kLong), meta_empty({count}, tokens, at::kFloat),
          meta_empty({ranked}, tokens, at::kFloat), meta_empty({ranked}, tokens, at::kLong)};
}

at::Tensor decoder_nar_pass_meta(at::TensorList weights, int64_t, double, bool, bool, const at::Tensor&,
                                 const at::Tensor&, const at::Tensor&, at::TensorList memory_keys,
                                 at::TensorList memory_values, const at::Tensor&, const at::Tensor& output_positions,
                                 const std::optional<at::Tensor>&) {
  const char* op = "decoder_nar_pass";
  const int64_t vocab = meta_vocab(weights, memory_keys, memory_values, {}, {}, false, op);
  return meta_empty({meta_length(output_positions, op, "output_positions"), vocab}, output_positions, at::kFloat);
}

std::tuple<at::Tensor, at::Tensor> decoder_nar_fill_meta(at::TensorList weights, int64_t, double, bool, bool,
                                                         const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                         at::TensorList memory_keys, at::TensorList memory_values,
                                                         const at::Tensor&, const at::Tensor& output_positions,
                                                         int64_t, const std::optional<at::Tensor>&) {
  const char* op = "decoder_nar_fill";
  meta_vocab(weights, memory_keys, memory_values, {}, {}, false, op);
  const int64_t rows = meta_length(output_positions, op, "output_positions");
  return {meta_empty({rows}, output_positions, at::kLong), meta_empty({rows}, output_positions, at::kFloat)};
}

at::Tensor decoder_ar_score_meta(at::TensorList weights, int64_t, double, bool, bool, int64_t, int64_t,
                                 const at::Tensor& tokens, const at::Tensor&, const at::Tensor&,
                                 at::TensorList memory_keys, at::TensorList memory_values, const at::Tensor&,
                                 const at::Tensor& targets, const std::optional<at::Tensor>&) {
  const char* op = "decoder_ar_score";
  meta_vocab(weights, memory_keys, memory_values, {}, {}, false, op);
  const int64_t count = meta_length(tokens, op, "tokens");
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == count, op,
                    ": targets must be int64 (P,) like tokens, got ", targets.sizes());
  return meta_empty({count}, tokens, at::kFloat);
}

std::vector<at::Tensor> encoder_forward_meta(at::TensorList weights, int64_t num_encoder_layers, int64_t num_heads,
                                             double, bool, bool, const at::Tensor& src_tokens, const at::Tensor&) {
  const int64_t decoder_layers = cpu::encoder_cross_count(weights, num_encoder_layers);
  TORCH_CHECK_VALUE(weights[0].dim() == 2, "encoder_forward: embed_tokens must be 2-D, got ", weights[0].sizes());
  const int64_t dim = weights[0].size(1);
  TORCH_CHECK_VALUE(num_heads >= 1 && dim % num_heads == 0, "encoder: d_model ", dim,
                    " is not divisible by num_heads ", num_heads);
  TORCH_CHECK_VALUE(src_tokens.dim() == 2, "encoder_forward: src_tokens must be int64 (B, S), got ",
                    src_tokens.sizes());
  const int64_t batch = src_tokens.size(0), width = src_tokens.size(1);
  std::vector<at::Tensor> outputs{meta_empty({batch, width, dim}, src_tokens, at::kFloat)};
  for (int64_t l = 0; l < 2 * decoder_layers; ++l)
    outputs.push_back(meta_empty({batch, num_heads, width, dim / num_heads}, src_tokens, at::kFloat));
  return outputs;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(janus_fast, m) {
  m.def(
      "decoder_ar_step(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, bool query_stream, Tensor tokens, int step, Tensor[] memory_keys, "
      "Tensor[] memory_values, Tensor memory_lengths, Tensor(a!)[] cache_keys, Tensor(b!)[] cache_values, "
      "Tensor? memory_rows=None) -> Tensor");
  m.def(
      "decoder_ar_greedy(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, bool query_stream, Tensor tokens, int step, Tensor[] memory_keys, "
      "Tensor[] memory_values, Tensor memory_lengths, Tensor(a!)[] cache_keys, Tensor(b!)[] cache_values, "
      "Tensor excluded_ids, Tensor forced, int forced_id, Tensor? memory_rows=None) -> (Tensor, Tensor)");
  m.def(
      "decoder_ar_greedy_search(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, "
      "int mask_id, int query_position_offset, bool query_stream, Tensor[] memory_keys, Tensor[] memory_values, "
      "Tensor memory_lengths, Tensor limits, int max_steps, Tensor excluded_ids, int bos_id, int eos_id, int pad_id, "
      "Tensor? memory_rows=None) -> (Tensor, Tensor, Tensor)");
  m.def(
      "decoder_speculative_search(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, "
      "int mask_id, int query_position_offset, Tensor[] memory_keys, Tensor[] memory_values, Tensor memory_lengths, "
      "Tensor limits, Tensor draft_lengths, int max_steps, Tensor excluded_ids, int bos_id, int eos_id, int pad_id, "
      "int max_verify, int min_draft, Tensor? memory_rows=None) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "decoder_ar_topk(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, bool query_stream, Tensor tokens, int step, Tensor[] memory_keys, "
      "Tensor[] memory_values, Tensor memory_lengths, Tensor(a!)[] cache_keys, Tensor(b!)[] cache_values, "
      "Tensor excluded_ids, Tensor forced, int forced_id, int k, bool nan_as_impossible, Tensor? memory_rows=None) "
      "-> (Tensor, Tensor)");
  m.def(
      "decoder_ar_extend(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, bool query_stream, Tensor tokens, Tensor row_offsets, Tensor cache_lengths, "
      "Tensor[] memory_keys, Tensor[] memory_values, Tensor memory_lengths, Tensor(a!)[] cache_keys, "
      "Tensor(b!)[] cache_values, Tensor excluded_ids, Tensor forced, int forced_id, Tensor candidates, "
      "Tensor? memory_rows=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "decoder_nar_pass(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, "
      "Tensor tokens, Tensor positions, Tensor row_offsets, Tensor[] memory_keys, Tensor[] memory_values, "
      "Tensor memory_lengths, Tensor output_positions, Tensor? memory_rows=None) -> Tensor");
  m.def(
      "decoder_nar_fill(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, "
      "Tensor tokens, Tensor positions, Tensor row_offsets, Tensor[] memory_keys, Tensor[] memory_values, "
      "Tensor memory_lengths, Tensor output_positions, int exclude_id, Tensor? memory_rows=None) -> (Tensor, Tensor)");
  m.def(
      "decoder_ar_score(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, Tensor tokens, Tensor positions, Tensor row_offsets, Tensor[] memory_keys, "
      "Tensor[] memory_values, Tensor memory_lengths, Tensor targets, Tensor? memory_rows=None) -> Tensor");
  m.def(
      "encoder_forward(Tensor[] weights, int num_encoder_layers, int num_heads, float embed_scale, bool post_norm, "
      "bool relu, Tensor src_tokens, Tensor src_lengths) -> Tensor[]");
  m.def("decoder_isa() -> str", &decoder_isa);
}

TORCH_LIBRARY_IMPL(janus_fast, Meta, m) {
  JANUS_DECODER_AR_OPS(JANUS_META_KERNEL)
  JANUS_DECODER_NAR_OPS(JANUS_META_KERNEL)
  JANUS_ENCODER_OPS(JANUS_META_KERNEL)
}

}  // namespace janus_fast
