// core/small_gemm.h against a plain triple loop: every ISA this CPU runs, every weight type, row
// counts around the register blocks, K odd and even, N with and without a partial last panel,
// column ranges, the residual (accumulate) form; core/decoder_math.h's attention and layer norm on
// every ISA against double. No torch: built and run by ctest.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/decoder_math.h"
#include "core/small_gemm.h"

using namespace janus_fast::core;

namespace {

int failures = 0;

void check(bool ok, const char* what, int rows, int k, int n, const char* isa) {
  if (!ok) {
    ++failures;
    std::printf("FAIL %s rows=%d k=%d n=%d isa=%s\n", what, rows, k, n, isa);
  }
}

// Each row of x (rows, k) as the int8 products see it: 256 levels from the row's min to its max
// (round half to even), dequantized.
std::vector<float> uint8_rows(const std::vector<float>& x, int rows, int k) {
  std::vector<float> out(x);
  for (int m = 0; m < rows; ++m) {
    const float* row = x.data() + m * k;
    const float lo = *std::min_element(row, row + k), hi = *std::max_element(row, row + k);
    for (int i = 0; i < k; ++i) {
      const float level = hi > lo ? std::nearbyint((row[i] - lo) * (255.0f / (hi - lo))) : 0.0f;
      out[m * k + i] = lo + (hi > lo ? (hi - lo) / 255.0f : 0.0f) * level;
    }
  }
  return out;
}

// Weights stored in the layout of `type` from the dense (k, n) matrix `dense`; returns the
// values the kernel should see (rounded / quantized).
std::vector<float> pack(WeightType type, const std::vector<float>& dense, int k, int n, std::vector<float>& f32,
                        std::vector<uint16_t>& b16, std::vector<int8_t>& i8, std::vector<float>& scale) {
  const int64_t panels = num_panels(n), pairs = (k + 1) / 2;
  std::vector<float> seen(dense);
  const bool int8 = type == WeightType::kInt8 || type == WeightType::kInt8Quads;
  const int64_t quads = (k + 3) / 4;
  if (int8) {
    scale.assign(type == WeightType::kInt8Quads ? 2 * n : n, 0.0f);
    for (int c = 0; c < n; ++c) {
      float top = 0.0f;
      for (int r = 0; r < k; ++r) top = std::max(top, std::fabs(dense[r * n + c]));
      scale[c] = std::max(top / 127.0f, 1e-12f);
      for (int r = 0; r < k; ++r) seen[r * n + c] = std::nearbyint(dense[r * n + c] / scale[c]);
      if (type == WeightType::kInt8Quads)  // the column sums of the int8 weights follow the scales
        for (int r = 0; r < k; ++r) scale[n + c] += seen[r * n + c];
    }
  }
  if (type == WeightType::kBFloat16 || type == WeightType::kBFloat16Pairs)
    for (auto& v : seen) v = from_bfloat16(to_bfloat16(v));
  f32.assign(panels * k * kPanel, 0.0f);
  b16.assign(type == WeightType::kBFloat16Pairs ? panels * pairs * kPanel * 2 : panels * k * kPanel, 0);
  i8.assign(type == WeightType::kInt8Quads ? panels * quads * kPanel * 4 : panels * k * kPanel, 0);
  for (int r = 0; r < k; ++r)
    for (int c = 0; c < n; ++c) {
      const int64_t at = ((c / kPanel) * k + r) * kPanel + c % kPanel;
      f32[at] = seen[r * n + c];
      if (type == WeightType::kInt8Quads)
        i8[(((c / kPanel) * quads + r / 4) * kPanel + c % kPanel) * 4 + r % 4] = static_cast<int8_t>(seen[r * n + c]);
      else
        i8[at] = static_cast<int8_t>(seen[r * n + c]);
      if (type == WeightType::kBFloat16Pairs)
        b16[(((c / kPanel) * pairs + r / 2) * kPanel + c % kPanel) * 2 + (r & 1)] = to_bfloat16(seen[r * n + c]);
      else
        b16[at] = to_bfloat16(seen[r * n + c]);
    }
  if (int8)
    for (int r = 0; r < k; ++r)
      for (int c = 0; c < n; ++c) seen[r * n + c] *= scale[c];
  return seen;
}

// The GemmWeight of a matrix that `pack` stored, with `bias`.
GemmWeight weight_of(WeightType type, int k, int n, const std::vector<float>& bias, const std::vector<float>& f32,
                     const std::vector<uint16_t>& b16, const std::vector<int8_t>& i8, const std::vector<float>& scale) {
  const bool int8 = type == WeightType::kInt8 || type == WeightType::kInt8Quads;
  GemmWeight w;
  w.k = k;
  w.n = n;
  w.type = type;
  w.bias = bias.data();
  w.data = type == WeightType::kFloat32 ? static_cast<const void*>(f32.data())
           : int8                       ? static_cast<const void*>(i8.data())
                                        : static_cast<const void*>(b16.data());
  if (int8) w.scale = scale.data();
  return w;
}

}  // namespace

int main() {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const Isa best = detect_isa();
  const Isa isas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Bf16, Isa::kAmx};
  const WeightType types[] = {WeightType::kFloat32, WeightType::kBFloat16, WeightType::kInt8,
                              WeightType::kBFloat16Pairs, WeightType::kInt8Quads};
  int cases = 0;
  // 2101: past the 1,024 / 2,048 inputs the bf16 / int8 kernels once held; 64 and 320: inputs that fill
  // the AMX tiles (K a multiple of 64)
  for (const int k : {1, 7, 64, 130, 320, 2101}) {
    for (const int n : {5, 64, 100, 192}) {
      if ((k > 1000 || k == 320) && n != 100) continue;  // the long Ks once, with a partial panel
      std::vector<float> dense(k * n), bias(n);
      for (auto& v : dense) v = normal(rng);
      for (auto& v : bias) v = normal(rng);
      for (const WeightType type : types) {
        std::vector<float> f32, scale;
        std::vector<uint16_t> b16;
        std::vector<int8_t> i8;
        const std::vector<float> seen = pack(type, dense, k, n, f32, b16, i8, scale);
        GemmWeight w = weight_of(type, k, n, bias, f32, b16, i8, scale);
        for (const int rows : {1, 2, 3, 4, 5, 7, 13, 16, 18}) {  // 16, 18: one and two AMX tile blocks
          if (k > 1000 && rows != 7) continue;
          std::vector<float> x(rows * k);
          for (auto& v : x) v = normal(rng);
          std::vector<float> xs(x);  // what the kernel multiplies: bf16-rounded for the pairs path
          if (type == WeightType::kBFloat16Pairs)
            for (auto& v : xs) v = from_bfloat16(to_bfloat16(v));
          if (type == WeightType::kInt8Quads) xs = uint8_rows(x, rows, k);
          for (const Isa isa : isas) {
            if (isa > best) continue;
            for (const bool accumulate : {false, true}) {
              std::vector<float> y(rows * n, 0.5f);
              w.accumulate = accumulate;
              // two column ranges, split at a panel boundary, as the threaded caller does
              const int64_t split = n > kPanel ? kPanel : n;
              gemm(isa, rows, x.data(), k, w, y.data(), n, 0, split);
              gemm(isa, rows, x.data(), k, w, y.data(), n, split, n);
              bool ok = true;
              for (int m = 0; m < rows; ++m)
                for (int c = 0; c < n; ++c) {
                  double expected = accumulate ? 0.5 : 0.0;
                  expected += bias[c];
                  for (int r = 0; r < k; ++r) expected += double(xs[m * k + r]) * seen[r * n + c];
                  const double got = y[m * n + c];
                  if (std::fabs(got - expected) > 1e-3 * (1.0 + std::fabs(expected))) ok = false;
                }
              check(ok, "gemm", rows, k, n, isa_name(isa));
              ++cases;
            }
          }
        }
      }
    }
  }
  // attention of one row against a direct softmax in double: every ISA, head sizes with and without
  // a vector path, key counts from none to many, keys and values interleaved (strided)
  int attention_cases = 0;
  for (const Isa isa : isas) {
    if (isa > best) continue;
    for (const int dim : {8, 12, 16, 48, 64, 128}) {
      for (const int keys : {0, 1, 2, 9, 33}) {
        std::vector<float> q(dim), kv(std::max(keys, 1) * 2 * dim), out(dim, 7.0f), scores(std::max(keys, 1));
        for (auto& v : q) v = normal(rng);
        for (auto& v : kv) v = normal(rng);
        attend(isa, q.data(), kv.data(), 2 * dim, kv.data() + dim, 2 * dim, keys, dim, 0.5f, scores.data(),
               out.data());
        std::vector<double> p(keys);
        double total = 0.0;
        for (int j = 0; j < keys; ++j) {
          double dot = 0.0;
          for (int i = 0; i < dim; ++i) dot += double(q[i]) * kv[j * 2 * dim + i];
          p[j] = std::exp(0.5 * dot);
          total += p[j];
        }
        bool ok = true;
        for (int i = 0; i < dim; ++i) {
          double expected = 0.0;  // a row that sees no key gives zeros
          for (int j = 0; j < keys; ++j) expected += p[j] / total * kv[j * 2 * dim + dim + i];
          if (std::fabs(out[i] - expected) > 1e-5) ok = false;
        }
        check(ok, "attend", 1, keys, dim, isa_name(isa));
        ++attention_cases;
      }
    }
    // layer norm of a few rows (strided input) against double
    for (const int dim : {8, 24, 256}) {
      const int rows = 3, ld = dim + 5;
      std::vector<float> x(rows * ld), gamma(dim), beta(dim), y(rows * dim);
      for (auto& v : x) v = 3.0f + 2.0f * normal(rng);
      for (auto& v : gamma) v = normal(rng);
      for (auto& v : beta) v = normal(rng);
      layer_norm_isa(isa, x.data(), ld, rows, dim, gamma.data(), beta.data(), 1e-5f, y.data(), dim);
      bool ok = true;
      for (int r = 0; r < rows; ++r) {
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < dim; ++i) mean += x[r * ld + i];
        mean /= dim;
        for (int i = 0; i < dim; ++i) var += (x[r * ld + i] - mean) * (x[r * ld + i] - mean);
        const double inv_std = 1.0 / std::sqrt(var / dim + 1e-5);
        for (int i = 0; i < dim; ++i) {
          const double expected = (x[r * ld + i] - mean) * inv_std * gamma[i] + beta[i];
          if (std::fabs(y[r * dim + i] - expected) > 1e-4 * (1.0 + std::fabs(expected))) ok = false;
        }
      }
      check(ok, "layer_norm", rows, dim, dim, isa_name(isa));
    }
  }
  // the AVX-512 uint8 quantization of a row gives the plain function's levels exactly (every ISA's
  // int8 product must see the same q), constant rows included
#if JANUS_X86
  if (best >= Isa::kAvx512) {
    for (const int k : {1, 5, 16, 33, 256, 1024}) {
      for (int trial = 0; trial < 4; ++trial) {
        std::vector<float> row(k);
        for (auto& v : row) v = trial == 3 ? 0.25f : normal(rng) * (trial + 1);
        std::vector<uint32_t> plain((k + 3) / 4, 7u), vector((k + 3) / 4, 9u);
        const RowQuantization a = quantize_row_u8(row.data(), k, plain.data());
        const RowQuantization b = quantize_row_u8_avx512(row.data(), k, vector.data());
        check(plain == vector && a.step == b.step && a.offset == b.offset, "quantize_row_u8", 1, k, 0, "avx512");
      }
    }
  }
#endif
  // a row's y does not depend on the other rows of the product (how many, which block it falls in),
  // bit for bit, on every ISA and layout: speculative decoding's verification (many rows) must give
  // the AR step's (one or two rows) values. And where the CPU has AMX, the int8 tile product gives
  // the AVX-512 VNNI product's y bit for bit (exact int32 sums, one store).
  int row_cases = 0;
  for (const int k : {64, 256}) {
    const int n = 130, rows = 150;  // past one chunk of 128 rows of the AMX kernel
    std::vector<float> dense(k * n), bias(n), x(rows * k);
    for (auto& v : dense) v = normal(rng);
    for (auto& v : bias) v = normal(rng);
    for (auto& v : x) v = normal(rng);
    for (const WeightType type : types) {
      std::vector<float> f32, scale;
      std::vector<uint16_t> b16;
      std::vector<int8_t> i8;
      pack(type, dense, k, n, f32, b16, i8, scale);
      const GemmWeight w = weight_of(type, k, n, bias, f32, b16, i8, scale);
      for (const Isa isa : isas) {
        if (isa > best) continue;
        std::vector<float> all(rows * n);
        gemm(isa, rows, x.data(), k, w, all.data(), n, 0, n);
        bool ok = true;
        for (const int count : {1, 2, 3, 6, 7, 9, 16, 17, 129}) {
          for (const int first : {0, rows - count}) {
            std::vector<float> part(count * n);
            gemm(isa, count, x.data() + first * k, k, w, part.data(), n, 0, n);
            ok = ok && std::equal(part.begin(), part.end(), all.begin() + first * n);
          }
        }
        check(ok, "row independence", rows, k, n, isa_name(isa));
        ++row_cases;
      }
      if (type == WeightType::kInt8Quads && best >= Isa::kAmx) {
        for (const int count : {1, 4, 7, 16, 35, 150}) {
          std::vector<float> tiles(count * n), vnni(count * n);
          gemm(Isa::kAmx, count, x.data(), k, w, tiles.data(), n, 0, n);
          gemm(Isa::kAvx512Bf16, count, x.data(), k, w, vnni.data(), n, 0, n);
          check(tiles == vnni, "int8 AMX == VNNI", count, k, n, "amx");
          ++row_cases;
        }
      }
    }
  }
  std::printf("%d row-independence cases\n", row_cases);
  std::printf("%d gemm and %d attention cases on ISAs up to %s, %d failures\n", cases, attention_cases,
              isa_name(best), failures);
  return failures == 0 ? 0 : 1;
}
