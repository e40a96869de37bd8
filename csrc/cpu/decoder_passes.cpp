// The shared building blocks of the native passes declared in decoder_passes.h.
#include "cpu/decoder_passes.h"

#include <cstdlib>
#include <string>

namespace janus_fast {
namespace cpu {

Isa active_isa() {
  static const Isa isa = [] {
    Isa found = core::detect_isa();
    if (const char* cap = std::getenv("JANUS_FAST_ISA")) {
      const std::string value(cap);
      const Isa caps[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16, Isa::kAmx};
      for (const Isa cap_isa : caps)
        if (value == core::isa_name(cap_isa) && cap_isa < found) found = cap_isa;
    }
    return found;
  }();
  return isa;
}

namespace {

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

Memory memory_of(const at::Tensor& keys, const at::Tensor& values, int64_t rows, const DecoderWeights& d) {
  for (const at::Tensor* t : {&keys, &values}) {
    TORCH_CHECK_VALUE(t->dim() == 4 && (rows < 0 || t->size(0) == rows) && t->size(1) == d.heads &&
                          t->size(3) == d.head_dim &&
                          t->scalar_type() == at::kFloat && t->is_contiguous() && t->device().is_cpu(),
                      "decoder: memory keys/values must be contiguous float32 (", rows, ", ", d.heads, ", S, ",
                      d.head_dim, "), got ", t->sizes(), " ", t->scalar_type());
  }
  TORCH_CHECK_VALUE(values.size(2) == keys.size(2), "decoder: memory keys and values differ in length");
  return {keys.data_ptr<float>(), values.data_ptr<float>(), keys.size(2)};
}

}  // namespace

void linear(const float* x, int64_t rows, int64_t ldx, const GemmWeight& weight, float* y, int64_t ldy,
            bool accumulate) {
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

void layer_norm_rows(const float* x, int64_t rows, int64_t dim, const Norm& norm, float* y) {
  const Isa isa = active_isa();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    core::layer_norm_isa(isa, x + begin * dim, dim, end - begin, dim, norm.weight, norm.bias, kLayerNormEps,
                         y + begin * dim, dim);
  });
}

void activate(const Architecture& arch, float* x, int64_t count) {
  if (arch.relu) relu_inplace(x, count);
  else gelu_inplace(x, count);
}

void feed_forward(const Architecture& arch, float* x, int64_t n, int64_t dim, int64_t ffn,
                  const FeedForwardWeights& weights, float* h, float* f) {
  const float* in = sublayer_input(arch, x, n, dim, weights.norm, h);
  // in blocks of rows, so that the hidden rows f stay at kFeedForwardRows x ffn floats whatever the
  // batch (each row's sums are the same in any block: the products' per-row order does not depend on
  // how many rows a call has)
  for (int64_t first = 0; first < n; first += kFeedForwardRows) {
    const int64_t rows = std::min(kFeedForwardRows, n - first);
    linear(in + first * dim, rows, dim, weights.fc1, f, ffn);
    activate(arch, f, rows * ffn);
    linear(f, rows, ffn, weights.fc2, x + first * dim, dim, /*accumulate=*/true);
  }
  finish_sublayer(arch, x, n, dim, weights.norm);
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

Memories checked_memories(at::TensorList keys, at::TensorList values, const at::Tensor& lengths,
                          const std::optional<at::Tensor>& memory_rows, int64_t rows, const DecoderWeights& d,
                          const char* op) {
  const int64_t num_layers = static_cast<int64_t>(d.layers.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(keys.size()) == num_layers &&
                        static_cast<int64_t>(values.size()) == num_layers,
                    op, ": one memory tensor per layer (", num_layers, ") expected");
  // entries: one per decoder row, or as many as the keys hold where memory_rows maps rows to them
  const int64_t entries = memory_rows.has_value() ? (num_layers ? keys[0].size(0) : lengths.size(0)) : rows;
  Memories out;
  for (int64_t l = 0; l < num_layers; ++l) {
    out.layers.push_back(memory_of(keys[l], values[l], entries, d));
    TORCH_CHECK_VALUE(out.layers[l].length == out.layers[0].length, op, ": memory lengths differ between layers");
  }
  const std::vector<int64_t> entry_lengths =
      checked_memory_lengths(lengths, entries, num_layers ? out.layers[0].length : 1);
  out.entry.resize(rows);
  if (memory_rows.has_value()) {
    const at::Tensor& map = *memory_rows;
    TORCH_CHECK_VALUE(map.dim() == 1 && map.size(0) == rows && map.scalar_type() == at::kLong && map.device().is_cpu(),
                      op, ": memory_rows must be int64 (", rows, ",) on the CPU, got ", map.sizes(), " ",
                      map.scalar_type());
    const at::Tensor contiguous = map.contiguous();
    const int64_t* values_of = contiguous.data_ptr<int64_t>();
    for (int64_t r = 0; r < rows; ++r) {
      TORCH_CHECK_VALUE(values_of[r] >= 0 && values_of[r] < entries, op, ": memory row ", values_of[r],
                        " outside [0, ", entries, ")");
      out.entry[r] = values_of[r];
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) out.entry[r] = r;
  }
  out.lengths.resize(rows);
  for (int64_t r = 0; r < rows; ++r) out.lengths[r] = entry_lengths[out.entry[r]];
  return out;
}

void cross_and_ffn(const Architecture& arch, float* x, int64_t n, const DecoderLayerWeights& layer,
                   const DecoderWeights& d, const Memory& memory, const std::vector<int64_t>& decoder_row,
                   const Memories& memories, float* h, float* q, float* a, float* f) {
  const int64_t dim = d.dim, stride = memory.length * d.head_dim;
  linear(sublayer_input(arch, x, n, dim, layer.cross_norm, h), n, dim, layer.cross_q, q, dim);
  // the rows of one memory entry (a sentence's tokens, both streams, its beams) visited together
  const std::vector<int64_t> order = rows_by_key(n, [&](int64_t row) { return memories.entry[decoder_row[row]]; });
  attention_rows(q, dim, n, d, a, dim, memory.length,
                 [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values, int64_t& vs,
                     int64_t& count) {
                   const int64_t r = decoder_row[row];
                   const int64_t offset = (memories.entry[r] * d.heads + head) * stride;
                   keys = memory.keys + offset;
                   values = memory.values + offset;
                   ks = vs = d.head_dim;
                   count = memories.lengths[r];
                 },
                 order.data());
  linear(a, n, dim, layer.cross_out, x, dim, /*accumulate=*/true);
  finish_sublayer(arch, x, n, dim, layer.cross_norm);
  feed_forward(arch, x, n, dim, d.ffn, layer.ffn, h, f);
}

at::Tensor vocabulary_logits(const DecoderWeights& d, float* x, int64_t rows) {
  at::Tensor logits = at::empty({rows, d.vocab}, at::TensorOptions().dtype(at::kFloat));
  if (d.final_norm.weight != nullptr) layer_norm_rows(x, rows, d.dim, d.final_norm, x);
  linear(x, rows, d.dim, d.vocab_projection, logits.data_ptr<float>(), d.vocab);
  return logits;
}

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

PassScratch pass_scratch(int64_t rows, int64_t work, int64_t kv_rows, int64_t dim, int64_t ffn) {
  thread_local std::vector<float> x, h, q, a, kv, f;
  return {scratch(x, rows * dim),          scratch(h, work * dim),
          scratch(q, work * dim),          scratch(a, work * dim),
          scratch(kv, kv_rows * 2 * dim),  scratch(f, std::min(work, kFeedForwardRows) * std::max<int64_t>(ffn, 1))};
}

}  // namespace cpu
}  // namespace janus_fast
