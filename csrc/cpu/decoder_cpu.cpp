// Whole decoder passes of the CPU engine in one call each, with no per-op dispatch:
//
//   janus_fast::decoder_ar_step   one incremental AR step (content token + query stream) for B rows,
//                                 appending to the key/value caches, returning (B, V) logits;
//   janus_fast::decoder_ar_greedy the same step returning greedy search's token per row and its
//                                 log-probability instead of logits;
//   janus_fast::decoder_ar_extend several new tokens per sentence appended to its caches (AR passes of
//                                 both streams from per-sentence cache lengths), with the greedy
//                                 choice after each: the verification of speculative decoding;
//   janus_fast::decoder_nar_pass  the content-stream pass of mask-predict over packed rows
//                                 (no padding), returning the logits of the requested positions only;
//   janus_fast::decoder_nar_fill  the same pass returning, per requested position, the argmax token
//                                 and its log-probability (mask-predict's fill) instead of logits;
//   janus_fast::decoder_ar_score  a teacher-forced AR pass of both streams over packed rows,
//                                 returning each given next token's log-probability (the AR
//                                 rescoring of finished mask-predict candidates);
//   janus_fast::encoder_forward   the encoder over the real source positions and the decoder's
//                                 cross-attention keys/values, computed once per batch.
//
// Layers are wired as janus_fast.model.DecoderLayer: pre-norm (x += SelfAttn(LN1 x); x += CrossAttn(LN2 x);
// x += FFN(LN3 x)) or post-norm (fairseq's default: x = LN1(x + SelfAttn x); ...), with a GELU or ReLU
// FFN; the final LayerNorm (when the model has one) and the tied vocabulary projection follow. Residual
// adds are fused into the output projections, the activation into the FFN, and the last layer runs its queries,
// cross-attention and FFN only for the rows whose logits are wanted. Matrix products go through
// core/small_gemm.h (float32 / bfloat16 / int8 weights, ISA chosen at run time); everything else
// is float32. The weights come as one flat list prepared by janus_fast/native/decoder.py (its
// docstring gives the order); the reference is the PyTorch model, and the tests compare the two.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <string>
#include <vector>

#include "core/decoder_math.h"
#include "core/logit_reduction.h"
#include "core/small_gemm.h"

namespace janus_fast {
namespace {

using core::GemmWeight;
using core::Isa;

constexpr float kLayerNormEps = 1e-5f;
constexpr int64_t kGlobalTensors = 7;
constexpr int64_t kLayerTensors = 27;

// The ISA used by the matrix products: what the CPU reports, capped by JANUS_FAST_ISA
// (scalar | avx2 | avx512 | avx512_bf16) so that tests can run every path on one machine.
Isa active_isa() {
  static const Isa isa = [] {
    Isa found = core::detect_isa();
    if (const char* cap = std::getenv("JANUS_FAST_ISA")) {
      const std::string value(cap);
      const Isa caps[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16};
      for (const Isa cap_isa : caps)
        if (value == core::isa_name(cap_isa) && cap_isa < found) found = cap_isa;
    }
    return found;
  }();
  return isa;
}

const float* float_data(const at::Tensor& t, int64_t numel, const char* what) {
  TORCH_CHECK_VALUE(t.defined() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel &&
                        t.device().is_cpu(),
                    "decoder weights: ", what, " must be a contiguous float32 CPU tensor of ", numel,
                    " elements, got ", t.defined() ? t.sizes() : at::IntArrayRef{});
  return t.data_ptr<float>();
}

GemmWeight make_weight(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& bias, int64_t k, int64_t n,
                       const char* what) {
  // bfloat16 pairs (panels, ceil(k / 2), 64, 2) or int8 quads (panels, ceil(k / 4), 64, 4)
  const int64_t group = w.dim() == 4 ? w.size(3) : 1;
  const bool pairs = group == 2 && w.scalar_type() == at::kBFloat16;
  const bool quads = group == 4 && w.scalar_type() == at::kChar;
  TORCH_CHECK_VALUE((w.dim() == 3 && w.size(0) == core::num_panels(n) && w.size(1) == k && w.size(2) == core::kPanel) ||
                        ((pairs || quads) && w.size(0) == core::num_panels(n) && w.size(1) == (k + group - 1) / group &&
                         w.size(2) == core::kPanel),
                    "decoder weights: ", what, " must be panels (", core::num_panels(n), ", ", k, ", ", core::kPanel,
                    "), bfloat16 pairs (", core::num_panels(n), ", ", (k + 1) / 2, ", ", core::kPanel,
                    ", 2) or int8 quads (", core::num_panels(n), ", ", (k + 3) / 4, ", ", core::kPanel, ", 4), got ",
                    w.sizes(), " ", w.scalar_type());
  TORCH_CHECK_VALUE(w.is_contiguous() && w.device().is_cpu(), "decoder weights: ", what,
                    " must be contiguous on the CPU");
  GemmWeight g;
  g.k = k;
  g.n = n;
  g.data = w.data_ptr();
  switch (w.scalar_type()) {
    case at::kFloat: g.type = core::WeightType::kFloat32; break;
    case at::kBFloat16: g.type = pairs ? core::WeightType::kBFloat16Pairs : core::WeightType::kBFloat16; break;
    case at::kChar: g.type = quads ? core::WeightType::kInt8Quads : core::WeightType::kInt8; break;
    default: TORCH_CHECK_TYPE(false, "decoder weights: ", what, " must be float32, bfloat16 or int8, got ", w.scalar_type());
  }
  if (g.type == core::WeightType::kInt8) g.scale = float_data(scale, n, what);
  else if (g.type == core::WeightType::kInt8Quads) g.scale = float_data(scale, 2 * n, what);  // scales, column sums
  else TORCH_CHECK_VALUE(scale.numel() == 0, "decoder weights: ", what, " has a scale but is not int8");
  if (bias.numel() > 0) g.bias = float_data(bias, n, what);
  return g;
}

// The FFN width, from fc1's bias or (without one) its int8 scales: n of them, or 2n for int8 quads.
int64_t ffn_width(const at::Tensor& fc1, const at::Tensor& scale, const at::Tensor& bias, const char* what) {
  TORCH_CHECK_VALUE(bias.numel() > 0 || scale.numel() > 0, what, " weights: fc1 needs a bias or scale");
  if (bias.numel() > 0) return bias.numel();
  const bool quads = fc1.dim() == 4 && fc1.size(3) == 4;
  return quads ? scale.numel() / 2 : scale.numel();
}

// How the layers are wired (janus_fast.model.JanusConfig's normalize_before and activation).
struct Architecture {
  bool post_norm = false;  // x = LN(x + f(x)) instead of x += f(LN x)
  bool relu = false;       // ReLU FFN instead of GELU
};

struct LayerWeights {
  const float *norm1_w, *norm1_b, *norm2_w, *norm2_b, *norm3_w, *norm3_b;
  GemmWeight q, kv, out, cross_q, cross_out, fc1, fc2;
};

struct DecoderWeights {
  int64_t vocab = 0, dim = 0, ffn = 0, max_positions = 0, heads = 0, head_dim = 0;
  const float* embed = nullptr;      // (V, d)
  const float* positions = nullptr;  // (max_positions, d)
  const float *final_w = nullptr, *final_b = nullptr;  // null: no final layer norm
  GemmWeight vocab_projection;  // (d, V)
  std::vector<LayerWeights> layers;
};

// Sizes, heads, the token and position embeddings and the final layer norm: w[0..3] of both the
// decoder's and the encoder's weight lists.
DecoderWeights parse_embeddings(at::TensorList w, int64_t num_heads, const char* what) {
  TORCH_CHECK_VALUE(w.size() >= 4 && w[0].dim() == 2 && w[1].dim() == 2, what, " weights: embeddings must be 2-D");
  DecoderWeights d;
  d.vocab = w[0].size(0);
  d.dim = w[0].size(1);
  d.max_positions = w[1].size(0);
  TORCH_CHECK_VALUE(num_heads >= 1 && d.dim % num_heads == 0, what, ": d_model ", d.dim,
                    " is not divisible by num_heads ", num_heads);
  d.heads = num_heads;
  d.head_dim = d.dim / num_heads;
  d.embed = float_data(w[0], d.vocab * d.dim, "token embeddings");
  d.positions = float_data(w[1], d.max_positions * d.dim, "positions");
  if (w[2].numel() > 0 || w[3].numel() > 0) {  // empty tensors: the model has no final layer norm
    d.final_w = float_data(w[2], d.dim, "final norm weight");
    d.final_b = float_data(w[3], d.dim, "final norm bias");
  }
  return d;
}

DecoderWeights parse_weights(at::TensorList w, int64_t num_heads) {
  TORCH_CHECK_VALUE(w.size() > kGlobalTensors && (w.size() - kGlobalTensors) % kLayerTensors == 0,
                    "decoder weights: expected ", kGlobalTensors, " + ", kLayerTensors,
                    " * layers tensors, got ", w.size());
  DecoderWeights d = parse_embeddings(w, num_heads, "decoder");
  d.vocab_projection = make_weight(w[4], w[5], w[6], d.dim, d.vocab, "vocabulary projection");
  const int64_t num_layers = (static_cast<int64_t>(w.size()) - kGlobalTensors) / kLayerTensors;
  for (int64_t l = 0; l < num_layers; ++l) {
    const at::Tensor* t = w.data() + kGlobalTensors + l * kLayerTensors;
    const int64_t dim = d.dim;
    if (l == 0) d.ffn = ffn_width(t[21], t[22], t[23], "decoder");
    LayerWeights layer;
    layer.norm1_w = float_data(t[0], dim, "norm1 weight");
    layer.norm1_b = float_data(t[1], dim, "norm1 bias");
    layer.q = make_weight(t[2], t[3], t[4], dim, dim, "self-attention query");
    layer.kv = make_weight(t[5], t[6], t[7], dim, 2 * dim, "self-attention key/value");
    layer.out = make_weight(t[8], t[9], t[10], dim, dim, "self-attention output");
    layer.norm2_w = float_data(t[11], dim, "norm2 weight");
    layer.norm2_b = float_data(t[12], dim, "norm2 bias");
    layer.cross_q = make_weight(t[13], t[14], t[15], dim, dim, "cross-attention query");
    layer.cross_out = make_weight(t[16], t[17], t[18], dim, dim, "cross-attention output");
    layer.norm3_w = float_data(t[19], dim, "norm3 weight");
    layer.norm3_b = float_data(t[20], dim, "norm3 bias");
    layer.fc1 = make_weight(t[21], t[22], t[23], dim, d.ffn, "fc1");
    layer.fc2 = make_weight(t[24], t[25], t[26], d.ffn, dim, "fc2");
    d.layers.push_back(layer);
  }
  return d;
}

// Products of at least this many multiply-adds (float32 weights) split their output columns over the
// threads: below it the fork/join costs more than half the product saves (a few microseconds per
// parallel region). The dot-product instructions of bf16 pairs and int8 quads do 2x / 4x the
// multiply-adds per instruction, so their products split at 2x / 4x the size.
constexpr int64_t kSplitWork = int64_t{1} << 19;

int64_t split_work(core::WeightType type) {
  if (type == core::WeightType::kInt8Quads) return 4 * kSplitWork;
  if (type == core::WeightType::kBFloat16Pairs) return 2 * kSplitWork;
  return kSplitWork;
}

// y (rows, n) = x (rows, k) w [+ y]; column blocks split over threads when the product is large.
void linear(const float* x, int64_t rows, int64_t ldx, const GemmWeight& weight, float* y, int64_t ldy,
            bool accumulate = false) {
  if (rows <= 0) return;
  GemmWeight w = weight;
  w.accumulate = accumulate;
  const Isa isa = active_isa();
  const int64_t work = rows * w.k * w.n;
  if (work < split_work(w.type) || at::get_num_threads() == 1) {
    core::gemm(isa, rows, x, ldx, w, y, ldy, 0, w.n);
    return;
  }
  const int64_t blocks = (w.n + 63) / 64;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    core::gemm(isa, rows, x, ldx, w, y, ldy, begin * 64, std::min(w.n, end * 64));
  });
}

// x = GELU(x) in place through torch's vectorized CPU kernel (the function the model calls).
void gelu_inplace(float* x, int64_t count) {
  if (count <= 0) return;
  at::Tensor view = at::from_blob(x, {count}, at::TensorOptions().dtype(at::kFloat));
  at::gelu_(view);
}

// x = ReLU(x) in place, split over threads when long.
void relu_inplace(float* x, int64_t count) {
  at::parallel_for(0, count, int64_t{1} << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
  });
}

// y (rows, dim) = LayerNorm(x (rows, dim)), rows split over threads when there are many (y may be x).
void layer_norm_rows(const float* x, int64_t rows, int64_t dim, const float* w, const float* b, float* y) {
  const Isa isa = active_isa();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    core::layer_norm_isa(isa, x + begin * dim, dim, end - begin, dim, w, b, kLayerNormEps, y + begin * dim, dim);
  });
}

void activate(const Architecture& arch, float* x, int64_t count) {
  if (arch.relu) relu_inplace(x, count);
  else gelu_inplace(x, count);
}

// The input of a sublayer over rows x (n, dim): LN(x) written to h in a pre-norm layer, x itself in a
// post-norm one.
const float* sublayer_input(const Architecture& arch, const float* x, int64_t n, int64_t dim, const float* norm_w,
                            const float* norm_b, float* h) {
  if (arch.post_norm) return x;
  layer_norm_rows(x, n, dim, norm_w, norm_b, h);
  return h;
}

// After a sublayer's residual add: a post-norm layer normalises x in place.
void finish_sublayer(const Architecture& arch, float* x, int64_t n, int64_t dim, const float* norm_w,
                     const float* norm_b) {
  if (arch.post_norm) layer_norm_rows(x, n, dim, norm_w, norm_b, x);
}

// Scratch buffers of the passes, kept per thread between calls: no allocation (and no page
// faults) per decoder pass once the largest batch has been seen.
float* scratch(std::vector<float>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
  return buffer.data();
}

// Memory (cross-attention) keys/values of one layer: (R, H, S, head_dim) float32 contiguous.
struct Memory {
  const float* keys;
  const float* values;
  int64_t length;  // S
};

Memory memory_of(const at::Tensor& keys, const at::Tensor& values, int64_t rows, const DecoderWeights& d) {
  for (const at::Tensor* t : {&keys, &values}) {
    TORCH_CHECK_VALUE(t->dim() == 4 && t->size(0) == rows && t->size(1) == d.heads && t->size(3) == d.head_dim &&
                          t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                      "decoder: memory keys/values must be contiguous float32 (", rows, ", ", d.heads, ", S, ",
                      d.head_dim, "), got ", t->sizes(), " ", t->scalar_type());
  }
  TORCH_CHECK_VALUE(values.size(2) == keys.size(2), "decoder: memory keys and values differ in length");
  return {keys.data_ptr<float>(), values.data_ptr<float>(), keys.size(2)};
}

std::vector<int64_t> checked_memory_lengths(const at::Tensor& lengths, int64_t rows, int64_t max_length) {
  TORCH_CHECK_VALUE(lengths.dim() == 1 && lengths.size(0) == rows && lengths.scalar_type() == at::kLong &&
                        lengths.device().is_cpu(),
                    "decoder: memory_lengths must be int64 (", rows, ",), got ", lengths.sizes());
  const at::Tensor contiguous = lengths.contiguous();
  std::vector<int64_t> out(contiguous.data_ptr<int64_t>(), contiguous.data_ptr<int64_t>() + rows);
  for (int64_t v : out)
    TORCH_CHECK_VALUE(v >= 1 && v <= max_length, "decoder: memory length ", v, " outside [1, ", max_length, "]");
  return out;
}

// Every layer's memory keys/values (one pair per layer, each (rows, H, S, head_dim), one S for all
// layers) and each row's real memory length in [1, S]; `op` names the caller in errors.
struct Memories {
  std::vector<Memory> layers;
  std::vector<int64_t> lengths;
};

Memories checked_memories(at::TensorList keys, at::TensorList values, const at::Tensor& lengths, int64_t rows,
                          const DecoderWeights& d, const char* op) {
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(keys.size()) == num_layers &&
                        static_cast<int64_t>(values.size()) == num_layers,
                    op, ": one memory tensor per layer (", num_layers, ") expected");
  Memories out;
  for (int64_t l = 0; l < num_layers; ++l) {
    out.layers.push_back(memory_of(keys[l], values[l], rows, d));
    TORCH_CHECK_VALUE(out.layers[l].length == out.layers[0].length, op, ": memory lengths differ between layers");
  }
  out.lengths = checked_memory_lengths(lengths, rows, num_layers ? out.layers[0].length : 1);
  return out;
}

// Rows q_begin..q_end of `queries` (ldq apart) attend, head by head, to keys/values given per
// query row by `locate(row, head)` -> (keys, key_stride, values, value_stride, num_keys).
template <typename Locate>
void attention_rows(const float* queries, int64_t ldq, int64_t num_rows, const DecoderWeights& d, float* out,
                    int64_t ldo, int64_t max_keys, Locate locate) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.head_dim));
  const Isa isa = active_isa();
  const int64_t items = num_rows * d.heads;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, max_keys * d.head_dim));
  at::parallel_for(0, items, items * max_keys * d.head_dim < 65536 ? items : grain, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(static_cast<size_t>(std::max<int64_t>(max_keys, 1)));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / d.heads, head = item % d.heads;
      const float* keys;
      const float* values;
      int64_t key_stride, value_stride, num_keys;
      locate(row, head, keys, key_stride, values, value_stride, num_keys);
      core::attend(isa, queries + row * ldq + head * d.head_dim, keys, key_stride, values, value_stride, num_keys,
                       d.head_dim, scale, scores.data(), out + row * ldo + head * d.head_dim);
    }
  });
}

// Cross-attention + FFN half of a layer for rows x (n, d), given each row's memory row index.
void cross_and_ffn(const Architecture& arch, float* x, int64_t n, const LayerWeights& layer, const DecoderWeights& d,
                   const Memory& memory, const std::vector<int64_t>& memory_row,
                   const std::vector<int64_t>& memory_lengths, float* h, float* q, float* a, float* f) {
  const int64_t dim = d.dim, stride = memory.length * d.head_dim;
  linear(sublayer_input(arch, x, n, dim, layer.norm2_w, layer.norm2_b, h), n, dim, layer.cross_q, q, dim);
  attention_rows(q, dim, n, d, a, dim, memory.length,
                 [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values, int64_t& vs,
                     int64_t& count) {
                   const int64_t m = memory_row[row];
                   const int64_t offset = (m * d.heads + head) * stride;
                   keys = memory.keys + offset;
                   values = memory.values + offset;
                   ks = vs = d.head_dim;
                   count = memory_lengths[m];
                 });
  linear(a, n, dim, layer.cross_out, x, dim, /*accumulate=*/true);
  finish_sublayer(arch, x, n, dim, layer.norm2_w, layer.norm2_b);
  linear(sublayer_input(arch, x, n, dim, layer.norm3_w, layer.norm3_b, h), n, dim, layer.fc1, f, d.ffn);
  activate(arch, f, n * d.ffn);
  linear(f, n, d.ffn, layer.fc2, x, dim, /*accumulate=*/true);
  finish_sublayer(arch, x, n, dim, layer.norm3_w, layer.norm3_b);
}

void embed(const DecoderWeights& d, int64_t token, int64_t position, float scale, float* out) {
  TORCH_CHECK_VALUE(token >= 0 && token < d.vocab, "decoder: token id ", token, " outside [0, ", d.vocab, ")");
  TORCH_CHECK_VALUE(position >= 0 && position < d.max_positions, "decoder: position ", position,
                    " outside [0, ", d.max_positions, ")");
  const float* e = d.embed + token * d.dim;
  const float* p = d.positions + position * d.dim;
  for (int64_t i = 0; i < d.dim; ++i) out[i] = scale * e[i] + p[i];
}

at::Tensor vocabulary_logits(const DecoderWeights& d, float* x, int64_t rows) {
  at::Tensor logits = at::empty({rows, d.vocab}, at::TensorOptions().dtype(at::kFloat));
  if (d.final_w != nullptr) layer_norm_rows(x, rows, d.dim, d.final_w, d.final_b, x);
  linear(x, rows, d.dim, d.vocab_projection, logits.data_ptr<float>(), d.vocab);
  return logits;
}

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

PackedLayout packed_layout(const at::Tensor& row_offsets, int64_t packed, const char* op) {
  TORCH_CHECK_VALUE(row_offsets.dim() == 1 && row_offsets.scalar_type() == at::kLong && row_offsets.device().is_cpu(),
                    op, ": row_offsets must be 1-D int64 on the CPU");
  PackedLayout layout;
  layout.num_rows = row_offsets.size(0) - 1;
  TORCH_CHECK_VALUE(layout.num_rows >= 0, op, ": row_offsets must hold N + 1 >= 1 values");
  const at::Tensor offsets_c = row_offsets.contiguous();
  layout.offsets.assign(offsets_c.data_ptr<int64_t>(), offsets_c.data_ptr<int64_t>() + layout.num_rows + 1);
  const std::vector<int64_t>& offsets = layout.offsets;
  TORCH_CHECK_VALUE(offsets[0] == 0 && offsets[layout.num_rows] == packed, op,
                    ": row_offsets must start at 0 and end at the number of tokens");
  layout.row_of.resize(packed);
  layout.max_row = 0;
  for (int64_t r = 0; r < layout.num_rows; ++r) {
    TORCH_CHECK_VALUE(offsets[r + 1] > offsets[r], op, ": row_offsets must increase (rows of >= 1)");
    layout.max_row = std::max(layout.max_row, offsets[r + 1] - offsets[r]);
    for (int64_t p = offsets[r]; p < offsets[r + 1]; ++p) layout.row_of[p] = r;
  }
  return layout;
}

// AR passes of both streams over new content tokens appended to each sentence's key/value cache:
// sentence r has `cache_lengths[r]` cached positions and new tokens packed at offsets[r] ..
// offsets[r + 1] - 1 (>= 1), the i-th at position cache_lengths[r] + i. Each new content token is
// written to the cache at its position and attends to its sentence's cache up to itself; the query
// stream (the mask at position + offset) of each new token attends to the same keys and predicts the
// next token. One incremental AR step is the case of one new token per sentence; a speculative
// verification passes a sentence's last accepted token and its drafted tokens. Every row runs the same
// arithmetic whatever the number of rows (the products are row-independent, core/small_gemm.h), so
// the query states equal those of one step at a time. Without `query_stream` (a plain transformer
// decoder) the content rows alone run every layer and their last states predict. Returns the query
// (or content) stream's last states, one per new token.
struct ExtendLayout {
  std::vector<int64_t> offsets;    // N + 1
  std::vector<int64_t> row_of;     // packed token -> sentence
  std::vector<int64_t> positions;  // packed token -> its target position
};

PassStates ar_extend_states(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                            int64_t mask_id, int64_t query_position_offset, bool query_stream,
                            const at::Tensor& tokens, const ExtendLayout& layout, at::TensorList memory_keys,
                            at::TensorList memory_values, const at::Tensor& memory_lengths,
                            at::TensorList cache_keys, at::TensorList cache_values, const char* op) {
  const DecoderWeights d = parse_weights(weights, num_heads);
  const Architecture arch{post_norm, relu};
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  TORCH_CHECK_VALUE(tokens.dim() == 1 && tokens.scalar_type() == at::kLong && tokens.device().is_cpu(), op,
                    ": tokens must be 1-D int64 on the CPU, got ", tokens.sizes());
  const int64_t packed = tokens.size(0), batch = static_cast<int64_t>(layout.offsets.size()) - 1;
  TORCH_CHECK_VALUE(static_cast<int64_t>(layout.positions.size()) == packed, op, ": ", packed,
                    " tokens for a layout of ", layout.positions.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(cache_keys.size()) == num_layers &&
                        static_cast<int64_t>(cache_values.size()) == num_layers,
                    op, ": one cache tensor per layer (", num_layers, ") expected");
  TORCH_CHECK_VALUE(query_position_offset == 0 || query_position_offset == 1, op,
                    ": query_position_offset must be 0 or 1, got ", query_position_offset);
  const int64_t query_offset = query_stream ? query_position_offset : 0;
  int64_t last_position = -1;
  for (const int64_t position : layout.positions) last_position = std::max(last_position, position);
  TORCH_CHECK_VALUE(last_position + query_offset < d.max_positions, op, ": position ", last_position,
                    " outside [0, ", d.max_positions - query_offset, ")");
  for (int64_t l = 0; l < num_layers; ++l) {
    for (const at::Tensor* t : {&cache_keys[l], &cache_values[l]}) {
      TORCH_CHECK_VALUE(t->dim() == 4 && t->size(0) == batch && t->size(1) == d.heads && t->size(2) > last_position &&
                            t->size(3) == d.head_dim && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                            t->device().is_cpu(),
                        op, ": caches must be contiguous float32 (", batch, ", ", d.heads, ", > ", last_position,
                        ", ", d.head_dim, "), got ", t->sizes());
    }
  }
  const Memories memory = checked_memories(memory_keys, memory_values, memory_lengths, batch, d, op);
  if (packed == 0) return {d, nullptr, 0};
  const at::Tensor token_values = tokens.contiguous();
  const int64_t* token_ids = token_values.data_ptr<int64_t>();

  // rows 0..P-1: content stream (each new token at its position); rows P..2P-1: query stream
  const int64_t rows = (query_stream ? 2 : 1) * packed, dim = d.dim;
  thread_local std::vector<float> x_buffer, h_buffer, q_buffer, a_buffer, kv_buffer, f_buffer;
  float* x = scratch(x_buffer, rows * dim);
  float* h = scratch(h_buffer, rows * dim);
  float* q = scratch(q_buffer, rows * dim);
  float* a = scratch(a_buffer, rows * dim);
  float* kv = scratch(kv_buffer, packed * 2 * dim);
  float* f = scratch(f_buffer, rows * d.ffn);
  const float scale = static_cast<float>(embed_scale);
  for (int64_t p = 0; p < packed; ++p) {
    embed(d, token_ids[p], layout.positions[p], scale, x + p * dim);
    if (query_stream) embed(d, mask_id, layout.positions[p] + query_position_offset, scale, x + (packed + p) * dim);
  }
  std::vector<int64_t> memory_row(rows);
  for (int64_t r = 0; r < rows; ++r) memory_row[r] = layout.row_of[r % packed];
  for (int64_t l = 0; l < num_layers; ++l) {
    const LayerWeights& layer = d.layers[l];
    // the last layer needs only the query rows past its key/value projection
    const int64_t first = query_stream && l == num_layers - 1 ? packed : 0, n = rows - first;
    float* xs = x + first * dim;
    const float* in = sublayer_input(arch, x, rows, dim, layer.norm1_w, layer.norm1_b, h);
    linear(in, packed, dim, layer.kv, kv, 2 * dim);
    float* ck = cache_keys[l].data_ptr<float>();
    float* cv = cache_values[l].data_ptr<float>();
    const int64_t max_len = cache_keys[l].size(2);
    for (int64_t p = 0; p < packed; ++p)
      for (int64_t head = 0; head < d.heads; ++head) {
        const int64_t at_position = ((layout.row_of[p] * d.heads + head) * max_len + layout.positions[p]) * d.head_dim;
        std::memcpy(ck + at_position, kv + p * 2 * dim + head * d.head_dim, d.head_dim * sizeof(float));
        std::memcpy(cv + at_position, kv + p * 2 * dim + dim + head * d.head_dim, d.head_dim * sizeof(float));
      }
    linear(in + first * dim, n, dim, layer.q, q, dim);
    attention_rows(q, dim, n, d, a, dim, last_position + 1,
                   [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                       int64_t& vs, int64_t& count) {
                     const int64_t p = (row + first) % packed;
                     const int64_t offset = (layout.row_of[p] * d.heads + head) * max_len * d.head_dim;
                     keys = ck + offset;
                     values = cv + offset;
                     ks = vs = d.head_dim;
                     count = layout.positions[p] + 1;  // causal, itself included
                   });
    linear(a, n, dim, layer.out, xs, dim, /*accumulate=*/true);
    finish_sublayer(arch, xs, n, dim, layer.norm1_w, layer.norm1_b);
    std::vector<int64_t> rows_memory(memory_row.begin() + first, memory_row.end());
    cross_and_ffn(arch, xs, n, layer, d, memory.layers[l], rows_memory, memory.lengths, h, q, a, f);
  }
  return {d, x + (rows - packed) * dim, packed};
}

// The layout of one AR step: one token per sentence, at `step`.
ExtendLayout step_layout(int64_t batch, int64_t step, const char* op) {
  TORCH_CHECK_VALUE(step >= 0, op, ": step ", step, " must be >= 0");
  ExtendLayout layout;
  layout.offsets.resize(batch + 1);
  layout.row_of.resize(batch);
  layout.positions.assign(batch, step);
  for (int64_t b = 0; b <= batch; ++b) layout.offsets[b] = b;
  for (int64_t b = 0; b < batch; ++b) layout.row_of[b] = b;
  return layout;
}

// The layout of decoder_ar_extend: row_offsets (N + 1,) int64 (each sentence >= 1 new token) and
// cache_lengths (N,) int64 >= 0.
ExtendLayout extend_layout(const at::Tensor& row_offsets, const at::Tensor& cache_lengths, int64_t packed,
                           const char* op) {
  const PackedLayout rows = packed_layout(row_offsets, packed, op);
  TORCH_CHECK_VALUE(cache_lengths.dim() == 1 && cache_lengths.size(0) == rows.num_rows &&
                        cache_lengths.scalar_type() == at::kLong && cache_lengths.device().is_cpu(),
                    op, ": cache_lengths must be int64 (", rows.num_rows, ",) on the CPU, got ", cache_lengths.sizes());
  const at::Tensor lengths = cache_lengths.contiguous();
  const int64_t* cached = lengths.data_ptr<int64_t>();
  ExtendLayout layout;
  layout.offsets = rows.offsets;
  layout.row_of = rows.row_of;
  layout.positions.resize(packed);
  for (int64_t r = 0; r < rows.num_rows; ++r) {
    TORCH_CHECK_VALUE(cached[r] >= 0, op, ": cache length ", cached[r], " must be >= 0");
    for (int64_t p = rows.offsets[r]; p < rows.offsets[r + 1]; ++p) layout.positions[p] = cached[r] + p - rows.offsets[r];
  }
  return layout;
}

// decoder_ar_step: the step's (B, V) logits.
at::Tensor decoder_ar_step(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                           int64_t mask_id, int64_t query_position_offset, bool query_stream,
                           const at::Tensor& tokens, int64_t step, at::TensorList memory_keys,
                           at::TensorList memory_values, const at::Tensor& memory_lengths, at::TensorList cache_keys,
                           at::TensorList cache_values) {
  TORCH_CHECK_VALUE(tokens.dim() == 1, "decoder_ar_step: tokens must be int64 (B,), got ", tokens.sizes());
  const PassStates s = ar_extend_states(weights, num_heads, embed_scale, post_norm, relu, mask_id,
                                        query_position_offset, query_stream, tokens,
                                        step_layout(tokens.size(0), step, "decoder_ar_step"), memory_keys,
                                        memory_values, memory_lengths, cache_keys, cache_values, "decoder_ar_step");
  if (s.rows == 0) return at::empty({0, s.d.vocab}, at::TensorOptions().dtype(at::kFloat));
  return vocabulary_logits(s.d, s.states, s.rows);
}

// The last decoder states (before the final norm) of the requested positions of a NAR pass.
PassStates nar_states(at::TensorList weights, int64_t num_heads, bool post_norm, bool relu, double embed_scale,
                     const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& row_offsets,
                     at::TensorList memory_keys, at::TensorList memory_values, const at::Tensor& memory_lengths,
                     const at::Tensor& output_positions) {
  const DecoderWeights d = parse_weights(weights, num_heads);
  const Architecture arch{post_norm, relu};
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  for (const at::Tensor* t : {&tokens, &positions, &row_offsets, &output_positions})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->scalar_type() == at::kLong && t->device().is_cpu(),
                      "decoder_nar_pass: tokens, positions, row_offsets and output_positions must be 1-D int64 "
                      "CPU tensors");
  const int64_t packed = tokens.size(0);
  TORCH_CHECK_VALUE(positions.size(0) == packed, "decoder_nar_pass: ", packed, " tokens but ", positions.size(0),
                    " positions");
  const PackedLayout layout = packed_layout(row_offsets, packed, "decoder_nar_pass");
  const int64_t num_rows = layout.num_rows, max_row = layout.max_row;
  const int64_t* offsets = layout.offsets.data();
  const std::vector<int64_t>& row_of = layout.row_of;
  const at::Tensor tokens_c = tokens.contiguous();
  const at::Tensor positions_c = positions.contiguous(), outputs_c = output_positions.contiguous();
  const int64_t num_out = output_positions.size(0);
  const int64_t* out_pos = outputs_c.data_ptr<int64_t>();
  for (int64_t i = 0; i < num_out; ++i)
    TORCH_CHECK_VALUE(out_pos[i] >= 0 && out_pos[i] < packed, "decoder_nar_pass: output position ", out_pos[i],
                      " outside [0, ", packed, ")");
  const Memories memory =
      checked_memories(memory_keys, memory_values, memory_lengths, num_rows, d, "decoder_nar_pass");
  if (num_out == 0) return {d, nullptr, 0};

  const int64_t dim = d.dim, cap = std::max(packed, num_out);  // rows of the per-row buffers
  thread_local std::vector<float> x_buffer, h_buffer, q_buffer, a_buffer, kv_buffer, f_buffer, xo_buffer;
  float* x = scratch(x_buffer, packed * dim);
  float* h = scratch(h_buffer, cap * dim);
  float* q = scratch(q_buffer, cap * dim);
  float* a = scratch(a_buffer, cap * dim);
  float* kv = scratch(kv_buffer, packed * 2 * dim);
  float* f = scratch(f_buffer, cap * d.ffn);
  float* xo = scratch(xo_buffer, num_out * dim);
  const float scale = static_cast<float>(embed_scale);
  const int64_t* token_ids = tokens_c.data_ptr<int64_t>();
  const int64_t* position_ids = positions_c.data_ptr<int64_t>();
  for (int64_t p = 0; p < packed; ++p) embed(d, token_ids[p], position_ids[p], scale, x + p * dim);
  std::vector<int64_t> out_rows(num_out);
  for (int64_t i = 0; i < num_out; ++i) out_rows[i] = row_of[out_pos[i]];

  for (int64_t l = 0; l < num_layers; ++l) {
    const LayerWeights& layer = d.layers[l];
    const bool last = l == num_layers - 1;
    const float* in = sublayer_input(arch, x, packed, dim, layer.norm1_w, layer.norm1_b, h);
    linear(in, packed, dim, layer.kv, kv, 2 * dim);
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
    linear(hs, n, dim, layer.q, q, dim);
    attention_rows(q, dim, n, d, a, dim, max_row,
                   [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                       int64_t& vs, int64_t& count) {
                     const int64_t r = row_of[query_packed ? query_packed[row] : row];
                     keys = kv + offsets[r] * 2 * dim + head * d.head_dim;
                     values = keys + dim;
                     ks = vs = 2 * dim;
                     count = offsets[r + 1] - offsets[r];
                   });
    linear(a, n, dim, layer.out, xs, dim, /*accumulate=*/true);
    finish_sublayer(arch, xs, n, dim, layer.norm1_w, layer.norm1_b);
    cross_and_ffn(arch, xs, n, layer, d, memory.layers[l], last ? out_rows : row_of, memory.lengths, h, q, a, f);
  }
  return {d, xo, num_out};
}

at::Tensor decoder_nar_pass(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                            const at::Tensor& tokens, const at::Tensor& positions, const at::Tensor& row_offsets,
                            at::TensorList memory_keys, at::TensorList memory_values, const at::Tensor& memory_lengths,
                            const at::Tensor& output_positions) {
  const PassStates s = nar_states(weights, num_heads, post_norm, relu, embed_scale, tokens, positions, row_offsets,
                                 memory_keys, memory_values, memory_lengths, output_positions);
  if (s.rows == 0) return at::empty({0, s.d.vocab}, at::TensorOptions().dtype(at::kFloat));
  return vocabulary_logits(s.d, s.states, s.rows);
}

// The first index of the maximum of `row` (vocab,) with the `excluded` ids counted as -inf (all -inf
// -> 0, as torch.argmax).
int64_t first_max_without(const float* row, int64_t vocab, const std::vector<int64_t>& excluded) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  auto value = [&](int64_t id) {
    for (const int64_t e : excluded)
      if (e == id) return neg_inf;
    return row[id];
  };
  int64_t best = 0;
  float best_value = value(0);
  for (int64_t id = 1; id < vocab; ++id) {
    const float v = value(id);
    if (v > best_value) best = id, best_value = v;
  }
  return best;
}

struct GreedyToken {
  int64_t id;
  float score;  // the token's log-softmax over the whole vocabulary
};

// greedy_token for a row holding NaN or +inf, or only -inf: torch's log_softmax and argmax, whose
// rules for those rows (a NaN is the argmax; the scores are NaN) the engine follows exactly.
GreedyToken greedy_token_exact(const float* row, int64_t vocab, const std::vector<int64_t>& excluded, int64_t forced) {
  const auto options = at::TensorOptions().dtype(at::kFloat);
  at::Tensor log_probs = at::_log_softmax(at::from_blob(const_cast<float*>(row), {vocab}, options), 0, false);
  if (forced >= 0) return {forced, log_probs.data_ptr<float>()[forced]};
  const at::Tensor scores = log_probs.clone();
  for (const int64_t id : excluded) log_probs.select(0, id).fill_(-std::numeric_limits<float>::infinity());
  const int64_t id = at::argmax(log_probs).item<int64_t>();
  return {id, scores.data_ptr<float>()[id]};
}

// The greedy choice of one row of logits: the argmax over the vocabulary without the `excluded` ids
// (ties -> lowest id; a NaN is the argmax), or `forced` where that is >= 0, and that token's
// log-softmax over the whole vocabulary (torch's log_softmax: NaN when the row holds NaN or +inf, or
// only -inf). One vectorised reduction of the row (core/logit_reduction.h); no log-probabilities
// are written.
GreedyToken greedy_token(Isa isa, const float* row, int64_t vocab, const std::vector<int64_t>& excluded,
                         int64_t forced) {
  const core::LogitReduction reduction = core::reduce_logits_isa(isa, row, vocab);
  if (!reduction.finite) return greedy_token_exact(row, vocab, excluded, forced);
  int64_t id = forced;
  if (id < 0) {
    id = reduction.argmax;
    for (const int64_t e : excluded)
      if (e == id) id = first_max_without(row, vocab, excluded);
  }
  return {id, row[id] - reduction.max - reduction.log_sum_exp};
}

// How a candidate token ranks in a row of logits: its log-softmax over the whole vocabulary and the
// number of ids outside `excluded` with a strictly larger logit (0: a top choice). An excluded
// candidate, or a row with NaN or infinities, ranks `vocab` (never among a top k).
struct CandidateRank {
  float score;
  int64_t rank;
};

CandidateRank rank_candidate(const float* row, int64_t vocab, const std::vector<int64_t>& excluded,
                             int64_t candidate, const core::LogitReduction& reduction) {
  const float value = row[candidate];
  const float score = value - reduction.max - reduction.log_sum_exp;
  bool excluded_candidate = false;
  for (const int64_t e : excluded) excluded_candidate |= e == candidate;
  if (!reduction.finite || excluded_candidate) return {score, vocab};
  int64_t rank = 0;
  for (int64_t id = 0; id < vocab; ++id) rank += row[id] > value;
  for (const int64_t e : excluded) rank -= row[e] > value;
  return {score, rank};
}

// Per-row outputs of select_tokens beyond the greedy choice: for rows with a candidate id (>= 0 in
// `ids`), its log-softmax and rank (rank_candidate); null `ids`: none.
struct Candidates {
  const int64_t* ids = nullptr;
  float* scores = nullptr;
  int64_t* ranks = nullptr;
};

// greedy_token for every row of `states` (rows, d), without materialising the (rows, V) logits
// (forced_ids may be null: none forced), and the candidates' ranks where asked. The final norm and
// the vocabulary projection run in tiles of rows whose logits stay in a per-thread buffer.
std::tuple<at::Tensor, at::Tensor> select_tokens(const DecoderWeights& d, float* states, int64_t rows,
                                                 const std::vector<int64_t>& excluded, const int64_t* forced_ids,
                                                 const Candidates& candidates = {}) {
  at::Tensor best = at::empty({rows}, at::TensorOptions().dtype(at::kLong));
  at::Tensor scores = at::empty({rows}, at::TensorOptions().dtype(at::kFloat));
  if (rows == 0) return {best, scores};
  if (d.final_w != nullptr) layer_norm_rows(states, rows, d.dim, d.final_w, d.final_b, states);
  int64_t* best_ids = best.data_ptr<int64_t>();
  float* best_scores = scores.data_ptr<float>();
  const Isa isa = active_isa();
  // greedy_token (and the candidate's rank) of row r of the pass, from its logits
  auto choose = [&](int64_t r, const float* row) {
    const int64_t forced = forced_ids != nullptr ? forced_ids[r] : -1;
    const GreedyToken token = greedy_token(isa, row, d.vocab, excluded, forced);
    best_ids[r] = token.id;
    best_scores[r] = token.score;
    if (candidates.ids != nullptr) {
      const int64_t candidate = candidates.ids[r];
      CandidateRank ranked{std::numeric_limits<float>::quiet_NaN(), d.vocab};
      if (candidate >= 0)
        ranked = rank_candidate(row, d.vocab, excluded, candidate, core::reduce_logits_isa(isa, row, d.vocab));
      candidates.scores[r] = ranked.score;
      candidates.ranks[r] = ranked.rank;
    }
  };
  const int64_t threads = at::get_num_threads();
  if (rows < threads) {
    // fewer rows than threads (one sentence's AR step): the projection's columns are split across
    // the threads instead (linear), then each row is reduced; the same logits as the tiles below
    thread_local std::vector<float> logits_buffer;
    float* logits = scratch(logits_buffer, rows * d.vocab);
    linear(states, rows, d.dim, d.vocab_projection, logits, d.vocab);
    for (int64_t r = 0; r < rows; ++r) choose(r, logits + r * d.vocab);
    return {best, scores};
  }
  const int64_t tile = std::min<int64_t>(32, std::max<int64_t>(1, (rows + threads - 1) / threads));
  const int64_t num_tiles = (rows + tile - 1) / tile;
  at::parallel_for(0, num_tiles, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> logits_buffer;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = t * tile, n = std::min(tile, rows - first);
      float* logits = scratch(logits_buffer, n * d.vocab);
      core::gemm(isa, n, states + first * d.dim, d.dim, d.vocab_projection, logits, d.vocab, 0, d.vocab);
      for (int64_t i = 0; i < n; ++i) choose(first + i, logits + i * d.vocab);
    }
  });
  return {best, scores};
}

// decoder_nar_pass followed by the fill of mask-predict (select_tokens without `exclude_id`, or over
// the whole vocabulary for -1: fairseq's fill), as janus_fast.ops.mask_predict_step's step 1.
std::tuple<at::Tensor, at::Tensor> decoder_nar_fill(at::TensorList weights, int64_t num_heads, double embed_scale,
                                                    bool post_norm, bool relu, const at::Tensor& tokens,
                                                    const at::Tensor& positions, const at::Tensor& row_offsets,
                                                    at::TensorList memory_keys, at::TensorList memory_values,
                                                    const at::Tensor& memory_lengths,
                                                    const at::Tensor& output_positions, int64_t exclude_id) {
  const PassStates s = nar_states(weights, num_heads, post_norm, relu, embed_scale, tokens, positions, row_offsets,
                                 memory_keys, memory_values, memory_lengths, output_positions);
  TORCH_CHECK_VALUE(exclude_id >= -1 && exclude_id < s.d.vocab, "decoder_nar_fill: exclude_id ", exclude_id,
                    " outside [-1, ", s.d.vocab, ")");
  const std::vector<int64_t> excluded = exclude_id >= 0 ? std::vector<int64_t>{exclude_id} : std::vector<int64_t>{};
  return select_tokens(s.d, s.states, s.rows, excluded, nullptr);
}

// Greedy search's rules checked and unpacked: the ids never chosen and, per new token, the id it is
// forced to (`forced_id` where `forced` is set, the sentence's length limit) or -1.
struct GreedyRules {
  std::vector<int64_t> excluded;
  std::vector<int64_t> forced_ids;
};

GreedyRules greedy_rules(at::TensorList weights, int64_t num_heads, const at::Tensor& excluded_ids,
                         const at::Tensor& forced, int64_t count, int64_t forced_id, const char* op) {
  TORCH_CHECK_VALUE(excluded_ids.dim() == 1 && excluded_ids.scalar_type() == at::kLong && excluded_ids.device().is_cpu(),
                    op, ": excluded_ids must be int64 (K,) on the CPU, got ", excluded_ids.sizes());
  TORCH_CHECK_VALUE(forced.dim() == 1 && forced.size(0) == count && forced.scalar_type() == at::kBool &&
                        forced.device().is_cpu(),
                    op, ": forced must be bool (", count, ",) on the CPU, got ", forced.sizes(), " ",
                    forced.scalar_type());
  const at::Tensor excluded_values = excluded_ids.contiguous();
  GreedyRules rules;
  rules.excluded.assign(excluded_values.data_ptr<int64_t>(), excluded_values.data_ptr<int64_t>() + excluded_values.numel());
  const int64_t vocab = parse_embeddings(weights, num_heads, op).vocab;  // the pass checks the rest
  for (const int64_t id : rules.excluded)
    TORCH_CHECK_VALUE(id >= 0 && id < vocab, op, ": excluded id ", id, " outside [0, ", vocab, ")");
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
                                                     int64_t forced_id) {
  const char* op = "decoder_ar_greedy";
  TORCH_CHECK_VALUE(tokens.dim() == 1, op, ": tokens must be int64 (B,), got ", tokens.sizes());
  const GreedyRules rules = greedy_rules(weights, num_heads, excluded_ids, forced, tokens.size(0), forced_id, op);
  const PassStates s = ar_extend_states(weights, num_heads, embed_scale, post_norm, relu, mask_id,
                                        query_position_offset, query_stream, tokens,
                                        step_layout(tokens.size(0), step, op), memory_keys, memory_values,
                                        memory_lengths, cache_keys, cache_values, op);
  return select_tokens(s.d, s.states, s.rows, rules.excluded, rules.forced_ids.data());
}

// decoder_ar_extend: ar_extend_states over packed new tokens (row_offsets (N + 1,), cache_lengths
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
    const at::Tensor& excluded_ids, const at::Tensor& forced, int64_t forced_id, const at::Tensor& candidates) {
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
  const ExtendLayout layout = extend_layout(row_offsets, cache_lengths, count, op);
  const PassStates s = ar_extend_states(weights, num_heads, embed_scale, post_norm, relu, mask_id,
                                        query_position_offset, query_stream, tokens, layout, memory_keys,
                                        memory_values, memory_lengths, cache_keys, cache_values, op);
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

// The query stream's last states (before the final norm) of a teacher-forced AR pass over packed
// rows: content token p (at positions[p]) attends to its row's content tokens up to itself, and
// query p (the mask at positions[p] + query_position_offset) to the same keys, as the AR steps
// would see them one at a time (janus_fast.model.JanusModel.ar_hidden). One state per packed position.
PassStates ar_pass_states(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                          int64_t mask_id, int64_t query_position_offset, const at::Tensor& tokens,
                          const at::Tensor& positions, const at::Tensor& row_offsets, at::TensorList memory_keys,
                          at::TensorList memory_values, const at::Tensor& memory_lengths) {
  const DecoderWeights d = parse_weights(weights, num_heads);
  const Architecture arch{post_norm, relu};
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  for (const at::Tensor* t : {&tokens, &positions})
    TORCH_CHECK_VALUE(t->dim() == 1 && t->scalar_type() == at::kLong && t->device().is_cpu(),
                      "decoder_ar_score: tokens and positions must be 1-D int64 CPU tensors");
  const int64_t packed = tokens.size(0);
  TORCH_CHECK_VALUE(positions.size(0) == packed, "decoder_ar_score: ", packed, " tokens but ", positions.size(0),
                    " positions");
  TORCH_CHECK_VALUE(query_position_offset == 0 || query_position_offset == 1,
                    "decoder_ar_score: query_position_offset must be 0 or 1, got ", query_position_offset);
  const PackedLayout layout = packed_layout(row_offsets, packed, "decoder_ar_score");
  const Memories memory =
      checked_memories(memory_keys, memory_values, memory_lengths, layout.num_rows, d, "decoder_ar_score");
  if (packed == 0) return {d, nullptr, 0};

  // rows 0..P-1: the content stream; rows P..2P-1: the query stream
  const int64_t rows = 2 * packed, dim = d.dim;
  thread_local std::vector<float> x_buffer, h_buffer, q_buffer, a_buffer, kv_buffer, f_buffer;
  float* x = scratch(x_buffer, rows * dim);
  float* h = scratch(h_buffer, rows * dim);
  float* q = scratch(q_buffer, rows * dim);
  float* a = scratch(a_buffer, rows * dim);
  float* kv = scratch(kv_buffer, packed * 2 * dim);
  float* f = scratch(f_buffer, rows * d.ffn);
  const float scale = static_cast<float>(embed_scale);
  const at::Tensor tokens_c = tokens.contiguous(), positions_c = positions.contiguous();
  const int64_t* token_ids = tokens_c.data_ptr<int64_t>();
  const int64_t* position_ids = positions_c.data_ptr<int64_t>();
  for (int64_t p = 0; p < packed; ++p) {
    embed(d, token_ids[p], position_ids[p], scale, x + p * dim);
    embed(d, mask_id, position_ids[p] + query_position_offset, scale, x + (packed + p) * dim);
  }
  const int64_t* offsets = layout.offsets.data();
  std::vector<int64_t> memory_row(rows);
  for (int64_t r = 0; r < rows; ++r) memory_row[r] = layout.row_of[r % packed];
  for (int64_t l = 0; l < num_layers; ++l) {
    const LayerWeights& layer = d.layers[l];
    // the last layer needs the content rows for their keys/values only
    const int64_t first = l == num_layers - 1 ? packed : 0, n = rows - first;
    float* xs = x + first * dim;
    const float* in = sublayer_input(arch, x, rows, dim, layer.norm1_w, layer.norm1_b, h);
    linear(in, packed, dim, layer.kv, kv, 2 * dim);
    linear(in + first * dim, n, dim, layer.q, q, dim);
    attention_rows(q, dim, n, d, a, dim, layout.max_row,
                   [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                       int64_t& vs, int64_t& count) {
                     const int64_t p = (row + first) % packed, r = layout.row_of[p];
                     keys = kv + offsets[r] * 2 * dim + head * d.head_dim;
                     values = keys + dim;
                     ks = vs = 2 * dim;
                     count = p - offsets[r] + 1;  // causal, the diagonal included
                   });
    linear(a, n, dim, layer.out, xs, dim, /*accumulate=*/true);
    finish_sublayer(arch, xs, n, dim, layer.norm1_w, layer.norm1_b);
    const std::vector<int64_t> rows_memory(memory_row.begin() + first, memory_row.end());
    cross_and_ffn(arch, xs, n, layer, d, memory.layers[l], rows_memory, memory.lengths, h, q, a, f);
  }
  return {d, x + packed * dim, packed};
}

// decoder_ar_score: ar_pass_states followed by the log-softmax of each packed position's `targets`
// token (the token after it in its row) over the whole vocabulary: (P,) float32, no (P, V) logits kept.
at::Tensor decoder_ar_score(at::TensorList weights, int64_t num_heads, double embed_scale, bool post_norm, bool relu,
                            int64_t mask_id, int64_t query_position_offset, const at::Tensor& tokens,
                            const at::Tensor& positions, const at::Tensor& row_offsets, at::TensorList memory_keys,
                            at::TensorList memory_values, const at::Tensor& memory_lengths,
                            const at::Tensor& targets) {
  TORCH_CHECK_VALUE(targets.dim() == 1 && targets.size(0) == tokens.size(0) && targets.scalar_type() == at::kLong &&
                        targets.device().is_cpu(),
                    "decoder_ar_score: targets must be int64 (P,) on the CPU like tokens, got ", targets.sizes());
  const int64_t vocab = parse_embeddings(weights, num_heads, "decoder_ar_score").vocab;
  const at::Tensor targets_c = targets.contiguous();
  const int64_t* target_ids = targets_c.data_ptr<int64_t>();
  for (int64_t p = 0; p < targets_c.numel(); ++p)
    TORCH_CHECK_VALUE(target_ids[p] >= 0 && target_ids[p] < vocab, "decoder_ar_score: target id ", target_ids[p],
                      " outside [0, ", vocab, ")");
  const PassStates s = ar_pass_states(weights, num_heads, embed_scale, post_norm, relu, mask_id,
                                      query_position_offset, tokens, positions, row_offsets, memory_keys,
                                      memory_values, memory_lengths);
  return std::get<1>(select_tokens(s.d, s.states, s.rows, {}, target_ids));
}

// ------------------------------------------------------------------------------------- encoder
constexpr int64_t kEncoderGlobalTensors = 4;
constexpr int64_t kEncoderLayerTensors = 19;

struct EncoderLayerWeights {
  const float *norm1_w, *norm1_b, *norm2_w, *norm2_b;
  GemmWeight q, kv, out, fc1, fc2;
};

// encoder_forward: the whole encoder over the real positions of a padded batch, then the
// cross-attention keys/values of every decoder layer. Returns [states (B, S, d), keys_0, values_0,
// keys_1, ...] with keys/values (B, H, S, d/H); padded positions are zeros.
std::vector<at::Tensor> encoder_forward(at::TensorList weights, int64_t num_encoder_layers, int64_t num_heads,
                                        double embed_scale, bool post_norm, bool relu, const at::Tensor& src_tokens,
                                        const at::Tensor& src_lengths) {
  TORCH_CHECK_VALUE(num_encoder_layers >= 1 &&
                        static_cast<int64_t>(weights.size()) >
                            kEncoderGlobalTensors + num_encoder_layers * kEncoderLayerTensors &&
                        (static_cast<int64_t>(weights.size()) - kEncoderGlobalTensors -
                         num_encoder_layers * kEncoderLayerTensors) % 3 == 0,
                    "encoder weights: expected ", kEncoderGlobalTensors, " + ", kEncoderLayerTensors,
                    " * encoder layers + 3 * decoder layers tensors, got ", weights.size());
  DecoderWeights d = parse_embeddings(weights, num_heads, "encoder");  // the shared fields
  const Architecture arch{post_norm, relu};
  const int64_t dim = d.dim;
  std::vector<EncoderLayerWeights> layers;
  for (int64_t l = 0; l < num_encoder_layers; ++l) {
    const at::Tensor* t = weights.data() + kEncoderGlobalTensors + l * kEncoderLayerTensors;
    if (l == 0) d.ffn = ffn_width(t[13], t[14], t[15], "encoder");
    EncoderLayerWeights layer;
    layer.norm1_w = float_data(t[0], dim, "norm1 weight");
    layer.norm1_b = float_data(t[1], dim, "norm1 bias");
    layer.q = make_weight(t[2], t[3], t[4], dim, dim, "self-attention query");
    layer.kv = make_weight(t[5], t[6], t[7], dim, 2 * dim, "self-attention key/value");
    layer.out = make_weight(t[8], t[9], t[10], dim, dim, "self-attention output");
    layer.norm2_w = float_data(t[11], dim, "norm2 weight");
    layer.norm2_b = float_data(t[12], dim, "norm2 bias");
    layer.fc1 = make_weight(t[13], t[14], t[15], dim, d.ffn, "fc1");
    layer.fc2 = make_weight(t[16], t[17], t[18], d.ffn, dim, "fc2");
    layers.push_back(layer);
  }
  std::vector<GemmWeight> cross_kv;
  for (int64_t i = kEncoderGlobalTensors + num_encoder_layers * kEncoderLayerTensors;
       i < static_cast<int64_t>(weights.size()); i += 3)
    cross_kv.push_back(make_weight(weights[i], weights[i + 1], weights[i + 2], dim, 2 * dim, "cross key/value"));

  TORCH_CHECK_VALUE(src_tokens.dim() == 2 && src_tokens.scalar_type() == at::kLong && src_tokens.device().is_cpu(),
                    "encoder_forward: src_tokens must be int64 (B, S) on the CPU, got ", src_tokens.sizes());
  const int64_t batch = src_tokens.size(0), width = src_tokens.size(1);
  TORCH_CHECK_VALUE(width <= d.max_positions, "encoder_forward: ", width, " source positions but the model has ",
                    d.max_positions);
  const std::vector<int64_t> lengths = checked_memory_lengths(src_lengths, batch, width);
  std::vector<int64_t> offsets(batch + 1, 0), row_of;
  for (int64_t b = 0; b < batch; ++b) offsets[b + 1] = offsets[b] + lengths[b];
  const int64_t packed = offsets[batch];
  row_of.resize(packed);
  const at::Tensor tokens_c = src_tokens.contiguous();
  const int64_t* ids = tokens_c.data_ptr<int64_t>();
  thread_local std::vector<float> x_buffer, h_buffer, q_buffer, a_buffer, kv_buffer, f_buffer;
  float* x = scratch(x_buffer, packed * dim);
  float* h = scratch(h_buffer, packed * dim);
  float* q = scratch(q_buffer, packed * dim);
  float* a = scratch(a_buffer, packed * dim);
  float* kv = scratch(kv_buffer, packed * 2 * dim);
  float* f = scratch(f_buffer, packed * std::max<int64_t>(d.ffn, 1));
  const float scale = static_cast<float>(embed_scale);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < lengths[b]; ++s) {
      row_of[offsets[b] + s] = b;
      embed(d, ids[b * width + s], s, scale, x + (offsets[b] + s) * dim);
    }
  for (const EncoderLayerWeights& layer : layers) {
    const float* in = sublayer_input(arch, x, packed, dim, layer.norm1_w, layer.norm1_b, h);
    linear(in, packed, dim, layer.kv, kv, 2 * dim);
    linear(in, packed, dim, layer.q, q, dim);
    attention_rows(q, dim, packed, d, a, dim, width,
                   [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                       int64_t& vs, int64_t& count) {
                     const int64_t r = row_of[row];
                     keys = kv + offsets[r] * 2 * dim + head * d.head_dim;
                     values = keys + dim;
                     ks = vs = 2 * dim;
                     count = lengths[r];
                   });
    linear(a, packed, dim, layer.out, x, dim, /*accumulate=*/true);
    finish_sublayer(arch, x, packed, dim, layer.norm1_w, layer.norm1_b);
    linear(sublayer_input(arch, x, packed, dim, layer.norm2_w, layer.norm2_b, h), packed, dim, layer.fc1, f, d.ffn);
    activate(arch, f, packed * d.ffn);
    linear(f, packed, d.ffn, layer.fc2, x, dim, /*accumulate=*/true);
    finish_sublayer(arch, x, packed, dim, layer.norm2_w, layer.norm2_b);
  }
  if (d.final_w != nullptr) layer_norm_rows(x, packed, dim, d.final_w, d.final_b, x);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> outputs;
  at::Tensor states = at::zeros({batch, width, dim}, options);
  float* states_data = states.data_ptr<float>();
  for (int64_t p = 0; p < packed; ++p) {
    const int64_t b = row_of[p], s = p - offsets[b];
    std::memcpy(states_data + (b * width + s) * dim, x + p * dim, dim * sizeof(float));
  }
  outputs.push_back(states);
  for (const GemmWeight& weight : cross_kv) {
    linear(x, packed, dim, weight, kv, 2 * dim);
    at::Tensor keys = at::zeros({batch, d.heads, width, d.head_dim}, options);
    at::Tensor values = at::zeros({batch, d.heads, width, d.head_dim}, options);
    float* kd = keys.data_ptr<float>();
    float* vd = values.data_ptr<float>();
    for (int64_t p = 0; p < packed; ++p) {
      const int64_t b = row_of[p], s = p - offsets[b];
      for (int64_t head = 0; head < d.heads; ++head) {
        const int64_t at_pos = ((b * d.heads + head) * width + s) * d.head_dim;
        std::memcpy(kd + at_pos, kv + p * 2 * dim + head * d.head_dim, d.head_dim * sizeof(float));
        std::memcpy(vd + at_pos, kv + p * 2 * dim + dim + head * d.head_dim, d.head_dim * sizeof(float));
      }
    }
    outputs.push_back(keys);
    outputs.push_back(values);
  }
  return outputs;
}

std::string decoder_isa() { return core::isa_name(active_isa()); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(janus_fast, m) {
  m.def(
      "decoder_ar_step(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, bool query_stream, Tensor tokens, int step, Tensor[] memory_keys, Tensor[] memory_values, "
      "Tensor memory_lengths, "
      "Tensor(a!)[] cache_keys, Tensor(b!)[] cache_values) -> Tensor",
      &decoder_ar_step);
  m.def(
      "decoder_ar_greedy(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, bool query_stream, Tensor tokens, int step, Tensor[] memory_keys, Tensor[] memory_values, "
      "Tensor memory_lengths, Tensor(a!)[] cache_keys, Tensor(b!)[] cache_values, Tensor excluded_ids, "
      "Tensor forced, int forced_id) -> (Tensor, Tensor)",
      &decoder_ar_greedy);
  m.def(
      "decoder_ar_extend(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, bool query_stream, Tensor tokens, Tensor row_offsets, Tensor cache_lengths, "
      "Tensor[] memory_keys, Tensor[] memory_values, Tensor memory_lengths, Tensor(a!)[] cache_keys, "
      "Tensor(b!)[] cache_values, Tensor excluded_ids, Tensor forced, int forced_id, Tensor candidates) "
      "-> (Tensor, Tensor, Tensor, Tensor)",
      &decoder_ar_extend);
  m.def(
      "decoder_nar_pass(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, "
      "Tensor tokens, Tensor positions, Tensor row_offsets, Tensor[] memory_keys, Tensor[] memory_values, "
      "Tensor memory_lengths, Tensor output_positions) -> Tensor",
      &decoder_nar_pass);
  m.def(
      "decoder_nar_fill(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, "
      "Tensor tokens, Tensor positions, Tensor row_offsets, Tensor[] memory_keys, Tensor[] memory_values, "
      "Tensor memory_lengths, Tensor output_positions, int exclude_id) -> (Tensor, Tensor)",
      &decoder_nar_fill);
  m.def(
      "decoder_ar_score(Tensor[] weights, int num_heads, float embed_scale, bool post_norm, bool relu, int mask_id, "
      "int query_position_offset, Tensor tokens, Tensor positions, Tensor row_offsets, Tensor[] memory_keys, "
      "Tensor[] memory_values, Tensor memory_lengths, Tensor targets) -> Tensor",
      &decoder_ar_score);
  m.def(
      "encoder_forward(Tensor[] weights, int num_encoder_layers, int num_heads, float embed_scale, bool post_norm, "
      "bool relu, Tensor src_tokens, Tensor src_lengths) -> Tensor[]",
      &encoder_forward);
  m.def("decoder_isa() -> str", &decoder_isa);
}

}  // namespace janus_fast
