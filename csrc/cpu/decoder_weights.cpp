// Parsing of the flat weight lists into the structures of decoder_weights.h, one named field at a time.
#include "cpu/decoder_weights.h"

#include <ostream>

namespace janus_fast {
namespace cpu {
namespace {

// A field's name in errors, as janus_fast/native/weights.py names it: "layers.2.ffn.fc1.bias".
struct FieldName {
  const char* group;  // "layers", "cross_kv", or null: a top-level field
  int64_t index;      // in group
  const char* field;  // "ffn.fc1"; null: group[index] itself
  const char* part;   // "weight", "scale", "bias"; null: the field is one tensor
};

std::ostream& operator<<(std::ostream& out, const FieldName& name) {
  const char* separator = "";
  if (name.group != nullptr) {
    out << name.group << '.' << name.index;
    separator = ".";
  }
  if (name.field != nullptr) {
    out << separator << name.field;
    separator = ".";
  }
  if (name.part != nullptr) out << separator << name.part;
  return out;
}

// Reads a flat weight list front to back: each call takes the tensors of one named field, in the order
// of the dataclass fields of janus_fast/native/weights.py, and checks them against the sizes given.
class WeightReader {
 public:
  WeightReader(at::TensorList list, const char* what) : list_(list), what_(what) {}

  // The fields that follow belong to group[index] (layers.2, cross_kv.0).
  void enter(const char* group, int64_t index) {
    group_ = group;
    index_ = index;
  }

  int64_t position() const { return position_; }

  // The tensor `ahead` places past the next one to read, without reading it.
  const at::Tensor& peek(int64_t ahead) const {
    TORCH_CHECK_VALUE(position_ + ahead < static_cast<int64_t>(list_.size()), what_, " weights: ", list_.size(),
                      " tensors are too few");
    return list_[position_ + ahead];
  }

  // One float32 tensor of `numel` elements: an embedding table, a norm's weight or bias.
  const float* vector(const char* field, const char* part, int64_t numel) {
    const at::Tensor& t = peek(0);
    ++position_;
    return float_data(t, numel, name(field, part));
  }

  Norm norm(const char* field, int64_t dim) {
    Norm norm;
    norm.weight = vector(field, "weight", dim);
    norm.bias = vector(field, "bias", dim);
    return norm;
  }

  // A norm that may be absent (two empty tensors: the model has no such layer norm).
  Norm optional_norm(const char* field, int64_t dim) {
    if (peek(0).numel() > 0 || peek(1).numel() > 0) return norm(field, dim);
    position_ += kNormTensors;
    return {};
  }

  // A PackedMatrix of k inputs and n outputs: panels (ceil(n / 64), k, 64), bfloat16 pairs
  // (ceil(n / 64), ceil(k / 2), 64, 2) or int8 quads (ceil(n / 64), ceil(k / 4), 64, 4); then its scale
  // (int8: n scales, quads 2n: scales then column sums; else empty) and its bias ((n,) or empty).
  GemmWeight matrix(const char* field, int64_t k, int64_t n) {
    const at::Tensor& w = peek(0);
    const at::Tensor& scale = peek(1);
    const at::Tensor& bias = peek(2);
    position_ += kMatrixTensors;
    const FieldName what = name(field, "weight");
    const int64_t group = w.dim() == 4 ? w.size(3) : 1;
    const bool pairs = group == 2 && w.scalar_type() == at::kBFloat16;
    const bool quads = group == 4 && w.scalar_type() == at::kChar;
    TORCH_CHECK_VALUE(
        (w.dim() == 3 && w.size(0) == core::num_panels(n) && w.size(1) == k && w.size(2) == core::kPanel) ||
            ((pairs || quads) && w.size(0) == core::num_panels(n) && w.size(1) == (k + group - 1) / group &&
             w.size(2) == core::kPanel),
        what_, " weights: ", what, " must be panels (", core::num_panels(n), ", ", k, ", ", core::kPanel,
        "), bfloat16 pairs (", core::num_panels(n), ", ", (k + 1) / 2, ", ", core::kPanel, ", 2) or int8 quads (",
        core::num_panels(n), ", ", (k + 3) / 4, ", ", core::kPanel, ", 4), got ", w.sizes(), " ", w.scalar_type());
    TORCH_CHECK_VALUE(w.is_contiguous() && w.device().is_cpu(), what_, " weights: ", what,
                      " must be contiguous on the CPU");
    GemmWeight g;
    g.k = k;
    g.n = n;
    g.data = w.data_ptr();
    switch (w.scalar_type()) {
      case at::kFloat: g.type = core::WeightType::kFloat32; break;
      case at::kBFloat16: g.type = pairs ? core::WeightType::kBFloat16Pairs : core::WeightType::kBFloat16; break;
      case at::kChar: g.type = quads ? core::WeightType::kInt8Quads : core::WeightType::kInt8; break;
      default:
        TORCH_CHECK_TYPE(false, what_, " weights: ", what, " must be float32, bfloat16 or int8, got ",
                         w.scalar_type());
    }
    if (g.type == core::WeightType::kInt8) g.scale = float_data(scale, n, name(field, "scale"));
    else if (g.type == core::WeightType::kInt8Quads) g.scale = float_data(scale, 2 * n, name(field, "scale"));
    else TORCH_CHECK_VALUE(scale.numel() == 0, what_, " weights: ", name(field, "scale"), " is given but ",
                           name(field, "weight"), " is not int8");
    if (bias.numel() > 0) g.bias = float_data(bias, n, name(field, "bias"));
    return g;
  }

  // The output width of the matrix that comes next (fc1), from its bias or (without one) its int8
  // scales: n of them, or 2n for int8 quads.
  int64_t output_width(const char* field) const {
    const at::Tensor& w = peek(0);
    const at::Tensor& scale = peek(1);
    const at::Tensor& bias = peek(2);
    TORCH_CHECK_VALUE(bias.numel() > 0 || scale.numel() > 0, what_, " weights: ", name(field, nullptr),
                      " needs a bias or scale");
    if (bias.numel() > 0) return bias.numel();
    const bool quads = w.dim() == 4 && w.size(3) == 4;
    return quads ? scale.numel() / 2 : scale.numel();
  }

 private:
  FieldName name(const char* field, const char* part) const { return {group_, index_, field, part}; }

  const float* float_data(const at::Tensor& t, int64_t numel, const FieldName& what) const {
    TORCH_CHECK_VALUE(t.defined() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == numel &&
                          t.device().is_cpu(),
                      what_, " weights: ", what, " must be a contiguous float32 CPU tensor of ", numel,
                      " elements, got ", t.defined() ? t.sizes() : at::IntArrayRef{}, " ",
                      t.defined() ? t.scalar_type() : at::ScalarType::Undefined);
    return t.data_ptr<float>();
  }

  at::TensorList list_;
  const char* what_;
  int64_t position_ = 0;
  const char* group_ = nullptr;
  int64_t index_ = 0;
};

// embed_tokens (V, d), positions (max_positions, d), final_norm: the leading fields of both lists.
Embeddings read_embeddings(WeightReader& r, int64_t num_heads, const char* what) {
  const at::Tensor& tokens = r.peek(0);
  const at::Tensor& positions = r.peek(1);
  TORCH_CHECK_VALUE(tokens.dim() == 2 && positions.dim() == 2, what,
                    " weights: embed_tokens and positions must be 2-D, got ", tokens.sizes(), " and ",
                    positions.sizes());
  Embeddings e;
  e.vocab = tokens.size(0);
  e.dim = tokens.size(1);
  e.max_positions = positions.size(0);
  TORCH_CHECK_VALUE(num_heads >= 1 && e.dim % num_heads == 0, what, ": d_model ", e.dim,
                    " is not divisible by num_heads ", num_heads);
  e.heads = num_heads;
  e.head_dim = e.dim / num_heads;
  e.embed = r.vector("embed_tokens", nullptr, e.vocab * e.dim);
  e.positions = r.vector("positions", nullptr, e.max_positions * e.dim);
  e.final_norm = r.optional_norm("final_norm", e.dim);
  return e;
}

// The fields the encoder's and the decoder's layers share.
SelfAttentionWeights read_self_attention(WeightReader& r, int64_t dim) {
  SelfAttentionWeights s;
  s.norm = r.norm("self_attention.norm", dim);
  s.q = r.matrix("self_attention.q", dim, dim);
  s.kv = r.matrix("self_attention.kv", dim, 2 * dim);
  s.out = r.matrix("self_attention.out", dim, dim);
  return s;
}

// `ffn`: the FFN width, read off the first layer's fc1 (0 before it) and required of the others.
FeedForwardWeights read_feed_forward(WeightReader& r, int64_t dim, int64_t& ffn) {
  FeedForwardWeights f;
  f.norm = r.norm("ffn.norm", dim);
  if (ffn == 0) ffn = r.output_width("ffn.fc1");
  f.fc1 = r.matrix("ffn.fc1", dim, ffn);
  f.fc2 = r.matrix("ffn.fc2", ffn, dim);
  return f;
}

}  // namespace

int64_t decoder_layer_count(at::TensorList weights) {
  const int64_t size = static_cast<int64_t>(weights.size());
  TORCH_CHECK_VALUE(size > kDecoderGlobalTensors && (size - kDecoderGlobalTensors) % kDecoderLayerTensors == 0,
                    "decoder weights: expected ", kDecoderGlobalTensors, " + ", kDecoderLayerTensors,
                    " * layers tensors, got ", size);
  return (size - kDecoderGlobalTensors) / kDecoderLayerTensors;
}

int64_t encoder_cross_count(at::TensorList weights, int64_t num_encoder_layers) {
  const int64_t size = static_cast<int64_t>(weights.size());
  const int64_t rest = size - kEmbeddingTensors - num_encoder_layers * kEncoderLayerTensors;
  TORCH_CHECK_VALUE(num_encoder_layers >= 1 && rest > 0 && rest % kMatrixTensors == 0, "encoder weights: expected ",
                    kEmbeddingTensors, " + ", kEncoderLayerTensors, " * encoder layers + ", kMatrixTensors,
                    " * decoder layers tensors, got ", size);
  return rest / kMatrixTensors;
}

Embeddings parse_embeddings(at::TensorList weights, int64_t num_heads, const char* what) {
  WeightReader r(weights, what);
  return read_embeddings(r, num_heads, what);
}

DecoderWeights parse_decoder_weights(at::TensorList weights, int64_t num_heads) {
  const int64_t num_layers = decoder_layer_count(weights);
  WeightReader r(weights, "decoder");
  DecoderWeights d;
  static_cast<Embeddings&>(d) = read_embeddings(r, num_heads, "decoder");
  d.vocab_projection = r.matrix("vocab_projection", d.dim, d.vocab);
  d.layers.reserve(num_layers);
  for (int64_t l = 0; l < num_layers; ++l) {
    r.enter("layers", l);
    DecoderLayerWeights layer;
    layer.self_attention = read_self_attention(r, d.dim);
    layer.cross_norm = r.norm("cross_norm", d.dim);
    layer.cross_q = r.matrix("cross_q", d.dim, d.dim);
    layer.cross_out = r.matrix("cross_out", d.dim, d.dim);
    layer.ffn = read_feed_forward(r, d.dim, d.ffn);
    d.layers.push_back(layer);
  }
  TORCH_INTERNAL_ASSERT(r.position() == static_cast<int64_t>(weights.size()), "decoder weights: read ",
                        r.position(), " of ", weights.size(), " tensors");
  return d;
}

EncoderWeights parse_encoder_weights(at::TensorList weights, int64_t num_encoder_layers, int64_t num_heads) {
  const int64_t num_decoder_layers = encoder_cross_count(weights, num_encoder_layers);
  WeightReader r(weights, "encoder");
  EncoderWeights e;
  static_cast<Embeddings&>(e) = read_embeddings(r, num_heads, "encoder");
  e.layers.reserve(num_encoder_layers);
  for (int64_t l = 0; l < num_encoder_layers; ++l) {
    r.enter("layers", l);
    EncoderLayerWeights layer;
    layer.self_attention = read_self_attention(r, e.dim);
    layer.ffn = read_feed_forward(r, e.dim, e.ffn);
    e.layers.push_back(layer);
  }
  for (int64_t l = 0; l < num_decoder_layers; ++l) {
    r.enter("cross_kv", l);
    e.cross_kv.push_back(r.matrix(nullptr, e.dim, 2 * e.dim));
  }
  TORCH_INTERNAL_ASSERT(r.position() == static_cast<int64_t>(weights.size()), "encoder weights: read ",
                        r.position(), " of ", weights.size(), " tensors");
  return e;
}

}  // namespace cpu
}  // namespace janus_fast
