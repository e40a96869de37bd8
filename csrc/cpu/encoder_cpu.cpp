// janus_fast::encoder_forward: the encoder over the real source positions (packed, no padding) and the
// decoder's cross-attention keys/values, computed once per batch.
#include "cpu/decoder_passes.h"

#include <torch/library.h>

#include <cstring>

namespace janus_fast {
namespace cpu {
namespace {

// encoder_forward: the whole encoder over the real positions of a padded batch, then the
// cross-attention keys/values of every decoder layer. Returns [states (B, S, d), keys_0, values_0,
// keys_1, ...] with keys/values (B, H, S, d/H); padded positions are zeros.
std::vector<at::Tensor> encoder_forward(at::TensorList weights, int64_t num_encoder_layers, int64_t num_heads,
                                        double embed_scale, bool post_norm, bool relu, const at::Tensor& src_tokens,
                                        const at::Tensor& src_lengths) {
  const EncoderWeights d = parse_encoder_weights(weights, num_encoder_layers, num_heads);
  const Architecture arch{post_norm, relu};
  const int64_t dim = d.dim;
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
  const PassScratch s = pass_scratch(packed, packed, packed, dim, d.ffn);
  float *x = s.x, *h = s.h, *q = s.q, *a = s.a, *kv = s.kv, *f = s.f;
  const float scale = static_cast<float>(embed_scale);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < lengths[b]; ++s) {
      row_of[offsets[b] + s] = b;
      embed(d, ids[b * width + s], s, scale, x + (offsets[b] + s) * dim);
    }
  for (const EncoderLayerWeights& layer : d.layers) {
    const SelfAttentionWeights& attention = layer.self_attention;
    const float* in = sublayer_input(arch, x, packed, dim, attention.norm, h);
    linear(in, packed, dim, attention.kv, kv, 2 * dim);
    linear(in, packed, dim, attention.q, q, dim);
    attention_rows(q, dim, packed, d, a, dim, width,
                   [&](int64_t row, int64_t head, const float*& keys, int64_t& ks, const float*& values,
                       int64_t& vs, int64_t& count) {
                     const int64_t r = row_of[row];
                     keys = kv + offsets[r] * 2 * dim + head * d.head_dim;
                     values = keys + dim;
                     ks = vs = 2 * dim;
                     count = lengths[r];
                   });
    linear(a, packed, dim, attention.out, x, dim, /*accumulate=*/true);
    finish_sublayer(arch, x, packed, dim, attention.norm);
    feed_forward(arch, x, packed, dim, d.ffn, layer.ffn, h, f);
  }
  if (d.final_norm.weight != nullptr) layer_norm_rows(x, packed, dim, d.final_norm, x);
  const auto options = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> outputs;
  at::Tensor states = at::zeros({batch, width, dim}, options);
  float* states_data = states.data_ptr<float>();
  for (int64_t p = 0; p < packed; ++p) {
    const int64_t b = row_of[p], s = p - offsets[b];
    std::memcpy(states_data + (b * width + s) * dim, x + p * dim, dim * sizeof(float));
  }
  outputs.push_back(states);
  for (const GemmWeight& weight : d.cross_kv) {
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

}  // namespace

TORCH_LIBRARY_IMPL(janus_fast, CPU, m) { JANUS_ENCODER_OPS(JANUS_CPU_KERNEL) }

}  // namespace cpu
}  // namespace janus_fast
