// The AR passes of the decoder, both streams (content token + query stream) or, for a plain transformer
// decoder, the content stream alone:
//
//   janus_fast::decoder_ar_step   one incremental AR step for B rows, appending to the key/value
//                                 caches, returning (B, V) logits;
//   janus_fast::decoder_ar_greedy the same step returning greedy search's token per row and its
//                                 log-probability instead of logits;
//   janus_fast::decoder_ar_greedy_search  AR greedy search to its end in one call (that step for every
//                                 step, finished sentences leaving the pass);
//   janus_fast::decoder_ar_topk   the same step returning each row's k most likely tokens and their
//                                 log-probabilities instead of logits: a beam search step;
//   janus_fast::decoder_ar_extend several new tokens per sentence appended to its caches (AR passes of
//                                 both streams from per-sentence cache lengths), with the greedy
//                                 choice after each: the verification of speculative decoding;
//   janus_fast::decoder_ar_score  a teacher-forced AR pass of both streams over packed rows,
//                                 returning each given next token's log-probability (the AR
//                                 rescoring of finished mask-predict candidates).
#include "cpu/decoder_passes.h"

#include <torch/library.h>

#include <chrono>
#include <cstring>

#include "core/speculative_accept.h"

namespace janus_fast {
namespace cpu {
namespace {

// AR passes of both streams over new content tokens, packed by sentence: sentence r's at offsets[r] ..
// offsets[r + 1] - 1 (>= 1), token p at positions[p]. Each content token attends to its sentence's
// content tokens up to itself, and its query stream (the mask at positions[p] + offset) attends to the
// same keys and predicts the next token. The keys/values come from
//   * the key/value caches (decoder_ar_step, _greedy, _extend): sentence r holds cache_lengths[r]
//     positions, its i-th new token is at cache_lengths[r] + i and is written to the cache there first.
//     One incremental AR step is the case of one new token per sentence; a speculative verification
//     passes a sentence's last accepted token and its drafted tokens;
//   * without caches, the pass itself (decoder_ar_score: a teacher-forced pass over whole rows, as
//     janus_fast.model.JanusModel.ar_hidden): token p sees the tokens offsets[r] .. p of its row.
// Every row runs the same arithmetic whatever the number of rows (the products are row-independent,
// core/small_gemm.h), so the query states equal those of one step at a time. Without `query_stream` (a
// plain transformer decoder) the content rows alone run every layer and their last states predict.
// Returns the query (or content) stream's last states, one per new token.
struct ArLayout {
  std::vector<int64_t> offsets;     // N + 1
  std::vector<int64_t> row_of;      // packed token -> sentence
  std::vector<int64_t> positions;   // packed token -> its target position
  std::vector<int64_t> cache_rows;  // packed token -> its row of the caches (empty: its sentence)
};

// The caches of a pass, one (N, H, > positions, head_dim) tensor per layer each; `used` false: none.
struct Caches {
  at::TensorList keys, values;
  bool used;
};

// An AR pass's arguments, checked once: decoder_ar_greedy_search runs every step of a search over them.
struct ArPass {
  DecoderWeights d;
  Architecture arch;
  Memories memory;
  Caches caches;
  int64_t mask_id, query_position_offset;
  bool query_stream;
  float scale;
};

// The checks of an AR pass over sentences 0..batch-1 writing (or reading) positions up to
// last_position: the weights, the wiring, the memory of each sentence and the caches' shapes.
ArPass checked_ar_pass(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                       int64_t mask_id, int64_t query_position_offset, bool query_stream, int64_t batch,
                       int64_t last_position, at::TensorList memory_keys, at::TensorList memory_values,
                       const at::Tensor& memory_lengths, const std::optional<at::Tensor>& memory_rows,
                       const Caches& caches, const char* op) {
  const DecoderWeights d = parse_decoder_weights(weights, num_heads);
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  TORCH_CHECK_VALUE(!caches.used || (static_cast<int64_t>(caches.keys.size()) == num_layers &&
                                     static_cast<int64_t>(caches.values.size()) == num_layers),
                    op, ": one cache tensor per layer (", num_layers, ") expected");
  TORCH_CHECK_VALUE(query_position_offset == 0 || query_position_offset == 1, op,
                    ": query_position_offset must be 0 or 1, got ", query_position_offset);
  const int64_t query_offset = query_stream ? query_position_offset : 0;
  TORCH_CHECK_VALUE(last_position + query_offset < d.max_positions, op, ": position ", last_position,
                    " outside [0, ", d.max_positions - query_offset, ")");
  for (int64_t l = 0; caches.used && l < num_layers; ++l) {
    for (const at::Tensor* t : {&caches.keys[l], &caches.values[l]}) {
      TORCH_CHECK_VALUE(t->dim() == 4 && t->size(0) == batch && t->size(1) == d.heads && t->size(2) > last_position &&
                            t->size(3) == d.head_dim && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                            t->device().is_cpu(),
                        op, ": caches must be contiguous float32 (", batch, ", ", d.heads, ", > ", last_position,
                        ", ", d.head_dim, "), got ", t->sizes());
    }
  }
  Memories memory = checked_memories(memory_keys, memory_values, memory_lengths, memory_rows, batch, d, op);
  return {d,           Architecture{post_norm, relu}, std::move(memory), caches, mask_id, query_position_offset,
          query_stream, static_cast<float>(embed_scale)};
}

// The pass itself over `layout.positions.size()` new tokens (token_ids), checked by checked_ar_pass
// for every sentence and position the layout names.
PassStates run_ar_pass(const ArPass& pass, const int64_t* token_ids, const ArLayout& layout) {
  const DecoderWeights& d = pass.d;
  const Architecture& arch = pass.arch;
  const Caches& caches = pass.caches;
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  const int64_t packed = static_cast<int64_t>(layout.positions.size());
  const bool query_stream = pass.query_stream;
  if (packed == 0) return {d, nullptr, 0};
  const int64_t* offsets = layout.offsets.data();
  const int64_t sentences = static_cast<int64_t>(layout.offsets.size()) - 1;
  int64_t max_row = 0;  // the most keys of a query: the longest row without caches
  for (int64_t r = 0; r < sentences; ++r) max_row = std::max(max_row, offsets[r + 1] - offsets[r]);
  int64_t last_position = -1;
  for (const int64_t position : layout.positions) last_position = std::max(last_position, position);

  // rows 0..P-1: content stream (each new token at its position); rows P..2P-1: query stream
  const int64_t rows = (query_stream ? 2 : 1) * packed, dim = d.dim;
  const PassScratch s = pass_scratch(rows, rows, packed, dim, d.ffn);
  float *x = s.x, *h = s.h, *q = s.q, *a = s.a, *kv = s.kv, *f = s.f;
  for (int64_t p = 0; p < packed; ++p) {
    embed(d, token_ids[p], layout.positions[p], pass.scale, x + p * dim);
    if (query_stream)
      embed(d, pass.mask_id, layout.positions[p] + pass.query_position_offset, pass.scale, x + (packed + p) * dim);
  }
  std::vector<int64_t> memory_row(rows);
  for (int64_t r = 0; r < rows; ++r) memory_row[r] = layout.row_of[r % packed];
  const bool own_cache_rows = !layout.cache_rows.empty();
  const auto cache_row = [&](int64_t p) { return own_cache_rows ? layout.cache_rows[p] : layout.row_of[p]; };
  for (int64_t l = 0; l < num_layers; ++l) {
    const DecoderLayerWeights& layer = d.layers[l];
    const SelfAttentionWeights& attention = layer.self_attention;
    // the last layer needs only the query rows past its key/value projection
    const int64_t first = query_stream && l == num_layers - 1 ? packed : 0, n = rows - first;
    float* xs = x + first * dim;
    const float* in = sublayer_input(arch, x, rows, dim, attention.norm, h);
    linear(in, packed, dim, attention.kv, kv, 2 * dim);
    float* ck = caches.used ? caches.keys[l].data_ptr<float>() : nullptr;
    float* cv = caches.used ? caches.values[l].data_ptr<float>() : nullptr;
    const int64_t max_len = caches.used ? caches.keys[l].size(2) : 0;
    for (int64_t p = 0; caches.used && p < packed; ++p)
      for (int64_t head = 0; head < d.heads; ++head) {
        const int64_t at_position = ((cache_row(p) * d.heads + head) * max_len + layout.positions[p]) * d.head_dim;
        std::memcpy(ck + at_position, kv + p * 2 * dim + head * d.head_dim, d.head_dim * sizeof(float));
        std::memcpy(cv + at_position, kv + p * 2 * dim + dim + head * d.head_dim, d.head_dim * sizeof(float));
      }
    linear(in + first * dim, n, dim, attention.q, q, dim);
    // a sentence's rows (both streams, every new token) read its keys: visited together
    const std::vector<int64_t> order = rows_by_key(n, [&](int64_t row) { return layout.row_of[(row + first) % packed]; });
    if (caches.used) {
      attention_rows(q, dim, n, d, a, dim, last_position + 1,
                     [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                         int64_t& vs, int64_t& count) {
                       const int64_t p = (row + first) % packed;
                       const int64_t offset = (cache_row(p) * d.heads + head) * max_len * d.head_dim;
                       keys = ck + offset;
                       values = cv + offset;
                       ks = vs = d.head_dim;
                       count = layout.positions[p] + 1;  // causal, itself included
                     },
                     order.data());
    } else {
      attention_rows(q, dim, n, d, a, dim, max_row,
                     [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                         int64_t& vs, int64_t& count) {
                       const int64_t p = (row + first) % packed, r = layout.row_of[p];
                       keys = kv + offsets[r] * 2 * dim + head * d.head_dim;
                       values = keys + dim;
                       ks = vs = 2 * dim;
                       count = p - offsets[r] + 1;  // causal, itself included
                     },
                     order.data());
    }
    linear(a, n, dim, attention.out, xs, dim, /*accumulate=*/true);
    finish_sublayer(arch, xs, n, dim, attention.norm);
    const std::vector<int64_t> rows_memory(memory_row.begin() + first, memory_row.end());
    cross_and_ffn(arch, xs, n, layer, d, pass.memory.layers[l], rows_memory, pass.memory, h, q, a, f);
  }
  return {d, x + (rows - packed) * dim, packed};
}

// checked_ar_pass and run_ar_pass of one pass over `tokens` (P,) int64 laid out by `layout`.
PassStates ar_states(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                     int64_t mask_id, int64_t query_position_offset, bool query_stream, const at::Tensor& tokens,
                     const ArLayout& layout, at::TensorList memory_keys, at::TensorList memory_values,
                     const at::Tensor& memory_lengths, const std::optional<at::Tensor>& memory_rows,
                     const Caches& caches, const char* op) {
  TORCH_CHECK_VALUE(tokens.dim() == 1 && tokens.scalar_type() == at::kLong && tokens.device().is_cpu(), op,
                    ": tokens must be 1-D int64 on the CPU, got ", tokens.sizes());
  const int64_t packed = tokens.size(0), batch = static_cast<int64_t>(layout.offsets.size()) - 1;
  TORCH_CHECK_VALUE(static_cast<int64_t>(layout.positions.size()) == packed, op, ": ", packed,
                    " tokens for a layout of ", layout.positions.size());
  int64_t last_position = -1;
  for (const int64_t position : layout.positions) last_position = std::max(last_position, position);
  const ArPass pass = checked_ar_pass(weights, num_heads, embed_scale, post_norm, relu, mask_id,
                                      query_position_offset, query_stream, batch, last_position, memory_keys,
                                      memory_values, memory_lengths, memory_rows, caches, op);
  const at::Tensor token_values = tokens.contiguous();
  return run_ar_pass(pass, token_values.data_ptr<int64_t>(), layout);
}

// The layout of one AR step: one token per sentence, at `step`.
ArLayout step_layout(int64_t batch, int64_t step, const char* op) {
  TORCH_CHECK_VALUE(step >= 0, op, ": step ", step, " must be >= 0");
  ArLayout layout;
  layout.offsets.resize(batch + 1);
  layout.row_of.resize(batch);
  layout.positions.assign(batch, step);
  for (int64_t b = 0; b <= batch; ++b) layout.offsets[b] = b;
  for (int64_t b = 0; b < batch; ++b) layout.row_of[b] = b;
  return layout;
}

// The layout of decoder_ar_extend: row_offsets (N + 1,) int64 (each sentence >= 1 new token) and
// cache_lengths (N,) int64 >= 0.
ArLayout extend_layout(const at::Tensor& row_offsets, const at::Tensor& cache_lengths, int64_t packed,
                           const char* op) {
  const PackedLayout rows = packed_layout(row_offsets, packed, op);
  TORCH_CHECK_VALUE(cache_lengths.dim() == 1 && cache_lengths.size(0) == rows.num_rows &&
                        cache_lengths.scalar_type() == at::kLong && cache_lengths.device().is_cpu(),
                    op, ": cache_lengths must be int64 (", rows.num_rows, ",) on the CPU, got ", cache_lengths.sizes());
  const at::Tensor lengths = cache_lengths.contiguous();
  const int64_t* cached = lengths.data_ptr<int64_t>();
  ArLayout layout;
  layout.offsets = rows.offsets;
  layout.row_of = rows.row_of;
  layout.positions.resize(packed);
  for (int64_t r = 0; r < rows.num_rows; ++r) {
    TORCH_CHECK_VALUE(cached[r] >= 0, op, ": cache length ", cached[r], " must be >= 0");
    for (int64_t p = rows.offsets[r]; p < rows.offsets[r + 1]; ++p)
      layout.positions[p] = cached[r] + p - rows.offsets[r];
  }
  return layout;
}

// decoder_ar_step: the step's (B, V) logits.
at::Tensor decoder_ar_step(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                           int64_t mask_id, int64_t query_position_offset, bool query_stream,
                           const at::Tensor& tokens, int64_t step, at::TensorList memory_keys,
                           at::TensorList memory_values, const at::Tensor& memory_lengths, at::TensorList cache_keys,
                           at::TensorList cache_values, const std::optional<at::Tensor>& memory_rows) {
  TORCH_CHECK_VALUE(tokens.dim() == 1, "decoder_ar_step: tokens must be int64 (B,), got ", tokens.sizes());
  const PassStates s = ar_states(weights, num_heads, embed_scale, post_norm, relu, mask_id, query_position_offset,
                                 query_stream, tokens, step_layout(tokens.size(0), step, "decoder_ar_step"),
                                 memory_keys, memory_values, memory_lengths, memory_rows,
                                 {cache_keys, cache_values, true}, "decoder_ar_step");
  if (s.rows == 0) return at::empty({0, s.d.vocab}, at::TensorOptions().dtype(at::kFloat));
  return vocabulary_logits(s.d, s.states, s.rows);
}

// Greedy search's rules checked and unpacked: the ids never chosen and, per new token, the id it is
// forced to (`forced_id` where `forced` is set, the sentence's length limit) or -1.
struct GreedyRules {
  std::vector<int64_t> excluded;
  std::vector<int64_t> forced_ids;
};

// The ids greedy search never chooses, checked: excluded_ids (K,) int64, each in [0, vocab).
std::vector<int64_t> checked_excluded(const at::Tensor& excluded_ids, int64_t vocab, const char* op) {
  TORCH_CHECK_VALUE(excluded_ids.dim() == 1 && excluded_ids.scalar_type() == at::kLong &&
                        excluded_ids.device().is_cpu(),
                    op, ": excluded_ids must be int64 (K,) on the CPU, got ", excluded_ids.sizes());
  const at::Tensor excluded_values = excluded_ids.contiguous();
  const int64_t* excluded = excluded_values.data_ptr<int64_t>();
  std::vector<int64_t> ids(excluded, excluded + excluded_values.numel());
  for (const int64_t id : ids) TORCH_CHECK_VALUE(id >= 0 && id < vocab, op, ": excluded id ", id, " outside [0, ", vocab, ")");
  return ids;
}

GreedyRules greedy_rules(at::TensorList weights, int64_t num_heads, const at::Tensor& excluded_ids,
                         const at::Tensor& forced, int64_t count, int64_t forced_id, const char* op) {
  TORCH_CHECK_VALUE(forced.dim() == 1 && forced.size(0) == count && forced.scalar_type() == at::kBool &&
                        forced.device().is_cpu(),
                    op, ": forced must be bool (", count, ",) on the CPU, got ", forced.sizes(), " ",
                    forced.scalar_type());
  const int64_t vocab = parse_embeddings(weights, num_heads, op).vocab;  // the pass checks the rest
  GreedyRules rules;
  rules.excluded = checked_excluded(excluded_ids, vocab, op);
  TORCH_CHECK_VALUE(forced_id >= 0 && forced_id < vocab, op, ": forced_id ", forced_id, " outside [0, ", vocab, ")");
  const at::Tensor forced_values = forced.contiguous();
  rules.forced_ids.assign(count, -1);
  for (int64_t i = 0; i < count; ++i)
    if (forced_values.data_ptr<bool>()[i]) rules.forced_ids[i] = forced_id;
  return rules;
}

// decoder_ar_step followed by greedy search's choice (select_tokens): per sentence the argmax over
// the vocabulary without `excluded_ids`, or `forced_id` where `forced` (B,) bool is set (the
// sentence's length limit), and its log-probability; no (B, V) logits are returned.
std::tuple<at::Tensor, at::Tensor> decoder_ar_greedy(at::TensorList weights, int64_t num_heads, double embed_scale,
                                                     bool post_norm, bool relu, int64_t mask_id,
                                                     int64_t query_position_offset, bool query_stream,
                                                     const at::Tensor& tokens,
                                                     int64_t step, at::TensorList memory_keys,
                                                     at::TensorList memory_values, const at::Tensor& memory_lengths,
                                                     at::TensorList cache_keys, at::TensorList cache_values,
                                                     const at::Tensor& excluded_ids, const at::Tensor& forced,
                                                     int64_t forced_id, const std::optional<at::Tensor>& memory_rows) {
  const char* op = "decoder_ar_greedy";
  TORCH_CHECK_VALUE(tokens.dim() == 1, op, ": tokens must be int64 (B,), got ", tokens.sizes());
  const GreedyRules rules = greedy_rules(weights, num_heads, excluded_ids, forced, tokens.size(0), forced_id, op);
  const PassStates s = ar_states(weights, num_heads, embed_scale, post_norm, relu, mask_id, query_position_offset,
                                 query_stream, tokens, step_layout(tokens.size(0), step, op), memory_keys,
                                 memory_values, memory_lengths, memory_rows, {cache_keys, cache_values, true}, op);
  return select_tokens(s.d, s.states, s.rows, rules.excluded, rules.forced_ids.data());
}

// Key/value caches of a search that grow as it goes: capacity for the positions decoded so far
// (doubling from kFirstCachePositions, as janus_fast.model.LayerCache), rows for the sentences still
// decoding (finished ones are dropped when the caches grow), so a length limit far above what a
// batch decodes costs no memory.
constexpr int64_t kFirstCachePositions = 32;

constexpr std::chrono::milliseconds kFirstInterruptCheck{200}, kInterruptCheck{100};

struct GrowingCaches {
  std::vector<at::Tensor> keys, values;  // per layer (rows, H, capacity, head_dim)
  std::vector<int64_t> row;              // sentence -> its row of the caches (while it decodes)

  int64_t capacity() const { return keys.empty() ? 0 : keys[0].size(2); }

  // Room for positions 0 .. needed - 1 for the sentences `active`: new tensors holding only their rows,
  // their positions 0 .. kept - 1 (<= the old capacity) copied over.
  void grow(const std::vector<int64_t>& active, int64_t kept, int64_t needed, int64_t max_steps, int64_t layers,
            int64_t heads, int64_t head_dim) {
    const int64_t old_capacity = capacity();
    const int64_t capacity = std::min(max_steps, std::max(needed, old_capacity == 0 ? kFirstCachePositions
                                                                                    : 2 * old_capacity));
    const int64_t n = static_cast<int64_t>(active.size());
    const auto options = at::TensorOptions().dtype(at::kFloat);
    for (int64_t l = 0; l < 2 * layers; ++l) {
      std::vector<at::Tensor>& tensors = l < layers ? keys : values;
      const int64_t layer = l % layers;
      at::Tensor grown = at::empty({n, heads, capacity, head_dim}, options);
      if (old_capacity > 0) {
        const float* from = tensors[layer].data_ptr<float>();
        float* to = grown.data_ptr<float>();
        for (int64_t p = 0; p < n; ++p)
          for (int64_t h = 0; h < heads; ++h)
            std::memcpy(to + ((p * heads + h) * capacity) * head_dim,
                        from + ((row[active[p]] * heads + h) * old_capacity) * head_dim,
                        kept * head_dim * sizeof(float));
      }
      if (static_cast<int64_t>(tensors.size()) <= layer) tensors.resize(layer + 1);
      tensors[layer] = std::move(grown);
    }
    for (int64_t p = 0; p < n; ++p) row[active[p]] = p;
  }
};

// decoder_ar_greedy_search: AR greedy search to its end in one call, decoder_ar_greedy's step for
// every step with the loop of janus_fast.decoding.ar.greedy around it: each sentence starts from
// bos_id and takes its greedy choice (never `excluded_ids`) at positions 0, 1, ... until it chooses
// eos_id, which it is forced to at its `limits` (B,) int64 in [1, max_steps]-th token. A sentence
// leaves the pass once it is finished (every row's arithmetic is the same whatever the other rows,
// so its tokens and scores equal a step-by-step loop's). The key/value caches live inside the call
// (GrowingCaches). Ctrl-C stops it between steps (interrupt_requested, checked every 100 ms past the
// first 200). Returns tokens (B, max_steps) int64 (after bos; pad_id after a sentence's eos), the
// summed log-probability of each sentence's tokens (B,) float32 (eos included, added in order in
// float32) and their count (B,) int64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> decoder_ar_greedy_search(
    at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu, int64_t mask_id,
    int64_t query_position_offset, bool query_stream, at::TensorList memory_keys, at::TensorList memory_values,
    const at::Tensor& memory_lengths, const at::Tensor& limits, int64_t max_steps, const at::Tensor& excluded_ids,
    int64_t bos_id, int64_t eos_id, int64_t pad_id, const std::optional<at::Tensor>& memory_rows) {
  const char* op = "decoder_ar_greedy_search";
  TORCH_CHECK_VALUE(limits.dim() == 1 && limits.scalar_type() == at::kLong && limits.device().is_cpu(), op,
                    ": limits must be int64 (B,) on the CPU, got ", limits.sizes(), " ", limits.scalar_type());
  TORCH_CHECK_VALUE(max_steps >= 0, op, ": max_steps must be >= 0, got ", max_steps);
  const int64_t batch = limits.size(0);
  const at::Tensor limit_values = limits.contiguous();
  const int64_t* limit = limit_values.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b)
    TORCH_CHECK_VALUE(limit[b] >= 1 && limit[b] <= max_steps, op, ": limit ", limit[b], " outside [1, max_steps = ",
                      max_steps, "]");
  const Embeddings e = parse_embeddings(weights, num_heads, op);  // checked_ar_pass checks the rest
  const std::vector<int64_t> excluded = checked_excluded(excluded_ids, e.vocab, op);
  for (const auto& [name, id] : {std::pair<const char*, int64_t>{"bos_id", bos_id}, {"eos_id", eos_id},
                                 {"pad_id", pad_id}})
    TORCH_CHECK_VALUE(id >= 0 && id < e.vocab, op, ": ", name, " ", id, " outside [0, ", e.vocab, ")");
  // the query stream of the last step reads position max_steps - 1 + offset
  const int64_t positions = e.max_positions - (query_stream ? query_position_offset : 0);
  TORCH_CHECK_VALUE(max_steps <= positions, op, ": max_steps ", max_steps, " (the longest limit) exceeds the ",
                    positions, " tokens the model's ", e.max_positions, " positions allow");
  at::Tensor tokens = at::full({batch, max_steps}, pad_id, at::TensorOptions().dtype(at::kLong));
  at::Tensor log_probs = at::zeros({batch}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor lengths = at::zeros({batch}, at::TensorOptions().dtype(at::kLong));
  if (batch == 0) return {tokens, log_probs, lengths};
  ArPass pass = checked_ar_pass(weights, num_heads, embed_scale, post_norm, relu, mask_id, query_position_offset,
                                query_stream, batch, max_steps - 1, memory_keys, memory_values, memory_lengths,
                                memory_rows, {{}, {}, false}, op);
  const int64_t layers = static_cast<int64_t>(pass.d.layers.size());
  GrowingCaches caches;
  caches.row.assign(batch, -1);
  int64_t* out = tokens.data_ptr<int64_t>();
  float* total = log_probs.data_ptr<float>();
  int64_t* count = lengths.data_ptr<int64_t>();
  // the sentences still decoding and the token each feeds next
  std::vector<int64_t> active(batch), next(batch, bos_id), forced(batch);
  for (int64_t b = 0; b < batch; ++b) active[b] = b;
  ArLayout layout;
  auto next_interrupt_check = std::chrono::steady_clock::now() + kFirstInterruptCheck;
  for (int64_t step = 0; step < max_steps && !active.empty(); ++step) {
    if (step == caches.capacity()) {
      caches.grow(active, step, step + 1, max_steps, layers, e.heads, e.head_dim);
      pass.caches = {caches.keys, caches.values, true};
    }
    const int64_t n = static_cast<int64_t>(active.size());
    layout.offsets.resize(n + 1);
    for (int64_t p = 0; p <= n; ++p) layout.offsets[p] = p;
    layout.row_of = active;
    layout.positions.assign(n, step);
    layout.cache_rows.resize(n);
    for (int64_t p = 0; p < n; ++p) {
      forced[p] = limit[active[p]] == step + 1 ? eos_id : -1;
      layout.cache_rows[p] = caches.row[active[p]];
    }
    const PassStates s = run_ar_pass(pass, next.data(), layout);
    const auto [best, scores] = select_tokens(s.d, s.states, n, excluded, forced.data());
    const int64_t* best_ids = best.data_ptr<int64_t>();
    const float* best_scores = scores.data_ptr<float>();
    int64_t kept = 0;
    for (int64_t p = 0; p < n; ++p) {
      const int64_t row = active[p], id = best_ids[p];
      total[row] += best_scores[p];
      count[row] += 1;
      out[row * max_steps + step] = id;
      if (id != eos_id) active[kept] = row, next[kept] = id, ++kept;
    }
    active.resize(kept);
    next.resize(kept);
    // Signals: a search running longer than kFirstInterruptCheck asks Python every kInterruptCheck (each
    // ask takes the GIL: a short search never does); a handler's exception is raised on return.
    if (!active.empty() && std::chrono::steady_clock::now() >= next_interrupt_check) {
      if (interrupt_requested()) break;
      next_interrupt_check = std::chrono::steady_clock::now() + kInterruptCheck;
    }
  }
  return {tokens, log_probs, lengths};
}

// decoder_speculative_search: speculative decoding with exact verification to its end in one call, the
// loop of janus_fast.decoding.speculative.speculative_greedy (one draft iteration, no relaxed
// verification) with the draft and verification passes of decoder_nar_fill and decoder_ar_extend inside:
// per round and sentence with accepted tokens bos y_1 .. y_n, (1) its draft length L grows to at least
// min(n + 2 + min_draft, limit + 1); the NAR pass over bos y_1 .. y_n <mask> .. <mask> eos (L tokens)
// fills the first k = min(max(min(L - 2, limit - 1) - n, 0), max_verify) masked positions (argmax
// without mask_id); (2) the AR pass of both streams over y_n d_1 .. d_k, appended to the sentence's
// key/value cache at position n, chooses AR greedy's token after each (never `excluded_ids`; eos at the
// limit); (3) the drafted tokens are kept up to the first that differs from AR's choice, then AR's
// choice there, cut after eos (core::accept_drafted), their log-probabilities added in order. A
// sentence leaves the pass when it has accepted eos. `draft_lengths` (B,) int64: the first round's L
// (the length predictor's, at most limit + 1). The key/value caches live inside the call
// (GrowingCaches); Ctrl-C stops it between rounds. The tokens are AR greedy's (decoder_ar_greedy_search:
// the products are row-independent); returns them as that op does (B, max_steps) int64 after bos,
// pad_id after eos, with the summed log-probabilities (B,) float32 and counts (B,) int64, and the
// verification rounds of each sentence (B,) int64.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decoder_speculative_search(
    at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu, int64_t mask_id,
    int64_t query_position_offset, at::TensorList memory_keys, at::TensorList memory_values,
    const at::Tensor& memory_lengths, const at::Tensor& limits, const at::Tensor& draft_lengths, int64_t max_steps,
    const at::Tensor& excluded_ids, int64_t bos_id, int64_t eos_id, int64_t pad_id, int64_t max_verify,
    int64_t min_draft, const std::optional<at::Tensor>& memory_rows) {
  const char* op = "decoder_speculative_search";
  for (const at::Tensor* t : {&limits, &draft_lengths})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->scalar_type() == at::kLong && t->device().is_cpu(), op,
                      ": limits and draft_lengths must be int64 (B,) on the CPU, got ", t->sizes(), " ",
                      t->scalar_type());
  const int64_t batch = limits.size(0);
  TORCH_CHECK_VALUE(draft_lengths.size(0) == batch, op, ": ", batch, " limits but ", draft_lengths.size(0),
                    " draft lengths");
  TORCH_CHECK_VALUE(max_steps >= 0, op, ": max_steps must be >= 0, got ", max_steps);
  TORCH_CHECK_VALUE(max_verify >= 1 && min_draft >= 1, op, ": max_verify and min_draft must be >= 1, got ",
                    max_verify, " and ", min_draft);
  const at::Tensor limit_values = limits.contiguous(), draft_values = draft_lengths.contiguous();
  const int64_t* limit = limit_values.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK_VALUE(limit[b] >= 1 && limit[b] <= max_steps, op, ": limit ", limit[b], " outside [1, max_steps = ",
                      max_steps, "]");
    const int64_t draft = draft_values.data_ptr<int64_t>()[b];
    TORCH_CHECK_VALUE(draft >= 0 && draft <= limit[b] + 1, op, ": draft length ", draft, " outside [0, limit + 1 = ",
                      limit[b] + 1, "]");
  }
  const Embeddings e = parse_embeddings(weights, num_heads, op);  // checked_ar_pass checks the rest
  const std::vector<int64_t> excluded = checked_excluded(excluded_ids, e.vocab, op);
  for (const auto& [name, id] : {std::pair<const char*, int64_t>{"bos_id", bos_id}, {"eos_id", eos_id},
                                 {"pad_id", pad_id}, {"mask_id", mask_id}})
    TORCH_CHECK_VALUE(id >= 0 && id < e.vocab, op, ": ", name, " ", id, " outside [0, ", e.vocab, ")");
  // the NAR rows reach position limit (eos at L - 1 <= limit); the query stream position max_steps - 1 + offset
  TORCH_CHECK_VALUE(max_steps + std::max<int64_t>(query_position_offset, 1) <= e.max_positions, op, ": max_steps ",
                    max_steps, " (the longest limit) exceeds what the model's ", e.max_positions, " positions allow");
  const auto long_options = at::TensorOptions().dtype(at::kLong);
  at::Tensor tokens = at::full({batch, max_steps}, pad_id, long_options);
  at::Tensor log_probs = at::zeros({batch}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor lengths = at::zeros({batch}, long_options), rounds = at::zeros({batch}, long_options);
  if (batch == 0) return {tokens, log_probs, lengths, rounds};
  ArPass pass = checked_ar_pass(weights, num_heads, embed_scale, post_norm, relu, mask_id, query_position_offset,
                                /*query_stream=*/true, batch, max_steps - 1, memory_keys, memory_values,
                                memory_lengths, memory_rows, {{}, {}, false}, op);
  const int64_t layers = static_cast<int64_t>(pass.d.layers.size());
  const std::vector<int64_t> nar_excluded{mask_id};
  int64_t* out = tokens.data_ptr<int64_t>();
  float* total = log_probs.data_ptr<float>();
  int64_t* count = lengths.data_ptr<int64_t>();
  int64_t* round_count = rounds.data_ptr<int64_t>();
  // per sentence: its tokens from bos (history), n = the index of its last accepted token, L
  std::vector<int64_t> history(batch * (max_steps + 1), pad_id), accepted(batch, 0), draft_length(batch);
  for (int64_t b = 0; b < batch; ++b) history[b * (max_steps + 1)] = bos_id, draft_length[b] = draft_values.data_ptr<int64_t>()[b];
  std::vector<int64_t> active(batch);
  for (int64_t b = 0; b < batch; ++b) active[b] = b;
  GrowingCaches caches;
  caches.row.assign(batch, -1);
  PackedLayout nar;
  std::vector<int64_t> nar_tokens, nar_positions, nar_outputs, verified_count(batch);
  ArLayout verify;
  std::vector<int64_t> verify_tokens, forced, kept(max_verify + 1);
  auto next_interrupt_check = std::chrono::steady_clock::now() + kFirstInterruptCheck;
  while (!active.empty()) {
    const int64_t n_active = static_cast<int64_t>(active.size());
    // (1) the drafts: one NAR pass over every active sentence's row
    nar.offsets.assign(1, 0);
    nar.row_of.clear();
    nar.max_row = 0;
    nar_tokens.clear();
    nar_positions.clear();
    nar_outputs.clear();
    int64_t needed = 0;  // cache positions the verification writes up to
    for (int64_t p = 0; p < n_active; ++p) {
      const int64_t b = active[p], n = accepted[b];
      const int64_t* row = history.data() + b * (max_steps + 1);
      int64_t& length = draft_length[b];
      length = std::max(length, std::min(n + 2 + min_draft, limit[b] + 1));
      verified_count[b] = std::min(std::max<int64_t>(std::min(length - 2, limit[b] - 1) - n, 0), max_verify);
      const int64_t start = nar.offsets.back();
      for (int64_t j = 0; j < length; ++j) {
        nar_tokens.push_back(j == length - 1 ? eos_id : j <= n ? row[j] : mask_id);
        nar_positions.push_back(j);
        nar.row_of.push_back(p);
      }
      for (int64_t j = 0; j < verified_count[b]; ++j) nar_outputs.push_back(start + n + 1 + j);
      nar.offsets.push_back(start + length);
      nar.max_row = std::max(nar.max_row, length);
      needed = std::max(needed, n + verified_count[b] + 1);
    }
    nar.num_rows = n_active;
    const int64_t num_out = static_cast<int64_t>(nar_outputs.size());
    std::vector<int64_t> drafts;
    if (num_out > 0) {
      const PassStates s = run_nar_rows(pass.d, pass.arch, pass.scale, pass.memory, nar_tokens.data(),
                                        nar_positions.data(), nar, active, nar_outputs.data(), num_out);
      const at::Tensor filled = std::get<0>(select_tokens(s.d, s.states, s.rows, nar_excluded, nullptr));
      drafts.assign(filled.data_ptr<int64_t>(), filled.data_ptr<int64_t>() + num_out);
    }
    // (2) the verification: y_n and the drafted tokens of every sentence, appended to its cache
    if (needed > caches.capacity()) {
      caches.grow(active, caches.capacity(), needed, max_steps, layers, e.heads, e.head_dim);
      pass.caches = {caches.keys, caches.values, true};
    }
    verify.offsets.assign(1, 0);
    verify.row_of.clear();
    verify.positions.clear();
    verify.cache_rows.clear();
    verify_tokens.clear();
    forced.clear();
    int64_t next_draft = 0;
    for (int64_t p = 0; p < n_active; ++p) {
      const int64_t b = active[p], n = accepted[b], k = verified_count[b];
      for (int64_t slot = 0; slot <= k; ++slot) {
        verify_tokens.push_back(slot == 0 ? history[b * (max_steps + 1) + n] : drafts[next_draft + slot - 1]);
        verify.row_of.push_back(b);
        verify.positions.push_back(n + slot);
        verify.cache_rows.push_back(caches.row[b]);
        forced.push_back(n + slot + 1 >= limit[b] ? eos_id : -1);
      }
      next_draft += k;
      verify.offsets.push_back(verify.offsets.back() + k + 1);
    }
    const PassStates s = run_ar_pass(pass, verify_tokens.data(), verify);
    const auto [best, scores] = select_tokens(s.d, s.states, s.rows, excluded, forced.data());
    const int64_t* best_ids = best.data_ptr<int64_t>();
    const float* best_scores = scores.data_ptr<float>();
    // (3) the accepted tokens
    int64_t still = 0;
    for (int64_t p = 0; p < n_active; ++p) {
      const int64_t b = active[p], k = verified_count[b], first = verify.offsets[p];
      const int64_t* draft = verify_tokens.data() + first + 1;  // d_1 .. d_k
      const int64_t m = core::accept_drafted(draft, best_ids + first, nullptr, k, eos_id, kept.data());
      int64_t* row = history.data() + b * (max_steps + 1);
      for (int64_t i = 0; i < m; ++i) {
        total[b] += best_scores[first + i];
        row[accepted[b] + 1 + i] = kept[i];
      }
      accepted[b] += m;
      round_count[b] += 1;
      if (row[accepted[b]] == eos_id) {
        count[b] = accepted[b];
        std::memcpy(out + b * max_steps, row + 1, accepted[b] * sizeof(int64_t));
      } else {
        active[still++] = b;
      }
    }
    active.resize(still);
    if (!active.empty() && std::chrono::steady_clock::now() >= next_interrupt_check) {
      if (interrupt_requested()) break;
      next_interrupt_check = std::chrono::steady_clock::now() + kInterruptCheck;
    }
  }
  return {tokens, log_probs, lengths, rounds};
}

// decoder_ar_step followed by a beam search step's choice (select_top_tokens): per row the k tokens of
// largest log-probability without `excluded_ids` (or `forced_id` alone where `forced` (B,) bool is set),
// best first: ids (B, min(k, V)) int64 and log-probabilities (B, min(k, V)) float32; no (B, V) logits.
std::tuple<at::Tensor, at::Tensor> decoder_ar_topk(at::TensorList weights, int64_t num_heads, double embed_scale,
                                                   bool post_norm, bool relu, int64_t mask_id,
                                                   int64_t query_position_offset, bool query_stream,
                                                   const at::Tensor& tokens, int64_t step, at::TensorList memory_keys,
                                                   at::TensorList memory_values, const at::Tensor& memory_lengths,
                                                   at::TensorList cache_keys, at::TensorList cache_values,
                                                   const at::Tensor& excluded_ids, const at::Tensor& forced,
                                                   int64_t forced_id, int64_t k, bool nan_as_impossible,
                                                   const std::optional<at::Tensor>& memory_rows) {
  const char* op = "decoder_ar_topk";
  TORCH_CHECK_VALUE(tokens.dim() == 1, op, ": tokens must be int64 (B,), got ", tokens.sizes());
  TORCH_CHECK_VALUE(k >= 1, op, ": k must be >= 1, got ", k);
  const GreedyRules rules = greedy_rules(weights, num_heads, excluded_ids, forced, tokens.size(0), forced_id, op);
  const PassStates s = ar_states(weights, num_heads, embed_scale, post_norm, relu, mask_id, query_position_offset,
                                 query_stream, tokens, step_layout(tokens.size(0), step, op), memory_keys,
                                 memory_values, memory_lengths, memory_rows, {cache_keys, cache_values, true}, op);
  return select_top_tokens(s.d, s.states, s.rows, rules.excluded, rules.forced_ids.data(), k, nan_as_impossible);
}

// decoder_ar_extend: ar_states over packed new tokens (row_offsets (N + 1,), cache_lengths
// (N,)), then greedy search's choice after every new token (as decoder_ar_greedy, `forced` (P,) per
// token): the AR greedy tokens and log-probabilities (P,) of the positions after each new token, and,
// where `candidates` (P,) int64 is not empty, each candidate's log-probability and rank at that
// position (rank_candidate; -1: none, NaN and V returned): the relaxed verification's test of the
// drafted token that follows. The caches get the new tokens' keys/values; a speculative
// verification keeps those it accepts by counting them in the next call's cache_lengths.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decoder_ar_extend(
    at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu, int64_t mask_id,
    int64_t query_position_offset, bool query_stream, const at::Tensor& tokens, const at::Tensor& row_offsets,
    const at::Tensor& cache_lengths, at::TensorList memory_keys, at::TensorList memory_values,
    const at::Tensor& memory_lengths, at::TensorList cache_keys, at::TensorList cache_values,
    const at::Tensor& excluded_ids, const at::Tensor& forced, int64_t forced_id, const at::Tensor& candidates,
    const std::optional<at::Tensor>& memory_rows) {
  const char* op = "decoder_ar_extend";
  TORCH_CHECK_VALUE(tokens.dim() == 1, op, ": tokens must be int64 (P,), got ", tokens.sizes());
  const int64_t count = tokens.size(0);
  const GreedyRules rules = greedy_rules(weights, num_heads, excluded_ids, forced, count, forced_id, op);
  const bool ranked = candidates.numel() > 0;
  TORCH_CHECK_VALUE(candidates.dim() == 1 && candidates.scalar_type() == at::kLong && candidates.device().is_cpu() &&
                        (!ranked || candidates.size(0) == count),
                    op, ": candidates must be int64, empty or (", count, ",), on the CPU, got ", candidates.sizes());
  const at::Tensor candidate_ids = candidates.contiguous();
  const int64_t vocab = parse_embeddings(weights, num_heads, op).vocab;
  for (int64_t i = 0; ranked && i < count; ++i) {
    const int64_t id = candidate_ids.data_ptr<int64_t>()[i];
    TORCH_CHECK_VALUE(id >= -1 && id < vocab, op, ": candidate id ", id, " outside [-1, ", vocab, ")");
  }
  const ArLayout layout = extend_layout(row_offsets, cache_lengths, count, op);
  const PassStates s = ar_states(weights, num_heads, embed_scale, post_norm, relu, mask_id, query_position_offset,
                                 query_stream, tokens, layout, memory_keys, memory_values, memory_lengths, memory_rows,
                                 {cache_keys, cache_values, true}, op);
  at::Tensor candidate_scores = at::empty({ranked ? count : 0}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor candidate_ranks = at::empty({ranked ? count : 0}, at::TensorOptions().dtype(at::kLong));
  Candidates wanted;
  if (ranked) {
    wanted.ids = candidate_ids.data_ptr<int64_t>();
    wanted.scores = candidate_scores.data_ptr<float>();
    wanted.ranks = candidate_ranks.data_ptr<int64_t>();
  }
  auto [best, best_scores] = select_tokens(s.d, s.states, s.rows, rules.excluded, rules.forced_ids.data(), wanted);
  return {best, best_scores, candidate_scores, candidate_ranks};
}

// decoder_ar_score: the teacher-forced ar_states over packed rows (no caches), followed by the log-softmax
// of each packed position's `targets` token (the token after it in its row) over the whole vocabulary:
// (P,) float32, no (P, V) logits kept.
at::Tensor decoder_ar_score(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                            int64_t mask_id, int64_t query_position_offset, const at::Tensor& tokens,
                            const at::Tensor& positions, const at::Tensor& row_offsets, at::TensorList memory_keys,
                            at::TensorList memory_values, const at::Tensor& memory_lengths,
                            const at::Tensor& targets, const std::optional<at::Tensor>& memory_rows) {
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == tokens.size(0) && targets.scalar_type() == at::kLong &&
                        targets.device().is_cpu(),
                    "decoder_ar_score: targets must be int64 (P,) on the CPU like tokens, got ", targets.sizes());
  const int64_t vocab = parse_embeddings(weights, num_heads, "decoder_ar_score").vocab;
  const at::Tensor targets_c = targets.contiguous();
  const int64_t* target_ids = targets_c.data_ptr<int64_t>();
  for (int64_t p = 0; p < targets_c.numel(); ++p)
    TORCH_CHECK_VALUE(target_ids[p] >= 0 && target_ids[p] < vocab, "decoder_ar_score: target id ", target_ids[p],
                      " outside [0, ", vocab, ")");
  for (const at::Tensor* t : {&tokens, &positions})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->scalar_type() == at::kLong && t->device().is_cpu(),
                      "decoder_ar_score: tokens and positions must be 1-D int64 CPU tensors");
  const int64_t packed = tokens.size(0);
  TORCH_CHECK_VALUE(positions.size(0) == packed, "decoder_ar_score: ", packed, " tokens but ", positions.size(0),
                    " positions");
  const PackedLayout rows = packed_layout(row_offsets, packed, "decoder_ar_score");
  const at::Tensor positions_c = positions.contiguous();
  const int64_t* position_ids = positions_c.data_ptr<int64_t>();
  const ArLayout layout{rows.offsets, rows.row_of, std::vector<int64_t>(position_ids, position_ids + packed)};
  const PassStates s = ar_states(weights, num_heads, embed_scale, post_norm, relu, mask_id, query_position_offset,
                                 /*query_stream=*/true, tokens, layout, memory_keys, memory_values, memory_lengths,
                                 memory_rows, {{}, {}, false}, "decoder_ar_score");
  return std::get<1>(select_tokens(s.d, s.states, s.rows, {}, target_ids));
}

}  // namespace

TORCH_LIBRARY_IMPL(janus_fast, CPU, m) { JANUS_DECODER_AR_OPS(JANUS_CPU_KERNEL) }

}  // namespace cpu
}  // namespace janus_fast
