// The small per-row operations of a decoder layer, on float32 rows: layer norm and the attention of one query row to a short list of keys. Plain C++17 (no torch) so that
// csrc/tests/ can check them alone; csrc/cpu/decoder_cpu.cpp strings them together.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

namespace janus_fast {
namespace core {

// y[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta for `rows` rows of `dim` floats
// (biased variance, as torch.nn.LayerNorm). x and y may be the same.
inline void layer_norm(const float* x, int64_t ldx, int64_t rows, int64_t dim, const float* gamma,
                       const float* beta, float eps, float* y, int64_t ldy) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x + r * ldx;
    float* out = y + r * ldy;
    float mean = 0.0f;
    for (int64_t i = 0; i < dim; ++i) mean += in[i];
    mean /= static_cast<float>(dim);
    float var = 0.0f;
    for (int64_t i = 0; i < dim; ++i) {
      const float centred = in[i] - mean;
      var += centred * centred;
    }
    const float inv_std = 1.0f / std::sqrt(var / static_cast<float>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) out[i] = (in[i] - mean) * inv_std * gamma[i] + beta[i];
  }
}

// One head of one query row: out = softmax(q . k_j * scale) v over keys j < num_keys, where key j
// starts at keys + j * key_stride and value j at values + j * value_stride (head_dim floats each).
// `scores` holds num_keys floats of scratch. num_keys == 0 gives zeros (as the reference decoders
// give a row that sees no key).
inline void attend_one(const float* q, const float* keys, int64_t key_stride, const float* values,
                       int64_t value_stride, int64_t num_keys, int64_t head_dim, float scale, float* scores,
                       float* out) {
  for (int64_t i = 0; i < head_dim; ++i) out[i] = 0.0f;
  if (num_keys <= 0) return;
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < num_keys; ++j) {
    const float* k = keys + j * key_stride;
    float dot = 0.0f;
    for (int64_t i = 0; i < head_dim; ++i) dot += q[i] * k[i];
    scores[j] = dot * scale;
    max_score = scores[j] > max_score ? scores[j] : max_score;
  }
  float total = 0.0f;
  for (int64_t j = 0; j < num_keys; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    total += scores[j];
  }
  const float inv_total = 1.0f / total;
  for (int64_t j = 0; j < num_keys; ++j) {
    const float p = scores[j] * inv_total;
    const float* v = values + j * value_stride;
    for (int64_t i = 0; i < head_dim; ++i) out[i] += p * v[i];
  }
}

}  // namespace core
}  // namespace janus_fast
