// The weights of the native encoder and decoder passes, by name, and their parsing from the flat tensor
// lists the ops take. Each structure mirrors a dataclass of janus_fast/native/weights.py, field for field
// and in the same order: a list is read front to back (WeightReader in decoder_weights.cpp), one named
// field after the other, so the order is written once on each side, and a tensor that does not fit is
// named in the error as Python names it ("layers.1.ffn.fc1.bias"; python_tests/test_native_decoder.py
// breaks every tensor of a list in turn and checks the name). Every matrix is a PackedMatrix (panels,
// scale, bias: three tensors), every layer norm a Norm (weight, bias: two).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "core/small_gemm.h"

namespace janus_fast {
namespace cpu {

using core::GemmWeight;

// A layer norm's weight and bias, (d,) each; null (two empty tensors): none (a model without final norms).
struct Norm {
  const float* weight = nullptr;
  const float* bias = nullptr;
};

// The self-attention sublayer of an encoder or decoder layer: its layer norm (the model's norm1), the
// query, the fused key/value and the output projections.
struct SelfAttentionWeights {
  Norm norm;
  GemmWeight q, kv, out;
};

// The feed-forward sublayer: its layer norm (the model's norm3 in a decoder layer, norm2 in an encoder
// layer) and the two products around the activation.
struct FeedForwardWeights {
  Norm norm;
  GemmWeight fc1, fc2;
};

struct DecoderLayerWeights {
  SelfAttentionWeights self_attention;
  Norm cross_norm;  // the model's norm2
  GemmWeight cross_q, cross_out;
  FeedForwardWeights ffn;
};

struct EncoderLayerWeights {
  SelfAttentionWeights self_attention;
  FeedForwardWeights ffn;
};

// The leading fields of both lists (embed_tokens, positions, final_norm) and the sizes read off them.
struct Embeddings {
  int64_t vocab = 0, dim = 0, max_positions = 0, heads = 0, head_dim = 0;
  const float* embed = nullptr;      // (V, d)
  const float* positions = nullptr;  // (max_positions, d)
  Norm final_norm;                   // null: no final layer norm
};

struct DecoderWeights : Embeddings {
  int64_t ffn = 0;
  GemmWeight vocab_projection;  // (d, V)
  std::vector<DecoderLayerWeights> layers;
};

struct EncoderWeights : Embeddings {
  int64_t ffn = 0;
  std::vector<EncoderLayerWeights> layers;
  std::vector<GemmWeight> cross_kv;  // the cross-attention keys/values of each decoder layer
};

// How many tensors each structure takes in a flat list (the parsers check that they read exactly these).
constexpr int64_t kNormTensors = 2;
constexpr int64_t kMatrixTensors = 3;
constexpr int64_t kEmbeddingTensors = 2 + kNormTensors;
constexpr int64_t kSelfAttentionTensors = kNormTensors + 3 * kMatrixTensors;
constexpr int64_t kFeedForwardTensors = kNormTensors + 2 * kMatrixTensors;
constexpr int64_t kDecoderGlobalTensors = kEmbeddingTensors + kMatrixTensors;
constexpr int64_t kDecoderLayerTensors =
    kSelfAttentionTensors + kNormTensors + 2 * kMatrixTensors + kFeedForwardTensors;
constexpr int64_t kEncoderLayerTensors = kSelfAttentionTensors + kFeedForwardTensors;
static_assert(kDecoderGlobalTensors == 7 && kDecoderLayerTensors == 27 && kEncoderLayerTensors == 19,
              "the flat lists' layout (janus_fast/native/weights.py)");

// The number of decoder layers of a decoder list (7 + 27 per layer), checked.
int64_t decoder_layer_count(at::TensorList weights);
// The number of decoder layers of an encoder list (4 + 19 per encoder layer + 3 per decoder layer), checked.
int64_t encoder_cross_count(at::TensorList weights, int64_t num_encoder_layers);

// The leading fields alone (the vocabulary size, for checks before a pass); `what` names the list in errors.
Embeddings parse_embeddings(at::TensorList weights, int64_t num_heads, const char* what);
DecoderWeights parse_decoder_weights(at::TensorList weights, int64_t num_heads);
EncoderWeights parse_encoder_weights(at::TensorList weights, int64_t num_encoder_layers, int64_t num_heads);

}  // namespace cpu
}  // namespace janus_fast
