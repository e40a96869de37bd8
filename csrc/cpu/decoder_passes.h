// The building blocks the native encoder and decoder passes share (encoder_cpu.cpp, decoder_nar_cpu.cpp,
// decoder_ar_cpu.cpp): the ISA choice, matrix products over rows, layer norms and activations, attention
// rows, the cross-attention + FFN half of a decoder layer, the checks of the encoder memory and of packed
// rows, and the choice of tokens from a pass's last states (decoder_select.cpp). Defined in
// decoder_passes.cpp unless inline here.
//
// Layers are wired as janus_fast.model's: pre-norm (x += SelfAttn(LN1 x); x += CrossAttn(LN2 x);
// x += FFN(LN3 x)) or post-norm (fairseq's default: x = LN1(x + SelfAttn x); ...), with a GELU or ReLU
// FFN. Residual adds are fused into the output projections and the activation follows fc1 in place.
// Matrix products go through core/small_gemm.h (float32 / bfloat16 / int8 weights, ISA chosen at run
// time); everything else is float32.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <optional>
#include <vector>

#include "core/decoder_math.h"
#include "core/small_gemm.h"
#include "cpu/decoder_weights.h"

// The native passes' ops, listed once by the file that holds their CPU kernels (decoder_ar_cpu.cpp,
// decoder_nar_cpu.cpp, encoder_cpu.cpp); decoder_ops.cpp defines their schemas and registers a Meta
// kernel <op>_meta for every op of the three lists, so an op cannot be left without one. Each list
// applies REGISTER to its ops' names: JANUS_CPU_KERNEL registers the kernel named as the op,
// JANUS_META_KERNEL the op's <op>_meta, both inside a TORCH_LIBRARY_IMPL block (whose handle is m).
#define JANUS_DECODER_AR_OPS(REGISTER) \
  REGISTER(decoder_ar_step)              \
  REGISTER(decoder_ar_greedy)            \
  REGISTER(decoder_ar_greedy_search)     \
  REGISTER(decoder_ar_topk)              \
  REGISTER(decoder_ar_extend)            \
  REGISTER(decoder_speculative_search)   \
  REGISTER(decoder_ar_score)
#define JANUS_DECODER_NAR_OPS(REGISTER) REGISTER(decoder_nar_pass) REGISTER(decoder_nar_fill)
#define JANUS_ENCODER_OPS(REGISTER) REGISTER(encoder_forward)
#define JANUS_CPU_KERNEL(op) m.impl(#op, &op);
#define JANUS_META_KERNEL(op) m.impl(#op, &op##_meta);

namespace janus_fast {
namespace cpu {

using core::Isa;

constexpr float kLayerNormEps = 1e-5f;

// The ISA used by the matrix products: what the CPU reports, capped by JANUS_FAST_ISA
// (scalar | avx2 | avx512 | avx512_bf16) so that tests can run every path on one machine.
Isa active_isa();

// Whether a Python signal handler raised during the running native call (Ctrl-C, SIGTERM, a deadline):
// checked between the steps of a call that runs many (interrupt.cpp). True: the caller returns at once;
// its Python caller raises the handler's exception when the call returns, so its outputs are never used.
bool interrupt_requested();

// How the layers are wired (janus_fast.model.JanusConfig's normalize_before and activation).
struct Architecture {
  bool post_norm = false;  // x = LN(x + f(x)) instead of x += f(LN x)
  bool relu = false;       // ReLU FFN instead of GELU
};

// y (rows, n) = x (rows, k) w [+ y]; column blocks split over threads when the product is large.
void linear(const float* x, int64_t rows, int64_t ldx, const GemmWeight& weight, float* y, int64_t ldy,
            bool accumulate = false);

// y (rows, dim) = LayerNorm(x (rows, dim)), rows split over threads when there are many (y may be x).
void layer_norm_rows(const float* x, int64_t rows, int64_t dim, const Norm& norm, float* y);

// x = GELU(x) or ReLU(x) in place, by the architecture.
void activate(const Architecture& arch, float* x, int64_t count);

// The input of a sublayer over rows x (n, dim): LN(x) written to h in a pre-norm layer, x itself in a
// post-norm one.
inline const float* sublayer_input(const Architecture& arch, const float* x, int64_t n, int64_t dim,
                                   const Norm& norm, float* h) {
  if (arch.post_norm) return x;
  layer_norm_rows(x, n, dim, norm, h);
  return h;
}

// After a sublayer's residual add: a post-norm layer normalises x in place.
inline void finish_sublayer(const Architecture& arch, float* x, int64_t n, int64_t dim, const Norm& norm) {
  if (arch.post_norm) layer_norm_rows(x, n, dim, norm, x);
}

// Rows of the FFN sublayer's hidden layer computed at a time (feed_forward): its scratch is this many
// rows of ffn floats, not the whole pass's.
constexpr int64_t kFeedForwardRows = 256;

// The FFN sublayer over rows x (n, dim), residual included; f holds min(n, kFeedForwardRows) * ffn
// floats, h n * dim.
void feed_forward(const Architecture& arch, float* x, int64_t n, int64_t dim, int64_t ffn,
                  const FeedForwardWeights& weights, float* h, float* f);

// Scratch buffers of the passes, kept per thread between calls: no allocation (and no page
// faults) per pass once the largest batch has been seen.
inline float* scratch(std::vector<float>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// The working rows of a pass, one per-thread set shared by every pass (valid until the next pass):
// x (rows x dim) the residual stream; h, q, a (work x dim) a sublayer's input, queries and attention
// output; kv (kv_rows x 2 dim) keys and values; f (min(work, kFeedForwardRows) x ffn) the
// feed-forward's hidden rows.
struct PassScratch {
  float *x, *h, *q, *a, *kv, *f;
};
PassScratch pass_scratch(int64_t rows, int64_t work, int64_t kv_rows, int64_t dim, int64_t ffn);

// row (d) = scale * embed_tokens[token] + positions[position], both checked.
inline void embed(const Embeddings& d, int64_t token, int64_t position, float scale, float* out) {
  TORCH_CHECK_VALUE(token >= 0 && token < d.vocab, "decoder: token id ", token, " outside [0, ", d.vocab, ")");
  TORCH_CHECK_VALUE(position >= 0 && position < d.max_positions, "decoder: position ", position,
                    " outside [0, ", d.max_positions, ")");
  const float* e = d.embed + token * d.dim;
  const float* p = d.positions + position * d.dim;
  for (int64_t i = 0; i < d.dim; ++i) out[i] = scale * e[i] + p[i];
}

// A visiting order for attention_rows: rows 0..num_rows-1 sorted (stably) by `key_of(row)`, the
// keys/values they read (a sentence's cache, a memory entry). A decoder pass lays its rows out by
// stream (every content row, then every query row) and a beam search's beams of one sentence share
// its memory entry; in this order the rows reading the same keys come one after another, and the
// keys stream from memory once instead of once per row.
template <typename KeyOf>
std::vector<int64_t> rows_by_key(int64_t num_rows, const KeyOf& key_of) {
  std::vector<int64_t> keys(num_rows), order(num_rows);
  for (int64_t row = 0; row < num_rows; ++row) keys[row] = key_of(row), order[row] = row;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  return order;
}

// Rows 0..num_rows-1 of `queries` (ldq apart) attend, head by head, to keys/values given per
// query row by `locate(row, head)` -> (keys, key_stride, values, value_stride, num_keys). The rows
// are visited in `order` (num_rows row indices; nullptr: 0, 1, ...): rows_by_key puts the rows that
// read the same keys next to each other, so that each finds them still in cache. Every row's
// arithmetic is the same whatever the order.
template <typename Locate>
void attention_rows(const float* queries, int64_t ldq, int64_t num_rows, const Embeddings& d, float* out,
                    int64_t ldo, int64_t max_keys, Locate locate, const int64_t* order = nullptr) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.head_dim));
  const Isa isa = active_isa();
  const int64_t items = num_rows * d.heads;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, max_keys * d.head_dim));
  at::parallel_for(0, items, items * max_keys * d.head_dim < 65536 ? items : grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(std::max<int64_t>(max_keys, 1)));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t slot = item / d.heads, head = item % d.heads;
      const int64_t row = order != nullptr ? order[slot] : slot;
      const float* keys;
      const float* values;
      int64_t key_stride, value_stride, num_keys;
      locate(row, head, keys, key_stride, values, value_stride, num_keys);
      core::attend(isa, queries + row * ldq + head * d.head_dim, keys, key_stride, values, value_stride, num_keys,
                   d.head_dim, scale, scores.data(), out + row * ldo + head * d.head_dim);
    }
  });
}

// Memory (cross-attention) keys/values of one layer: (R, H, S, head_dim) float32 contiguous.
struct Memory {
  const float* keys;
  const float* values;
  int64_t length;  // S
};

// Every layer's memory keys/values (one pair per layer, each (M, H, S, head_dim), one S for all
// layers: M entries, one per sentence) and, per decoder row, the entry it attends to and that entry's
// real length in [1, S]. Rows share an entry without copies (a sentence's length candidates or beams).
struct Memories {
  std::vector<Memory> layers;
  std::vector<int64_t> entry;    // decoder row -> memory entry
  std::vector<int64_t> lengths;  // decoder row -> its entry's length
};

// lengths (rows,) int64, each in [1, max_length].
std::vector<int64_t> checked_memory_lengths(const at::Tensor& lengths, int64_t rows, int64_t max_length);

// keys/values (M, H, S, head_dim) per layer, lengths (M,) and memory_rows (rows,) int64 in [0, M)
// (absent: M == rows, row r attends to entry r). `op` names the caller in errors.
Memories checked_memories(at::TensorList keys, at::TensorList values, const at::Tensor& lengths,
                          const std::optional<at::Tensor>& memory_rows, int64_t rows, const DecoderWeights& d,
                          const char* op);

// Cross-attention + FFN half of a layer for rows x (n, d), given each one's decoder row (`decoder_row`),
// whose memory entry and length `memories` gives.
void cross_and_ffn(const Architecture& arch, float* x, int64_t n, const DecoderLayerWeights& layer,
                   const DecoderWeights& d, const Memory& memory, const std::vector<int64_t>& decoder_row,
                   const Memories& memories, float* h, float* q, float* a, float* f);

// The final norm (in place) and the vocabulary projection of `rows` states: (rows, V) logits.
at::Tensor vocabulary_logits(const DecoderWeights& d, float* x, int64_t rows);

// The last decoder states (before the final norm) of some rows of a pass: per-thread scratch, valid
// until this thread's next pass.
struct PassStates {
  DecoderWeights d;
  float* states;  // (rows, d)
  int64_t rows;
};

// Packed rows: row r holds the packed positions offsets[r] .. offsets[r + 1] - 1 (>= 1 of them).
struct PackedLayout {
  std::vector<int64_t> offsets;  // N + 1
  std::vector<int64_t> row_of;   // packed position -> row
  int64_t num_rows, max_row;
};

PackedLayout packed_layout(const at::Tensor& row_offsets, int64_t packed, const char* op);

// The content-stream (NAR) pass over packed rows, `layout` over token_ids / position_ids (P each),
// row r attending to the memory of decoder row decoder_row[r] (`memory`'s rows): the last decoder
// states (before the final norm) of the packed positions out_pos[0..num_out), computed only for them
// in the last layer (decoder_nar_cpu.cpp; checked by the caller).
PassStates run_nar_rows(const DecoderWeights& d, const Architecture& arch, float scale, const Memories& memory,
                        const int64_t* token_ids, const int64_t* position_ids, const PackedLayout& layout,
                        const std::vector<int64_t>& decoder_row, const int64_t* out_pos, int64_t num_out);

// Per-row outputs of select_tokens beyond the greedy choice: for rows with a candidate id (>= 0 in
// `ids`), its log-softmax and rank (rank_candidate); null `ids`: none.
struct Candidates {
  const int64_t* ids = nullptr;
  float* scores = nullptr;
  int64_t* ranks = nullptr;
};

// The greedy choice of every row of `states` (rows, d) without materialising the (rows, V) logits:
// the argmax over the vocabulary without the `excluded` ids (ties -> lowest id; a NaN is the argmax), or
// forced_ids[r] where that is >= 0 (forced_ids may be null: none forced), and that token's log-softmax
// over the whole vocabulary; the candidates' ranks where asked (decoder_select.cpp). Returns tokens
// (rows,) int64 and log-probabilities (rows,) float32. The final norm is applied to `states` in place.
std::tuple<at::Tensor, at::Tensor> select_tokens(const DecoderWeights& d, float* states, int64_t rows,
                                                 const std::vector<int64_t>& excluded, const int64_t* forced_ids,
                                                 const Candidates& candidates = {});

// A beam search step's candidates from every row of `states` (rows, d), without the (rows, V) logits:
// the min(k, V) tokens of largest log-softmax outside the `excluded` ids (ties -> lowest id; core/top_k.h),
// or, where forced_ids[r] >= 0, that token alone; entries past the possible ones are -inf (on the lowest
// ids not taken). Rows with NaN or infinities follow torch (janus_fast.decoding.beam.BeamChoice.choose:
// log_softmax, NaN -> -inf with `nan_as_impossible`, excluded / not forced -> -inf, topk). Returns ids
// (rows, k) int64 and log-probabilities (rows, k) float32, best first. The final norm is applied to
// `states` in place.
std::tuple<at::Tensor, at::Tensor> select_top_tokens(const DecoderWeights& d, float* states, int64_t rows,
                                                     const std::vector<int64_t>& excluded,
                                                     const int64_t* forced_ids, int64_t k, bool nan_as_impossible);

}  // namespace cpu
}  // namespace janus_fast
